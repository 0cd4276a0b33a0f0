"""The layers an engine manages: finding them, converting them, masking and rewriting them.

A :class:`ManagedLayer` is a handle on one ``SparseLinear``/``SparseConv2d`` of a model. Its
``param`` is the stored weight Parameter (``sparsekit.nn.weight_parameter``: under spectral norm
the parametrization's ``original``, never the computed weight) — what the optimizer steps and
what masks must zero.
"""

from __future__ import annotations

import fnmatch
import glob

import torch
from torch import nn

from ..layout import element_mask
from ..nn import SparseConv2d, SparseLinear, base_type, sparsify, weight_parameter

LAYER_TYPES = {"conv": (nn.Conv2d, SparseConv2d), "linear": (nn.Linear, SparseLinear)}


class ManagedLayer:
    """A sparse layer of a model, by name, with cached per-layout tensors."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self._sizes = None

    @property
    def layout(self):
        return self.module.layout

    @property
    def param(self) -> nn.Parameter:
        return weight_parameter(self.module)

    @property
    def numel(self) -> int:
        return self.layout.numel

    @property
    def block_sizes(self) -> torch.Tensor:
        """int64 ``[R, C]``: elements per block (cached; shapes never change)."""
        if self._sizes is None or self._sizes.device != self.layout.bitmap.device:
            self._sizes = self.layout.block_numel()
        return self._sizes

    def kept(self) -> int:
        return int((self.block_sizes * self.layout.bitmap).sum())

    def apply_mask_(self):
        """Zero pruned entries of the stored weight (the layer's own masking)."""
        self.module.apply_mask_()

    def expand(self, bitmap: torch.Tensor) -> torch.Tensor:
        """Element mask (weight shape) of a block bitmap ``[R, C]``."""
        return element_mask(bitmap, self.layout.weight_shape, self.layout.block)


def _check_patterns(patterns, what, names):
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        raise ValueError(f"{what} must be a sequence of layer-name patterns, not a single string")
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise ValueError(f"{what} pattern {p!r} matches no conv/linear layer of the model; "
                             f"layers: {sorted(names)}")
    return tuple(patterns)


def find_layers(model: nn.Module, layer_types=("conv", "linear"), include=None, exclude=()):
    """``{name: module}`` of the conv/linear layers (dense or sparse) to manage, in model order.

    ``layer_types`` ⊆ {"conv", "linear"}; ``include``/``exclude`` are fnmatch patterns of module
    names, each of which must match some conv/linear layer.
    """
    if isinstance(layer_types, str) or not layer_types or any(t not in LAYER_TYPES for t in layer_types):
        raise ValueError(f"layer_types must be a non-empty sequence drawn from {tuple(LAYER_TYPES)}, "
                         f"got {layer_types!r}")
    all_types = tuple(t for ts in LAYER_TYPES.values() for t in ts)
    # base_type: a layer under parametrized spectral norm has a generated
    # subclass as its type
    eligible = {n: m for n, m in model.named_modules() if n and base_type(m) in all_types}
    include = _check_patterns(include, "include", eligible)
    exclude = _check_patterns(exclude, "exclude", eligible)
    wanted = tuple(t for kind in layer_types for t in LAYER_TYPES[kind])
    chosen = {n: m for n, m in eligible.items()
              if base_type(m) in wanted
              and (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
              and not any(fnmatch.fnmatchcase(n, p) for p in exclude)}
    if not chosen:
        raise ValueError(f"no layer to manage: layer_types={tuple(layer_types)}, include={include}, "
                         f"exclude={exclude} leave none of {sorted(eligible)}")
    return chosen


def make_sparse(model: nn.Module, modules: dict, block) -> list[ManagedLayer]:
    """Convert the dense ones among ``modules`` to sparse twins (density 1, same Parameters) and
    return handles in the given order. A sparse layer must already use ``block``."""
    dense = [n for n, m in modules.items() if base_type(m) in (nn.Conv2d, nn.Linear)]
    for name, m in modules.items():
        if name not in dense and m.layout.block != tuple(block):
            raise ValueError(f"block {tuple(block)} differs from the block {m.layout.block} of the "
                             f"already sparse layer {name!r}")
    if dense:
        # include: the caller chose these layers; sparsify is not to warn about the model's others
        # (a depthwise or transposed conv the engine does not manage stays dense by design).
        sparsify(model, density={n: 1.0 for n in dense}, block=tuple(block),
                 include=[glob.escape(n) for n in dense])
    return [ManagedLayer(n, model.get_submodule(n)) for n in modules]


def reset_optimizer_state(optimizer, param, element_mask_: torch.Tensor):
    """Zero every per-element state tensor of ``param`` (Adam moments, momentum) at the mask."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(element_mask_, 0)


@torch.no_grad()
def commit(layer: ManagedLayer, bitmap: torch.Tensor, *, zero_new: bool = True, optimizer=None):
    """Install ``bitmap`` in ``layer``: prune (zero) dropped entries; newly active entries start at
    exactly 0 (``zero_new``) with their optimizer state zeroed (``optimizer`` given).

    Returns ``(grown, pruned)`` element counts (ints).
    """
    old = layer.layout.bitmap.clone()
    new = bitmap.to(torch.bool)
    grown_blocks, pruned_blocks = new & ~old, old & ~new
    layer.layout.update(new)
    layer.apply_mask_()
    if zero_new and bool(grown_blocks.any()):
        grown_mask = layer.expand(grown_blocks)
        layer.param.masked_fill_(grown_mask, 0.0)
        reset_optimizer_state(optimizer, layer.param, grown_mask)
    sizes = layer.block_sizes
    return int((sizes * grown_blocks).sum()), int((sizes * pruned_blocks).sum())
