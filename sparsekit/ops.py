"""Block-sparse ops: torch.library custom ops with autograd and fake kernels, and dispatch.

Public functions::

    block_sparse_linear(x, weight, layout, bias=None)                    x [..., K] -> [..., N]
    block_sparse_conv2d(x, weight, layout, bias=None, stride=1, padding=0, dilation=1, upsample=1)
                                              x [B, C_in, H, W] (NCHW or NHWC) -> NHWC output

Registered ops (``torch.ops.sparsekit.*``) take only tensors, ints and bools — a ``BlockLayout``
cannot cross the torch.library boundary, so it is unpacked into its index tensors:

    linear_fwd(x, weight, bias?, <layout>, dense_dw)            conv2d_fwd(x, weight, bias?, <layout>, <conv>, dense_dw)
    linear_dx(dy, weight, <layout>)                             conv2d_dx(dy, weight, <layout>, <conv>, in_h, in_w)
    linear_dw(dy, x, weight, <layout>, dense_dw)                conv2d_dw(dy, x, weight, <layout>, <conv>, dense_dw)

with ``<layout> = bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK`` and
``<conv> = stride[2], padding[2], dilation[2], upsample``. Backward computes dX through the
transpose index and dW at kept blocks only (the full dense dW when ``layout.dense_dw`` is set);
dW is skipped when the weight needs no gradient.

Dispatch: ``set_backend(name)`` / ``SPARSEKIT_BACKEND`` force a backend (one of
``sparsekit.BACKENDS``: "reference", "cpu", "triton", "cuda"); "auto" (default) tries the backends
serving the tensors' device type by their declared priority — ``cpu`` for CPU tensors (unless it
declines a call it would run slower than dense torch: its ``auto_declines``), for CUDA tensors
``triton`` or ``cuda`` in the order of the measured table of ``backends.routing`` (per pass and
dtype) — takes the first that supports the call, else announces (once per reason) a fallback to
``reference``. Called eagerly on the CPU, an unstrided layer that falls back runs through torch's
own autograd on the masked weight (``reference.dense_autograd``), not the reference launchers.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from . import backends
from .backends import BlockIndex, reference, routing
from .backends.problem import conv_problem, linear_problem
from .geometry import ConvGeometry, make_geometry
from .layout import BlockLayout

# ----------------------------------------------------------------------------------- dispatch
_backend = "auto"
_fallbacks: dict[str, str] = {}  # reason -> op, for the once-only warning and sparsekit.info


def set_backend(name: str) -> None:
    """Force a backend for every op: "auto" or one of ``sparsekit.BACKENDS``."""
    if name != "auto" and name not in backends.names():
        raise ValueError(f"backend must be 'auto' or one of {backends.names()}, got {name!r}")
    global _backend
    _backend = name


def get_backend() -> str:
    return _backend


def fallbacks_taken() -> dict[str, str]:
    """Fallbacks to the reference backend seen in this process: {reason: first op}."""
    return dict(_fallbacks)


def _auto_order(op, x):
    """Backends ``auto`` tries for ``op`` on ``x``: those serving its device type by priority;
    on CUDA tensors the faster one for the op's pass and dtype first (``backends.routing``)."""
    if x.device.type == "cuda":
        return routing.cuda_order(op, x.dtype)
    return backends.serving(x.device.type)


def _select(op, x, weight, idx, geom=None):
    if _backend != "auto":
        backend = backends.load(_backend)
        reason = backend.unsupported(op, x, weight, idx, geom)
        if reason is not None:
            raise NotImplementedError(f"sparsekit backend {_backend!r} cannot run {op}: {reason}")
        return backend
    reasons = []
    for name in _auto_order(op, x):
        try:
            backend = backends.load(name)
        except backends.BackendUnavailable as e:
            reasons.append(str(e))
            continue
        reason = backend.unsupported(op, x, weight, idx, geom)
        if reason is None:  # slower than dense here?
            reason = backend.auto_declines(op, x, weight, idx, geom)
        if reason is None:
            return backend
        reasons.append(f"{name}: {reason}")
    reason = "; ".join(reasons) or f"no fast backend for device type {x.device.type!r}"
    if reason not in _fallbacks:
        _fallbacks[reason] = op
        warnings.warn(f"sparsekit: {op} runs on the reference backend (masked dense torch): {reason}",
                      stacklevel=3)
    return backends.load(backends.FALLBACK)


def _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK):
    return BlockIndex(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)


def _geom(stride, padding, dilation, upsample):
    return ConvGeometry(tuple(stride), tuple(padding), tuple(dilation), upsample)


# ----------------------------------------------------------------------------------- linear ops
@torch.library.custom_op("sparsekit::linear_fwd", mutates_args=())
def linear_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], bitmap: Tensor, row_ptr: Tensor,
               col_idx: Tensor, col_ptr: Tensor, row_idx: Tensor, block_row: Tensor, BN: int,
               BK: int, dense_dw: bool) -> Tensor:
    idx = _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)
    return _select("linear_fwd", x, weight, idx).linear_fwd(x, weight, bias, idx)


@linear_fwd.register_fake
def _(x, weight, bias, bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK, dense_dw):
    return linear_problem(x.shape[0], weight.shape).empty_output(x)


@torch.library.custom_op("sparsekit::linear_dx", mutates_args=())
def linear_dx(dy: Tensor, weight: Tensor, bitmap: Tensor, row_ptr: Tensor, col_idx: Tensor,
              col_ptr: Tensor, row_idx: Tensor, block_row: Tensor, BN: int, BK: int) -> Tensor:
    idx = _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)
    return _select("linear_dx", dy, weight, idx).linear_dx(dy, weight, idx)


@linear_dx.register_fake
def _(dy, weight, bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK):
    return linear_problem(dy.shape[0], weight.shape).empty_input_grad(dy)


@torch.library.custom_op("sparsekit::linear_dw", mutates_args=())
def linear_dw(dy: Tensor, x: Tensor, weight: Tensor, bitmap: Tensor, row_ptr: Tensor,
              col_idx: Tensor, col_ptr: Tensor, row_idx: Tensor, block_row: Tensor, BN: int,
              BK: int, dense_dw: bool) -> Tensor:
    idx = _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)
    return _select("linear_dw", dy, weight, idx).linear_dw(dy, x, weight, idx, dense_dw)


@linear_dw.register_fake
def _(dy, x, weight, bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK, dense_dw):
    return torch.empty_like(weight)


def _linear_setup(ctx, inputs, output):
    x, weight, bias, *layout, dense_dw = inputs
    ctx.save_for_backward(x, weight, *layout[:6])
    ctx.block = tuple(layout[6:8])
    ctx.dense_dw = dense_dw


def _input_grads(needs, dy, dx_fn, dw_fn, bias_dims):
    """(dX, dW, db) of a layer, each computed only if ``needs`` (x, weight, bias) asks for it:
    ``dx_fn(dy)``, ``dw_fn(dy)`` and dy summed over ``bias_dims``. Shared by the registered ops'
    autograd and the eager path (``_EagerSparse``)."""
    need_x, need_w, need_b = needs[:3]
    return (dx_fn(dy) if need_x else None, dw_fn(dy) if need_w else None,
            dy.sum(dim=bias_dims) if need_b else None)


def _linear_backward(ctx, dy):
    x, weight, *layout = ctx.saved_tensors
    grads = _input_grads(
        ctx.needs_input_grad, dy.contiguous(),
        lambda dy: torch.ops.sparsekit.linear_dx(dy, weight, *layout, *ctx.block),
        lambda dy: torch.ops.sparsekit.linear_dw(dy, x, weight, *layout, *ctx.block, ctx.dense_dw),
        (0,))
    return grads + (None,) * 9


linear_fwd.register_autograd(_linear_backward, setup_context=_linear_setup)


# ----------------------------------------------------------------------------------- conv ops
@torch.library.custom_op("sparsekit::conv2d_fwd", mutates_args=())
def conv2d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], bitmap: Tensor, row_ptr: Tensor,
               col_idx: Tensor, col_ptr: Tensor, row_idx: Tensor, block_row: Tensor, BN: int,
               BK: int, stride: list[int], padding: list[int], dilation: list[int], upsample: int,
               dense_dw: bool) -> Tensor:
    idx = _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)
    geom = _geom(stride, padding, dilation, upsample)
    return _select("conv2d_fwd", x, weight, idx, geom).conv2d_fwd(x, weight, bias, idx, geom)


@conv2d_fwd.register_fake
def _(x, weight, bias, bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK, stride,
      padding, dilation, upsample, dense_dw):
    return conv_problem(x.shape, weight.shape,
                        _geom(stride, padding, dilation, upsample)).empty_output(x)


@torch.library.custom_op("sparsekit::conv2d_dx", mutates_args=())
def conv2d_dx(dy: Tensor, weight: Tensor, bitmap: Tensor, row_ptr: Tensor, col_idx: Tensor,
              col_ptr: Tensor, row_idx: Tensor, block_row: Tensor, BN: int, BK: int,
              stride: list[int], padding: list[int], dilation: list[int], upsample: int,
              in_h: int, in_w: int) -> Tensor:
    idx = _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)
    geom = _geom(stride, padding, dilation, upsample)
    return _select("conv2d_dx", dy, weight, idx, geom).conv2d_dx(dy, weight, idx, geom, (in_h, in_w))


@conv2d_dx.register_fake
def _(dy, weight, bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK, stride, padding,
      dilation, upsample, in_h, in_w):
    geom = _geom(stride, padding, dilation, upsample)
    return conv_problem((dy.shape[0], weight.shape[1], in_h, in_w), weight.shape,
                        geom).empty_input_grad(dy)


@torch.library.custom_op("sparsekit::conv2d_dw", mutates_args=())
def conv2d_dw(dy: Tensor, x: Tensor, weight: Tensor, bitmap: Tensor, row_ptr: Tensor,
              col_idx: Tensor, col_ptr: Tensor, row_idx: Tensor, block_row: Tensor, BN: int,
              BK: int, stride: list[int], padding: list[int], dilation: list[int], upsample: int,
              dense_dw: bool) -> Tensor:
    idx = _idx(bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK)
    geom = _geom(stride, padding, dilation, upsample)
    return _select("conv2d_dw", dy, weight, idx, geom).conv2d_dw(dy, x, weight, idx, geom, dense_dw)


@conv2d_dw.register_fake
def _(dy, x, weight, bitmap, row_ptr, col_idx, col_ptr, row_idx, block_row, BN, BK, stride,
      padding, dilation, upsample, dense_dw):
    return torch.empty_like(weight)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, *layout = inputs[:9]
    ctx.save_for_backward(x, weight, *layout)
    ctx.block_and_conv = tuple(inputs[9:15])  # BN, BK, stride, padding, dilation, upsample
    ctx.dense_dw = inputs[15]


def _conv_backward(ctx, dy):
    x, weight, *layout = ctx.saved_tensors
    args = ctx.block_and_conv
    grads = _input_grads(
        ctx.needs_input_grad, dy.contiguous(memory_format=torch.channels_last),
        lambda dy: torch.ops.sparsekit.conv2d_dx(dy, weight, *layout, *args, x.shape[2],
                                                 x.shape[3]),
        lambda dy: torch.ops.sparsekit.conv2d_dw(dy, x, weight, *layout, *args, ctx.dense_dw),
        (0, 2, 3))
    return grads + (None,) * 13


conv2d_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)


# ----------------------------------------------------------------------------------- autocast
# Under torch.autocast the forward ops cast their floating inputs (x, weight, bias) to the dtype
# their kernels run fast in — bf16 on CUDA (fp32 accumulation; the master weights stay fp32, the
# cast is a copy autograd differentiates through); fp32 on CPU, whose kernels are fp32 (so a
# sparse layer is not pushed onto the slow reference path by a CPU autocast region). The
# backward ops receive tensors already in that dtype. The eager path applies the same table.
_AUTOCAST_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}
for _op in (linear_fwd, conv2d_fwd):
    for _device, _dtype in _AUTOCAST_DTYPE.items():
        _op.register_autocast(_device, _dtype)


# ----------------------------------------------------------------------------------- eager path
# Called eagerly (not under torch.compile, export, fake tensors or functorch transforms), the
# public functions skip torch.library's dispatch — wrappers, schema handling and aliasing checks
# that cost 30–250 µs per op on a CPU and more on a GPU host — and run the same backends through
# one autograd.Function; the registered ops above stay what torch.compile, opcheck and
# torch.ops.sparsekit.* use. Same dispatch (_select), same kernels, same results; autocast gets
# the ops' own rules (_AUTOCAST_DTYPE). One exception: an unstrided CPU layer that auto hands to
# masked dense torch runs through torch's own autograd (reference.dense_autograd: dX, dW and db
# in one oneDNN call), the same values as the registered ops' reference launchers up to rounding.


def _torch_probe(name, *args):
    """A private torch query, or None where this torch lacks it (then the eager path is off)."""
    fn = getattr(torch._C, name, None)
    return None if fn is None else (lambda: fn(*args))


_FAKE_KEY = getattr(getattr(torch._C, "_TorchDispatchModeKey", None), "FAKE", None)
_FUNCTORCH_ACTIVE = _torch_probe("_are_functorch_transforms_active")
_FAKE_MODE = _torch_probe("_get_dispatch_mode", _FAKE_KEY) if _FAKE_KEY is not None else None
_EAGER_AVAILABLE = _FUNCTORCH_ACTIVE is not None and _FAKE_MODE is not None


def _eager(*tensors) -> bool:
    """Whether the direct path may run: plain tensors, nothing tracing or transforming them."""
    if not _EAGER_AVAILABLE or torch.compiler.is_compiling() or _FUNCTORCH_ACTIVE():
        return False
    if _FAKE_MODE() is not None:
        return False
    return all(t is None or type(t) in (Tensor, nn.Parameter) for t in tensors)


def _autocast(x, weight, bias):
    """(x, weight, bias) cast as the ops' autocast rules would (a differentiable copy)."""
    device = x.device.type
    if device not in _AUTOCAST_DTYPE or not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = _AUTOCAST_DTYPE[device]
    return (x.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None)


class _EagerSparse(torch.autograd.Function):
    """y = op(x, weight, bias) through the selected backend; backward dX, dW (kept blocks, or
    dense with ``dense_dw``) and db, each only when needed. ``geom`` None means linear."""

    @staticmethod
    def forward(ctx, x, weight, bias, idx, geom, dense_dw, backend):
        ctx.save_for_backward(x, weight)
        ctx.idx, ctx.geom, ctx.dense_dw = idx, geom, dense_dw
        with _no_autocast(x):
            if geom is None:
                return backend.linear_fwd(x, weight, bias, idx)
            return backend.conv2d_fwd(x, weight, bias, idx, geom)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        idx, geom, dense_dw = ctx.idx, ctx.geom, ctx.dense_dw
        if geom is None:
            grads = _input_grads(
                ctx.needs_input_grad, dy.contiguous(),
                lambda dy: _select("linear_dx", dy, weight, idx).linear_dx(dy, weight, idx),
                lambda dy: _select("linear_dw", dy, weight, idx).linear_dw(dy, x, weight, idx,
                                                                           dense_dw),
                (0,))
        else:
            grads = _input_grads(
                ctx.needs_input_grad, dy.contiguous(memory_format=torch.channels_last),
                lambda dy: _select("conv2d_dx", dy, weight, idx, geom).conv2d_dx(
                    dy, weight, idx, geom, tuple(x.shape[2:])),
                lambda dy: _select("conv2d_dw", dy, weight, idx, geom).conv2d_dw(
                    dy, x, weight, idx, geom, dense_dw),
                (0, 2, 3))
        return grads + (None, None, None, None)


def _no_autocast(x):
    """As the registered ops' autocast rules: the kernels run with autocast off (inputs were cast
    by ``_autocast``), so a reference fallback cannot mix dtypes."""
    if x.device.type in _AUTOCAST_DTYPE:
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _eager_apply(x, weight, bias, layout, geom):
    """The eager path of the public functions: the forward pass's backend chosen once, then the
    layer through ``_EagerSparse`` — or, where ``auto`` hands an unstrided CPU call to the
    reference backend (the cpu backend declines by layout, dtype and ISA, alike for dX and dW),
    through torch's own autograd (``reference.dense_autograd``: one fused dense backward)."""
    x, weight, bias = _autocast(x, weight, bias)
    idx = BlockIndex(*layout.index_tensors(), *layout.block)
    op = "linear_fwd" if geom is None else "conv2d_fwd"
    backend = _select(op, x, weight, idx, geom)
    if (_backend == "auto" and x.device.type == "cpu" and backend.name == backends.FALLBACK
            and reference.runs_dense_autograd(geom)):
        with _no_autocast(x):
            return reference.dense_autograd(x, weight, bias, idx, geom, layout.dense_dw)
    return _EagerSparse.apply(x, weight, bias, idx, geom, layout.dense_dw, backend)


# ----------------------------------------------------------------------------------- public API
def _check_common(x, weight, layout, bias):
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be a sparsekit.BlockLayout, got {type(layout).__name__}")
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        # (under torch.autocast the ops' autocast rules cast them to one dtype)
        raise TypeError(f"x and weight must have the same dtype, got x {x.dtype} and weight {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x and weight must be on the same device, got x on {x.device} and "
                         f"weight on {weight.device}")
    if layout.bitmap.device != weight.device:
        raise ValueError(f"layout lives on {layout.bitmap.device} but weight on {weight.device}: "
                         "move the layout with the weight (.to(device))")
    if tuple(weight.shape) != layout.weight_shape:
        raise ValueError(f"layout was built for a weight of shape {layout.weight_shape}, "
                         f"got weight of shape {tuple(weight.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if (bias.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type)) \
                or bias.device != weight.device:
            raise TypeError(f"bias must match weight's dtype and device ({weight.dtype}, {weight.device}), "
                            f"got ({bias.dtype}, {bias.device})")


def block_sparse_linear(x: Tensor, weight: Tensor, layout: BlockLayout,
                        bias: Optional[Tensor] = None) -> Tensor:
    """``y = x · (W ⊙ mask)ᵀ + bias`` reading only ``layout``'s kept blocks of ``weight [N, K]``.

    ``x`` is ``[..., K]``; the result is ``[..., N]``.
    """
    _check_common(x, weight, layout, bias)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must have shape [..., {weight.shape[1]}] (in_features), got {tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weight.shape[1]).contiguous()
    if _eager(x2, weight, bias):
        y = _eager_apply(x2, weight.contiguous(), bias, layout, None)
    else:
        y = torch.ops.sparsekit.linear_fwd(x2, weight.contiguous(), bias,
                                           *layout.index_tensors(), *layout.block,
                                           layout.dense_dw)
    return y.reshape(*lead, weight.shape[0])


def block_sparse_conv2d(x: Tensor, weight: Tensor, layout: BlockLayout, bias: Optional[Tensor] = None,
                        stride=1, padding=0, dilation=1, upsample: int = 1) -> Tensor:
    """2-D convolution with a block-sparse ``weight [C_out, C_in, kh, kw]`` (groups = 1).

    ``x`` is ``[B, C_in, H, W]`` in NCHW or channels_last memory; with ``upsample = u`` the conv
    reads ``x`` nearest-upsampled by ``u`` (never materialised). The result is
    ``[B, C_out, H_out, W_out]`` in channels_last memory.
    """
    _check_common(x, weight, layout, bias)
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D [C_out, C_in, kh, kw], got shape {tuple(weight.shape)}")
    if x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must have shape [B, {weight.shape[1]}, H, W] (C_in = weight.shape[1]), "
                         f"got {tuple(x.shape)}")
    geom = make_geometry(stride, padding, dilation, upsample)
    h_out, w_out = geom.output_hw(x.shape[2:], weight.shape[2:])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"the conv's output would be empty ({h_out}×{w_out}) for input "
                         f"{tuple(x.shape[2:])}, kernel {tuple(weight.shape[2:])} and {geom}")
    cl = torch.channels_last
    if _eager(x, weight, bias):
        return _eager_apply(x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl),
                            bias, layout, geom)
    return torch.ops.sparsekit.conv2d_fwd(
        x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl), bias,
        *layout.index_tensors(), *layout.block, list(geom.stride), list(geom.padding),
        list(geom.dilation), geom.upsample, layout.dense_dw)


if os.environ.get("SPARSEKIT_BACKEND"):
    set_backend(os.environ["SPARSEKIT_BACKEND"])
