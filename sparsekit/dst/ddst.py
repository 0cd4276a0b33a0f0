"""DDST (ADAPT): move D's density with the balance ratio, through D's engine.

Every ``adjust_every`` iterations, once the balance-ratio window is full:

- BR ≥ ``upper`` → D's density += ``step`` (new weights chosen by ``grow``, start at 0);
- BR ≤ ``lower`` → D's density −= ``step`` (global magnitude prune);

within ``[min_density, max_density]``. ADAPT_strict: ``cap`` lowers the upper bound, and at the
cap a BR ≥ ``upper`` runs one ordinary DST step of D (its engine's prune fraction at that
iteration) instead.
"""

from __future__ import annotations

import math

from .balance import BalanceRatio
from .. import checks
from ..checks import choice, number_in, positive_int
from .criteria import GROW_CRITERIA

_EPS = 1e-9


class DDSTController:
    """Adjusts ``engine``'s (D's) density from a :class:`BalanceRatio`; attaches itself to the
    engine, whose ``step(iteration)`` calls :meth:`on_iteration` on the first call of an iteration
    (so the adjustment uses the dense gradient just stepped).

    Args:
        engine: D's :class:`~sparsekit.dst.DynamicSparsity`.
        balance: the window the trainer feeds; default a new ``BalanceRatio(window)``.
        selection: "global" (ADAPT) or "per-layer" for the density changes.
    """

    def __init__(self, engine, *, lower=0.45, upper=0.55, step=0.05, min_density=0.05,
                 max_density=1.0, adjust_every=1000, cap=None, balance=None, window=100,
                 selection="global", grow="gradient"):
        if not (isinstance(lower, (int, float)) and isinstance(upper, (int, float)) and lower < upper):
            raise ValueError(f"lower must be below upper, got lower={lower!r}, upper={upper!r}")
        self.step_size = number_in(step, "step", 0.0, 1.0, low_open=True)
        self.min_density = checks.density(min_density, "min_density", allow_zero=False)
        self.max_density = checks.density(max_density, "max_density", allow_zero=False)
        if cap is not None:
            cap = checks.density(cap, "cap", allow_zero=False)
        if self.min_density > min(self.max_density, cap or 1.0):
            raise ValueError(f"min_density {min_density} is above the upper bound "
                             f"{min(self.max_density, cap or 1.0)}")
        self.lower, self.upper = float(lower), float(upper)
        self.cap, self.adjust_every = cap, positive_int(adjust_every, "adjust_every")
        self.selection = choice(selection, "selection", ("global", "per-layer"))
        self.grow = choice(grow, "grow", GROW_CRITERIA)
        self.balance = balance if balance is not None else BalanceRatio(window)
        self.engine = engine
        self.last_action: str | None = None
        engine.attach_controller(self)

    @property
    def upper_bound(self) -> float:
        return min(self.max_density, self.cap) if self.cap is not None else self.max_density

    def is_adjust(self, iteration: int) -> bool:
        return self.engine.schedule.before_stop(iteration) and iteration % self.adjust_every == 0

    def wants_dense_grad(self, iteration: int) -> bool:
        """Adjustments may grow by gradient (or, at the strict cap, run the engine's DST step)."""
        gradient = self.grow == "gradient" or (self.cap is not None and self.engine.grow == "gradient")
        return gradient and self.is_adjust(iteration)

    def on_iteration(self, iteration: int):
        """Called by the engine on the first call of ``iteration``; adjusts when scheduled and
        the window is full. Returns the action taken, or None."""
        if not self.is_adjust(iteration) or not self.balance.full:
            return None
        return self.adjust(self.balance.value, iteration)

    def adjust(self, br: float, iteration: int | None = None) -> str:
        """One DDST decision for balance ratio ``br``: "grow", "prune", "dst" (strict, at the cap)
        or "hold". ``iteration`` sets the DST fraction of the strict variant's step."""
        density = self.engine.density
        action = "hold"
        if math.isnan(br):
            pass
        elif br >= self.upper:
            if density < self.upper_bound - _EPS:
                self.engine.set_density(min(density + self.step_size, self.upper_bound),
                                        selection=self.selection, grow=self.grow)
                action = "grow"
            elif self.cap is not None:
                self.engine.prune_and_regrow(iteration=iteration)
                action = "dst"
        elif br <= self.lower and density > self.min_density + _EPS:
            self.engine.set_density(max(density - self.step_size, self.min_density),
                                    selection=self.selection, grow=self.grow)
            action = "prune"
        self.last_action = action
        return action

    def state_dict(self) -> dict:
        return {"balance": self.balance.state_dict(), "last_action": self.last_action}

    def load_state_dict(self, state: dict):
        self.balance.load_state_dict(state["balance"])
        self.last_action = state["last_action"]
