"""Balance ratio and the DDST controller."""

import math

import pytest
import torch
from torch import nn

from sparsekit.dst import BalanceRatio, DDSTController, DynamicSparsity


def test_balance_ratio_is_mean_of_per_sample_ratios():
    br = BalanceRatio(window=3)
    assert math.isnan(br.value) and not br.full
    assert br.add(0.0, 1.0, 2.0) == 0.5
    assert br.add(torch.tensor([1.0, 3.0]), torch.tensor([3.0]), torch.tensor(4.0)) == pytest.approx(0.5)
    br.add(0.0, 1.0, 10.0)  # 0.1
    assert br.full and br.value == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    # a ratio of means would give (mean GF − mean DF)/(mean DR − mean DF) = 0.333…
    assert br.value != pytest.approx((5 / 3 - 1) / (16 / 3 - 1))
    br.add(0.0, 9.0, 10.0)  # the oldest sample leaves the window
    assert len(br) == 3 and br.value == pytest.approx((0.5 + 0.1 + 0.9) / 3)
    assert br.add(1.0, 2.0, 1.0) is None and len(br) == 3  # DR == DF: skipped
    other = BalanceRatio(window=7)
    other.load_state_dict(br.state_dict())
    assert other.window == 3 and other.value == br.value
    with pytest.raises(ValueError, match="window"):
        BalanceRatio(window=0)


def d_engine(density=0.3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine = DynamicSparsity(model, opt, density=density, block=(4, 4), method="static", selection="global")
    return model, opt, engine


def test_ddst_lowers_and_raises_density_within_bounds():
    _, _, engine = d_engine(0.3)
    ctl = DDSTController(engine, min_density=0.05, max_density=1.0)
    densities = []
    for _ in range(8):
        assert ctl.adjust(0.2) in ("prune", "hold")
        densities.append(engine.density)
        assert engine.kept() <= engine.budget == round(engine.density * engine.total_numel)
    assert densities[:5] == pytest.approx([0.25, 0.2, 0.15, 0.1, 0.05])
    assert min(densities) == pytest.approx(0.05)
    assert ctl.adjust(0.2) == "hold"
    assert ctl.adjust(0.5) == "hold" and engine.density == pytest.approx(0.05)
    for _ in range(25):
        ctl.adjust(0.9)
    assert engine.density == pytest.approx(1.0) and engine.kept() == engine.total_numel
    assert ctl.adjust(0.9) == "hold"


def test_ddst_growth_starts_at_zero_and_follows_the_gradient():
    model, opt, engine = d_engine(0.2)
    ctl = DDSTController(engine)
    model(torch.randn(8, 16)).sum().backward()
    for layer in engine.layers:  # pretend the last backward was dense
        layer.param.grad = torch.randn(layer.param.shape)
    before = {layer.name: layer.layout.bitmap.clone() for layer in engine.layers}
    assert ctl.adjust(0.8) == "grow" and engine.density == pytest.approx(0.25)
    for layer in engine.layers:
        grown = layer.layout.element_mask(layer.layout.bitmap & ~before[layer.name])
        assert torch.all(layer.param[grown] == 0)


def test_ddst_strict_cap_runs_a_dst_step():
    _, _, engine = d_engine(0.45)
    ctl = DDSTController(engine, cap=0.5)
    assert ctl.adjust(0.9) == "grow" and engine.density == pytest.approx(0.5)
    kept = engine.kept()
    before = {layer.name: layer.layout.bitmap.clone() for layer in engine.layers}
    assert ctl.adjust(0.9) == "dst" and engine.density == pytest.approx(0.5)
    assert engine.kept() == kept
    assert any(not torch.equal(before[layer.name], layer.layout.bitmap) for layer in engine.layers)


def test_ddst_runs_from_engine_step_on_schedule():
    model, opt, engine = d_engine(0.3)
    ctl = DDSTController(engine, adjust_every=4, window=3)
    assert engine.wants_dense_grad(4) and not engine.wants_dense_grad(5)
    actions = {}
    for it in range(13):
        for _ in range(2):  # n_dis = 2
            model(torch.randn(8, 16)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            event = engine.step(it)
            if event:
                actions[it] = event["ddst"]
        if it == 3:
            assert all(layer.layout.dense_dw for layer in engine.layers)
        ctl.balance.add(0.0, 0.1, 1.0)  # BR 0.1: D too strong
    assert actions == {4: "prune", 8: "prune", 12: "prune"}  # the window is full from iteration 2
    assert engine.density == pytest.approx(0.15)
    state = engine.state_dict()
    _, _, engine2 = d_engine(0.3)
    ctl2 = DDSTController(engine2, adjust_every=4, window=3)
    engine2.load_state_dict(state)
    assert ctl2.balance.value == pytest.approx(0.1) and ctl2.last_action == "prune"
