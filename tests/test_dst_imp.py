"""Lottery tickets: IMP pruning, rewinding, tickets on disk."""

import copy

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.dst import DynamicSparsity, Ticket, imp_prune, rewind_, snapshot


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("scope", ["global", "per-layer"])
@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_imp_rounds_reach_0_8_to_the_k(scope, block):
    model = tiny_model()
    sparsekit.sparsify(model, density=1.0, block=block)
    layers = sparsekit.sparse_layers(model)
    total = sum(m.weight.numel() for _, m in layers)
    for k in range(1, 5):
        perturb(model)  # "training" between rounds
        imp_prune(model, rate=0.2, scope=scope)
        kept = sum(int(m.layout.element_mask().sum()) for _, m in layers)
        slack = k * (16 if block == (4, 4) else 1) * (len(layers) if scope == "per-layer" else 1)
        assert abs(kept - 0.8 ** k * total) <= slack
        if scope == "per-layer":  # each round prunes 20 % of the layer, within a block (+ rounding)
            for _, m in layers:
                block_numel = int(m.layout.block_numel().max())
                kept_layer = int(m.layout.element_mask().sum())
                assert abs(0.8 ** k * m.weight.numel() - kept_layer) < k * block_numel + 1
        for _, m in layers:
            assert torch.count_nonzero(m.weight[~m.layout.element_mask()]) == 0


def test_imp_global_prunes_smallest_magnitudes():
    model = tiny_model()
    sparsekit.sparsify(model, density=1.0, block=(1, 1))
    weights = torch.cat([m.weight.detach().abs().flatten() for _, m in sparsekit.sparse_layers(model)])
    imp_prune(model, rate=0.2, scope="global")
    survivors = torch.cat([m.weight.detach().abs()[m.layout.element_mask()]
                           for _, m in sparsekit.sparse_layers(model)])
    threshold = weights.sort().values[round(0.2 * weights.numel()) - 1]
    assert survivors.min() > threshold


def test_imp_on_engine_keeps_its_budget():
    model = tiny_model()
    engine = DynamicSparsity(model, None, density=1.0, block=(4, 4), method="static", layer_types=("conv",))
    for k in range(1, 4):
        perturb(model)
        out = imp_prune(engine, rate=0.2)
        assert engine.density == pytest.approx(0.8 ** k, abs=k * 16 / engine.total_numel)
        assert out["density"] == pytest.approx(engine.kept() / engine.total_numel)
        assert engine.kept() <= engine.budget


def test_rewind_and_ticket_round_trip(tmp_path):
    model = tiny_model()
    init = snapshot(model)  # θ0 of the dense model
    sparsekit.sparsify(model, density=1.0, block=(4, 4))
    perturb(model)
    imp_prune(model, rate=0.2)
    imp_prune(model, rate=0.2)
    rewind_(model, init)
    for name, m in sparsekit.sparse_layers(model):
        mask = m.layout.element_mask()
        assert torch.equal(m.weight[mask], init[f"{name}.weight"][mask])
        assert torch.count_nonzero(m.weight[~mask]) == 0
    ticket = Ticket.from_model(model, init, round=2, rate=0.2)
    ticket.save(tmp_path / "ticket.pt")
    loaded = Ticket.load(tmp_path / "ticket.pt")
    assert loaded.block == (4, 4) and loaded.meta == {"round": 2, "rate": 0.2}
    assert loaded.density() == pytest.approx(ticket.density())

    fresh = tiny_model(seed=5)  # dense, other init
    loaded.apply_(fresh)
    for (name, a), (_, b) in zip(sparsekit.sparse_layers(model), sparsekit.sparse_layers(fresh)):
        assert torch.equal(a.layout.bitmap, b.layout.bitmap)
        assert torch.equal(a.weight, b.weight)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(model(x), fresh(x))

    random_ticket = tiny_model(seed=7)
    loaded.apply_(random_ticket, rewind=False)  # same masks, own init
    _, first = sparsekit.sparse_layers(random_ticket)[0]
    assert torch.equal(first.layout.bitmap, sparsekit.sparse_layers(model)[0][1].layout.bitmap)
    assert not torch.equal(first.weight, sparsekit.sparse_layers(model)[0][1].weight)


def test_imp_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="sparsify"):
        imp_prune(model)
    sparsekit.sparsify(model, density=1.0, block=(4, 4))
    with pytest.raises(ValueError, match="rate"):
        imp_prune(model, rate=1.0)
    with pytest.raises(ValueError, match="scope"):
        imp_prune(model, scope="layer")


def test_ticket_applied_to_an_engine_updates_its_budget():
    model = tiny_model()
    engine = DynamicSparsity(model, None, density=1.0, block=(4, 4), method="static", layer_types=("conv",))
    init = snapshot(model)
    perturb(model)
    imp_prune(engine, rate=0.2)
    imp_prune(engine, rate=0.2)
    ticket = Ticket.from_model(model, init)

    fresh = tiny_model(seed=3)
    fresh_engine = DynamicSparsity(fresh, None, density=1.0, block=(4, 4), method="static",
                                   layer_types=("conv",))
    ema = copy.deepcopy(fresh)
    fresh_engine.track_ema(ema)
    assert ticket.apply_(fresh_engine) is fresh
    assert fresh_engine.kept() == engine.kept() == fresh_engine.budget
    assert fresh_engine.density == pytest.approx(engine.kept() / engine.total_numel)
    for layer in fresh_engine.layers:
        twin = ema.get_submodule(layer.name)
        assert torch.equal(twin.layout.bitmap, layer.layout.bitmap)
        assert torch.count_nonzero(twin.weight[~layer.layout.element_mask()]) == 0
