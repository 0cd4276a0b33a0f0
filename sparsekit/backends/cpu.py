"""The C++/OpenMP CPU backend (``sparsekit._C``): fp32, blocks up to 64×64, any conv geometry.

The kernels are built once per instruction set of the architecture (AVX-512, AVX2+FMA on x86-64;
NEON on aarch64; a portable build everywhere) and the best one the CPU supports runs;
``SPARSEKIT_CPU_ISA=<isa>`` picks another built one the CPU can run (applied when this module is
imported; loading the backend raises a ValueError naming the choices otherwise). ``_C.isa()``
says which runs.

Never slower than dense, in ``auto``: :meth:`CPUBackend.auto_declines` hands a call to masked
dense torch (the reference backend, announced once) where the block kernels cannot win — on the
portable build (no vector ISA for this CPU: oneDNN uses whatever SIMD the CPU has) and above the
density crossover measured for the ISA (``CROSSOVER``). A forced ``cpu`` backend always runs the
kernels.

The launchers allocate outputs and pass pointers and the problem's sizes; a linear layer runs as
the 1×1 conv of a ``[1, 1, M, K]`` image. Threads: ``torch.get_num_threads()``.

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

from ..geometry import zeros_weight_grad
from . import reference
from .base import Backend, BackendUnavailable, BlockIndex, blocks_up_to

try:
    from .. import _C
except ImportError as e:  # pragma: no cover - only without a built extension
    _C = None
    _LOAD_ERROR = (BackendUnavailable,
                   f"sparsekit._C is not built ({e}); reinstall with `pip install -e .`")
else:
    _isa_error = _C.select_isa(os.environ.get("SPARSEKIT_CPU_ISA", ""))
    _LOAD_ERROR = (ValueError, f"SPARSEKIT_CPU_ISA={os.environ.get('SPARSEKIT_CPU_ISA')!r}: "
                               f"{_isa_error}") if _isa_error else None

MAX_BLOCK = 64
DENSE_WHEN_FULL = True
#: Share of blocks kept above which ``auto`` runs a layer as dense torch, per ISA: where the
#: SNGAN 3×3 convs (batch 16, 32×32 blocks, fwd and fwd+bwd) fall to ~1× of oneDNN limited to the
#: same ISA (``python -m benchmarks.crossover``, 2-core Zen 5): AVX-512 1.0–1.3× at 0.75, 0.96–
#: 1.15× at 0.85; AVX2 (6 × 2-vector tiles) 1.10–1.23× at 0.75, 0.99–1.11× at 0.85. NEON is not
#: measured yet and takes 0.6 (its tiles have not met a real core: stay on the safe side).
CROSSOVER = {"avx512": 0.8, "avx2": 0.8, "neon": 0.6}

_full_block_lists: dict[tuple, tuple] = {}


def _dw_blocks(idx, dense_dw):
    """(block_row, col_idx, count) for the dW pass: kept blocks, or every block for a dense dW.

    All three live on the layout's device; ``count`` is a 1-element int32 tensor the kernels read.
    """
    if not dense_dw:
        return idx.block_row, idx.col_idx, idx.row_ptr[-1:]
    grid = tuple(idx.bitmap.shape)
    key = (grid, idx.bitmap.device)
    if key not in _full_block_lists:
        every = torch.arange(grid[0] * grid[1], dtype=torch.int32, device=idx.bitmap.device)
        count = torch.tensor([grid[0] * grid[1]], dtype=torch.int32, device=idx.bitmap.device)
        _full_block_lists[key] = (every // grid[1], every % grid[1], count)
    return _full_block_lists[key]


def _dense_when_full(launcher):
    """Hand a call whose layout keeps every block to the reference backend's same launcher."""
    dense = getattr(reference.BACKEND, launcher.__name__)

    @functools.wraps(launcher)
    def run(self, p, *args):
        idx = next(a for a in args if isinstance(a, BlockIndex))
        if DENSE_WHEN_FULL and reference.is_full(idx):
            return dense(p, *args)
        return launcher(self, p, *args)
    return run


class CPUBackend(Backend):
    name = "cpu"
    device_types = ("cpu",)
    priority = 10
    dtypes = (torch.float32,)

    def load(self):
        if _LOAD_ERROR is not None:
            kind, message = _LOAD_ERROR
            raise kind(message)

    def capability(self, op, x, weight, idx, geom=None):
        return blocks_up_to(idx, MAX_BLOCK)

    def auto_declines(self, op, x, weight, idx, geom=None):
        isa = _C.isa()
        if isa not in CROSSOVER:
            return (f"the {isa} (portable) CPU kernels are slower than dense torch; this CPU has "
                    "no vector ISA they are built for")
        kept = int(idx.row_ptr[-1]) / max(1, idx.bitmap.numel())  # host memory: no sync
        if kept > CROSSOVER[isa]:
            return (f"layouts keeping more than {CROSSOVER[isa]:.0%} of their blocks run faster as "
                    f"dense torch than on the {isa} kernels")
        return None

    @_dense_when_full
    def forward(self, p, x, weight, bias, idx):
        y = p.empty_output(x)
        _C.forward(p.native_sizes(weight.stride(0), idx), torch.get_num_threads(), x.data_ptr(),
                   weight.data_ptr(), bias.data_ptr() if bias is not None else 0, y.data_ptr(),
                   idx.row_ptr.data_ptr(), idx.col_idx.data_ptr(), idx.block_row.data_ptr())
        return y

    @_dense_when_full
    def grad_input(self, p, dy, weight, idx):
        dx = p.empty_input_grad(dy)
        _C.grad_input(p.native_sizes(weight.stride(0), idx), torch.get_num_threads(),
                      dy.data_ptr(), weight.data_ptr(), dx.data_ptr(), idx.col_ptr.data_ptr(),
                      idx.row_idx.data_ptr())
        return dx

    @_dense_when_full
    def grad_weight(self, p, dy, x, weight, idx, dense_dw):
        dw = zeros_weight_grad(weight)
        block_row, col_idx, count = _dw_blocks(idx, dense_dw)
        _C.grad_weight(p.native_sizes(weight.stride(0), idx), torch.get_num_threads(),
                       dy.data_ptr(), x.data_ptr(), dw.data_ptr(), block_row.data_ptr(),
                       col_idx.data_ptr(), count.data_ptr())
        return dw


BACKEND = CPUBackend()
