"""Randomised conv problems: the oracle against float64 NCHW torch, every backend against the
oracle — odd channel counts, strides, dilations, upsampling, narrow and rectangular blocks,
densities 0 and 1.

The float64 check keeps the oracle honest: it does not go through oneDNN's fp32 channels_last
kernels, one of which (a strided weight gradient at small odd channel counts, seen with oneDNN's
AVX2 code path) is wrong; ``reference.conv2d_dw`` avoids that path.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

import sparsekit

from .cases import make_layout, rel_err, run_python, run_with_grads

SEEDS = range(24)


def _case(seed):
    """A random conv, its layout and geometry, small enough for every backend here."""
    rng = random.Random(seed)
    k = rng.choice([1, 1, 3, 3, 4])
    stride, dilation = rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2])
    upsample = rng.choice([1, 1, 2])
    c_in, c_out = rng.choice([3, 5, 7, 16, 24, 33]), rng.choice([7, 8, 16, 40])
    block = (rng.choice([4, 8, 16, 32]), rng.choice([4, 8, 16, 32]))
    density = rng.choice([0.0, 0.3, 0.6, 1.0])
    padding = rng.randint(0, (k - 1) * dilation)
    span = (k - 1) * dilation + 1
    hw = tuple(rng.randint(max(1, -(-(span - 2 * padding) // upsample)), 9) for _ in range(2))
    batch = rng.randint(1, 3)
    torch.manual_seed(seed)
    w, x = torch.randn(c_out, c_in, k, k), torch.randn(batch, c_in, *hw)
    layout = make_layout(w.shape, block, density, seed=seed)
    geom = dict(stride=stride, padding=padding, dilation=dilation, upsample=upsample)
    return w, x, layout, geom


def _conv(layout, geom):
    return lambda x, w: sparsekit.block_sparse_conv2d(x, w, layout, **geom)


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_equals_float64_torch(seed):
    w, x, layout, geom = _case(seed)
    y, (gx, gw) = run_with_grads("reference", _conv(layout, geom), [x, w])
    mask = layout.element_mask().double()
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    up = F.interpolate(xd, scale_factor=geom["upsample"], mode="nearest") \
        if geom["upsample"] > 1 else xd
    yd = F.conv2d(up, wd * mask, stride=geom["stride"], padding=geom["padding"],
                  dilation=geom["dilation"])
    # run_with_grads backpropagates this dy (seed 1, y's shape)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).double()
    gxd, gwd = torch.autograd.grad(yd, (xd, wd), dy)
    for name, a, b in (("y", yd, y), ("dx", gxd, gx), ("dw", gwd, gw)):
        assert rel_err(a.float(), b) <= 1e-4, f"seed {seed}: reference {name} vs float64"


@pytest.mark.parametrize("seed", SEEDS)
def test_cpu_backend_equals_the_oracle(seed, monkeypatch):
    from sparsekit.backends import cpu

    monkeypatch.setattr(cpu, "DENSE_WHEN_FULL", False)
    w, x, layout, geom = _case(seed)
    y0, g0 = run_with_grads("reference", _conv(layout, geom), [x, w])
    for isa in cpu._C.isas_supported():
        assert cpu._C.select_isa(isa) == ""
        try:
            y1, g1 = run_with_grads("cpu", _conv(layout, geom), [x, w])
        finally:
            cpu._C.select_isa("")
        for name, a, b in zip(("y", "dx", "dw"), [y0, *g0], [y1, *g1]):
            assert rel_err(a, b) <= 1e-4, f"seed {seed} {isa}: {name}"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="Triton needs a CUDA device or the interpreter")
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_triton_backend_equals_the_oracle(seed):
    w, x, layout, geom = _case(seed)
    if min(layout.block) < 16:
        pytest.skip("the triton kernels take block sides of 16, 32 or 64")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    y0, g0 = run_with_grads("reference", _conv(layout, geom), [x, w])
    y1, g1 = run_with_grads("triton", _conv(layout.to(device), geom), [x.to(device), w.to(device)])
    for name, a, b in zip(("y", "dx", "dw"), [y0, *g0], [y1, *g1]):
        assert rel_err(a, b.cpu()) <= 1e-4, f"seed {seed}: {name}"


def test_oracle_avoids_onednns_wrong_strided_channels_last_weight_gradient():
    """oneDNN's AVX2 code path (forced here on any x86 CPU) gets dW of this 1×1 stride-2
    channels_last conv wrong (relative error 0.64); the oracle must not."""
    code = (
        "import torch, sparsekit\n"
        "from tests.cases import make_layout, rel_err, run_with_grads\n"
        "torch.manual_seed(0)\n"
        "w, x = torch.randn(7, 5, 1, 1), torch.randn(2, 5, 8, 8)\n"
        "layout = make_layout(w.shape, (1, 1), 1.0)\n"
        "_, (_, gw) = run_with_grads('reference', lambda x, w: sparsekit.block_sparse_conv2d("
        "x, w, layout, stride=2), [x, w])\n"
        "xd, wd = x.double(), w.double().requires_grad_()\n"
        "y = torch.nn.functional.conv2d(xd, wd, stride=2)\n"
        "dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).double()\n"
        "(gwd,) = torch.autograd.grad(y, (wd,), dy)\n"
        "assert rel_err(gwd.float(), gw) < 1e-4, rel_err(gwd.float(), gw)\n"
    )
    r = run_python(code, ONEDNN_MAX_CPU_ISA="AVX2")
    assert r.returncode == 0, r.stderr[-2000:]
