"""Building blocks shared by the generators and discriminators."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from sparsekit import SparseConv2d


class UpsampleConv(nn.Module):
    """Nearest 2× upsampling followed by ``conv``.

    Dense: ``conv(interpolate(x))``. Once the DST engine has replaced ``conv`` by a
    ``SparseConv2d``, the upsampling is fused into the kernel's input addressing (never
    materialised) and the input gradient comes back at the small resolution: the sparse conv gets
    ``upsample = 2`` on its first call and is called as a module, so its forward hooks (the DST
    engine's FLOP bookkeeping) see the upsampled output.
    """

    def __init__(self, c_in, c_out, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=padding)

    def forward(self, x):
        conv = self.conv
        if isinstance(conv, SparseConv2d):
            conv.upsample = 2
            return conv(x)
        return conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def doublings(resolution, start):
    """How many 2× steps take ``start`` to ``resolution`` (a power of two ≥ ``start``): the
    up-stages of a generator from a ``start``² map, or the down-stages of a discriminator."""
    steps = (resolution // start).bit_length() - 1
    if resolution < start or start << steps != resolution:
        raise ValueError(f"resolution must be a power of two >= {start}, got {resolution}")
    return steps


def upsample2(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def xavier_init_(module: nn.Module, gain=1.0):
    """Xavier-uniform weights and zero biases for every conv/linear (SNGAN's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
