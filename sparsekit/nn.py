"""Drop-in sparse layers and the whole-model ``sparsify``.

``SparseLinear`` / ``SparseConv2d`` hold a dense ``weight`` Parameter of the usual shape
(``[out, in]`` / ``[C_out, C_in, kh, kw]``, the latter in channels_last memory) whose pruned
entries are exactly zero, and a :class:`BlockLayout` child that says which blocks are kept. Their
``state_dict`` is the dense layer's plus ``layout.bitmap``; a dense checkpoint (no bitmap) loads
into a sparse layer and is masked with its current layout.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn
from torch.nn.utils import parametrize

from .geometry import make_geometry
from .layout import BlockLayout, check_density
from .ops import block_sparse_conv2d, block_sparse_linear


def weight_parameter(module: nn.Module) -> nn.Parameter:
    """The Parameter behind ``module.weight``: under spectral norm (or another parametrization)
    the stored ``original``, never the computed weight (computing it would run a power
    iteration)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    if hasattr(module, "weight_orig"):  # legacy torch.nn.utils.spectral_norm
        return module.weight_orig
    return module.weight


class _SparseMixin:
    """Masking and layout initialisation shared by both layers."""

    layout: BlockLayout
    weight: nn.Parameter

    @torch.no_grad()
    def apply_mask_(self):
        """Zero the stored weight outside kept blocks (after an optimizer step, a new layout or a
        checkpoint load); under spectral norm it masks the parametrization's original."""
        weight_parameter(self).masked_fill_(self.layout.pruned_mask(), 0.0)
        return self

    def _init_layout(self, density, init, generator=None):
        density = check_density(density)
        if init == "magnitude":
            fresh = BlockLayout.from_weight(self.weight, self.layout.block, density)
        elif init == "random":
            fresh = BlockLayout.random(self.weight.shape, self.layout.block, density,
                                       generator=generator, device=self.weight.device)
        else:
            raise ValueError(f"init must be 'magnitude' or 'random', got {init!r}")
        self.layout.update(fresh.bitmap)
        self.apply_mask_()

    @torch.no_grad()
    def _fill_dense(self, dense):
        """Copy the masked weight and the bias into the dense twin ``dense``; returns it."""
        dense.weight.copy_(weight_parameter(self) * self.layout.element_mask())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    def density(self):
        return self.layout.density()


def _after_load(module, incompatible_keys):
    module.apply_mask_()


def _keep_parameter(param, memory_format=None):
    """Convert a Parameter's storage in place (same object) to ``memory_format``."""
    if memory_format is not None and not param.is_contiguous(memory_format=memory_format):
        param.data = param.data.contiguous(memory_format=memory_format)
    return param


def _refuse_parametrized(module):
    if parametrize.is_parametrized(module) or hasattr(module, "weight_orig"):
        raise ValueError(
            f"{type(module).__name__} carries a parametrization (e.g. spectral norm); sparsify "
            "the plain module first, then apply torch.nn.utils.parametrizations.spectral_norm")


class SparseLinear(_SparseMixin, nn.Module):
    """``nn.Linear`` whose weight ``[out_features, in_features]`` is block-sparse.

    Args:
        block: (BN, BK) — BN output features × BK input features per block.
        density: initial fraction of kept elements (random blocks, default 1 = dense).
    """

    def __init__(self, in_features, out_features, bias=True, *, block=(32, 32), density=1.0,
                 device=None, dtype=None):
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.layout = BlockLayout(self.weight.shape, block, device=self.weight.device)
        self.register_load_state_dict_post_hook(_after_load)
        if check_density(density) < 1.0:
            self._init_layout(density, "random")

    @classmethod
    def from_dense(cls, module: nn.Linear, density=1.0, block=(32, 32), init="magnitude",
                   generator=None):
        """Wrap ``module``'s own Parameters (same objects) with a layout of ``density``.

        ``init``: "magnitude" keeps the largest-|w| blocks, "random" picks blocks at random.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module must be an nn.Linear, got {type(module).__name__}")
        _refuse_parametrized(module)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = module.in_features, module.out_features
        self.weight, self.bias = module.weight, module.bias
        self.layout = BlockLayout(self.weight.shape, block, device=self.weight.device)
        self.register_load_state_dict_post_hook(_after_load)
        self._init_layout(density, init, generator)
        return self

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the masked weight (new Parameters)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        return self._fill_dense(dense)

    def forward(self, x):
        return block_sparse_linear(x, self.weight, self.layout, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block={self.layout.block}")


class SparseConv2d(_SparseMixin, nn.Module):
    """``nn.Conv2d`` (groups = 1, zero padding) with a block-sparse channels_last weight.

    ``upsample = u`` fuses a nearest ×u upsampling of the input into the conv's addressing.
    Outputs are channels_last.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, *, upsample=1, block=(32, 32), density=1.0, device=None, dtype=None):
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         bias=bias, device=device, dtype=dtype)
        self._setup(conv, upsample, block)
        if check_density(density) < 1.0:
            self._init_layout(density, "random")

    def _setup(self, conv, upsample, block):
        geom = make_geometry(conv.stride, conv.padding, conv.dilation, upsample)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = geom.stride, geom.padding, geom.dilation
        self.upsample = geom.upsample
        self.weight = _keep_parameter(conv.weight, torch.channels_last)
        self.bias = conv.bias
        self.layout = BlockLayout(self.weight.shape, block, device=self.weight.device)
        self.register_load_state_dict_post_hook(_after_load)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, density=1.0, block=(32, 32), init="magnitude",
                   upsample=1, generator=None):
        """Wrap ``module``'s own Parameters (same objects, weight made channels_last in place)."""
        if not isinstance(module, nn.Conv2d) or isinstance(module, nn.ConvTranspose2d):
            raise TypeError(f"module must be an nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1:
            raise ValueError(f"only groups=1 convs can be sparsified, got groups={module.groups}")
        if module.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {module.padding_mode!r}")
        if isinstance(module.padding, str):
            raise ValueError(f"padding must be given as ints, got padding={module.padding!r}")
        _refuse_parametrized(module)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(module, upsample, block)
        self._init_layout(density, init, generator)
        return self

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the masked weight (new Parameters; upsample is not carried)."""
        if self.upsample != 1:
            raise ValueError("a conv with fused upsample has no nn.Conv2d equivalent; "
                             "use nn.Upsample followed by to_dense() of an upsample=1 copy")
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                          self.padding, self.dilation, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        return self._fill_dense(dense)

    def forward(self, x):
        return block_sparse_conv2d(x, self.weight, self.layout, self.bias, self.stride,
                                   self.padding, self.dilation, self.upsample)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.upsample != 1:
            s += f", upsample={self.upsample}"
        return s + f", bias={self.bias is not None}, block={self.layout.block}"


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def sparsify(model: nn.Module, density=1.0, block=(32, 32), include=None, exclude=(),
             init="magnitude", generator=None) -> nn.Module:
    """Replace ``model``'s ``nn.Linear``/``nn.Conv2d`` layers (in place) by sparse twins.

    Args:
        density: fraction of each layer's weights to keep (a float), or ``{name: density}``.
        block: (BN, BK) block shape, (1, 1) for unstructured masks.
        include: module-name patterns (fnmatch) to sparsify; default every eligible layer.
            A pattern that matches no eligible layer is an error.
        exclude: module-name patterns to leave dense (e.g. the first and last layer).
        init: "magnitude" or "random" initial block selection.

    The layers keep their Parameter objects, so an optimizer built before still steps them.
    Returns ``model``.
    """
    eligible = {name: m for name, m in model.named_modules()
                if type(m) in (nn.Linear, nn.Conv2d) and name}
    if isinstance(exclude, str) or isinstance(include, str):
        raise TypeError("include/exclude must be sequences of name patterns, not a single string")
    for patterns, what in ((include or (), "include"), (exclude, "exclude")):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in eligible):
                raise ValueError(f"{what} pattern {p!r} matches no nn.Linear/nn.Conv2d in the model; "
                                 f"eligible layers: {sorted(eligible)}")
    densities = density if isinstance(density, dict) else None
    if densities is not None:
        unknown = set(densities) - set(eligible)
        if unknown:
            raise ValueError(f"density names unknown layers {sorted(unknown)}; eligible: {sorted(eligible)}")
    for name, module in eligible.items():
        if include is not None and not _matches(name, include):
            continue
        if _matches(name, exclude):
            continue
        if densities is not None and name not in densities:
            continue
        d = densities[name] if densities is not None else density
        cls = SparseLinear if isinstance(module, nn.Linear) else SparseConv2d
        sparse = cls.from_dense(module, density=d, block=block, init=init, generator=generator)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
    return model


def sparse_layers(model: nn.Module):
    """``(name, layer)`` for every SparseLinear/SparseConv2d in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))]


__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "sparse_layers", "weight_parameter"]
