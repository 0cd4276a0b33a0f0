"""Fréchet distance between two feature sets, via torchmetrics' streaming implementation.

Every torchmetrics metric here is built with ``sync_on_compute=False``: under torchrun only rank
0 evaluates, and a metric that gathered its state over the process group would wait forever for
ranks that never call it.
"""

from __future__ import annotations

import torch
from torch import nn


class _Identity(nn.Module):
    """torchmetrics needs a feature-extractor module; we feed it features directly."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FD between the Gaussians fitted to ``features_a [N, F]`` and ``features_b [M, F]`` (float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be [N, F] and [M, F], got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}")
    metric = FrechetInceptionDistance(feature=_Identity(features_a.shape[1]), normalize=True,
                                      sync_on_compute=False)
    metric.update(features_a.double(), real=True)
    metric.update(features_b.double(), real=False)
    return float(metric.compute())
