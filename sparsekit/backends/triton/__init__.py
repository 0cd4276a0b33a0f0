"""The Triton backend: block-sparse implicit-GEMM kernels for CUDA GPUs (and the interpreter).

Layout of this package:

- ``problem.py``     the shapes/geometry every kernel takes (a linear is the 1×1 conv of a
                     ``[1, 1, M, K]`` image, so one set of kernels serves linear and conv2d)
- ``common.py``      ``@triton.jit`` address helpers shared by the kernels
- ``forward.py``     Y = X̂ · W_keptᵀ (+ bias): programs = pixel tile × block row (CSR walk)
- ``grad_input.py``  dX: programs = input-pixel tile (by stride phase) × channel block (CSC walk)
- ``grad_weight.py`` dW at kept blocks: programs = capacity × pixel split, then a fixed-order sum
- ``tuning.py``      launch parameters keyed by op, pixel count, block and dtype
- ``compile_check.py`` compiles every kernel for sm_XX without a GPU (registers, spills)

Kernels read kept blocks straight from the dense weight through the layout's index buffers.
Grids depend only on shapes and the layout's capacity; loop bounds come from the index buffers
in-kernel, so a layout update needs no recompilation and no host sync (CUDA-graph safe).

fp32 is IEEE fp32 (``input_precision="ieee"``) unless ``allow_tf32`` is set; fp16/bf16 accumulate
in fp32. CPU tensors run under the Triton interpreter when ``TRITON_INTERPRET=1`` was set before
this package was imported (Triton reads the flag when kernels are defined).
"""

from __future__ import annotations

import functools
import os

import torch

from .. import BackendUnavailable

try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - only without triton installed
    raise BackendUnavailable(f"triton is not importable ({e}); install torch with its triton "
                             "dependency (pip install triton)") from e

from ...geometry import empty_conv_input_grad, empty_conv_output, zeros_weight_grad
from .forward import forward_kernel, launch_forward
from .grad_input import launch_grad_input
from .grad_weight import launch_grad_weight
from .problem import conv_problem, linear_problem

#: Run fp32 ``tl.dot`` as TF32 (tolerance 1e-3 instead of 1e-4). Off: fp32 means IEEE fp32.
allow_tf32 = False

#: Whether the kernels were defined under ``TRITON_INTERPRET=1`` (they then run CPU tensors).
INTERPRETED = type(forward_kernel).__name__ == "InterpretedFunction"

BLOCK_SIDES = (16, 32, 64)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unsupported(op, x, weight, idx, geom=None):
    """None if this backend can run the call, else the reason (for dispatch and its errors)."""
    device = x.device.type
    if device == "cpu" and not INTERPRETED:
        if os.environ.get("TRITON_INTERPRET") == "1":
            return ("TRITON_INTERPRET=1 was set after sparsekit's triton backend was imported; "
                    "set it before the first import (Triton reads it when kernels are defined)")
        return ("tensors are on cpu: the triton backend runs CUDA tensors, or CPU tensors under "
                "the Triton interpreter (TRITON_INTERPRET=1, set before import)")
    if device == "cuda" and INTERPRETED:
        return ("the triton backend was imported with TRITON_INTERPRET=1 (interpreter, CPU "
                "tensors only); unset it to run CUDA tensors")
    if device not in ("cpu", "cuda"):
        return f"tensors are on {x.device}; the triton backend runs CUDA tensors"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} (the triton kernels take float32, float16 or bfloat16)"
    if x.dtype == torch.bfloat16 and INTERPRETED:
        return "bfloat16 tl.dot is broken in the Triton interpreter; run bf16 on a GPU"
    if idx.block_n not in BLOCK_SIDES or idx.block_k not in BLOCK_SIDES:
        return (f"block {(idx.block_n, idx.block_k)}: the triton kernels need block sides in "
                f"{BLOCK_SIDES} (tl.dot tiles are at least 16 wide)")
    return None


def _precision(dtype):
    return "tf32" if allow_tf32 and dtype == torch.float32 else "ieee"


def _on_input_device(fn):
    """Launch on the device of the first tensor argument (Triton uses the current device)."""
    @functools.wraps(fn)
    def run(first, *args):
        if first.is_cuda:
            with torch.cuda.device(first.device):
                return fn(first, *args)
        return fn(first, *args)
    return run


_CL = torch.channels_last


# ---------------------------------------------------------------------------------- linear
@_on_input_device
def linear_fwd(x, weight, bias, idx):
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y = x.new_empty((x.shape[0], weight.shape[0]))
    return launch_forward(linear_problem(x.shape[0], weight.shape), x, weight, bias, idx, y,
                   _precision(x.dtype), INTERPRETED)


@_on_input_device
def linear_dx(dy, weight, idx):
    dy, weight = dy.contiguous(), weight.contiguous()
    dx = dy.new_empty((dy.shape[0], weight.shape[1]))
    return launch_grad_input(linear_problem(dy.shape[0], weight.shape), dy, weight, idx, dx,
                      _precision(dy.dtype), INTERPRETED)


@_on_input_device
def linear_dw(dy, x, weight, idx, dense_dw):
    dy, x = dy.contiguous(), x.contiguous()
    dw = zeros_weight_grad(weight.contiguous())
    return launch_grad_weight(linear_problem(x.shape[0], weight.shape), dy, x, idx, dw, dense_dw,
                       _precision(dy.dtype), INTERPRETED)


# ---------------------------------------------------------------------------------- conv2d
@_on_input_device
def conv2d_fwd(x, weight, bias, idx, geom):
    x, weight = x.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
    bias = bias.contiguous() if bias is not None else None
    y = empty_conv_output(x, weight, geom)
    return launch_forward(conv_problem(x.shape, weight.shape, geom), x, weight, bias, idx, y,
                   _precision(x.dtype), INTERPRETED)


@_on_input_device
def conv2d_dx(dy, weight, idx, geom, input_hw):
    dy, weight = dy.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
    dx = empty_conv_input_grad(dy, weight, input_hw)
    p = conv_problem((dy.shape[0], weight.shape[1], *input_hw), weight.shape, geom)
    return launch_grad_input(p, dy, weight, idx, dx, _precision(dy.dtype), INTERPRETED)


@_on_input_device
def conv2d_dw(dy, x, weight, idx, geom, dense_dw):
    dy, x = dy.contiguous(memory_format=_CL), x.contiguous(memory_format=_CL)
    dw = zeros_weight_grad(weight.contiguous(memory_format=_CL))
    return launch_grad_weight(conv_problem(x.shape, weight.shape, geom), dy, x, idx, dw, dense_dw,
                       _precision(dy.dtype), INTERPRETED)
