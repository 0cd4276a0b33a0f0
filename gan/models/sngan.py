"""SNGAN-ResNet (PAPERS.md; 32×32: G 4.27 M weights and D 1.05 M at width 1), for R×R images.

G: z → linear 4·4·C → log2(R/4) up-blocks (BN, ReLU, nearest 2×, conv3×3, BN, ReLU, conv3×3;
shortcut conv1×1 then nearest 2× — exact, since a 1×1 conv commutes with nearest upsampling,
and 4× cheaper) → BN, ReLU, conv3×3 → 3, tanh. C = 256·width.
D: optimized block 3→C (R→R/2), log2(R/8) − 1 down blocks C (to 8×8), two C blocks, ReLU,
global sum pool, linear C→1. C = 128·width. At R = 32: three up-blocks, one down block — the
paper's CIFAR-10 networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import UpsampleConv, doublings, upsample2, xavier_init_


def _channels(base, width):
    return max(8, int(round(base * width / 8)) * 8)


class GBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = UpsampleConv(c_in, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        # in place: batch norm's backward reads its input, not its output
        h = self.conv1(F.relu(self.bn1(x), inplace=True))
        h = self.conv2(F.relu(self.bn2(h), inplace=True))
        return h + upsample2(self.shortcut(x))


class SNGANGenerator(nn.Module):
    def __init__(self, z_dim=128, width=1.0, resolution=32):
        super().__init__()
        c = _channels(256, width)
        self.z_dim, self.channels = z_dim, c
        self.fc = nn.Linear(z_dim, 4 * 4 * c)
        self.blocks = nn.Sequential(*(GBlock(c, c) for _ in range(doublings(resolution, 4))))
        self.bn = nn.BatchNorm2d(c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        xavier_init_(self)

    def forward(self, z):
        h = self.fc(z).view(-1, self.channels, 4, 4).contiguous(memory_format=torch.channels_last)
        h = self.blocks(h)
        return torch.tanh(self.out(F.relu(self.bn(h), inplace=True)))


class DBlock(nn.Module):
    """Pre-activation residual block; ``first`` = SNGAN's optimized block (no leading ReLU)."""

    def __init__(self, c_in, c_out, downsample, first=False):
        super().__init__()
        self.first, self.downsample = first, downsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (c_in != c_out or downsample) else None

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h), inplace=True))  # a conv's backward reads its input
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # optimized block: pool, then 1×1 conv
            s = self.shortcut(F.avg_pool2d(s, 2))
        elif self.shortcut is not None:
            s = self.shortcut(s)
            if self.downsample:
                s = F.avg_pool2d(s, 2)
        return h + s


class SNGANDiscriminator(nn.Module):
    def __init__(self, width=1.0, resolution=32):
        super().__init__()
        c = _channels(128, width)
        downs = [DBlock(c, c, True) for _ in range(doublings(resolution, 16))]  # R/2 → 8
        self.blocks = nn.Sequential(DBlock(3, c, True, first=True), *downs,
                                    DBlock(c, c, False), DBlock(c, c, False))
        self.fc = nn.Linear(c, 1)
        xavier_init_(self)
        for block in self.blocks:
            if block.shortcut is not None:
                nn.init.xavier_uniform_(block.shortcut.weight, 1.0)

    def forward(self, x):
        h = self.blocks(x.contiguous(memory_format=torch.channels_last))
        return self.fc(F.relu(h, inplace=True).sum(dim=(2, 3))).squeeze(1)


#: discriminator steps per generator step (``--n-dis`` default; SNGAN's 5)
N_DIS = 5


def build_pair(width: float, z_dim: int, resolution: int = 32):
    """(G, D) of this architecture (what ``gan.models.build("sngan", ...)`` returns)."""
    return SNGANGenerator(z_dim, width, resolution), SNGANDiscriminator(width, resolution)
