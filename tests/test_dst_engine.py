"""DynamicSparsity: budgets, masking, regrowth, dense-dW timing, EMA, metrics, resume."""

import copy

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import SparseConv2d, SparseLinear
from sparsekit.dst import DynamicSparsity


def tiny_model(seed=0, c=8, n_out=10):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(c * 4 * 4, n_out))


def batch(seed=0, b=4):
    return torch.randn(b, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def train(model, opt, engine, iterations, steps_per_iteration=1):
    events = {}
    for it in iterations:
        for k in range(steps_per_iteration):
            loss = model(batch(it * 7 + k)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            event = engine.step(it)
            if event:
                events[it] = {**event, "kept": engine.kept()}
    return events


def masks(engine):
    return {layer.name: layer.layout.bitmap.clone() for layer in engine.layers}


def off_entries(engine):
    return [layer.param.detach()[layer.layout.element_mask().logical_not()] for layer in engine.layers]


@pytest.mark.parametrize("block,method,selection", [
    ((4, 4), "rigl", "per-layer"), ((4, 4), "set", "global"), ((1, 1), "rigl", "global"),
    ((4, 4), "set", "per-layer")])
def test_budget_exact_and_pruned_stay_zero(block, method, selection):
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=block, method=method, update_every=2,
                             prune_fraction=0.5, schedule="constant", selection=selection)
    kept0 = engine.kept()
    max_block = max(int(layer.layout.block_numel().max()) for layer in engine.layers)
    assert engine.budget - max_block * len(engine.layers) < kept0 <= engine.budget
    events = train(model, opt, engine, range(12), steps_per_iteration=2)
    assert sorted(events) == [2, 4, 6, 8, 10]
    assert all(e["grown"] > 0 for e in events.values())
    # the first conv has narrow (3-column) blocks: each pool is within one block of its budget
    slack = max_block * (len(engine.layers) if selection == "per-layer" else 1)
    for e in events.values():
        assert engine.budget - slack < e["kept"] <= engine.budget
    assert engine.budget - slack < engine.kept() <= engine.budget
    if selection == "per-layer":
        for layer in engine.layers:
            target = engine.targets[layer.name]
            assert target - int(layer.layout.block_numel().max()) < layer.kept() <= target
    for off in off_entries(engine):  # Adam momentum never leaks into pruned entries
        assert torch.count_nonzero(off) == 0


def test_equal_blocks_keep_count_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = DynamicSparsity(model, opt, density=0.25, block=(4, 4), method="set", update_every=1,
                             prune_fraction=0.4, schedule="constant", selection="global")
    counts = set()
    for it in range(1, 15):
        model(torch.randn(8, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        engine.step(it)
        counts.add(engine.kept())
    assert counts == {engine.budget}
    assert engine.kept() == round(0.25 * engine.total_numel)


def test_regrown_start_at_zero_with_fresh_optimizer_state():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="rigl", update_every=3,
                             prune_fraction=0.5, schedule="constant")
    train(model, opt, engine, range(3))
    before = masks(engine)
    params = {layer.name: layer.param.detach().clone() for layer in engine.layers}
    train(model, opt, engine, [3])  # the update fires after this step
    assert engine.last_update["grown"] > 0
    for layer in engine.layers:
        grown = layer.layout.element_mask(layer.layout.bitmap & ~before[layer.name])
        survived = layer.layout.element_mask(layer.layout.bitmap & before[layer.name])
        assert torch.all(layer.param[grown] == 0)
        state = opt.state[layer.param]
        assert torch.all(state["exp_avg"][grown] == 0) and torch.all(state["exp_avg_sq"][grown] == 0)
        assert torch.count_nonzero(state["exp_avg"][survived]) > 0
        assert torch.count_nonzero(layer.param[survived] - params[layer.name][survived]) > 0


def test_reset_off_keeps_optimizer_state():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="rigl", update_every=3,
                             prune_fraction=0.5, schedule="constant", reset_optimizer_state=False)
    train(model, opt, engine, range(3))
    before = masks(engine)
    train(model, opt, engine, [3])
    layer = engine.layers[1]
    grown = layer.layout.element_mask(layer.layout.bitmap & ~before[layer.name])
    assert torch.all(layer.param[grown] == 0)
    assert torch.count_nonzero(opt.state[layer.param]["exp_avg"][grown]) > 0  # the dense-dW step's moments


def test_dense_dw_on_only_around_gradient_updates():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="rigl", update_every=4,
                             prune_fraction=0.3, schedule="constant")
    assert [engine.wants_dense_grad(t) for t in range(9)] == [t in (4, 8) for t in range(9)]
    seen = []
    for it in range(6):
        for k in range(2):  # two optimizer steps per iteration (like D's n_dis)
            dense = all(layer.layout.dense_dw for layer in engine.layers)
            model(batch(it)).square().mean().backward()
            layer = engine.layers[1]
            grad_off = layer.param.grad[layer.layout.element_mask().logical_not()]
            seen.append((it, k, dense, bool(torch.count_nonzero(grad_off))))
            opt.step()
            opt.zero_grad()
            engine.step(it)
    # dense from the first call of iteration 3 until the update at iteration 4's first call
    assert [(it, k) for it, k, dense, _ in seen if dense] == [(3, 1), (4, 0)]
    assert all(nonzero == dense for _, _, dense, nonzero in seen)
    assert engine.last_update["iteration"] == 4
    assert not any(layer.layout.dense_dw for layer in engine.layers)


def test_no_update_at_zero_or_after_stop():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="set", update_every=2,
                             prune_fraction=0.5, stop_at=6)
    events = train(model, opt, engine, range(9))
    assert sorted(events) == [2, 4]
    assert events[2]["fraction"] > events[4]["fraction"]  # cosine decay


def _reference_unstructured_update(w, grad, mask, fraction, budget):
    """Element-wise DST step: drop the smallest |w| of the kept, grow the largest |grad| elsewhere."""
    n_prune = round(fraction * int(mask.sum()))
    kept_scores = torch.where(mask, w.abs(), torch.inf).flatten()
    after = mask.flatten().clone()
    after[torch.argsort(kept_scores)[:n_prune]] = False
    room = budget - int(after.sum())
    grow_scores = torch.where(after, -torch.inf, grad.abs().flatten())
    new = after.clone()
    new[torch.argsort(grow_scores, descending=True)[:room]] = True
    return new.reshape(mask.shape)


@pytest.mark.parametrize("selection", ["per-layer", "global"])
def test_block_1x1_matches_elementwise_dst(selection):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(5, 6, 3), nn.Flatten(), nn.Linear(6 * 2 * 2, 7))
    engine = DynamicSparsity(model, None, density=0.4, block=(1, 1), method="rigl",
                             schedule="constant", prune_fraction=0.3, selection=selection,
                             distribution="uniform")
    layers = engine.layers
    for layer in layers:  # every entry distinct and nonzero, dense random gradients
        layer.param.data.copy_(torch.randn(layer.param.shape) * layer.layout.element_mask())
        layer.param.grad = torch.randn(layer.param.shape)
    old = {layer.name: (layer.param.detach().clone(), layer.layout.element_mask()) for layer in layers}
    engine.prune_and_regrow(0.3)
    if selection == "per-layer":
        expected = {layer.name: _reference_unstructured_update(
            old[layer.name][0], layer.param.grad, old[layer.name][1], 0.3, engine.targets[layer.name])
            for layer in layers}
    else:
        flat = lambda f: torch.cat([f(layer).flatten() for layer in layers])  # noqa: E731
        new = _reference_unstructured_update(flat(lambda l: old[l.name][0]), flat(lambda l: l.param.grad),
                                             flat(lambda l: old[l.name][1]), 0.3, engine.budget)
        expected = dict(zip(old, new.split([layer.numel for layer in layers])))
    for layer in layers:
        mask = layer.layout.element_mask()
        assert torch.equal(mask.flatten(), expected[layer.name].flatten())
        w0, m0 = old[layer.name]
        assert torch.equal(layer.param[mask & m0], w0[mask & m0])  # survivors untouched
        assert torch.all(layer.param[mask & ~m0] == 0)  # new connections start at 0


def test_global_selection_uses_one_threshold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    engine = DynamicSparsity(model, None, density=0.5, block=(4, 4), method="set", schedule="constant",
                             selection="global", distribution="uniform", reset_optimizer_state=False)
    with torch.no_grad():
        model[0].weight.mul_(0.01)  # layer 0 is much smaller: a global threshold prunes it first
    engine.prune_and_regrow(0.5)
    d = engine.layer_densities()
    assert d["0"] < 0.5 < d["1"] or d["0"] <= 0.25
    assert engine.kept() == engine.budget


def test_determinism_with_seed():
    def run(seed):
        model = tiny_model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="set", update_every=2,
                                 prune_fraction=0.5, schedule="constant", seed=seed)
        train(model, opt, engine, range(7))
        return masks(engine), [p.detach().clone() for p in model.parameters()]

    (m1, p1), (m2, p2), (m3, _) = run(1), run(1), run(2)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert not all(torch.equal(m1[k], m3[k]) for k in m1)


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_state_dict_round_trip_resumes_identically(method):
    def build():
        model = tiny_model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method=method, update_every=3,
                                 prune_fraction=0.5, stop_at=20)
        return model, opt, engine

    model, opt, engine = build()
    train(model, opt, engine, range(5), steps_per_iteration=2)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                           "engine": engine.state_dict()})
    train(model, opt, engine, range(5, 10), steps_per_iteration=2)

    model2, opt2, engine2 = build()
    train(model2, opt2, engine2, range(2))  # diverge first: loading must restore everything
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    engine2.load_state_dict(saved["engine"])
    train(model2, opt2, engine2, range(5, 10), steps_per_iteration=2)

    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert engine.exploration_rate() == engine2.exploration_rate()
    assert engine.last_update == engine2.last_update


def test_ema_copy_follows_masks():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="set", update_every=2,
                             prune_fraction=0.5, schedule="constant")
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)  # nonzero everywhere, as a stale EMA would be
    engine.track_ema(ema)
    train(model, opt, engine, range(5))
    for layer in engine.layers:
        twin = ema.get_submodule(layer.name)
        assert torch.equal(twin.layout.bitmap, layer.layout.bitmap)
        assert torch.count_nonzero(twin.weight[~layer.layout.element_mask()]) == 0


def test_spectral_norm_after_engine_masks_original():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.5, block=(4, 4), method="rigl", update_every=2,
                             prune_fraction=0.5, schedule="constant", distribution="uniform")
    for m in (model[0], model[2]):
        nn.utils.parametrizations.spectral_norm(m)
    for it in range(5):
        model(torch.randn(8, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        engine.step(it)
    for layer in engine.layers:
        original = layer.module.parametrizations.weight.original
        assert layer.param is original
        assert torch.count_nonzero(original[~layer.layout.element_mask()]) == 0
    # loading a checkpoint must not run an extra power iteration (exact resume of an SN'd D)
    saved = copy.deepcopy(model.state_dict())
    twin = copy.deepcopy(model)
    twin.load_state_dict(saved)
    assert all(torch.equal(saved[k], v) for k, v in twin.state_dict().items())


def test_metrics():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=0.3, block=(4, 4), method="set", update_every=2,
                             prune_fraction=0.5, schedule="constant")
    m0 = engine.metrics()
    assert m0["exploration_rate"] == pytest.approx(m0["density"]) and m0["mask_change"] == 0.0
    train(model, opt, engine, range(7))
    m = engine.metrics()
    assert m["exploration_rate"] > m["density"] > 0.25
    assert 0 < m["mask_change"] <= 0.5
    assert {f"density/{layer.name}" for layer in engine.layers} <= set(m)
    # conv MACs weigh by output pixels (16 per sample), the linear by 1
    kept = {layer.name: layer.kept() for layer in engine.layers}
    numel = {layer.name: layer.numel for layer in engine.layers}
    px = {"0": 16, "2": 16, "5": 1}
    expected = sum(kept[n] * px[n] for n in px) / sum(numel[n] * px[n] for n in px)
    assert m["flops_fraction"] == pytest.approx(expected)


def test_existing_sparse_layers_and_exclusions():
    torch.manual_seed(0)
    model = nn.Sequential(SparseConv2d(3, 8, 3, padding=1, block=(4, 4)), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 4), nn.Linear(4, 2))
    engine = DynamicSparsity(model, None, density=0.5, block=(4, 4), method="static", exclude=["3"])
    assert [layer.name for layer in engine.layers] == ["0", "2"]
    assert isinstance(model[2], SparseLinear) and type(model[3]) is nn.Linear
    conv_only = DynamicSparsity(tiny_model(), None, density=0.5, block=(4, 4), method="static",
                                layer_types=("conv",))
    assert [layer.name for layer in conv_only.layers] == ["0", "2"]


def test_backends_agree():
    def run(backend):
        sparsekit.set_backend(backend)
        try:
            model = tiny_model()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            engine = DynamicSparsity(model, opt, density=0.4, block=(4, 4), method="rigl", update_every=2,
                                     prune_fraction=0.3, schedule="constant")
            train(model, opt, engine, range(7))
            return masks(engine), [p.detach().clone() for p in model.parameters()]
        finally:
            sparsekit.set_backend("auto")

    (m_ref, p_ref), (m_cpu, p_cpu) = run("reference"), run("cpu")
    assert all(torch.equal(m_ref[k], m_cpu[k]) for k in m_ref)
    for a, b in zip(p_ref, p_cpu):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_one_off_global_redistribution_on_a_per_layer_engine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    engine = DynamicSparsity(model, None, density=0.5, block=(4, 4), method="set", schedule="constant",
                             distribution="uniform")
    with torch.no_grad():
        model[0].weight.mul_(0.01)
    engine.prune_and_regrow(0.5, selection="global")
    assert engine.kept() == engine.budget
    assert engine.targets == {n: round(d * 256) for n, d in engine.layer_densities().items()}
    assert engine.layer_densities()["0"] < 0.5
