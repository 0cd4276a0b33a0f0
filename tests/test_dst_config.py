"""ERK/uniform budgets, update schedules, presets, and refusal of bad configuration."""

import math

import pytest
import torch
from torch import nn

import sparsekit

from sparsekit.dst import (PRESETS, DDSTController, DynamicSparsity, UpdateSchedule,
                           distribute_density, erk_densities, get_preset)

SHAPES = {"rgb": (64, 3, 3, 3), "c1": (64, 64, 3, 3), "c2": (128, 64, 3, 3), "sc": (128, 64, 1, 1),
          "fc": (10, 2048), "head": (1, 128)}


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_erk_densities_sum_to_budget(density):
    d = erk_densities(SHAPES, density)
    numel = {n: math.prod(s) for n, s in SHAPES.items()}
    assert sum(d[n] * numel[n] for n in d) == pytest.approx(density * sum(numel.values()), rel=1e-9)
    assert all(0 < v <= 1 for v in d.values())
    raw = {n: sum(s) / numel[n] for n, s in SHAPES.items()}
    sparse = [n for n in d if d[n] < 1]
    for a in sparse:  # proportional to (Σ dims)/(Π dims) among the layers that are not dense
        for b in sparse:
            assert d[a] / d[b] == pytest.approx(raw[a] / raw[b])
    assert all(raw[n] >= max((raw[m] for m in sparse), default=0) for n in d if d[n] == 1)


def test_erk_makes_small_layers_dense_and_iterates():
    d = erk_densities(SHAPES, 0.2)
    assert d["head"] == 1.0  # a tiny layer saturates
    assert d["c2"] < 0.2


def test_engine_budget_matches_distribution():
    model = tiny_model()
    engine = DynamicSparsity(model, None, density=0.3, block=(1, 1), method="static")
    assert abs(engine.kept() - 0.3 * engine.total_numel) <= len(engine.layers)
    uniform = DynamicSparsity(tiny_model(), None, density=0.3, block=(1, 1), method="static",
                              distribution="uniform")
    assert all(v == pytest.approx(0.3, abs=1e-3) for v in uniform.layer_densities().values())
    assert distribute_density({"a": (4, 4)}, 0.5, "uniform") == {"a": 0.5}
    with pytest.warns(DeprecationWarning, match="distribute_density"):  # the old name still works
        assert sparsekit.dst.layer_densities is distribute_density


def test_schedule():
    s = UpdateSchedule(update_every=10, prune_fraction=0.5, kind="cosine", stop_at=100)
    assert [t for t in range(0, 121) if s.is_update(t)] == list(range(10, 100, 10))
    assert s.fraction(0) == pytest.approx(0.5)
    assert s.fraction(50) == pytest.approx(0.5 * (0.005 + 0.995 * 0.5))
    assert s.fraction(100) == pytest.approx(0.0025)
    c = UpdateSchedule(update_every=3, prune_fraction=0.3, kind="constant")
    assert c.fraction(10**6) == 0.3 and c.is_update(3) and not c.is_update(0)


def test_presets():
    assert set(PRESETS) >= {"static", "set", "rigl", "stu-gan", "sdst", "ddst", "lottery"}
    stu = get_preset("stu-gan")
    assert stu.g.layer_types == ("conv",) and stu.g.grow == "gradient" and not stu.g.reset_optimizer_state
    assert stu.g.update_every == 500 and stu.g.prune_fraction == 0.5 and stu.d.method == "static"
    assert get_preset("rigl").g.reset_optimizer_state and get_preset("set").g.grow == "random"
    ddst = get_preset("ddst")
    c = ddst.ddst
    assert (c.lower, c.upper, c.step, c.adjust_every) == (0.45, 0.55, 0.05, 1000)
    assert (ddst.ddst.min_density, ddst.ddst.max_density) == (0.05, 1.0) and ddst.g.selection == "global"
    assert get_preset("ddst-strict").ddst.cap == 0.5
    lottery = get_preset("lottery")
    assert lottery.imp.rate == 0.2 and lottery.imp.scope == "global" and lottery.d is None
    short = ddst.scaled(2000)
    # adjust period ≥ the balance-ratio window's span (10 samples × every 10 iterations)
    assert short.g.update_every == 10 and short.ddst.adjust_every == 100 and short.br_window == 10
    assert ddst.scaled(100_000).ddst.adjust_every == 1000
    with pytest.raises(ValueError, match="method"):
        get_preset("nope")


def test_from_preset():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters())
    g = DynamicSparsity.from_preset(model, opt, "stu-gan", "G", block=(4, 4), stop_at=100)
    assert [layer.name for layer in g.layers] == ["0", "2"]  # convs only
    assert g.grow == "gradient" and not g.reset_optimizer_state and g.schedule.update_every == 500
    assert DynamicSparsity.from_preset(tiny_model(), None, "lottery", "D") is None
    d_model = tiny_model()
    d = DynamicSparsity.from_preset(d_model, None, "ddst", "D", block=(4, 4))
    controller = DDSTController(d, **get_preset("ddst").ddst.controller_kwargs())
    assert d.controller is controller and d.density == 0.1


@pytest.mark.parametrize("kwargs,name", [
    (dict(density=0.0), "density"), (dict(density=1.5), "density"), (dict(density=True), "density"),
    (dict(density=0.5, exclude=["nope"]), "exclude"), (dict(density=0.5, include=["x*"]), "include"),
    (dict(density=0.5, exclude="0"), "exclude"),
    (dict(density=0.5, block=(0, 4)), "block"), (dict(density=0.5, block=4), "block"),
    (dict(density=0.5, update_every=0), "update_every"), (dict(density=0.5, update_every=-3), "update_every"),
    (dict(density=0.5, prune_fraction=1.5), "prune_fraction"),
    (dict(density=0.5, method="magic"), "method"), (dict(density=0.5, selection="all"), "selection"),
    (dict(density=0.5, grow="best"), "grow"), (dict(density=0.5, distribution="er"), "distribution"),
    (dict(density=0.5, schedule="linear", stop_at=10), "schedule"),
    (dict(density=0.5, method="rigl", stop_at=None), "stop_at"),  # cosine needs its horizon
    (dict(density=0.5, layer_types=("embedding",)), "layer_types"),
    (dict(density=0.5, method="set", schedule="constant", reset_optimizer_state=True), "optimizer"),
])
def test_bad_config_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DynamicSparsity(tiny_model(), None, **{"block": (4, 4), "method": "static", **kwargs})


def test_block_that_does_not_fit_refused_and_model_untouched():
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="block"):  # each weight would be a single block
        DynamicSparsity(model, None, density=0.5, block=(16, 16), method="static", distribution="uniform")
    assert all(type(m) is nn.Linear for m in model)
    DynamicSparsity(model, None, density=1.0, block=(16, 16), method="static")  # dense is fine


def test_existing_sparse_layer_with_other_block_refused():
    model = nn.Sequential(sparsekit.SparseLinear(16, 16, block=(8, 8)), nn.Linear(16, 4))
    with pytest.raises(ValueError, match="block"):
        DynamicSparsity(model, None, density=0.5, block=(4, 4), method="static")


def test_bad_controller_config_refused():
    engine = DynamicSparsity(tiny_model(), None, density=0.5, block=(4, 4), method="static")
    for kwargs, name in [(dict(lower=0.6, upper=0.5), "lower"), (dict(step=0), "step"),
                         (dict(min_density=0.6, cap=0.5), "min_density"),
                         (dict(adjust_every=0), "adjust_every"),
                         (dict(max_density=1.2), "max_density")]:
        with pytest.raises(ValueError, match=name):
            DDSTController(engine, **kwargs)
