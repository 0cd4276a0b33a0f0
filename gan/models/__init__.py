"""Generator/discriminator pairs for 32×32 images, built dense; sparsekit sparsifies them.

``build(name, width, z_dim)`` returns ``(G, D)``: "sngan" (SNGAN-ResNet, PAPERS.md) or "dcgan"
(a small pair for quick CPU runs). Models run channels_last end to end; D carries no spectral
norm here — the trainer applies it after the DST engine has sparsified D (DESIGN.md §4).
"""

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import sparsekit

from .dcgan import DCGANDiscriminator, DCGANGenerator
from .layers import UpsampleConv
from .sngan import SNGANDiscriminator, SNGANGenerator

MODELS = ("sngan", "dcgan")
SN_TYPES = (nn.Conv2d, nn.Linear, sparsekit.SparseConv2d, sparsekit.SparseLinear)


def build(name: str, width: float = 1.0, z_dim: int = 128):
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name == "sngan":
        return SNGANGenerator(z_dim, width), SNGANDiscriminator(width)
    if name == "dcgan":
        return DCGANGenerator(z_dim, width), DCGANDiscriminator(width)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def add_spectral_norm(D: nn.Module) -> nn.Module:
    """Spectral norm (torch's parametrization) on every conv/linear of ``D``, dense or sparse;
    applied after sparsification, so a mask sits on ``weight.original`` (DESIGN.md §4)."""
    for m in list(D.modules()):
        if isinstance(m, SN_TYPES):
            spectral_norm(m)
    return D


__all__ = ["MODELS", "SN_TYPES", "add_spectral_norm", "build", "UpsampleConv", "SNGANGenerator",
           "SNGANDiscriminator", "DCGANGenerator", "DCGANDiscriminator"]
