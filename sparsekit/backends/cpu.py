"""The C++/OpenMP CPU backend (``sparsekit._C``): fp32, blocks up to 64×64, any conv geometry.

The kernels are built once per instruction set of the architecture (AVX-512, AVX2+FMA on x86-64;
NEON on aarch64; a portable build everywhere) and the best one the CPU supports runs;
``SPARSEKIT_CPU_ISA=<isa>`` picks another built one the CPU can run (a ValueError names the
choices otherwise). ``_C.isa()`` says which runs.

Never slower than dense, in ``auto``: :func:`auto_declines` hands a call to masked dense torch
(the reference backend, announced once) where the block kernels cannot win — on the portable
build (no vector ISA for this CPU: oneDNN uses whatever SIMD the CPU has) and above the density
crossover measured for the ISA (``CROSSOVER``). A forced ``cpu`` backend always runs the kernels.

Inputs arrive contiguous NHWC (conv) / row-major (linear) from ``sparsekit.ops``; this module
checks what the kernels need, allocates outputs and passes pointers. A linear layer runs as the
1×1 conv of a ``[1, 1, M, K]`` image. Threads: ``torch.get_num_threads()``.

A layout with every block kept runs torch's dense kernels (oneDNN) instead: the same product,
and oneDNN is at the FMA peak on every shape, including the few-channel RGB layers where the
block kernels are weakest (ERK often leaves those layers dense). ``DENSE_WHEN_FULL = False``
turns this off (the tests do, to check the block kernels at density 1). Reading the live block
count is free here: CPU index buffers are host memory.
"""

from __future__ import annotations

import functools
import os

import torch

from ..geometry import empty_conv_input_grad, empty_conv_output, zeros_weight_grad
from . import BackendUnavailable, BlockIndex, reference
from ._native import conv_problem as _conv_problem
from ._native import dw_blocks as _dw_blocks
from ._native import linear_problem as _linear_problem

try:
    from .. import _C
except ImportError as e:  # pragma: no cover - only without a built extension
    raise BackendUnavailable(f"sparsekit._C is not built ({e}); reinstall with `pip install -e .`") from e

_isa_error = _C.select_isa(os.environ.get("SPARSEKIT_CPU_ISA", ""))
if _isa_error:
    raise ValueError(f"SPARSEKIT_CPU_ISA={os.environ['SPARSEKIT_CPU_ISA']!r}: {_isa_error}")

MAX_BLOCK = 64
DENSE_WHEN_FULL = True
#: Share of blocks kept above which ``auto`` runs a layer as dense torch, per ISA: where the
#: SNGAN 3×3 convs (batch 16, 32×32 blocks, fwd and fwd+bwd) fall to ~1× of oneDNN limited to the
#: same ISA (``python -m benchmarks.crossover``, 2-core Zen 4): AVX-512 1.0–1.3× at 0.75, 0.96–
#: 1.15× at 0.85; AVX2 (6 × 2-vector tiles) 1.10–1.23× at 0.75, 0.99–1.11× at 0.85. NEON is not
#: measured yet and takes 0.6 (its tiles have not met a real core: stay on the safe side).
CROSSOVER = {"avx512": 0.8, "avx2": 0.8, "neon": 0.6}


def unsupported(op, x, weight, idx, geom=None):
    if x.device.type != "cpu":
        return f"tensors are on {x.device}, the cpu backend runs on CPU tensors"
    if x.dtype != torch.float32:
        return f"dtype {x.dtype} (the cpu kernels are fp32)"
    if (idx.block_n, idx.block_k) == (1, 1):
        return "unstructured (1×1) blocks run on the reference backend"
    if idx.block_n > MAX_BLOCK or idx.block_k > MAX_BLOCK:
        return f"block {(idx.block_n, idx.block_k)} has a side above {MAX_BLOCK}"
    return None


def auto_declines(op, x, weight, idx, geom=None):
    """Why ``auto`` should run this call as dense torch (the kernels would be slower), or None."""
    isa = _C.isa()
    if isa not in CROSSOVER:
        return (f"the {isa} (portable) CPU kernels are slower than dense torch; this CPU has "
                "no vector ISA they are built for")
    kept = int(idx.row_ptr[-1]) / max(1, idx.bitmap.numel())  # host memory: no sync
    if kept > CROSSOVER[isa]:
        return (f"layouts keeping more than {CROSSOVER[isa]:.0%} of their blocks run faster as "
                f"dense torch than on the {isa} kernels")
    return None


def _threads():
    return torch.get_num_threads()


def _forward(problem, x, weight, bias, idx, y):
    _C.forward(problem, _threads(), x.data_ptr(), weight.data_ptr(),
               bias.contiguous().data_ptr() if bias is not None else 0, y.data_ptr(),
               idx.row_ptr.data_ptr(), idx.col_idx.data_ptr(), idx.block_row.data_ptr())
    return y


def _grad_input(problem, dy, weight, idx, dx):
    _C.grad_input(problem, _threads(), dy.data_ptr(), weight.data_ptr(), dx.data_ptr(),
                  idx.col_ptr.data_ptr(), idx.row_idx.data_ptr())
    return dx


def _grad_weight(problem, dy, x, weight, idx, dense_dw):
    dw = zeros_weight_grad(weight)
    block_row, col_idx, count = _dw_blocks(idx, dense_dw)
    _C.grad_weight(problem, _threads(), dy.data_ptr(), x.data_ptr(), dw.data_ptr(),
                   block_row.data_ptr(), col_idx.data_ptr(), count.data_ptr())
    return dw


_CL = torch.channels_last


def _dense_when_full(kernel):
    """Route a call whose layout keeps every block to the same-named dense reference op."""
    dense = getattr(reference, kernel.__name__)

    @functools.wraps(kernel)
    def run(*args):
        idx = next(a for a in args if isinstance(a, BlockIndex))
        if DENSE_WHEN_FULL and reference.is_full(idx):
            return dense(*args)
        return kernel(*args)
    return run


@_dense_when_full
def linear_fwd(x, weight, bias, idx):
    x, weight = x.contiguous(), weight.contiguous()
    y = x.new_empty((x.shape[0], weight.shape[0]))
    return _forward(_linear_problem(x.shape[0], weight, idx), x, weight, bias, idx, y)


@_dense_when_full
def linear_dx(dy, weight, idx):
    dy, weight = dy.contiguous(), weight.contiguous()
    dx = dy.new_empty((dy.shape[0], weight.shape[1]))
    return _grad_input(_linear_problem(dy.shape[0], weight, idx), dy, weight, idx, dx)


@_dense_when_full
def linear_dw(dy, x, weight, idx, dense_dw):
    dy, x = dy.contiguous(), x.contiguous()
    return _grad_weight(_linear_problem(x.shape[0], weight, idx), dy, x, weight, idx, dense_dw)


@_dense_when_full
def conv2d_fwd(x, weight, bias, idx, geom):
    x, weight = x.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
    y = empty_conv_output(x, weight, geom)
    return _forward(_conv_problem(x.shape, weight, geom, idx), x, weight, bias, idx, y)


@_dense_when_full
def conv2d_dx(dy, weight, idx, geom, input_hw):
    dy, weight = dy.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
    dx = empty_conv_input_grad(dy, weight, input_hw)
    problem = _conv_problem((dy.shape[0], weight.shape[1], *input_hw), weight, geom, idx)
    return _grad_input(problem, dy, weight, idx, dx)


@_dense_when_full
def conv2d_dw(dy, x, weight, idx, geom, dense_dw):
    dy, x = dy.contiguous(memory_format=_CL), x.contiguous(memory_format=_CL)
    return _grad_weight(_conv_problem(x.shape, weight, geom, idx), dy, x, weight, idx, dense_dw)
