"""Generator/discriminator pairs for R×R images, built dense; sparsekit sparsifies them.

A model pair is one module of this package that defines ``build_pair(width, z_dim, resolution)
-> (G, D)`` (R one of ``RESOLUTIONS``; G maps ``[B, z_dim]`` to ``[B, 3, R, R]``) and ``N_DIS``
(its default discriminator steps per generator step); the module's name is the
model's (``--model``). ``MODELS`` lists them: "sngan" (SNGAN-ResNet, PAPERS.md) and "dcgan" (a
small pair for quick CPU runs). Besides them, ``build`` takes AlphaGAN's generators, each paired
with the SNGAN D, at 32×32 only: "alphagan"/"alphagan-extended" (the search supernets over PAPERS.md's / issue
17's op set, for ``--method alphagan-search``) and "alphagan:PATH.json" (the generator a genotype
file describes); ``MODEL_CHOICES`` lists every name. Models run channels_last end to end; D
carries no spectral norm here — the trainer applies it after the DST engine has sparsified D
(DESIGN.md §4).
"""

import importlib
import pkgutil

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import sparsekit

from . import genotype
from .alphagan import AlphaGANGenerator
from .dcgan import DCGANDiscriminator, DCGANGenerator
from .layers import UpsampleConv
from .sngan import SNGANDiscriminator, SNGANGenerator


def _find_models():
    """``{name: module}`` of this package's modules that define ``build_pair``, by name (the
    others, e.g. layers.py, hold shared building blocks)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "build_pair"):
            found[info.name] = module
    return found


_MODULES = _find_models()

MODELS = tuple(_MODULES)
#: ``{model: default discriminator steps per generator step}``
N_DIS = {name: module.N_DIS for name, module in _MODULES.items()}
SUPERNETS = {"alphagan": "paper", "alphagan-extended": "extended"}
MODEL_CHOICES = MODELS + tuple(SUPERNETS) + ("alphagan:PATH.json",)
#: image sides the models build for (``--resolution``): G doubles 4×4 up to R, D halves R down
RESOLUTIONS = (16, 32, 64, 128, 256)
SN_TYPES = (nn.Conv2d, nn.Linear, sparsekit.SparseConv2d, sparsekit.SparseLinear)


def check_resolution(resolution: int) -> int:
    """Raise ValueError unless the models build for ``resolution``² images (``RESOLUTIONS``)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got "
                         f"{resolution!r}")
    return resolution


def check(name: str, resolution: int = 32) -> str:
    """Raise ValueError (FileNotFoundError for a missing genotype file) unless ``name`` is a
    model this module builds at ``resolution``; a genotype file is read and validated."""
    if not isinstance(name, str) or not (name in _MODULES or name in SUPERNETS
                                         or name.startswith("alphagan:")):
        raise ValueError(f"model must be one of {', '.join(MODEL_CHOICES)}, got {name!r}")
    check_resolution(resolution)
    if name not in _MODULES and resolution != 32:
        raise ValueError(f"{name}: AlphaGAN's generators are three cells, 4×4 → 32×32; "
                         f"resolution must be 32, got {resolution}")
    if name.startswith("alphagan:"):
        genotype.load(name.partition(":")[2])
    return name


def is_supernet(name: str) -> bool:
    return name in SUPERNETS


def default_n_dis(name: str) -> int:
    """D steps per G step: the pair's ``N_DIS``; AlphaGAN's generators take the SNGAN D's."""
    return N_DIS.get(name, N_DIS["sngan"])


def weight_parameters(model):
    """``model``'s parameters except its architecture weights α (``arch_parameters()``, if it
    has them): what the weight optimizer steps."""
    arch = {id(p) for p in getattr(model, "arch_parameters", list)()}
    return [p for p in model.parameters() if id(p) not in arch]


def build(name: str, width: float = 1.0, z_dim: int = 128, resolution: int = 32):
    """``(G, D)`` of model ``name`` at channel-width multiplier ``width`` for ``resolution``²
    images."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    check(name, resolution)
    if name in _MODULES:
        return _MODULES[name].build_pair(width, z_dim, resolution)
    if is_supernet(name):
        return AlphaGANGenerator.supernet(SUPERNETS[name], z_dim, width), SNGANDiscriminator(width)
    found = genotype.load(name.partition(":")[2])
    return AlphaGANGenerator.from_genotype(found, z_dim, width), SNGANDiscriminator(width)


def add_spectral_norm(D: nn.Module) -> nn.Module:
    """Spectral norm (torch's parametrization) on every conv/linear of ``D``, dense or sparse;
    applied after sparsification, so a mask sits on ``weight.original`` (DESIGN.md §4)."""
    for m in list(D.modules()):
        if isinstance(m, SN_TYPES):
            spectral_norm(m)
    return D


__all__ = ["MODELS", "MODEL_CHOICES", "N_DIS", "RESOLUTIONS", "SN_TYPES", "SUPERNETS",
           "add_spectral_norm", "build", "check", "check_resolution", "default_n_dis",
           "is_supernet", "weight_parameters", "UpsampleConv", "SNGANGenerator",
           "SNGANDiscriminator", "DCGANGenerator", "DCGANDiscriminator", "AlphaGANGenerator",
           "genotype"]
