"""The hand-written CUDA backend (``sparsekit._C_cuda``): fp32, bf16 and fp16 with fp32
accumulation, blocks up to 64×64, any conv geometry (stride, padding, dilation, fused upsample).

Inputs arrive contiguous NHWC (conv) / row-major (linear) from ``sparsekit.ops``; this module
checks what the kernels need, allocates outputs (and the dW split scratch) with torch's caching
allocator and passes pointers; the kernels run asynchronously on the current stream with grids
that depend only on shapes and the layout's capacity (CUDA-graph safe, no host sync). A linear
layer runs as the 1×1 conv of a ``[1, 1, M, K]`` image, as on the CPU backend.

Importing needs no GPU: ``BackendUnavailable`` only when ``sparsekit._C_cuda`` was not built
(no nvcc at install time, or ``SPARSEKIT_NO_CUDA=1``).
"""

from __future__ import annotations

import functools
import os

import torch

from ..geometry import empty_conv_input_grad, empty_conv_output, zeros_weight_grad
from . import BackendUnavailable
from ._native import conv_problem, linear_problem

try:
    from .. import _C_cuda
except ImportError as e:  # pragma: no cover - only without a built extension
    raise BackendUnavailable(
        f"sparsekit._C_cuda is not built ({e}); install with nvcc on PATH (and without "
        "SPARSEKIT_NO_CUDA=1): `pip install -e .`") from e

# bf16/fp16 on the tensor cores (mma.sync) unless SPARSEKIT_CUDA_MMA=0 asks for the FFMA kernels.
_C_cuda.set_tensor_cores(os.environ.get("SPARSEKIT_CUDA_MMA", "1") != "0")

MAX_BLOCK = 64
DTYPES = {torch.float32: _C_cuda.DTYPES["float32"], torch.bfloat16: _C_cuda.DTYPES["bfloat16"],
          torch.float16: _C_cuda.DTYPES["float16"]}
_DW_PIXELS_PER_SPLIT = 256  # a dW split gets at least this many output pixels
_DW_ITEMS_PER_SM = 16  # dW work items (CTAs) the live blocks share, per multiprocessor


@functools.cache
def _runtime_error():
    """Why the extension's own CUDA runtime cannot launch ('' if it sees a device)."""
    count, err = _C_cuda.device_count()
    if err:
        return f"sparsekit._C_cuda's CUDA runtime cannot use the driver ({err})"
    return "" if count > 0 else "sparsekit._C_cuda's CUDA runtime sees no device"


def unsupported(op, x, weight, idx, geom=None):
    if x.device.type != "cuda":
        return f"tensors are on {x.device}, the cuda backend runs on CUDA tensors"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} (the cuda kernels take float32, bfloat16 and float16)"
    if (idx.block_n, idx.block_k) == (1, 1):
        return "unstructured (1×1) blocks run on the reference backend"
    if idx.block_n > MAX_BLOCK or idx.block_k > MAX_BLOCK:
        return f"block {(idx.block_n, idx.block_k)} has a side above {MAX_BLOCK}"
    return _runtime_error() or None


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


def _forward(problem, x, weight, bias, idx, y):
    dtype, device, stream = _launch_args(x)
    bias = bias.contiguous() if bias is not None else None
    _check(_C_cuda.forward(problem, dtype, device, x.data_ptr(), weight.data_ptr(),
                           bias.data_ptr() if bias is not None else 0, y.data_ptr(),
                           idx.row_ptr.data_ptr(), idx.col_idx.data_ptr(), stream), "forward")
    return y


def _grad_input(problem, dy, weight, idx, dx):
    dtype, device, stream = _launch_args(dy)
    _check(_C_cuda.grad_input(problem, dtype, device, dy.data_ptr(), weight.data_ptr(),
                              dx.data_ptr(), idx.col_ptr.data_ptr(), idx.row_idx.data_ptr(),
                              stream), "grad_input")
    return dx


def _grad_weight(problem, dy, x, weight, weight_k, idx, dense_dw):
    """dW in ``weight``'s shape and strides. The kernels write rows of ``weight_k``'s layout
    (K-contiguous, K ordered (kh, kw, c_in): what ``problem`` was built from); a weight in
    another memory format gets that result copied into its own strides."""
    dtype, device, stream = _launch_args(x)
    dw = zeros_weight_grad(weight_k)
    capacity = idx.bitmap.numel()
    items, max_splits = _dw_items(problem[0] * problem[4] * problem[5], capacity, device)
    scratch = (torch.empty(items * idx.block_n * idx.block_k, dtype=torch.float32,
                           device=x.device) if max_splits > 1 else None)
    # Null block lists make the kernels walk every block of the grid (a dense dW).
    lists = (0, 0, 0) if dense_dw else (idx.block_row.data_ptr(), idx.col_idx.data_ptr(),
                                        idx.row_ptr[-1:].data_ptr())
    _check(_C_cuda.grad_weight(problem, dtype, device, dy.data_ptr(), x.data_ptr(),
                               dw.data_ptr(), *lists, items, max_splits,
                               scratch.data_ptr() if scratch is not None else 0, stream),
           "grad_weight")
    return dw if dw.stride() == weight.stride() else torch.empty_like(weight).copy_(dw)


_CL = torch.channels_last


def linear_fwd(x, weight, bias, idx):
    x, weight = x.contiguous(), weight.contiguous()
    y = x.new_empty((x.shape[0], weight.shape[0]))
    return _forward(linear_problem(x.shape[0], weight, idx), x, weight, bias, idx, y)


def linear_dx(dy, weight, idx):
    dy, weight = dy.contiguous(), weight.contiguous()
    dx = dy.new_empty((dy.shape[0], weight.shape[1]))
    return _grad_input(linear_problem(dy.shape[0], weight, idx), dy, weight, idx, dx)


def linear_dw(dy, x, weight, idx, dense_dw):
    dy, x, weight_k = dy.contiguous(), x.contiguous(), weight.contiguous()
    return _grad_weight(linear_problem(x.shape[0], weight_k, idx), dy, x, weight, weight_k, idx,
                        dense_dw)


def conv2d_fwd(x, weight, bias, idx, geom):
    x, weight = x.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
    y = empty_conv_output(x, weight, geom)
    return _forward(conv_problem(x.shape, weight, geom, idx), x, weight, bias, idx, y)


def conv2d_dx(dy, weight, idx, geom, input_hw):
    dy, weight = dy.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
    dx = empty_conv_input_grad(dy, weight, input_hw)
    problem = conv_problem((dy.shape[0], weight.shape[1], *input_hw), weight, geom, idx)
    return _grad_input(problem, dy, weight, idx, dx)


def conv2d_dw(dy, x, weight, idx, geom, dense_dw):
    dy, x = dy.contiguous(memory_format=_CL), x.contiguous(memory_format=_CL)
    weight_k = weight.contiguous(memory_format=_CL)
    return _grad_weight(conv_problem(x.shape, weight_k, geom, idx), dy, x, weight, weight_k, idx,
                        dense_dw)
