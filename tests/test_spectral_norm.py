"""sparsify on discriminators that already carry spectral norm, in both torch styles."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import sparsekit
from sparsekit import SparseConv2d, SparseLinear, sparsify
from sparsekit.dst import DynamicSparsity
from sparsekit.nn import raw_weight


def _disc(style, seed=0):
    """A small SNGAN-style D: convs and a linear head, spectral norm on every layer."""
    torch.manual_seed(seed)
    sn = {"hook": nn.utils.spectral_norm, "param": parametrizations.spectral_norm,
          "none": lambda m: m}[style]
    return nn.Sequential(sn(nn.Conv2d(3, 16, 3, padding=1)), nn.LeakyReLU(0.1),
                         sn(nn.Conv2d(16, 32, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
                         nn.Flatten(), sn(nn.Linear(32 * 4 * 4, 1)))


def _uv(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("_u", "_v"))}


STYLES = ["hook", "param"]


@pytest.mark.parametrize("style", STYLES)
def test_sparsify_keeps_u_v_and_reports_every_layer(style):
    model = _disc(style)
    uv, params = _uv(model), {id(p) for p in model.parameters()}
    model, report = sparsify(model, density=0.5, block=(8, 8), return_report=True)
    assert [r.name for r in report] == ["0", "2", "5"] and all(r.sparse for r in report)
    assert all(r.spectral_norm.startswith("spectral_norm") for r in report)
    assert {id(p) for p in model.parameters()} == params  # same Parameter objects
    after = _uv(model)
    assert after.keys() == uv.keys() and all(torch.equal(uv[k], after[k]) for k in uv)


@pytest.mark.parametrize("style", STYLES)
def test_outputs_and_grads_equal_torch_on_the_masked_raw_weights(style):
    sparse = _disc(style)
    plain = copy.deepcopy(sparse)
    sparsify(sparse, density=0.5, block=(8, 8))
    with torch.no_grad():  # the plain model gets the same masked raw weights
        for (_, s), (_, p) in zip(sparsekit.sparse_layers(sparse),
                                  [(n, m) for n, m in plain.named_modules()
                                   if n in ("0", "2", "5")]):
            raw_weight(p)[0].copy_(raw_weight(s)[0] * s.layout.element_mask())
    sparse.eval(), plain.eval()  # no power iteration: σ from the same u/v
    x = torch.randn(2, 3, 8, 8)
    xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yp = sparse(xs), plain(xp)
    torch.testing.assert_close(ys, yp, rtol=1e-4, atol=1e-5)
    ys.sum().backward(), yp.sum().backward()
    torch.testing.assert_close(xs.grad, xp.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_a_training_step_keeps_pruned_raw_weights_at_zero(style):
    model = sparsify(_disc(style), density=0.4, block=(8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step()
    for _, layer in sparsekit.sparse_layers(model):
        raw = raw_weight(layer)[0]
        assert raw.grad[layer.layout.pruned_mask()].abs().max() == 0
        assert raw[layer.layout.pruned_mask()].abs().max() == 0
        assert raw[~layer.layout.pruned_mask()].abs().max() > 0


@pytest.mark.parametrize("style", STYLES)
def test_a_dense_spectral_norm_checkpoint_loads_and_is_masked(style):
    dense = _disc(style, seed=1)
    dense(torch.randn(2, 3, 8, 8))  # moves u/v
    model = sparsify(_disc(style, seed=2), density=0.5, block=(8, 8))
    model.load_state_dict(dense.state_dict())
    for (name, layer) in sparsekit.sparse_layers(model):
        raw, _ = raw_weight(layer)
        expected = raw_weight(dense.get_submodule(name))[0] * layer.layout.element_mask()
        assert torch.equal(raw, expected)
    assert all(torch.equal(v, _uv(dense)[k]) for k, v in _uv(model).items())


@pytest.mark.parametrize("style, moments", [("none", ("before", "after")), ("hook", ("before",))])
def test_pickle_and_deepcopy_round_trip_with_an_engine(style, moments):
    """Before and after the first forward (the engine's FLOP hooks are on it then). torch itself
    cannot deep-copy or pickle a hook-style spectral-norm module after a training forward (its
    ``weight`` is then a non-leaf tensor), nor pickle a parametrized one; those are checked
    where torch allows (and deepcopy of the parametrized style below)."""
    model = _disc(style)
    engine = DynamicSparsity(model, density=0.5, block=(8, 8), method="set", stop_at=10)
    for when in moments:
        if when == "after":
            model(torch.randn(2, 3, 8, 8))
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)  # our own object, in memory
        clone = copy.deepcopy(model)
        x = torch.randn(2, 3, 8, 8)
        model.eval(), loaded.eval(), clone.eval()
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(clone(x), model(x))
        model.train()
    assert pickle.dumps(engine.layers[0].layout)


def test_deepcopy_of_a_parametrized_spectral_norm_model():
    model = sparsify(_disc("param"), density=0.5, block=(8, 8))
    clone = copy.deepcopy(model)
    model.eval(), clone.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(clone(x), model(x))
    layer = clone.get_submodule("0")
    assert layer.parametrizations.weight[0].__dict__["_layout"] is layer.layout


@pytest.mark.parametrize("style", STYLES)
def test_the_dst_engine_manages_a_third_party_sn_discriminator(style):
    model = _disc(style)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = DynamicSparsity(model, opt, density=0.3, block=(8, 8), method="set",
                             update_every=1, stop_at=10)
    assert len(engine.layers) == 3
    for it in range(1, 3):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).mean().backward()
        opt.step()
        engine.step(it)
    for _, layer in sparsekit.sparse_layers(model):
        assert isinstance(layer, (SparseConv2d, SparseLinear))
        assert (raw_weight(layer)[0][layer.layout.pruned_mask()] == 0).all()
