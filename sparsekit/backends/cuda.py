"""The hand-written CUDA backend (``sparsekit._C_cuda``): fp32, bf16 and fp16 with fp32
accumulation, blocks up to 64×64, any conv geometry (stride, padding, dilation, fused upsample).

The launchers allocate outputs (and the dW split scratch) with torch's caching allocator and pass
pointers and the problem's sizes; the kernels run asynchronously on the current stream with grids
that depend only on shapes and the layout's capacity (CUDA-graph safe, no host sync). A linear
layer runs as the 1×1 conv of a ``[1, 1, M, K]`` image, as on the CPU backend.

Importing needs no GPU; loading raises ``BackendUnavailable`` only when ``sparsekit._C_cuda`` was
not built (no nvcc at install time, or ``SPARSEKIT_NO_CUDA=1``). bf16/fp16 run on the tensor
cores (mma.sync) unless ``SPARSEKIT_CUDA_MMA=0`` asks for the FFMA kernels.
"""

from __future__ import annotations

import functools
import os

import torch

from ..geometry import zeros_weight_grad
from .base import Backend, BackendUnavailable, blocks_up_to

try:
    from .. import _C_cuda
except ImportError as e:  # pragma: no cover - only without a built extension
    _C_cuda = None
    _NOT_BUILT = (f"sparsekit._C_cuda is not built ({e}); install with nvcc on PATH (and without "
                  "SPARSEKIT_NO_CUDA=1): `pip install -e .`")
else:
    _NOT_BUILT = ""
    _C_cuda.set_tensor_cores(os.environ.get("SPARSEKIT_CUDA_MMA", "1") != "0")

MAX_BLOCK = 64
#: torch dtype → the extension's dtype code
DTYPES = ({} if _C_cuda is None else
          {t: _C_cuda.DTYPES[str(t).removeprefix("torch.")]
           for t in (torch.float32, torch.bfloat16, torch.float16)})
_DW_PIXELS_PER_SPLIT = 256  # a dW split gets at least this many output pixels
_DW_ITEMS_PER_SM = 16  # dW work items (CTAs) the live blocks share, per multiprocessor


@functools.cache
def _runtime_error():
    """Why the extension's own CUDA runtime cannot launch ('' if it sees a device)."""
    count, err = _C_cuda.device_count()
    if err:
        return f"sparsekit._C_cuda's CUDA runtime cannot use the driver ({err})"
    return "" if count > 0 else "sparsekit._C_cuda's CUDA runtime sees no device"


def _launch_args(t):
    """(dtype code, device index, stream handle) for a launch on ``t``'s device."""
    return DTYPES[t.dtype], t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def _check(err, op):
    if err:
        raise RuntimeError(f"sparsekit cuda backend, {op}: {err}")


@functools.cache
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _dw_items(pixels, capacity, device_index):
    """(items, max_splits) for dW: the fixed 1-D grid of work items (CTAs) and the most pixel
    splits a block may get. The kernels read the live block count on the device and give each
    live block S = clamp(items // live, 1, max_splits) splits, so a sparse layout fills the GPU
    as well as a dense one; this depends on shapes and capacity only (CUDA-graph safe)."""
    max_splits = max(1, -(-pixels // _DW_PIXELS_PER_SPLIT))
    items = min(capacity * max_splits, max(capacity, _DW_ITEMS_PER_SM * _sm_count(device_index)))
    return items, max_splits


class CUDABackend(Backend):
    name = "cuda"
    device_types = ("cuda",)
    priority = 10
    dtypes = (torch.float32, torch.bfloat16, torch.float16)

    def load(self):
        if _NOT_BUILT:
            raise BackendUnavailable(_NOT_BUILT)

    def capability(self, op, x, weight, idx, geom=None):
        return blocks_up_to(idx, MAX_BLOCK) or _runtime_error() or None

    def forward(self, p, x, weight, bias, idx):
        y = p.empty_output(x)
        dtype, device, stream = _launch_args(x)
        _check(_C_cuda.forward(p.native_sizes(weight.stride(0), idx), dtype, device, x.data_ptr(),
                               weight.data_ptr(), bias.data_ptr() if bias is not None else 0,
                               y.data_ptr(), idx.row_ptr.data_ptr(), idx.col_idx.data_ptr(),
                               stream), "forward")
        return y

    def grad_input(self, p, dy, weight, idx):
        dx = p.empty_input_grad(dy)
        dtype, device, stream = _launch_args(dy)
        _check(_C_cuda.grad_input(p.native_sizes(weight.stride(0), idx), dtype, device,
                                  dy.data_ptr(), weight.data_ptr(), dx.data_ptr(),
                                  idx.col_ptr.data_ptr(), idx.row_idx.data_ptr(), stream),
               "grad_input")
        return dx

    def grad_weight(self, p, dy, x, weight, idx, dense_dw):
        dtype, device, stream = _launch_args(x)
        dw = zeros_weight_grad(weight)
        items, max_splits = _dw_items(p.pixels, idx.bitmap.numel(), device)
        scratch = (torch.empty(items * idx.block_n * idx.block_k, dtype=torch.float32,
                               device=x.device) if max_splits > 1 else None)
        # Null block lists make the kernels walk every block of the grid (a dense dW).
        lists = (0, 0, 0) if dense_dw else (idx.block_row.data_ptr(), idx.col_idx.data_ptr(),
                                            idx.row_ptr[-1:].data_ptr())
        _check(_C_cuda.grad_weight(p.native_sizes(weight.stride(0), idx), dtype, device,
                                   dy.data_ptr(), x.data_ptr(), dw.data_ptr(), *lists, items,
                                   max_splits, scratch.data_ptr() if scratch is not None else 0,
                                   stream), "grad_weight")
        return dw


BACKEND = CUDABackend()
