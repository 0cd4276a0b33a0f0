"""The implicit-GEMM problem every Triton kernel solves, as plain ints (no Triton import here).

    Y[M, N] = X̂[M, K] · W[N, K]ᵀ (+ bias)     M = batch·out_h·out_w, N = c_out, K = kh·kw·c_in

Activations are NHWC and contiguous: x ``[batch, in_h, in_w, c_in]``, y / dy
``[batch, out_h, out_w, c_out]``. W rows are ``w_row_stride`` apart and K-contiguous, K ordered
(kh, kw, c_in) — a channels_last conv weight. A linear layer is the 1×1 conv of a
``[1, 1, M, K]`` image, so one set of kernels serves both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ...geometry import ConvGeometry


class Problem(NamedTuple):
    """Shapes and conv geometry; ``kernel_args()`` is the order every kernel takes them in."""

    batch: int
    in_h: int
    in_w: int
    c_in: int
    out_h: int
    out_w: int
    c_out: int
    kh: int
    kw: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    upsample: int

    @property
    def pixels(self):
        """M: output pixels (rows of Y)."""
        return self.batch * self.out_h * self.out_w

    def blocks_per_tap(self, block_k):
        return math.ceil(self.c_in / block_k)

    def phase_steps(self):
        """(step_h, step_w): input pixels ``i ≡ φ (mod step)`` are reached by the same taps.

        With stride s and upsample u, ``u·i + sub + pad - k·dil`` is divisible by s for a fixed
        residue of i modulo ``s / gcd(s, u)``; stride 1 has a single phase.
        """
        return (self.stride_h // math.gcd(self.stride_h, self.upsample),
                self.stride_w // math.gcd(self.stride_w, self.upsample))

    def kernel_args(self):
        """(H, W, C_IN, HO, WO, C_OUT, KH, KW, SH, SW, PH, PW, DH, DW, U) — see common.py."""
        return (self.in_h, self.in_w, self.c_in, self.out_h, self.out_w, self.c_out, self.kh,
                self.kw, self.stride_h, self.stride_w, self.pad_h, self.pad_w, self.dil_h,
                self.dil_w, self.upsample)


def linear_problem(m, weight_shape):
    """``x [M, K] · W[N, K]ᵀ`` as the 1×1 conv of a ``[1, 1, M, K]`` image."""
    n, k = weight_shape
    return Problem(1, 1, m, k, 1, m, n, 1, 1, 1, 1, 0, 0, 1, 1, 1)


def conv_problem(x_shape, weight_shape, geom: ConvGeometry):
    """A conv of an input ``[B, C_in, H, W]`` (before upsampling) with ``[C_out, C_in, kh, kw]``."""
    b, c_in, h, w = x_shape
    c_out, _, kh, kw = weight_shape
    out_h, out_w = geom.output_hw((h, w), (kh, kw))
    return Problem(b, h, w, c_in, out_h, out_w, c_out, kh, kw, *geom.stride, *geom.padding,
                   *geom.dilation, geom.upsample)
