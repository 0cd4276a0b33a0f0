"""Drop-in sparse layers and the whole-model ``sparsify``.

``SparseLinear`` / ``SparseConv2d`` hold a dense ``weight`` Parameter of the usual shape
(``[out, in]`` / ``[C_out, C_in, kh, kw]``, the latter in channels_last memory) whose pruned
entries are exactly zero, and a :class:`BlockLayout` child that says which blocks are kept. Their
``state_dict`` is the dense layer's plus ``layout.bitmap``; a dense checkpoint (no bitmap) loads
into a sparse layer and is masked with its current layout.

Spectral norm, in both of torch's styles, carries over (``from_dense``/``sparsify``): the raw
weight (``parametrizations.weight.original``, or the hook style's ``weight_orig``) stays the same
Parameter and is the one masked; the power-iteration vectors ``u``/``v`` are kept as they are;
σ is computed on the masked raw weight, and the raw weight's gradient is zero outside the kept
blocks (so an optimizer step keeps pruned entries at zero); the state_dict keys stay those of the
dense spectral-norm module. Weight norm and other parametrizations are refused, naming the layer.
"""

from __future__ import annotations

import fnmatch
import sys
import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

_HookSpectralNorm = sys.modules["torch.nn.utils.spectral_norm"].SpectralNorm

from .geometry import make_geometry
from . import checks
from .layout import BlockLayout, check_block
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


def _check_init(init):
    if init not in ("magnitude", "random"):
        raise ValueError(f"init must be 'magnitude' or 'random', got {init!r}")
    return init


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

    def _set_weight(self, weight, norm):
        """Hold ``weight`` (a Parameter) as ``weight``, or as ``weight_orig`` under hook-style
        spectral norm (whose pre-hook computes ``weight`` before every forward)."""
        if norm == "spectral_norm (hook)":
            self.register_parameter("weight_orig", weight)
        else:
            self.weight = weight

    def _init_layout(self, density, init, generator=None):
        """Choose the new layout's blocks in place (it keeps every block until then)."""
        density, init = checks.density(density), _check_init(init)
        if init == "magnitude":
            if density < 1.0:
                self.layout.keep_largest_(weight_parameter(self), density)
        else:  # draws even at density 1: the generator's stream stays the same
            self.layout.keep_random_(density, generator)
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


class _MaskedSpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization on the layer's masked weight: σ and the power
    iteration see pruned entries as zero, and their gradient is zero."""

    def forward(self, weight):
        return super().forward(weight.masked_fill(self.__dict__["_layout"].pruned_mask(), 0.0))


class _MaskedHookSpectralNorm(_HookSpectralNorm):
    """torch's hook-style spectral norm (``nn.utils.spectral_norm``) on the masked ``weight_orig``.

    Its ``compute_weight`` reads ``module.<name>_orig``; for that one call the entry is the masked
    view (a differentiable function of the same Parameter), so σ and the gradient both see the
    pruned entries as zero.
    """

    def compute_weight(self, module, do_power_iteration):
        key = self.name + "_orig"
        original = module._parameters[key]
        module._parameters[key] = original.masked_fill(module.layout.pruned_mask(), 0.0)
        try:
            return super().compute_weight(module, do_power_iteration)
        finally:
            module._parameters[key] = original


def _norm_hooks(module):
    """(the hook-style SpectralNorm on ``module``'s weight or None, its state-dict hook, its
    load-state-dict pre-hook) — the hooks unwrapped from torch's bookkeeping."""
    pre = [h for h in module._forward_pre_hooks.values()
           if isinstance(h, _HookSpectralNorm) and h.name == "weight"]
    if not pre:
        return None, None, None
    fn = pre[0]

    def owned(hooks):
        for h in hooks:
            h = getattr(h, "hook", h)  # load pre-hooks are wrapped
            if getattr(h, "fn", None) is fn:
                return h
        return None

    return (fn, owned(module._state_dict_hooks.values()),
            owned(module._load_state_dict_pre_hooks.values()))


def raw_weight(module):
    """``module``'s raw weight Parameter and a description of its weight reparametrization
    ("", "spectral_norm" or "spectral_norm (hook)"); raises ValueError for any other (weight norm,
    a custom parametrization) naming what it found."""
    name = type(module).__name__
    if parametrize.is_parametrized(module, "weight"):
        kinds = [type(p) for p in module.parametrizations.weight]
        if all(k in (_SpectralNorm, _MaskedSpectralNorm) for k in kinds) and len(kinds) == 1:
            return module.parametrizations.weight.original, "spectral_norm"
        raise ValueError(f"{name}: its weight carries the parametrization(s) "
                         f"{[k.__name__ for k in kinds]}; sparsekit supports spectral norm only "
                         "(a single torch.nn.utils.parametrizations.spectral_norm)")
    if parametrize.is_parametrized(module):
        raise ValueError(f"{name}: parametrized tensors {sorted(module.parametrizations.keys())} "
                         "other than the weight's spectral norm are not supported")
    fn, _, _ = _norm_hooks(module)
    if fn is not None:
        return module.weight_orig, "spectral_norm (hook)"
    if hasattr(module, "weight_g") or hasattr(module, "weight_orig"):
        raise ValueError(f"{name}: its weight carries a hook-style reparametrization other than "
                         "spectral norm (e.g. torch.nn.utils.weight_norm), which sparsekit does "
                         "not support; remove it or use spectral norm")
    return module.weight, ""


def _adopt_spectral_norm(dense, sparse, kind):
    """Move ``dense``'s spectral norm (same u/v, same raw Parameter) onto ``sparse``, masked."""
    if kind == "spectral_norm":
        sn = dense.parametrizations.weight[0]
        sn.__class__ = _MaskedSpectralNorm
        sn.__dict__["_layout"] = sparse.layout  # not a submodule: no state_dict keys
        # SN's right_inverse is the identity, so the original stays the same Parameter.
        parametrize.register_parametrization(sparse, "weight", sn, unsafe=True)
    elif kind == "spectral_norm (hook)":
        fn, state_hook, load_hook = _norm_hooks(dense)
        fn.__class__ = _MaskedHookSpectralNorm
        sparse.register_buffer("weight_u", dense.weight_u)
        sparse.register_buffer("weight_v", dense.weight_v)
        sparse.register_forward_pre_hook(fn)
        if state_hook is not None:
            sparse._register_state_dict_hook(state_hook)
        if load_hook is not None:
            sparse._register_load_state_dict_pre_hook(load_hook)
        with torch.no_grad():
            sparse.weight = fn.compute_weight(sparse, do_power_iteration=False).detach()


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
        if checks.density(density) < 1.0:
            self._init_layout(density, "random")

    @classmethod
    def from_dense(cls, module: nn.Linear, density=1.0, block=(32, 32), init="magnitude",
                   generator=None):
        """Wrap ``module``'s own Parameters (same objects) with a layout of ``density``.

        ``init``: "magnitude" keeps the largest-|w| blocks, "random" picks blocks at random.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module must be an nn.Linear, got {type(module).__name__}")
        weight, norm = raw_weight(module)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = module.in_features, module.out_features
        self._set_weight(weight, norm)
        self.bias = module.bias
        self.layout = BlockLayout(weight.shape, block, device=weight.device)
        self.register_load_state_dict_post_hook(_after_load)
        _adopt_spectral_norm(module, self, norm)
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
        if checks.density(density) < 1.0:
            self._init_layout(density, "random")

    def _setup(self, conv, upsample, block, weight=None, norm=""):
        geom = make_geometry(conv.stride, conv.padding, conv.dilation, upsample)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = geom.stride, geom.padding, geom.dilation
        self.upsample = geom.upsample
        weight = _keep_parameter(conv.weight if weight is None else weight, torch.channels_last)
        self._set_weight(weight, norm)
        self.bias = conv.bias
        self.layout = BlockLayout(weight.shape, block, device=weight.device)
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
        weight, norm = raw_weight(module)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(module, upsample, block, weight, norm)
        _adopt_spectral_norm(module, self, norm)
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


def select_layers(eligible, include=None, exclude=()) -> dict[str, str]:
    """``{name: why it is left out}`` for each name of ``eligible`` ("" where it is selected), in
    its order — the layer selection of ``sparsify`` and of the DST engine.

    ``include`` / ``exclude`` are sequences of fnmatch patterns of module names (``include``
    None: every layer). A single string, or a pattern that matches no eligible layer, is a
    ValueError naming it.
    """
    for patterns, what in ((include or (), "include"), (exclude, "exclude")):
        if isinstance(patterns, str):
            raise ValueError(f"{what} must be a sequence of layer-name patterns, not a single "
                             f"string ({patterns!r})")
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in eligible):
                raise ValueError(f"{what} pattern {p!r} matches no nn.Linear/nn.Conv2d in the "
                                 f"model; eligible layers: {sorted(eligible)}")
    return {n: "not matched by include" if include is not None and not _matches(n, include)
            else "excluded" if _matches(n, exclude) else "" for n in eligible}


class LayerReport(NamedTuple):
    """What ``sparsify`` did with one Linear/Conv2d-like layer."""

    name: str
    kind: str              # "Linear", "Conv2d", "ConvTranspose2d", ...
    sparse: bool
    density: Optional[float]  # kept fraction of the layer's elements (sparse layers)
    block: Optional[tuple]
    spectral_norm: str     # "", "spectral_norm" or "spectral_norm (hook)"
    reason: str            # why it stayed dense ("" when sparse)

    def __str__(self):
        if self.sparse:
            sn = f", {self.spectral_norm}" if self.spectral_norm else ""
            return (f"{self.name}: {self.kind} sparse, density {self.density:.3f}, "
                    f"block {self.block[0]}x{self.block[1]}{sn}")
        return f"{self.name}: {self.kind} dense ({self.reason})"


_CANDIDATES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Conv1d, nn.Conv3d, nn.Bilinear)


def base_type(module: nn.Module) -> type:
    """``module``'s class before any parametrization (torch swaps in a generated subclass)."""
    return parametrize.type_before_parametrizations(module)


def sparsify(model: nn.Module, density=1.0, block=(32, 32), include=None, exclude=(),
             init="magnitude", generator=None, return_report=False, verbose=False):
    """Replace ``model``'s ``nn.Linear``/``nn.Conv2d`` layers (in place) by sparse twins.

    Args:
        density: fraction of each layer's weights to keep (a float), or ``{name: density}``.
        block: (BN, BK) block shape, (1, 1) for unstructured masks.
        include: module-name patterns (fnmatch) to sparsify; default every eligible layer.
            A pattern that matches no eligible layer is an error.
        exclude: module-name patterns to leave dense (e.g. the first and last layer).
        init: "magnitude" or "random" initial block selection.
        return_report: also return a list of :class:`LayerReport`, one per weight layer of the
            model: which became sparse (density, block, spectral norm) and which stayed dense
            and why (excluded, not selected, an unsupported kind or option).
        verbose: print that report.

    Layers under spectral norm (either torch style) keep it (see the module docstring). The
    layers keep their Parameter objects, so an optimizer built before still steps them. A layer
    that the selection matches but that cannot be converted (groups > 1, a weight-norm hook, ...)
    stays dense with a warning naming it and why. Returns ``model`` (and the report).
    """
    candidates = {name: m for name, m in model.named_modules()
                  if name and issubclass(base_type(m), _CANDIDATES)
                  and not isinstance(m, (SparseLinear, SparseConv2d))}
    eligible = {n: m for n, m in candidates.items() if base_type(m) in (nn.Linear, nn.Conv2d)}
    if isinstance(exclude, str) or isinstance(include, str):
        raise TypeError("include/exclude must be sequences of name patterns, not a single string")
    left_out = select_layers(eligible, include, exclude)
    densities = density if isinstance(density, dict) else None
    if densities is not None:
        unknown = set(densities) - set(eligible)
        if unknown:
            raise ValueError(f"density names unknown layers {sorted(unknown)}; eligible: {sorted(eligible)}")
    # Arguments are checked here, once: the per-layer ValueErrors caught below must only ever be
    # about a layer (an option it has that cannot be converted), never about a bad argument.
    check_block(block)
    for d in (densities.values() if densities is not None else (density,)):
        checks.density(d)
    _check_init(init)
    report = []
    for name, module in candidates.items():
        kind = base_type(module).__name__

        def dense(reason, warn=False):
            report.append(LayerReport(name, kind, False, None, None, "", reason))
            if warn:
                warnings.warn(f"sparsify: {name} ({kind}) stays dense: {reason}", stacklevel=3)

        if name not in eligible:
            dense(f"{kind} layers are not supported (nn.Linear and nn.Conv2d are)",
                  warn=include is None or _matches(name, include))
            continue
        if left_out[name]:
            dense(left_out[name])
            continue
        if densities is not None and name not in densities:
            dense("no density given for it")
            continue
        d = densities[name] if densities is not None else density
        cls = SparseLinear if base_type(module) is nn.Linear else SparseConv2d
        try:
            sparse = cls.from_dense(module, density=d, block=block, init=init, generator=generator)
        except ValueError as e:  # an unsupported option of this layer: said, never skipped silently
            dense(str(e), warn=True)
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
        report.append(LayerReport(name, kind, True, sparse.layout.density(), sparse.layout.block,
                                  raw_weight(sparse)[1], ""))
    if verbose:
        print("sparsify:\n  " + "\n  ".join(str(r) for r in report))
    return (model, report) if return_report else model


def sparse_layers(model: nn.Module):
    """``(name, layer)`` for every SparseLinear/SparseConv2d in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))]


__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "sparse_layers", "select_layers",
           "weight_parameter", "raw_weight", "base_type", "LayerReport"]
