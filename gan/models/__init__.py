"""Generator/discriminator pairs for 32×32 images, built dense; sparsekit sparsifies them.

A model is one module of this package that defines ``build_pair(width, z_dim) -> (G, D)`` and
``N_DIS`` (its default discriminator steps per generator step); the module's name is the
model's (``--model``). ``MODELS`` lists them and ``build(name, width, z_dim)`` builds one:
"sngan" (SNGAN-ResNet, PAPERS.md) and "dcgan" (a small pair for quick CPU runs). Models run
channels_last end to end; D carries no spectral norm here — the trainer applies it after the DST
engine has sparsified D (DESIGN.md §4).
"""

import importlib
import pkgutil

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import sparsekit

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
SN_TYPES = (nn.Conv2d, nn.Linear, sparsekit.SparseConv2d, sparsekit.SparseLinear)


def build(name: str, width: float = 1.0, z_dim: int = 128):
    """``(G, D)`` of model ``name`` at channel-width multiplier ``width``."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name not in _MODULES:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return _MODULES[name].build_pair(width, z_dim)


def add_spectral_norm(D: nn.Module) -> nn.Module:
    """Spectral norm (torch's parametrization) on every conv/linear of ``D``, dense or sparse;
    applied after sparsification, so a mask sits on ``weight.original`` (DESIGN.md §4)."""
    for m in list(D.modules()):
        if isinstance(m, SN_TYPES):
            spectral_norm(m)
    return D


__all__ = ["MODELS", "N_DIS", "SN_TYPES", "add_spectral_norm", "build", "UpsampleConv",
           "SNGANGenerator", "SNGANDiscriminator", "DCGANGenerator", "DCGANDiscriminator"]
