"""dX kernel: ``dX̂ = dY · W_kept`` scattered back through the conv's input addressing.

Program (pixel tile, channel block cb): BLOCK_M *input* pixels × the BK input channels of block
column cb of every tap. Input pixels are tiled by phase — pixels ``(iy, ix) ≡ (py, px) (mod
step)`` (``Problem.phase_steps``) — so a stride-s dX runs as phase sub-problems in which a tap
(and, with upsampling, a sub-pixel) reaches either every pixel of the tile or none: taps that
cannot reach the phase are skipped whole. For each reaching tap the program walks the CSC
column ``col = tap·BPT + cb``: ``i in [col_ptr[col], col_ptr[col+1])``, block row
``row_idx[i]``, gathering the BLOCK_M × BN slice of dY at the output pixels that read these
inputs and the BN × BK block straight from the dense weight. With upsample u each input pixel
collects its u×u sub-pixels (the adjoint of nearest upsampling). Every dX element is written by
exactly one program; pixels no window reaches get exact zeros. No atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import nhwc_offsets, nhwc_tile, output_coord, output_pixel, weight_offsets
from .tuning import launch_config


@triton.jit
def grad_input_kernel(dy_ptr, w_ptr, dx_ptr, col_ptr, row_idx,
                      B, H, W, C_IN, HO, WO, C_OUT, KH, KW, SH, SW, PH, PW, DIL_H, DIL_W, U,
                      W_ROW, BPT, STEP_H, STEP_W, TILES,
                      BLOCK_M: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    phase = pid // TILES
    py = phase // STEP_W
    px = phase % STEP_W
    # This phase's pixels form a [B, rows, cols] grid: iy = py + jy·STEP_H, ix = px + jx·STEP_W.
    rows = (H - py + STEP_H - 1) // STEP_H
    cols = (W - px + STEP_W - 1) // STEP_W
    offs = (pid % TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    p_mask = offs < B * rows * cols
    b, jy, jx = output_pixel(offs, tl.maximum(rows, 1), tl.maximum(cols, 1))
    iy = py + jy * STEP_H
    ix = px + jx * STEP_W
    c = cb * BK + tl.arange(0, BK)
    acc = tl.zeros((BLOCK_M, BK), dtype=tl.float32)
    for sy in range(U):
        for ky in range(KH):
            if (U * py + sy + PH - ky * DIL_H) % SH == 0:  # tap row reaches this phase
                oy, vy = output_coord(iy, sy, ky, SH, PH, DIL_H, U, HO)
                for sx in range(U):
                    for kx in range(KW):
                        if (U * px + sx + PW - kx * DIL_W) % SW == 0:
                            ox, vx = output_coord(ix, sx, kx, SW, PW, DIL_W, U, WO)
                            valid = p_mask & vy & vx
                            tap = ky * KW + kx
                            col = tap * BPT + cb
                            for i in range(tl.load(col_ptr + col), tl.load(col_ptr + col + 1)):
                                n = tl.load(row_idx + i) * BN + tl.arange(0, BN)
                                g = nhwc_tile(dy_ptr, b, oy, ox, valid, n, HO, WO, C_OUT)
                                w_offs, w_mask = weight_offsets(n[:, None], c[None, :], tap,
                                                                C_IN, C_OUT, W_ROW)
                                w = tl.load(w_ptr + w_offs, mask=w_mask, other=0.0)  # [BN, BK]
                                acc = tl.dot(g, w, acc, input_precision=PRECISION)
    dx_offs, dx_mask = nhwc_offsets(b, iy, ix, p_mask, c, H, W, C_IN)
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=dx_mask)


def launch_grad_input(p, dy, weight, idx, dx, precision, interpreted):
    """Launch over ``Problem p``: dy NHWC ``[M, C_out]``, dx NHWC at the input resolution."""
    if dx.numel() == 0:
        return dx
    step_h, step_w = p.phase_steps()
    per_phase = p.batch * triton.cdiv(p.in_h, step_h) * triton.cdiv(p.in_w, step_w)
    cfg = launch_config("grad_input", per_phase, idx.block_n, idx.block_k, dy.dtype, interpreted)
    tiles = triton.cdiv(per_phase, cfg.block_m)
    bpt = p.blocks_per_tap(idx.block_k)
    grid = (step_h * step_w * tiles, bpt)
    grad_input_kernel[grid](
        dy, weight, dx, idx.col_ptr, idx.row_idx,
        p.batch, *p.kernel_args(), weight.stride(0), bpt, step_h, step_w, tiles,
        BLOCK_M=cfg.block_m, BN=idx.block_n, BK=idx.block_k, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dx
