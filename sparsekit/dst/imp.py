"""Lottery tickets (GAN-LTH): iterative magnitude pruning, rewinding, and tickets on disk.

One IMP round: train; ``imp_prune`` 20 % of the remaining weights by magnitude (global or
per-layer); ``rewind_`` survivors to a snapshot taken at the rewind step (0 = init) — and D to its
initial weights; retrain with a fresh optimizer. After k rounds the density is 0.8^k.

A :class:`Ticket` is the masks (``{layer name: bool bitmap [R, C]}`` and the block shape) plus the
rewind weights (a state_dict without layout bitmaps); it saves and loads with ``torch.save``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import sparse_layers
from ..checks import choice, number_in
from .criteria import plan_resize
from .layers import ManagedLayer, commit, make_sparse

_BITMAP_SUFFIX = "layout.bitmap"


def imp_prune(target, rate: float = 0.2, scope: str = "global") -> dict:
    """Prune ``rate`` of the remaining weights by block magnitude (mean |w|).

    ``target``: a ``DynamicSparsity`` (its managed layers and budgets follow) or a model (its
    sparse layers). ``scope``: "global" (one threshold over all layers) or "per-layer".
    Returns ``{"kept": elements, "density": kept / managed elements}``.
    """
    from .engine import DynamicSparsity

    rate = number_in(rate, "rate", 0.0, 1.0, high_open=True)
    choice(scope, "scope", ("global", "per-layer"))
    if isinstance(target, DynamicSparsity):
        layers = target.layers
        kept = {layer.name: layer.kept() for layer in layers}
        budget = (round(sum(kept.values()) * (1.0 - rate)) if scope == "global"
                  else {n: round(k * (1.0 - rate)) for n, k in kept.items()})
        target.resize(budget)
    elif isinstance(target, nn.Module):
        layers = [ManagedLayer(n, m) for n, m in sparse_layers(target)]
        if not layers:
            raise ValueError("target has no SparseLinear/SparseConv2d layers to prune; sparsify it "
                             "first (sparsekit.sparsify(model, density=1.0, block=...))")
        pools = [layers] if scope == "global" else [[layer] for layer in layers]
        for pool in pools:
            budget = round(sum(layer.kept() for layer in pool) * (1.0 - rate))
            for layer, bitmap in zip(pool, plan_resize(pool, budget, grow_score_fn=None)):
                commit(layer, bitmap)
    else:
        raise TypeError(f"target must be a DynamicSparsity or an nn.Module, got {type(target).__name__}")
    kept_total = sum(layer.kept() for layer in layers)
    return {"kept": kept_total, "density": kept_total / sum(layer.numel for layer in layers)}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights and buffers (its state_dict without layout bitmaps)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(_BITMAP_SUFFIX)}


@torch.no_grad()
def rewind_(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``weights`` (from :func:`snapshot`, dense or sparse model alike) keeping the current
    masks: survivors take their rewind values, pruned entries stay exactly 0."""
    model.load_state_dict(weights, strict=True)
    for name, module in sparse_layers(model):
        module.apply_mask_()
    return model


@dataclass
class Ticket:
    """Masks + rewind weights of a (sparse) network."""

    masks: dict[str, torch.Tensor]
    block: tuple[int, int]
    weights: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, weights: dict[str, torch.Tensor], **meta) -> "Ticket":
        """The masks of ``model``'s sparse layers with ``weights`` (a :func:`snapshot`) to rewind to."""
        layers = sparse_layers(model)
        if not layers:
            raise ValueError("model has no sparse layers: a ticket needs masks")
        blocks = {m.layout.block for _, m in layers}
        if len(blocks) != 1:
            raise ValueError(f"a ticket needs one block shape, the model's sparse layers use "
                             f"{sorted(blocks)}")
        masks = {n: m.layout.bitmap.detach().cpu().clone() for n, m in layers}
        weights = {k: v.detach().cpu().clone() for k, v in weights.items()}
        return cls(masks, blocks.pop(), weights, dict(meta))

    def density(self) -> float:
        """Fraction of kept blocks (equal to the element density when blocks are uniform)."""
        kept = sum(int(m.sum()) for m in self.masks.values())
        return kept / sum(m.numel() for m in self.masks.values())

    @torch.no_grad()
    def apply_(self, target, rewind: bool = True) -> nn.Module:
        """Install the masks in ``target`` — a model (its dense layers of those names are
        sparsified) or a ``DynamicSparsity`` (its model; the engine then adopts the masks as its
        budgets and re-masks a tracked EMA) — and, with ``rewind``, load the rewind weights;
        ``rewind=False`` keeps the model's own weights (a random-ticket baseline). Returns the
        model."""
        from .engine import DynamicSparsity

        engine = target if isinstance(target, DynamicSparsity) else None
        model = engine.model if engine is not None else target
        modules = {}
        for name in self.masks:
            try:
                modules[name] = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"model has no layer {name!r} named in the ticket") from None
        layers = make_sparse(model, modules, self.block)
        if rewind:
            model.load_state_dict(self.weights, strict=True)  # copies onto the model's devices
        for layer in layers:
            commit(layer, self.masks[layer.name].to(layer.layout.bitmap.device), zero_new=False)
        if engine is not None:
            engine.resync()
        return model

    def save(self, path):
        torch.save({"masks": self.masks, "block": list(self.block), "weights": self.weights,
                    "meta": self.meta}, path)

    @classmethod
    def load(cls, path) -> "Ticket":
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(data["masks"], tuple(data["block"]), data["weights"], data["meta"])
