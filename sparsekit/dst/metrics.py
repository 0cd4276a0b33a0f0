"""Cost bookkeeping: the output positions each conv/linear layer computes per sample.

A layer's forward MACs per sample are ``kept weights × output positions`` (conv: H_out·W_out;
linear: 1 per row). Positions are recorded by a forward hook on the first forward and the hook
then removes itself; until a forward has run every layer counts 1 position, i.e. the FLOPs
fraction falls back to a weight-count proxy. Backward (dX and kept-block dW) scales the same
way, so the forward ratio is also the training-step ratio outside dense-dW steps.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import base_type, weight_parameter
from .layers import LAYER_TYPES


class _RecordPositions:
    """Forward hook recording one layer's output positions, then removing itself. A class, not a
    closure, so a model carrying it can be pickled and deep-copied."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __call__(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() >= 2:
            per_row = output.shape[-1] if isinstance(module, LAYER_TYPES["linear"]) else output.shape[1]
            self.owner.positions[self.name] = max(1, output.numel() // (output.shape[0] * per_row))
        handle = self.owner._handles.pop(self.name, None)
        if handle is not None:
            handle.remove()


class OutputPositions:
    """``positions[name]``: output positions per sample of every conv/linear layer of ``model``."""

    def __init__(self, model: nn.Module):
        types = tuple(t for ts in LAYER_TYPES.values() for t in ts)
        self.modules = {n: m for n, m in model.named_modules() if n and base_type(m) in types}
        self.positions = {n: 1 for n in self.modules}
        self._handles = {n: m.register_forward_hook(_RecordPositions(self, n))
                         for n, m in self.modules.items()}

    def flops_fraction(self, kept: dict[str, int]) -> float:
        """Forward MACs relative to the dense model: ``kept`` elements of the managed layers, the
        full weight for every other conv/linear layer."""
        dense = sparse = 0
        for name, module in self.modules.items():
            numel = weight_parameter(module).numel()
            dense += numel * self.positions[name]
            sparse += kept.get(name, numel) * self.positions[name]
        return sparse / dense if dense else 1.0
