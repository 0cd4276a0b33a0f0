"""Generator/discriminator pairs for 32×32 images, built dense; sparsekit sparsifies them.

``build(name, width, z_dim)`` returns ``(G, D)``: "sngan" (SNGAN-ResNet, PAPERS.md), "dcgan"
(a small pair for quick CPU runs), "alphagan"/"alphagan-extended" (AlphaGAN's generator
supernet over PAPERS.md's / issue 17's op set, for ``--method alphagan-search``) and
"alphagan:PATH.json" (the generator a genotype file describes); every alphagan G is paired with
the SNGAN D. Models run channels_last end to end; D carries no spectral norm here — the trainer
applies it after the DST engine has sparsified D (DESIGN.md §4).
"""

from .alphagan import AlphaGANGenerator
from .dcgan import DCGANDiscriminator, DCGANGenerator
from .layers import UpsampleConv
from .sngan import SNGANDiscriminator, SNGANGenerator
from . import genotype

SUPERNETS = {"alphagan": "paper", "alphagan-extended": "extended"}
MODELS = ("sngan", "dcgan") + tuple(SUPERNETS) + ("alphagan:PATH.json",)


def check(name: str) -> str:
    """Raise ValueError (FileNotFoundError for a missing genotype file) unless ``name`` is a
    model this module builds; a genotype file is read and validated."""
    if not isinstance(name, str) or not (name in MODELS[:-1] or name.startswith("alphagan:")):
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    if name.startswith("alphagan:"):
        genotype.load(name.partition(":")[2])
    return name


def is_supernet(name: str) -> bool:
    return name in SUPERNETS


def default_n_dis(name: str) -> int:
    """D steps per G step: 1 for the DCGAN pair, 5 for every pair with the SNGAN D."""
    return 1 if name == "dcgan" else 5


def weight_parameters(model):
    """``model``'s parameters except its architecture weights α (``arch_parameters()``, if it
    has them): what the weight optimizer steps."""
    arch = {id(p) for p in getattr(model, "arch_parameters", list)()}
    return [p for p in model.parameters() if id(p) not in arch]


def build(name: str, width: float = 1.0, z_dim: int = 128):
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name == "sngan":
        return SNGANGenerator(z_dim, width), SNGANDiscriminator(width)
    if name == "dcgan":
        return DCGANGenerator(z_dim, width), DCGANDiscriminator(width)
    check(name)
    if is_supernet(name):
        return AlphaGANGenerator.supernet(SUPERNETS[name], z_dim, width), SNGANDiscriminator(width)
    found = genotype.load(name.partition(":")[2])
    return AlphaGANGenerator.from_genotype(found, z_dim, width), SNGANDiscriminator(width)


__all__ = ["MODELS", "SUPERNETS", "build", "check", "default_n_dis", "is_supernet",
           "weight_parameters", "UpsampleConv", "SNGANGenerator", "SNGANDiscriminator",
           "DCGANGenerator", "DCGANDiscriminator", "AlphaGANGenerator", "genotype"]
