"""GAN losses on raw discriminator logits ``[B]``: hinge (default) and non-saturating."""

from __future__ import annotations

import torch.nn.functional as F

LOSSES = ("hinge", "ns")


def d_loss(kind: str, real_logits, fake_logits):
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def g_loss(kind: str, fake_logits):
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
