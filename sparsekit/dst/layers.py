"""The layers an engine manages: finding them, converting them, and committing new masks.

A :class:`ManagedLayer` names one ``SparseLinear``/``SparseConv2d`` of a model. Its ``param`` is
the stored weight Parameter (``sparsekit.nn.weight_parameter``: under spectral norm the
parametrization's ``original``, never the computed weight) — what the optimizer steps and what
masks must zero. Layers are chosen as ``sparsify`` chooses them (``sparsekit.nn.select_layers``).
"""

from __future__ import annotations

import glob
from typing import NamedTuple

import torch
from torch import nn

from ..layout import BlockLayout
from ..nn import SparseConv2d, SparseLinear, base_type, select_layers, sparsify, weight_parameter

LAYER_TYPES = {"conv": (nn.Conv2d, SparseConv2d), "linear": (nn.Linear, SparseLinear)}


class ManagedLayer(NamedTuple):
    """A sparse layer of a model and its name there."""

    name: str
    module: nn.Module

    @property
    def layout(self) -> BlockLayout:
        return self.module.layout

    @property
    def param(self) -> nn.Parameter:
        return weight_parameter(self.module)

    @property
    def numel(self) -> int:
        return self.layout.numel

    def kept(self) -> int:
        """Elements inside kept blocks (a Python int: syncs)."""
        return int(self.layout.kept_numel())


def find_layers(model: nn.Module, layer_types=("conv", "linear"), include=None, exclude=()):
    """``{name: module}`` of the conv/linear layers (dense or sparse) to manage, in model order.

    ``layer_types`` ⊆ {"conv", "linear"}; ``include``/``exclude`` are fnmatch patterns of module
    names, each of which must match some conv/linear layer (``sparsekit.nn.select_layers``).
    """
    if isinstance(layer_types, str) or not layer_types or any(t not in LAYER_TYPES for t in layer_types):
        raise ValueError(f"layer_types must be a non-empty sequence drawn from {tuple(LAYER_TYPES)}, "
                         f"got {layer_types!r}")
    all_types = tuple(t for ts in LAYER_TYPES.values() for t in ts)
    # base_type: a layer under parametrized spectral norm has a generated subclass as its type
    eligible = {n: m for n, m in model.named_modules() if n and base_type(m) in all_types}
    left_out = select_layers(eligible, include, exclude)
    wanted = tuple(t for kind in layer_types for t in LAYER_TYPES[kind])
    chosen = {n: m for n, m in eligible.items() if not left_out[n] and base_type(m) in wanted}
    if not chosen:
        raise ValueError(f"no layer to manage: layer_types={tuple(layer_types)}, include={include}, "
                         f"exclude={exclude} leave none of {sorted(eligible)}")
    return chosen


def make_sparse(model: nn.Module, modules: dict, block) -> list[ManagedLayer]:
    """Convert the dense ones among ``modules`` to sparse twins (every block kept, same
    Parameters) and return handles in the given order. A sparse layer must already use ``block``."""
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
    layer.module.apply_mask_()
    if zero_new and bool(grown_blocks.any()):
        grown_mask = layer.layout.element_mask(grown_blocks)
        layer.param.masked_fill_(grown_mask, 0.0)
        reset_optimizer_state(optimizer, layer.param, grown_mask)
    sizes = layer.layout.block_numel()
    return int((sizes * grown_blocks).sum()), int((sizes * pruned_blocks).sum())
