"""Callables that run one layer pass with one implementation, for the benchmark suites.

Implementations: ``dense`` (torch: oneDNN / cuDNN / cuBLAS), ``sparse:<backend>`` (sparsekit with
that backend forced), ``bsr`` (torch's own BSR matmul on the same mask; linear and 1×1 only).
Passes: ``fwd``, ``dx``, ``dw``, ``fwd+bwd``. GPU callables synchronise before returning.

``sngan_trainer`` builds the trainer the whole-step benchmark times (and
``benchmarks.step_profile`` profiles).

Precision (DESIGN §3): fp32 means IEEE fp32. Every fp32 benchmark runs inside
:func:`ieee_fp32`, which switches TF32 off for cuBLAS and cuDNN (the dense baseline) and for
sparsekit's Triton backend, and restores the previous settings afterwards.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import BlockLayout, backends

from .shapes import LayerCase


def sngan_trainer(data, device, width, batch, g_density, d_density, block=(32, 32)):
    """The gan Trainer of one SNGAN-ResNet whole-step benchmark: dense at G/D density (1, 1),
    else ``static`` masks at those densities; fp32, no learning-rate decay."""
    from gan.config import Config
    from gan.trainer import Trainer

    dense = (g_density, d_density) == (1.0, 1.0)
    cfg = Config(method="dense" if dense else "static", model="sngan", width=width, batch_size=batch,
                 steps=1000, device=device, block=f"{block[0]}x{block[1]}", lr_decay="none",
                 precision="fp32", g_density=None if dense else g_density,
                 d_density=None if dense else d_density)
    return Trainer(cfg, data)


#: benchmark.pedantic settings per device. GPU calls are short (tens of µs to a few ms), so
#: they get more rounds; the CPU numbers stay comparable with the committed results.
PEDANTIC = {
    "cpu": dict(rounds=15, warmup_rounds=2, iterations=1),
    "cuda": dict(rounds=30, warmup_rounds=3, iterations=1),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def ieee_fp32(dtype):
    """fp32 means IEEE fp32 (DESIGN §3) for the duration of the block.

    For ``torch.float32``: ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32`` are False (the dense cuBLAS / cuDNN baseline) and so is
    sparsekit's Triton backend's ``allow_tf32``; all three are restored on
    exit. Other dtypes are left alone (TF32 does not apply to bf16). Yields the value to record
    as ``extra_info["tf32"]``: False for float32, None where TF32 does not apply.
    """
    if dtype != torch.float32:
        yield None
        return
    triton_backend = backends.declared()["triton"]  # its declaration: nothing is loaded
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             triton_backend.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    triton_backend.allow_tf32 = False
    try:
        yield False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        triton_backend.allow_tf32 = saved[2]


def make_inputs(case: LayerCase, batch, density, block, device, dtype, seed=0, mask_weight=True):
    """(x, w, layout) for one benchmark; ``w`` is zero outside ``layout`` if ``mask_weight``.

    The dense baseline passes ``mask_weight=False``: it times a plain random weight (zeros can
    make dense kernels faster than on real data); the random draws are the same either way.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(case.weight_shape(), generator=g).to(device, dtype)
    x = torch.randn(case.input_shape(batch), generator=g).to(device, dtype)
    if case.kind == "conv":
        w = w.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    layout = BlockLayout.random(w.shape, block, density, generator=g).to(device)
    if mask_weight:
        with torch.no_grad():
            w.mul_(layout.element_mask())
    return x, w, layout


def _dense_forward(case, x, w):
    if case.kind == "linear":
        return F.linear(x, w)
    if case.upsample > 1:
        x = F.interpolate(x, scale_factor=case.upsample, mode="nearest")
    return F.conv2d(x, w, stride=case.stride, padding=case.padding)


def _sparse_forward(case, x, w, layout):
    if case.kind == "linear":
        return sparsekit.block_sparse_linear(x, w, layout)
    return sparsekit.block_sparse_conv2d(x, w, layout, stride=case.stride, padding=case.padding,
                                         upsample=case.upsample)


def _bsr_forward(case, x, w_bsr):
    """y = x · Wᵀ through torch's BSR kernels: (W_bsr @ xᵀ)ᵀ; 1×1 convs as a GEMM over pixels."""
    if case.kind == "linear":
        return (w_bsr @ x.t()).t()
    b, c, h, wd = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(-1, c)
    return (w_bsr @ pixels.t()).t().reshape(b, h, wd, -1)


def bsr_applies(case: LayerCase):
    return case.kind == "linear" or (case.kernel == 1 and case.stride == 1 and case.upsample == 1)


def make_runner(case: LayerCase, impl: str, pass_: str, x, w, layout):
    """A zero-argument callable running ``pass_`` of ``case`` with ``impl``."""
    device = x.device
    if impl == "bsr":
        if pass_ != "fwd":
            raise ValueError("torch BSR is benchmarked on the forward only")
        w_bsr = w.reshape(w.shape[0], -1).contiguous().to_sparse_bsr(layout.block)

        def run():
            _bsr_forward(case, x, w_bsr)
            _sync(device)
        return run

    sparse = impl.startswith("sparse:")
    forward = (lambda x, w: _sparse_forward(case, x, w, layout)) if sparse else \
        (lambda x, w: _dense_forward(case, x, w))
    if sparse:
        sparsekit.set_backend(impl.split(":", 1)[1])
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                forward(x, w)
            _sync(device)
        return run

    xg, wg = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    if pass_ == "fwd+bwd":
        def run():
            xg.grad = wg.grad = None
            y = forward(xg, wg)
            y.backward(torch.ones_like(y))
            _sync(device)
        return run

    if pass_ not in ("dx", "dw"):
        raise ValueError(f"pass must be fwd, dx, dw or fwd+bwd, got {pass_!r}")
    # dX alone / dW alone: the other operand needs no grad, so its backward pass is skipped.
    xg.requires_grad_(pass_ == "dx")
    wg.requires_grad_(pass_ == "dw")
    target = xg if pass_ == "dx" else wg
    y = forward(xg, wg)
    dy = torch.randn_like(y)

    def run():
        torch.autograd.grad(y, (target,), dy, retain_graph=True)
        _sync(device)
    return run
