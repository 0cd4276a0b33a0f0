"""Generator/discriminator pairs for 32×32 images, built dense; sparsekit sparsifies them.

``build(name, width, z_dim)`` returns ``(G, D)``: "sngan" (SNGAN-ResNet, PAPERS.md) or "dcgan"
(a small pair for quick CPU runs). Models run channels_last end to end; D carries no spectral
norm here — the trainer applies it after the DST engine has sparsified D (DESIGN.md §4).
"""

from .dcgan import DCGANDiscriminator, DCGANGenerator
from .layers import UpsampleConv
from .sngan import SNGANDiscriminator, SNGANGenerator

MODELS = ("sngan", "dcgan")


def build(name: str, width: float = 1.0, z_dim: int = 128):
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name == "sngan":
        return SNGANGenerator(z_dim, width), SNGANDiscriminator(width)
    if name == "dcgan":
        return DCGANGenerator(z_dim, width), DCGANDiscriminator(width)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


__all__ = ["MODELS", "build", "UpsampleConv", "SNGANGenerator", "SNGANDiscriminator",
           "DCGANGenerator", "DCGANDiscriminator"]
