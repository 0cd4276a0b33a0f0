"""Helpers shared by the native backends (``cpu`` over ``sparsekit._C``, ``cuda`` over
``sparsekit._C_cuda``): the problem-size list their kernels take and the dW work list.

The problem list is ``Problem`` of csrc/common/problem.h in declaration order: a conv in NHWC
with K ordered (kh, kw, c_in), a linear layer as the 1×1 conv of a ``[1, 1, M, K]`` image.
"""

from __future__ import annotations

import torch

from ..geometry import ConvGeometry

LINEAR = ConvGeometry((1, 1), (0, 0), (1, 1), 1)

_full_block_lists: dict[tuple, tuple] = {}


def problem(batch, in_hw, c_in, out_hw, c_out, kernel_hw, geom: ConvGeometry, w_row_stride, idx):
    """The kernels' size list for one call (see csrc/common/problem.h)."""
    grid_rows, grid_cols = idx.bitmap.shape
    blocks_per_tap = grid_cols // (kernel_hw[0] * kernel_hw[1])
    return [batch, *in_hw, c_in, *out_hw, c_out, *kernel_hw, *geom.stride, *geom.padding,
            *geom.dilation, geom.upsample, w_row_stride, idx.block_n, idx.block_k, grid_rows,
            grid_cols, blocks_per_tap]


def linear_problem(m, weight, idx):
    n, k = weight.shape
    return problem(1, (1, m), k, (1, m), n, (1, 1), LINEAR, weight.stride(0), idx)


def conv_problem(x_shape, weight, geom, idx):
    b, c_in, h, w = x_shape
    out_hw = geom.output_hw((h, w), weight.shape[2:])
    return problem(b, (h, w), c_in, out_hw, weight.shape[0], tuple(weight.shape[2:]), geom,
                   weight.stride(0), idx)


def dw_blocks(idx, dense_dw):
    """(block_row, col_idx, count) for the dW pass: kept blocks, or every block for a dense dW.

    All three live on the layout's device; ``count`` is a 1-element int32 tensor the kernels read
    (the live count of kept blocks stays on the device: no host sync).
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
