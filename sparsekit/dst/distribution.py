"""Per-layer densities from one global target: Erdős–Rényi-Kernel (ERK) or uniform.

Densities count **elements**. Inputs are ``{layer name: weight shape}`` with linear weights
``(out, in)`` and conv weights ``(c_out, c_in, kh, kw)``; outputs are ``{layer name: density}``
with ``Σ density_l · numel_l = density · Σ numel_l`` (up to float rounding).
"""

from __future__ import annotations

import math

DISTRIBUTIONS = ("erk", "uniform")


def erk_densities(shapes: dict[str, tuple], density: float) -> dict[str, float]:
    """ERK: ``density_l ∝ Σ(shape_l) / Π(shape_l)``, scaled to the global budget.

    A layer whose share would exceed 1 becomes dense and the others are rescaled; repeated until
    no layer exceeds 1 (RigL's procedure).
    """
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / numel[name] for name, shape in shapes.items()}
    total = sum(numel.values())
    dense: set[str] = set()
    scale = 0.0
    while len(dense) < len(shapes):
        budget = density * total - sum(numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        scale = budget / divisor
        over = {n for n in shapes if n not in dense and scale * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    return {n: 1.0 if n in dense else min(1.0, scale * raw[n]) for n in shapes}


def uniform_densities(shapes: dict[str, tuple], density: float) -> dict[str, float]:
    """Every layer at ``density``."""
    return {name: float(density) for name in shapes}


def distribute_density(shapes: dict[str, tuple], density: float,
                       distribution: str) -> dict[str, float]:
    """Spread the global ``density`` over the layers by ``distribution`` ("erk" or "uniform").

    (An engine's current per-layer densities are ``DynamicSparsity.layer_densities()``.)
    """
    if distribution == "erk":
        return erk_densities(shapes, density)
    if distribution == "uniform":
        return uniform_densities(shapes, density)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
