"""A small DCGAN-style pair for quick CPU runs on 32×32 images (C = 64·width).

G: z → linear 4·4·4C → BN, ReLU → three nearest-2× + conv3×3 stages (4C→2C→C→C) with BN/ReLU
→ conv3×3 → 3, tanh. D: conv3×3 3→C, then conv4×4 stride 2 (C→2C→4C), LeakyReLU(0.2) after
each, global sum pool, linear 4C→1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import UpsampleConv, xavier_init_


def _channels(width):
    return max(8, int(round(64 * width / 8)) * 8)


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim=128, width=1.0):
        super().__init__()
        c = _channels(width)
        self.z_dim, self.c = z_dim, c
        self.fc = nn.Linear(z_dim, 4 * 4 * 4 * c)
        self.bn0 = nn.BatchNorm2d(4 * c)
        self.up1, self.bn1 = UpsampleConv(4 * c, 2 * c), nn.BatchNorm2d(2 * c)
        self.up2, self.bn2 = UpsampleConv(2 * c, c), nn.BatchNorm2d(c)
        self.up3, self.bn3 = UpsampleConv(c, c), nn.BatchNorm2d(c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        xavier_init_(self)

    def forward(self, z):
        h = self.fc(z).view(-1, 4 * self.c, 4, 4).contiguous(memory_format=torch.channels_last)
        h = F.relu(self.bn0(h))
        h = F.relu(self.bn1(self.up1(h)))
        h = F.relu(self.bn2(self.up2(h)))
        h = F.relu(self.bn3(self.up3(h)))
        return torch.tanh(self.out(h))


class DCGANDiscriminator(nn.Module):
    def __init__(self, width=1.0):
        super().__init__()
        c = _channels(width)
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(4 * c, 4 * c, 4, stride=2, padding=1)
        self.fc = nn.Linear(4 * c, 1)
        xavier_init_(self)

    def forward(self, x):
        h = x.contiguous(memory_format=torch.channels_last)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = F.leaky_relu(conv(h), 0.2)
        return self.fc(h.sum(dim=(2, 3))).squeeze(1)


#: discriminator steps per generator step (``--n-dis`` default)
N_DIS = 1


def build_pair(width: float, z_dim: int):
    """(G, D) of this architecture (what ``gan.models.build("dcgan", ...)`` returns)."""
    return DCGANGenerator(z_dim, width), DCGANDiscriminator(width)
