"""DynamicSparsity: one network's masks, kept within an element budget and moved on a schedule.

Usage (one engine per network; G and D each get their own)::

    engine = DynamicSparsity(G, opt_G, density=0.2, block=(16, 16), method="rigl", stop_at=steps)
    for it in range(steps):
        ...; opt_G.step(); engine.step(it)          # after every optimizer step

``step(it)`` re-zeroes pruned weights on every call; on the first call of a scheduled iteration
it prunes/regrows (using the ``.grad`` just stepped) and runs an attached DDST controller.
Gradient growth needs the dense dW of that step: the engine sets ``layout.dense_dw`` from the
first call of the iteration before an update until the update (``wants_dense_grad(it)`` tells a
trainer which iterations compute a dense dW, e.g. to replay a second CUDA graph).

Masks live in the layers' own ``state_dict`` (``layout.bitmap``); the engine's ``state_dict``
holds its counters, budgets, ever-active bitmaps, RNG state and an attached controller's state.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import weight_matrix_dims
from ..layout import check_block
from .. import checks
from ..checks import choice
from .criteria import (GROW_CRITERIA, fill_greedy, grow_scores, magnitude_scores, plan_prune_regrow,
                       plan_resize)
from .distribution import DISTRIBUTIONS, distribute_density
from ..nn import weight_parameter
from .layers import commit, find_layers, make_sparse
from .metrics import OutputPositions
from .schedule import UpdateSchedule

METHODS = ("static", "set", "rigl")
SELECTIONS = ("per-layer", "global")
_DEFAULT_GROW = {"static": "random", "set": "random", "rigl": "gradient"}


def _grid_blocks(shape, block):
    """Blocks in a weight's grid (see BlockLayout) without building a layout."""
    n, c_in, taps = weight_matrix_dims(shape)
    return -(-n // block[0]) * taps * -(-c_in // block[1])


class DynamicSparsity:
    """Sparsifies ``model``'s layers in place and keeps their masks (see the module docstring).

    Args:
        model: the network; its managed ``nn.Linear``/``nn.Conv2d`` become ``SparseLinear``/
            ``SparseConv2d`` (same Parameters, so ``optimizer`` keeps stepping them).
        optimizer: the network's optimizer (for resetting state at regrown entries); optional
            unless ``reset_optimizer_state``.
        density: fraction of the managed weights kept, in (0, 1].
        distribution: "erk" or "uniform" per-layer densities.
        block: (BN, BK) block shape; (1, 1) is unstructured.
        method: "static" (masks move only when asked), "set" (random regrowth) or "rigl"
            (gradient regrowth). Sets the defaults of ``grow`` and ``reset_optimizer_state``.
        update_every: ΔT, in the iterations passed to ``step``.
        prune_fraction: p0, the fraction of kept elements pruned per update at iteration 0.
        schedule: "cosine" (p0 → 0.005·p0 at ``stop_at``) or "constant".
        selection: "per-layer" (each layer keeps its budget) or "global" (one threshold).
        grow: "random" or "gradient"; default from ``method``.
        stop_at: no update at or after this iteration (required by the cosine schedule of a
            non-static method).
        include, exclude: fnmatch patterns of module names; ``layer_types`` ⊆ {"conv", "linear"}.
        reset_optimizer_state: zero optimizer state at regrown entries; default True for set/rigl
            when an optimizer is given.
        init: initial blocks, "random" (from ``seed``) or "magnitude".
        seed: seeds the engine's own generator (initial masks, random regrowth).
    """

    def __init__(self, model: nn.Module, optimizer=None, *, density, distribution="erk", block=(16, 16),
                 method="rigl", update_every=100, prune_fraction=0.3, schedule="cosine",
                 selection="per-layer", grow=None, stop_at=None, include=None, exclude=(),
                 layer_types=("conv", "linear"), reset_optimizer_state=None, init="random", seed=0):
        self.density = checks.density(density, allow_zero=False)
        self.distribution = choice(distribution, "distribution", DISTRIBUTIONS)
        self.block = check_block(block)
        self.method = choice(method, "method", METHODS)
        self.selection = choice(selection, "selection", SELECTIONS)
        self.grow = choice(grow if grow is not None else _DEFAULT_GROW[method], "grow", GROW_CRITERIA)
        choice(init, "init", ("random", "magnitude"))
        if method == "static" and schedule == "cosine" and stop_at is None:
            schedule = "constant"  # a static engine's schedule only serves explicit prune_and_regrow()
        self.schedule = UpdateSchedule(update_every, prune_fraction, schedule, stop_at)
        if reset_optimizer_state and optimizer is None:
            raise ValueError("optimizer is required when reset_optimizer_state=True")
        self.reset_optimizer_state = (method != "static" and optimizer is not None) \
            if reset_optimizer_state is None else bool(reset_optimizer_state)
        self.optimizer = optimizer

        modules = find_layers(model, layer_types, include, exclude)
        shapes = {n: tuple(weight_parameter(m).shape) for n, m in modules.items()}
        densities = distribute_density(shapes, self.density, self.distribution)
        for name, shape in shapes.items():
            if densities[name] < 1.0 and _grid_blocks(shape, self.block) < 2:
                raise ValueError(f"block {self.block} does not fit layer {name!r} of weight shape {shape}: "
                                 "the whole weight is one block, so it can only be all kept or all "
                                 "pruned; use a smaller block or exclude the layer")
        self.model = model
        self.layers = make_sparse(model, modules, self.block)
        self._by_name = {layer.name: layer for layer in self.layers}
        self.total_numel = sum(layer.numel for layer in self.layers)
        self._generator = torch.Generator().manual_seed(seed)
        self._positions = OutputPositions(model)

        self.targets = {layer.name: round(densities[layer.name] * layer.numel) for layer in self.layers}
        self.budget = sum(self.targets.values())
        for layer in self.layers:
            scores = (torch.rand(layer.layout.grid, generator=self._generator).to(layer.layout.bitmap.device)
                      if init == "random" else magnitude_scores(layer))
            bitmap = fill_greedy(scores.flatten(), layer.layout.block_numel().flatten(),
                                 torch.ones(layer.layout.capacity, dtype=torch.bool,
                                            device=scores.device), self.targets[layer.name])
            commit(layer, bitmap.reshape(layer.layout.grid), zero_new=False)
        self.ever_active = {layer.name: layer.layout.bitmap.clone() for layer in self.layers}
        self.controller = None
        self._emas: list[nn.Module] = []
        self._iteration: int | None = None
        self._dense_dw = False
        self.last_update: dict = {}

    def __repr__(self):
        return (f"DynamicSparsity(method={self.method!r}, density={self.density:.4g}, block={self.block}, "
                f"selection={self.selection!r}, grow={self.grow!r}, layers={list(self._by_name)})")

    @classmethod
    def from_preset(cls, model, optimizer, preset, network="G", **overrides):
        """An engine for ``network`` ("G" or "D") configured by a method preset (name or
        :class:`~sparsekit.dst.presets.MethodPreset`); ``overrides`` replace preset fields (e.g.
        ``block``, ``stop_at``, ``density``). None when the preset leaves that network dense."""
        from .presets import get_preset
        preset = get_preset(preset) if isinstance(preset, str) else preset
        if network not in ("G", "D"):
            raise ValueError(f"network must be 'G' or 'D', got {network!r}")
        config = preset.g if network == "G" else preset.d
        if config is None:
            return None
        return cls(model, optimizer, **{**config.engine_kwargs(), **overrides})

    # ------------------------------------------------------------------ the training-loop hook
    def step(self, iteration: int):
        """Call after every optimizer step with the current (generator) iteration.

        Re-zeroes pruned weights; on the first call of ``iteration`` runs the scheduled DDST
        adjustment and mask update. Returns a dict describing what changed, or None.
        """
        if isinstance(iteration, bool) or not isinstance(iteration, int):
            raise TypeError(f"iteration must be an int, got {type(iteration).__name__}")
        self.apply_masks_()
        if iteration == self._iteration:
            return None
        self._iteration = iteration
        event = {}
        if self.controller is not None:
            action = self.controller.on_iteration(iteration)
            if action is not None:
                event["ddst"] = action
        if self.method != "static" and self.schedule.is_update(iteration):
            event.update(self.prune_and_regrow(iteration=iteration))
        self._set_dense_dw(self.wants_dense_grad(iteration + 1))
        return event or None

    def wants_dense_grad(self, iteration: int) -> bool:
        """Whether the optimizer steps of ``iteration`` need a dense dW (gradient growth)."""
        dst = self.method != "static" and self.grow == "gradient" and self.schedule.is_update(iteration)
        ddst = self.controller is not None and self.controller.wants_dense_grad(iteration)
        return dst or ddst

    def _set_dense_dw(self, on: bool):
        self._dense_dw = on
        for layer in self.layers:
            layer.layout.dense_dw = on

    @torch.no_grad()
    def apply_masks_(self):
        """Zero every managed weight outside its kept blocks."""
        for layer in self.layers:
            layer.module.apply_mask_()

    # ------------------------------------------------------------------ mask changes
    def prune_and_regrow(self, fraction: float | None = None, iteration: int | None = None,
                         selection: str | None = None) -> dict:
        """Prune ``fraction`` of the kept elements by magnitude and regrow as many (``grow``).

        ``fraction`` None: the schedule's at ``iteration`` (its p0 if that is None too).

        Regrowth refills the pool's budget (the pruned count plus any earlier shortfall), never
        above it. ``selection`` overrides the engine's for this step: "global" on a per-layer
        engine redistributes the masks across layers once (per-layer budgets then follow).
        Returns (and keeps as ``last_update``) ``{"iteration", "fraction", "grown", "pruned",
        "mask_change"}``: element counts, and grown / kept before the update.
        """
        if fraction is None:
            fraction = (self.schedule.prune_fraction if iteration is None
                        else self.schedule.fraction(iteration))
        selection = choice(selection or self.selection, "selection", SELECTIONS)
        if selection == "global":
            pools = [(self.layers, self.budget)]
        else:  # dense and empty layers have nothing to move
            pools = [([layer], self.targets[layer.name]) for layer in self.layers
                     if 0 < self.targets[layer.name] < layer.numel]
        kept_before = self.kept()
        new = {}
        for pool, budget in pools:
            bitmaps = plan_prune_regrow(pool, fraction, budget, self._grow_score_fn(self.grow))
            new.update({layer.name: b for layer, b in zip(pool, bitmaps)})
        grown, pruned = self._commit(new)
        if selection == "global":
            self.targets = {layer.name: layer.kept() for layer in self.layers}
        self.last_update = {"iteration": iteration, "fraction": fraction, "grown": grown, "pruned": pruned,
                            "mask_change": grown / max(kept_before, 1)}
        return dict(self.last_update)

    def set_density(self, density: float, selection: str | None = None, grow: str | None = None) -> dict:
        """Move the managed density to ``density``: prune by magnitude or grow (new weights at 0).

        ``selection`` "global" moves one budget over all layers; "per-layer" gives each layer its
        ``distribution`` density at the new target. Defaults: the engine's selection and grow.
        """
        density = checks.density(density, allow_zero=False)
        selection = choice(selection or self.selection, "selection", SELECTIONS)
        if selection == "global":
            budget = round(density * self.total_numel)
        else:
            shapes = {layer.name: layer.layout.weight_shape for layer in self.layers}
            dens = distribute_density(shapes, density, self.distribution)
            budget = {layer.name: round(dens[layer.name] * layer.numel) for layer in self.layers}
        stats = self.resize(budget, grow=grow)
        self.density = density
        return stats

    def resize(self, budget, grow: str | None = None) -> dict:
        """Keep ``budget`` elements: an int (one global pool) or ``{layer name: elements}``.

        Shrinking prunes the lowest-magnitude blocks; growing adds the best blocks by ``grow``.
        Never above a budget; under it by less than one block.
        """
        grow = choice(grow or self.grow, "grow", GROW_CRITERIA)
        score_fn = self._grow_score_fn(grow)
        if isinstance(budget, dict):
            unknown = set(budget) - set(self._by_name)
            if unknown:
                raise ValueError(f"budget names unknown layers {sorted(unknown)}; "
                                 f"managed: {sorted(self._by_name)}")
            new = {n: plan_resize([self._by_name[n]], int(b), score_fn)[0] for n, b in budget.items()}
        else:
            new = dict(zip(self._by_name, plan_resize(self.layers, int(budget), score_fn)))
        grown, pruned = self._commit(new)
        if isinstance(budget, dict):
            self.targets.update({n: int(b) for n, b in budget.items()})
        else:
            self.targets = {layer.name: layer.kept() for layer in self.layers}
        self.budget = sum(self.targets.values()) if isinstance(budget, dict) else int(budget)
        self.density = self.budget / self.total_numel
        return {"grown": grown, "pruned": pruned}

    @torch.no_grad()
    def resync(self):
        """Adopt the layers' current layouts (installed from outside the engine, e.g. by a
        ``Ticket``) as the engine's budgets; re-mask the weights and any tracked EMA."""
        self.targets = {layer.name: layer.kept() for layer in self.layers}
        self.budget = sum(self.targets.values())
        self.density = self.budget / self.total_numel
        for layer in self.layers:
            self.ever_active[layer.name] |= layer.layout.bitmap
            layer.module.apply_mask_()
        for ema in self._emas:
            self.sync_ema(ema)

    def _grow_score_fn(self, grow):
        return lambda layer: grow_scores(layer, grow, self._generator)

    def _commit(self, bitmaps: dict) -> tuple[int, int]:
        optimizer = self.optimizer if self.reset_optimizer_state else None
        grown = pruned = 0
        for name, bitmap in bitmaps.items():
            g, p = commit(self._by_name[name], bitmap, optimizer=optimizer)
            grown, pruned = grown + g, pruned + p
            self.ever_active[name] |= self._by_name[name].layout.bitmap
        for ema in self._emas:
            self.sync_ema(ema)
        return grown, pruned

    # ------------------------------------------------------------------ EMA and controllers
    @torch.no_grad()
    def sync_ema(self, ema_model: nn.Module):
        """Give ``ema_model`` (a copy of the model) the model's layouts and zero its weights where
        the masks are off (so regrown entries start at 0 in the EMA too)."""
        for layer in self.layers:
            try:
                target = ema_model.get_submodule(layer.name)
            except AttributeError:
                raise ValueError(f"ema_model has no layer {layer.name!r}") from None
            param = weight_parameter(target)
            if tuple(param.shape) != layer.layout.weight_shape:
                raise ValueError(f"ema_model layer {layer.name!r} has weight shape {tuple(param.shape)}, "
                                 f"expected {layer.layout.weight_shape}")
            layout = getattr(target, "layout", None)
            if layout is not None and not torch.equal(layout.bitmap, layer.layout.bitmap):
                layout.update(layer.layout.bitmap)
            param.masked_fill_(layer.layout.pruned_mask().to(param.device), 0.0)

    def track_ema(self, ema_model: nn.Module):
        """Sync ``ema_model`` now and after every mask change."""
        self.sync_ema(ema_model)
        self._emas.append(ema_model)

    def attach_controller(self, controller):
        """Called by :class:`~sparsekit.dst.DDSTController`; ``step`` then runs it."""
        self.controller = controller

    # ------------------------------------------------------------------ metrics
    def kept(self) -> int:
        """Kept elements over all managed layers."""
        return sum(layer.kept() for layer in self.layers)

    def layer_densities(self) -> dict[str, float]:
        """Kept fraction of each managed layer now (``{name: density}``)."""
        return {layer.name: layer.kept() / layer.numel for layer in self.layers}

    def exploration_rate(self) -> float:
        """Share of the managed weights that have ever been active (ITOP's exploration rate)."""
        ever = sum(int((layer.layout.block_numel() * self.ever_active[layer.name]).sum())
                   for layer in self.layers)
        return ever / self.total_numel

    def flops_fraction(self) -> float:
        """Forward MACs of the model's conv/linear layers relative to dense (see ``dst.metrics``)."""
        return self._positions.flops_fraction({layer.name: layer.kept() for layer in self.layers})

    def metrics(self) -> dict[str, float]:
        """Flat dict for logging: density, exploration_rate, mask_change (last update),
        flops_fraction and ``density/<layer>``. Synchronises with the device."""
        out = {"density": self.kept() / self.total_numel, "exploration_rate": self.exploration_rate(),
               "mask_change": float(self.last_update.get("mask_change", 0.0)),
               "flops_fraction": self.flops_fraction()}
        out.update({f"density/{n}": d for n, d in self.layer_densities().items()})
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "iteration": self._iteration,
            "density": self.density,
            "budget": self.budget,
            "targets": dict(self.targets),
            "ever_active": {n: b.detach().cpu().clone() for n, b in self.ever_active.items()},
            "generator": self._generator.get_state(),
            "last_update": dict(self.last_update),
            "controller": self.controller.state_dict() if self.controller is not None else None,
        }

    def load_state_dict(self, state: dict):
        """Restore engine state; load the model's state_dict (which holds the masks) as well."""
        if set(state["targets"]) != set(self._by_name):
            raise ValueError(f"state is for layers {sorted(state['targets'])}, this engine manages "
                             f"{sorted(self._by_name)}")
        self._iteration = state["iteration"]
        self.density, self.budget = state["density"], state["budget"]
        self.targets = dict(state["targets"])
        for name, bitmap in state["ever_active"].items():
            self.ever_active[name] = bitmap.to(self._by_name[name].layout.bitmap.device).clone()
        self._generator.set_state(state["generator"])
        self.last_update = dict(state["last_update"])
        if state["controller"] is not None:
            if self.controller is None:
                raise ValueError("state has DDST controller state but no controller is attached")
            self.controller.load_state_dict(state["controller"])
        self._set_dense_dw(self._iteration is not None and self.wants_dense_grad(self._iteration + 1))
        self.apply_masks_()
