"""Shapes and conv geometry shared by every backend and by the fake kernels.

Conventions (DESIGN.md §1):
- A linear weight is ``[N, K]``; a conv weight is ``[C_out, C_in, kh, kw]`` in channels_last
  memory, i.e. the ``[N = C_out, K = kh·kw·C_in]`` matrix with K ordered (kh, kw, c_in).
- Conv activations are NHWC (channels_last) ``[B, C, H, W]`` tensors.
- ``upsample = u`` means the conv reads the input nearest-upsampled by ``u`` without
  materialising it: logical input size ``(u·H, u·W)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ConvGeometry(NamedTuple):
    """Stride, padding and dilation as (h, w) pairs, and the fused nearest-upsample factor."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    upsample: int

    def output_hw(self, in_hw, kernel_hw):
        """Output (H_out, W_out) for an input of ``in_hw`` (before upsampling)."""
        return tuple(
            (self.upsample * size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(in_hw, kernel_hw, self.stride, self.padding, self.dilation)
        )


def pair(value, name):
    """``value`` as an (h, w) pair of ints; accepts an int or a length-2 sequence."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return items


def make_geometry(stride, padding, dilation, upsample) -> ConvGeometry:
    """Validate conv arguments and pack them; raises ValueError/TypeError naming the argument."""
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
        raise ValueError(f"upsample must be an int >= 1, got {upsample!r}")
    return ConvGeometry(stride, padding, dilation, upsample)


def weight_matrix_dims(weight_shape):
    """(N, C_in, taps) of a weight shape: linear ``[N, K]`` has one tap of K channels."""
    if len(weight_shape) == 2:
        return weight_shape[0], weight_shape[1], 1
    if len(weight_shape) == 4:
        c_out, c_in, kh, kw = weight_shape
        return c_out, c_in, kh * kw
    raise ValueError(f"weight must be 2-D (linear) or 4-D (conv), got shape {tuple(weight_shape)}")


def zeros_weight_grad(weight):
    """dW with the weight's shape and strides (channels_last for convs), zero at pruned blocks."""
    return torch.zeros_like(weight, memory_format=torch.preserve_format)
