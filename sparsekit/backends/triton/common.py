"""Address arithmetic shared by the forward, dX and dW kernels (``@triton.jit`` helpers).

Geometry arguments use one naming everywhere (see ``Problem.kernel_args`` in
``sparsekit/backends/problem.py``): input ``H, W, C_IN``; output ``HO, WO, C_OUT``; kernel
``KH, KW``; stride ``SH, SW``; padding ``PH, PW``; dilation ``DIL_H, DIL_W``; nearest-upsample
factor ``U``. Activations are NHWC and
contiguous; W is ``[C_OUT, K]`` with rows ``W_ROW`` apart and K ordered (kh, kw, c_in).
Block column ``col`` of the layout is tap ``col // BPT`` and channels ``(col % BPT)·BK + [0, BK)``
of that tap (``BPT`` = blocks per tap); channels ``>= C_IN`` are masked (narrow last block).
Pixel offsets are computed in int64 so large activations cannot overflow.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def output_pixel(offs, HO, WO):
    """(b, oy, ox) of flat output-pixel indices ``offs`` (NHWC order)."""
    ox = offs % WO
    rest = offs // WO
    return rest // HO, rest % HO, ox


@triton.jit
def block_channels(col, BPT, BK: tl.constexpr):
    """(tap, channels [BK]) covered by block column ``col``."""
    return col // BPT, (col % BPT) * BK + tl.arange(0, BK)


@triton.jit
def input_coord(o, k, S, P, DIL, U, SIZE):
    """Physical input coordinate that output coordinate ``o`` reads at kernel offset ``k``.

    The logical (upsampled) coordinate is ``o·S - P + k·DIL``, valid in ``[0, U·SIZE)``; nearest
    upsampling maps it to ``// U``. Returns (coordinate, valid); the coordinate is 0 where invalid.
    """
    logical = o * S - P + k * DIL
    valid = (logical >= 0) & (logical < U * SIZE)
    return tl.where(valid, logical, 0) // U, valid


@triton.jit
def output_coord(i, sub, k, S, P, DIL, U, OUT):
    """Output coordinate whose window reads sub-pixel ``sub`` of input ``i`` at offset ``k``.

    Inverse of :func:`input_coord`: ``o = (U·i + sub + P - k·DIL) / S`` when that is an exact,
    in-range quotient. Returns (coordinate, valid); the coordinate is 0 where invalid.
    """
    num = U * i + sub + P - k * DIL
    valid = (num >= 0) & (num % S == 0) & (num < S * OUT)
    return tl.where(valid, num, 0) // S, valid


@triton.jit
def nhwc_offsets(b, y, x, valid, c, HEIGHT, WIDTH, CHANNELS):
    """Offsets and mask of ``t[b, y, x, c]`` in an NHWC tensor, as a [pixels, channels] tile.

    ``b, y, x, valid`` are per-pixel vectors, ``c`` the channel vector; masked where a pixel is
    not valid or ``c >= CHANNELS``.
    """
    pix = (b.to(tl.int64) * HEIGHT + y) * WIDTH + x
    return pix[:, None] * CHANNELS + c[None, :], valid[:, None] & (c[None, :] < CHANNELS)


@triton.jit
def nhwc_tile(ptr, b, y, x, valid, c, HEIGHT, WIDTH, CHANNELS):
    """Load the tile of :func:`nhwc_offsets` (zeros where masked)."""
    offs, mask = nhwc_offsets(b, y, x, valid, c, HEIGHT, WIDTH, CHANNELS)
    return tl.load(ptr + offs, mask=mask, other=0.0)


@triton.jit
def tap_input_tile(x_ptr, b, oy, ox, m_mask, tap, c, H, W, C_IN, KW, SH, SW, PH, PW, DIL_H,
                   DIL_W, U):
    """X̂ rows of output pixels (b, oy, ox) at kernel tap ``tap``, channels ``c``: [pixels, |c|]."""
    iy, vy = input_coord(oy, tap // KW, SH, PH, DIL_H, U, H)
    ix, vx = input_coord(ox, tap % KW, SW, PW, DIL_W, U, W)
    return nhwc_tile(x_ptr, b, iy, ix, m_mask & vy & vx, c, H, W, C_IN)


@triton.jit
def weight_offsets(n, c, tap, C_IN, C_OUT, W_ROW):
    """Offsets and mask of ``W[n, tap·C_IN + c]``; ``n`` and ``c`` broadcast against each other
    (``n[:, None], c[None, :]`` gives a [BN, BK] tile, ``n[None, :], c[:, None]`` its transpose)."""
    return n.to(tl.int64) * W_ROW + tap * C_IN + c, (n < C_OUT) & (c < C_IN)


@triton.jit
def matrix_offsets(rows, cols, ROWS, COLS):
    """Offsets and mask of a row-major ``[ROWS, COLS]`` matrix (rows, cols broadcast)."""
    return rows.to(tl.int64) * COLS + cols, (rows < ROWS) & (cols < COLS)
