"""A small DCGAN-style pair for quick CPU runs on R×R images (C = 64·width).

G: z → linear 4·4·4C → BN, ReLU → log2(R/4) nearest-2× + conv3×3 stages (4C→2C→C→C…, never
below C) with BN/ReLU → conv3×3 → 3, tanh. D: conv3×3 3→C, then log2(R/4) conv4×4 stride 2
(C→2C→4C→4C…, to 4×4), LeakyReLU(0.2) after each, global sum pool, linear 4C→1. At R = 32:
three stages each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import UpsampleConv, doublings, xavier_init_


def _channels(width):
    return max(8, int(round(64 * width / 8)) * 8)


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim=128, width=1.0, resolution=32):
        super().__init__()
        c = _channels(width)
        self.z_dim, self.c = z_dim, c
        self.fc = nn.Linear(z_dim, 4 * 4 * 4 * c)
        self.bn0 = nn.BatchNorm2d(4 * c)
        self.stages = doublings(resolution, 4)
        c_in = 4 * c
        for i in range(1, self.stages + 1):  # up1, bn1, up2, bn2, …: the 32×32 model's names
            c_out = max(c, c_in // 2)
            setattr(self, f"up{i}", UpsampleConv(c_in, c_out))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
            c_in = c_out
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        xavier_init_(self)

    def forward(self, z):
        h = self.fc(z).view(-1, 4 * self.c, 4, 4).contiguous(memory_format=torch.channels_last)
        h = F.relu(self.bn0(h))
        for i in range(1, self.stages + 1):
            h = F.relu(getattr(self, f"bn{i}")(getattr(self, f"up{i}")(h)))
        return torch.tanh(self.out(h))


class DCGANDiscriminator(nn.Module):
    def __init__(self, width=1.0, resolution=32):
        super().__init__()
        c = _channels(width)
        self.convs = 1 + doublings(resolution, 4)
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        c_in = c
        for i in range(2, self.convs + 1):  # conv2, conv3, …: halve the side, to 4×4
            c_out = min(4 * c, 2 * c_in)
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            c_in = c_out
        self.fc = nn.Linear(c_in, 1)
        xavier_init_(self)

    def forward(self, x):
        h = x.contiguous(memory_format=torch.channels_last)
        for i in range(1, self.convs + 1):
            h = F.leaky_relu(getattr(self, f"conv{i}")(h), 0.2)
        return self.fc(h.sum(dim=(2, 3))).squeeze(1)


#: discriminator steps per generator step (``--n-dis`` default)
N_DIS = 1


def build_pair(width: float, z_dim: int, resolution: int = 32):
    """(G, D) of this architecture (what ``gan.models.build("dcgan", ...)`` returns)."""
    return DCGANGenerator(z_dim, width, resolution), DCGANDiscriminator(width, resolution)
