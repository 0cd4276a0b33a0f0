"""Which blocks to prune and which to grow: block scores and budgeted greedy selection.

Everything here is side-effect free. A *pool* is a list of :class:`ManagedLayer` that share one
selection: a single layer (per-layer selection) or every managed layer (global selection — one
threshold over all of them). Per pool, block-level tensors are flattened and concatenated in
layer order (each layer's ``[R, C]`` grid, row-major), selections are made on the flat vectors,
and the result is split back into one ``[R, C]`` bool bitmap per layer.

Scores are per block (``layout.reduce_blocks(·, "mean")``), so narrow edge blocks compare fairly:
magnitude ``mean |w|`` for pruning, ``mean |dL/dw|`` of the dense gradient (RigL) or uniform noise
(SET) for growth. Budgets count elements (``layout.block_numel()``).
"""

from __future__ import annotations

import torch


# ---------------------------------------------------------------------------------- block scores
def magnitude_scores(layer) -> torch.Tensor:
    """float32 ``[R, C]``: mean |w| per block (what pruning removes the lowest of)."""
    return layer.layout.reduce_blocks(layer.param.detach().abs(), "mean")


def gradient_scores(layer, generator=None) -> torch.Tensor:
    """float32 ``[R, C]``: mean |grad| per block (zeros if the weight has no grad); RigL's
    criterion, needing the dense dW of the update step. (``generator`` is not used.)"""
    grad = layer.param.grad
    if grad is None:
        return torch.zeros(layer.layout.grid, device=layer.layout.bitmap.device)
    return layer.layout.reduce_blocks(grad.detach().abs(), "mean")


def random_scores(layer, generator: torch.Generator) -> torch.Tensor:
    """float32 ``[R, C]`` uniform noise drawn from ``generator`` (a CPU generator)."""
    return torch.rand(layer.layout.grid, generator=generator).to(layer.layout.bitmap.device)


#: Growth criteria by name (``grow=``): ``score(layer, generator) -> [R, C]``, higher grows first.
#: A new criterion is one function here and its entry.
GROW_SCORES = {"random": random_scores, "gradient": gradient_scores}
GROW_CRITERIA = tuple(GROW_SCORES)


def grow_scores(layer, grow: str, generator: torch.Generator) -> torch.Tensor:
    if grow not in GROW_SCORES:
        raise ValueError(f"grow must be one of {GROW_CRITERIA}, got {grow!r}")
    return GROW_SCORES[grow](layer, generator)


# ---------------------------------------------------------------------------------- selection
def fill_greedy(scores, sizes, candidates, budget: int, skip: bool = True) -> torch.Tensor:
    """Candidates in descending score order (ties: lower index first) while the total size ≤ budget.

    ``scores`` float ``[B]``, ``sizes`` int64 ``[B]``, ``candidates`` bool ``[B]``; returns bool
    ``[B]``. ``skip=False`` stops at the first block that does not fit (a score-order prefix);
    ``skip=True`` passes over it and keeps filling with smaller blocks, so the shortfall is under
    the smallest remaining candidate. With equal sizes both are exact.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    sizes_o, open_o = sizes[order], candidates[order].clone()
    taken_o = torch.zeros_like(open_o)
    remaining = int(budget)
    while remaining > 0:
        eligible = open_o & (sizes_o <= remaining) if skip else open_o
        take = eligible & (torch.cumsum(sizes_o * eligible, 0) <= remaining)
        if not take.any():
            break
        taken_o |= take
        open_o &= ~take
        remaining -= int((sizes_o * take).sum())
        if not skip:
            break
    chosen = torch.zeros_like(taken_o)
    chosen[order] = taken_o
    return chosen


def cover_greedy(scores, sizes, candidates, need: int) -> torch.Tensor:
    """The fewest lowest-scoring candidates whose total size is ≥ ``need`` (all, if too few).

    Used where a budget must not be exceeded after removal (shrinking a density): the overshoot
    is under one block. Shapes as :func:`fill_greedy`.
    """
    order = torch.argsort(scores, stable=True)
    cand_o = candidates[order]
    sizes_o = sizes[order] * cand_o
    before = torch.cumsum(sizes_o, 0) - sizes_o
    chosen = torch.zeros_like(cand_o)
    chosen[order] = cand_o & (before < int(need))
    return chosen


# ---------------------------------------------------------------------------------- pools
def _flat(pool, fn):
    return torch.cat([fn(layer).flatten() for layer in pool])


def _split(flat, pool):
    parts = flat.split([layer.layout.capacity for layer in pool])
    return [p.reshape(layer.layout.grid) for p, layer in zip(parts, pool)]


def pool_sizes(pool) -> torch.Tensor:
    return _flat(pool, lambda layer: layer.layout.block_numel())


def plan_prune_regrow(pool, fraction: float, budget: int, grow_score_fn):
    """New bitmaps for one DST step of ``pool``.

    Prunes the lowest-magnitude kept blocks, at most ``round(fraction · kept)`` elements; then
    grows the highest-``grow_score_fn`` blocks among those inactive after pruning (a block pruned
    and regrown in the same step keeps its value, as in RigL) up to ``budget`` elements in all,
    never above. Returns a list of bool ``[R, C]``.
    """
    sizes = pool_sizes(pool)
    active = _flat(pool, lambda layer: layer.layout.bitmap)
    kept = int((sizes * active).sum())
    pruned = fill_greedy(-_flat(pool, magnitude_scores), sizes, active, round(fraction * kept), skip=False)
    after = active & ~pruned
    room = int(budget) - int((sizes * after).sum())
    grown = fill_greedy(_flat(pool, grow_score_fn), sizes, ~after, room)
    return _split(after | grown, pool)


def plan_resize(pool, budget: int, grow_score_fn):
    """New bitmaps with ``budget`` elements kept in ``pool``: prune lowest magnitude (never above
    the budget afterwards) or grow highest ``grow_score_fn`` (never above the budget)."""
    sizes = pool_sizes(pool)
    active = _flat(pool, lambda layer: layer.layout.bitmap)
    kept = int((sizes * active).sum())
    if budget < kept:
        active = active & ~cover_greedy(_flat(pool, magnitude_scores), sizes, active, kept - budget)
    elif budget > kept:
        active = active | fill_greedy(_flat(pool, grow_score_fn), sizes, ~active, budget - kept)
    return _split(active, pool)
