"""The implicit-GEMM problem every backend's launchers solve, as plain ints (one description for
the Triton kernels, the native CPU/CUDA kernels and the reference).

    Y[M, N] = X̂[M, K] · W[N, K]ᵀ (+ bias)     M = batch·out_h·out_w, N = c_out, K = kh·kw·c_in

Activations are NHWC and contiguous: x ``[batch, in_h, in_w, c_in]``, y / dy
``[batch, out_h, out_w, c_out]``. W rows are K-contiguous, K ordered (kh, kw, c_in) — a
channels_last conv weight. A linear layer is the 1×1 conv of a ``[1, 1, M, K]`` image, so one
set of kernels serves both; ``is_linear`` remembers which it was (the shapes of its tensors).
The native kernels take the same sizes as a list (:meth:`Problem.native_sizes`, the ``Problem``
of csrc/common/problem.h).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..geometry import ConvGeometry


class Problem(NamedTuple):
    """Shapes and conv geometry; ``kernel_args()`` is the order the Triton kernels take them in."""

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
    is_linear: bool = False

    @property
    def pixels(self):
        """M: output pixels (rows of Y)."""
        return self.batch * self.out_h * self.out_w

    def blocks_per_tap(self, block_k):
        return math.ceil(self.c_in / block_k)

    def geometry(self) -> ConvGeometry:
        return ConvGeometry((self.stride_h, self.stride_w), (self.pad_h, self.pad_w),
                            (self.dil_h, self.dil_w), self.upsample)

    def phase_steps(self):
        """(step_h, step_w): input pixels ``i ≡ φ (mod step)`` are reached by the same taps.

        With stride s and upsample u, ``u·i + sub + pad - k·dil`` is divisible by s for a fixed
        residue of i modulo ``s / gcd(s, u)``; stride 1 has a single phase.
        """
        return (self.stride_h // math.gcd(self.stride_h, self.upsample),
                self.stride_w // math.gcd(self.stride_w, self.upsample))

    def kernel_args(self):
        """(H, W, C_IN, HO, WO, C_OUT, KH, KW, SH, SW, PH, PW, DH, DW, U) — see triton/common.py."""
        return self[1:16]

    def native_sizes(self, w_row_stride, idx):
        """The 22 sizes of csrc/common/problem.h's ``Problem``, in declaration order: these
        fields, then W's row stride, the block (BN, BK), the block grid and blocks per tap."""
        grid_rows, grid_cols = idx.bitmap.shape
        return [*self[:16], w_row_stride, idx.block_n, idx.block_k, grid_rows, grid_cols,
                grid_cols // (self.kh * self.kw)]

    def empty_output(self, like: torch.Tensor) -> torch.Tensor:
        """Uninitialised Y in ``like``'s dtype and device: ``[M, N]`` for a linear layer, else
        ``[batch, c_out, out_h, out_w]`` in channels_last (the real and fake kernels' strides)."""
        if self.is_linear:
            return like.new_empty((self.out_w, self.c_out))
        return torch.empty((self.batch, self.c_out, self.out_h, self.out_w), dtype=like.dtype,
                           device=like.device, memory_format=torch.channels_last)

    def empty_input_grad(self, like: torch.Tensor) -> torch.Tensor:
        """Uninitialised dX: ``[M, K]`` for a linear layer, else ``[batch, c_in, in_h, in_w]``
        (the input resolution, before upsampling) in channels_last."""
        if self.is_linear:
            return like.new_empty((self.in_w, self.c_in))
        return torch.empty((self.batch, self.c_in, self.in_h, self.in_w), dtype=like.dtype,
                           device=like.device, memory_format=torch.channels_last)


def linear_problem(m, weight_shape):
    """``x [M, K] · W[N, K]ᵀ`` as the 1×1 conv of a ``[1, 1, M, K]`` image."""
    n, k = weight_shape
    return Problem(1, 1, m, k, 1, m, n, 1, 1, 1, 1, 0, 0, 1, 1, 1, True)  # is_linear


def conv_problem(x_shape, weight_shape, geom: ConvGeometry):
    """A conv of an input ``[B, C_in, H, W]`` (before upsampling) with ``[C_out, C_in, kh, kw]``."""
    b, c_in, h, w = x_shape
    c_out, _, kh, kw = weight_shape
    out_h, out_w = geom.output_hw((h, w), (kh, kw))
    return Problem(b, h, w, c_in, out_h, out_w, c_out, kh, kw, *geom.stride, *geom.padding,
                   *geom.dilation, geom.upsample)
