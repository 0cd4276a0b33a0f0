"""dW kernels: ``dW = dYᵀ · X̂`` at the kept blocks (every block when ``dense_dw``).

Work follows the LIVE block count while the launch depends on shapes and capacity only (no host
sync, CUDA-graph safe, no recompilation when the mask changes). The host launches a 1-D grid of
``ITEMS`` programs and passes ``ITEMS`` and ``MAX_SPLIT`` as runtime ints (both from shapes and
capacity: :func:`tuning.dw_work`). On the device

    live = GRID_ROWS · GRID_COLS if DENSE else row_ptr[GRID_ROWS]
    S    = max(1, min(ITEMS // max(live, 1), MAX_SPLIT))          (splits per block)

and program ``w`` exits if ``w >= live · S``; otherwise it is split ``s = w % S`` of work item
``i = w // S``. Item i is kept block ``(block_row[i], col_idx[i])`` — or block
``(i // cols, i % cols)`` of the full grid for a dense dW. The program reduces pixel tiles
``s, s + S, ...`` of the block's tap: ``acc[BN, BK] += dY[tile, n]ᵀ · X̂[tile, c]``. With S = 1 it
writes the block into dW; otherwise it writes an fp32 partial at index ``i·S + s`` (= w) of
``part [ITEMS, BN, BK]`` (``live·S <= ITEMS`` always), and the reduce kernel — grid
``(capacity,)``, program i exits if ``i >= live`` or S = 1 — sums partials ``i·S + 0 .. i·S + S-1``
in that fixed order (deterministic, no atomics) and writes the block. So at low density the few
live blocks are split more ways and the grid stays busy. dW is zero-initialised, so pruned blocks
stay 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (block_channels, matrix_offsets, output_pixel, tap_input_tile,
                     weight_offsets)
from .tuning import dw_work, launch_config


@triton.jit
def live_blocks(row_ptr, GRID_ROWS, GRID_COLS, DENSE: tl.constexpr):
    """Work items with a block: every block of the grid for a dense dW, else the kept count."""
    if DENSE:
        count = GRID_ROWS * GRID_COLS
    else:
        count = tl.load(row_ptr + GRID_ROWS)
    return count


@triton.jit
def splits_per_block(live, ITEMS, MAX_SPLIT):
    """S = max(1, min(ITEMS // max(live, 1), MAX_SPLIT)): programs sharing one block's pixels."""
    return tl.maximum(tl.minimum(ITEMS // tl.maximum(live, 1), MAX_SPLIT), 1)


@triton.jit
def block_at(i, block_row, col_idx, GRID_COLS, DENSE: tl.constexpr):
    """(block row, block column) of work item ``i``."""
    if DENSE:
        row = i // GRID_COLS
        col = i % GRID_COLS
    else:
        row = tl.load(block_row + i)
        col = tl.load(col_idx + i)
    return row, col


@triton.jit
def partial_offsets(p, BN: tl.constexpr, BK: tl.constexpr):
    """Offsets of partial ``p`` (= i·S + s) in ``part [ITEMS, BN, BK]``."""
    base = p.to(tl.int64) * (BN * BK)
    return base + tl.arange(0, BN)[:, None] * BK + tl.arange(0, BK)[None, :]


@triton.jit
def store_block(dw_ptr, acc, row, col, C_IN, C_OUT, DW_ROW, BPT, BN: tl.constexpr,
                BK: tl.constexpr):
    """Write the [BN, BK] block (row, col) of dW (edge rows / narrow columns masked)."""
    tap, c = block_channels(col, BPT, BK)
    n = row * BN + tl.arange(0, BN)
    offs, mask = weight_offsets(n[:, None], c[None, :], tap, C_IN, C_OUT, DW_ROW)
    tl.store(dw_ptr + offs, acc.to(dw_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grad_weight_kernel(dy_ptr, x_ptr, dw_ptr, part_ptr, row_ptr, block_row, col_idx,
                       M, H, W, C_IN, HO, WO, C_OUT, KH, KW, SH, SW, PH, PW, DIL_H, DIL_W, U,
                       DW_ROW, BPT, GRID_ROWS, GRID_COLS, TILES, ITEMS, MAX_SPLIT,
                       DENSE: tl.constexpr, BLOCK_M: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, PRECISION: tl.constexpr):
    w = tl.program_id(0)
    live = live_blocks(row_ptr, GRID_ROWS, GRID_COLS, DENSE)
    S = splits_per_block(live, ITEMS, MAX_SPLIT)
    if w >= live * S:
        return
    i = w // S
    s = w % S
    row, col = block_at(i, block_row, col_idx, GRID_COLS, DENSE)
    tap, c = block_channels(col, BPT, BK)
    n = row * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for t in range(s, TILES, S):
        offs_m = t * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        b, oy, ox = output_pixel(offs_m, HO, WO)
        g_offs, g_mask = matrix_offsets(offs_m[None, :], n[:, None], M, C_OUT)
        g_t = tl.load(dy_ptr + g_offs, mask=g_mask, other=0.0)  # [BN, BLOCK_M] = dYᵀ
        a = tap_input_tile(x_ptr, b, oy, ox, m_mask, tap, c, H, W, C_IN, KW, SH, SW, PH, PW,
                           DIL_H, DIL_W, U)
        acc = tl.dot(g_t, a, acc, input_precision=PRECISION)
    if S == 1:
        store_block(dw_ptr, acc, row, col, C_IN, C_OUT, DW_ROW, BPT, BN, BK)
    else:
        tl.store(part_ptr + partial_offsets(w, BN, BK), acc)  # partial i·S + s == w


@triton.jit
def reduce_splits_kernel(part_ptr, dw_ptr, row_ptr, block_row, col_idx,
                         C_IN, C_OUT, DW_ROW, BPT, GRID_ROWS, GRID_COLS, ITEMS, MAX_SPLIT,
                         DENSE: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    i = tl.program_id(0)
    live = live_blocks(row_ptr, GRID_ROWS, GRID_COLS, DENSE)
    if i >= live:
        return
    S = splits_per_block(live, ITEMS, MAX_SPLIT)
    if S == 1:  # grad_weight_kernel wrote the block itself
        return
    row, col = block_at(i, block_row, col_idx, GRID_COLS, DENSE)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(part_ptr + partial_offsets(i * S + s, BN, BK))
    store_block(dw_ptr, acc, row, col, C_IN, C_OUT, DW_ROW, BPT, BN, BK)


def launch_grad_weight(p, dy, x, idx, dw, dense_dw, precision, interpreted):
    """Launch over ``Problem p`` into ``dw`` (zeroed, the weight's shape and strides)."""
    if p.pixels == 0:
        return dw
    cfg = launch_config("grad_weight", p.pixels, idx.block_n, idx.block_k, dy.dtype, interpreted)
    grid_rows, grid_cols = idx.bitmap.shape
    capacity = grid_rows * grid_cols
    tiles = triton.cdiv(p.pixels, cfg.block_m)
    items, max_split = dw_work(tiles, capacity, interpreted)
    bpt = p.blocks_per_tap(idx.block_k)
    # With max_split = 1, S = 1 for every live count: no partials, no reduce launch.
    part = (dw if max_split == 1 else
            torch.empty((items, idx.block_n, idx.block_k), dtype=torch.float32, device=dw.device))
    blocks = dict(DENSE=bool(dense_dw), BN=idx.block_n, BK=idx.block_k)
    grad_weight_kernel[(items,)](
        dy, x, dw, part, idx.row_ptr, idx.block_row, idx.col_idx,
        p.pixels, *p.kernel_args(), dw.stride(0), bpt, grid_rows, grid_cols, tiles, items,
        max_split, BLOCK_M=cfg.block_m, PRECISION=precision, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **blocks)
    if max_split > 1:
        reduce_splits_kernel[(capacity,)](
            part, dw, idx.row_ptr, idx.block_row, idx.col_idx,
            p.c_in, p.c_out, dw.stride(0), bpt, grid_rows, grid_cols, items, max_split, **blocks)
    return dw
