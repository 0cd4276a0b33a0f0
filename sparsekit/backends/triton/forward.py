"""Forward kernel: ``Y = X̂ · W_keptᵀ + bias`` for a block-sparse conv (a linear is a 1×1 conv).

Program (pixel tile, block row r): a BLOCK_M × BN tile of Y — BLOCK_M output pixels (the long
side) × the BN output channels of block row r (the narrow side). It loops over that row's kept
blocks, ``i in [row_ptr[r], row_ptr[r+1])``, gathering the BLOCK_M × BK slice of X̂ for the
block's tap and channels straight from the NHWC input, and the BK × BN block straight from the
dense weight. An empty block row writes bias (or exact zeros).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import matrix_offsets, block_channels, output_pixel, tap_input_tile, weight_offsets
from .tuning import launch_config


@triton.jit
def forward_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, row_ptr, col_idx,
                   M, H, W, C_IN, HO, WO, C_OUT, KH, KW, SH, SW, PH, PW, DIL_H, DIL_W, U,
                   W_ROW, BPT,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BN: tl.constexpr,
                   BK: tl.constexpr, PRECISION: tl.constexpr):
    r = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    b, oy, ox = output_pixel(offs_m, HO, WO)
    offs_n = r * BN + tl.arange(0, BN)
    acc = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
    for i in range(tl.load(row_ptr + r), tl.load(row_ptr + r + 1)):
        tap, c = block_channels(tl.load(col_idx + i), BPT, BK)
        a = tap_input_tile(x_ptr, b, oy, ox, m_mask, tap, c, H, W, C_IN, KW, SH, SW, PH, PW,
                           DIL_H, DIL_W, U)
        w_offs, w_mask = weight_offsets(offs_n[None, :], c[:, None], tap, C_IN, C_OUT, W_ROW)
        w_t = tl.load(w_ptr + w_offs, mask=w_mask, other=0.0)  # [BK, BN]
        acc = tl.dot(a, w_t, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < C_OUT, other=0.0).to(tl.float32)[None, :]
    y_offs, y_mask = matrix_offsets(offs_m[:, None], offs_n[None, :], M, C_OUT)
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def launch_forward(p, x, weight, bias, idx, y, precision, interpreted):
    """Launch over ``Problem p``: x NHWC, weight K-contiguous rows, y ``[M, C_out]`` NHWC."""
    if y.numel() == 0:
        return y
    cfg = launch_config("forward", p.pixels, idx.block_n, idx.block_k, x.dtype, interpreted)
    grid = (triton.cdiv(p.pixels, cfg.block_m), idx.bitmap.shape[0])
    forward_kernel[grid](
        x, weight, bias if bias is not None else y, y, idx.row_ptr, idx.col_idx,
        p.pixels, *p.kernel_args(), weight.stride(0), p.blocks_per_tap(idx.block_k),
        HAS_BIAS=bias is not None, BLOCK_M=cfg.block_m, BN=idx.block_n, BK=idx.block_k,
        PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y
