"""The trainer's flow in miniature: G and D engines from presets, n_dis, EMA, balance ratio, DDST."""

import copy

import torch
from torch import nn

from sparsekit.dst import DDSTController, DynamicSparsity, get_preset


def make_g():
    return nn.Sequential(nn.Linear(8, 16 * 4 * 4), nn.Unflatten(1, (16, 4, 4)), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1),
                         nn.Tanh())


def make_d():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 2 * 2, 1))


def test_gan_flow_ddst():
    torch.manual_seed(0)
    steps, n_dis = 12, 2
    preset = get_preset("ddst").scaled(steps, floor=2)
    G, D = make_g(), make_d()
    opt_g = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.0, 0.9))
    eng_g = DynamicSparsity.from_preset(G, opt_g, preset, "G", block=(4, 4), stop_at=steps)
    eng_d = DynamicSparsity.from_preset(D, opt_d, preset, "D", block=(4, 4), stop_at=steps)
    ctl = DDSTController(eng_d, **{**preset.ddst.controller_kwargs(), "adjust_every": 4}, window=3)
    G_ema = copy.deepcopy(G)
    eng_g.track_ema(G_ema)
    real = torch.rand(4, 3, 4, 4) * 2 - 1
    events_g, events_d = {}, {}
    for it in range(steps):
        for _ in range(n_dis):
            z = torch.randn(4, 8)
            d_loss = (1 - D(real)).relu().mean() + (1 + D(G(z).detach())).relu().mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            if (e := eng_d.step(it)):
                events_d[it] = e
        z = torch.randn(4, 8)
        fake = G(z)
        with torch.no_grad():
            d_fake_before = D(fake)
        g_loss = -D(fake).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        if (e := eng_g.step(it)):
            events_g[it] = e
        with torch.no_grad():
            ctl.balance.add(d_fake_before, D(G(z)), D(real))
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.lerp_(p, 0.1)
    assert sorted(events_g) == list(range(2, steps, 2)) and all("grown" in e for e in events_g.values())
    assert set(events_d) == {4, 8}
    assert all(e["ddst"] in ("grow", "prune", "hold") for e in events_d.values())
    for eng in (eng_g, eng_d):
        assert eng.kept() <= eng.budget
        for layer in eng.layers:
            assert torch.count_nonzero(layer.param[~layer.layout.element_mask()]) == 0
    for layer in eng_g.layers:
        twin = G_ema.get_submodule(layer.name)
        assert torch.equal(twin.layout.bitmap, layer.layout.bitmap)
        assert torch.count_nonzero(twin.weight[~layer.layout.element_mask()]) == 0
    m = eng_g.metrics()
    assert m["exploration_rate"] > m["density"] and 0 < m["flops_fraction"] < 1


def test_flops_count_the_fused_upsample_convs_at_their_output_size():
    """G's upsampling convs run the fused kernel; the FLOP bookkeeping must see their (large)
    output, not count one position."""
    import torch

    from gan.models import build
    from sparsekit.dst import DynamicSparsity

    G, _ = build("sngan", 0.125)
    engine = DynamicSparsity(G, density=0.5, block=(8, 8), method="static")
    G(torch.randn(2, G.z_dim))
    positions = engine._positions.positions
    ups = {n: v for n, v in positions.items() if n.endswith("conv1.conv")}
    # GBlock k upsamples 4·2^k → 8·2^k: its conv1 computes (8·2^k)² output positions
    assert ups == {"blocks.0.conv1.conv": 64, "blocks.1.conv1.conv": 256,
                   "blocks.2.conv1.conv": 1024}, positions
