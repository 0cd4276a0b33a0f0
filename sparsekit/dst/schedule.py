"""When mask updates fire and what fraction of the kept weights they move.

Iterations are the caller's unit — generator iterations in a GAN — so a network stepped several
times per iteration (D's n_dis steps) updates no more often than one stepped once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..checks import choice, number_in, positive_int

SCHEDULES = ("cosine", "constant")
MIN_FRACTION_RATIO = 0.005  # cosine floor: eta_min = 0.005 · p0, as the papers' CosineAnnealing


@dataclass(frozen=True)
class UpdateSchedule:
    """Updates at iterations ``t`` with ``0 < t < stop_at`` and ``t % update_every == 0``.

    ``fraction(t)``: ``prune_fraction`` (constant) or a cosine from ``prune_fraction`` at 0 to
    ``0.005 · prune_fraction`` at ``stop_at`` (cosine needs ``stop_at``).
    """

    update_every: int
    prune_fraction: float
    kind: str = "cosine"
    stop_at: int | None = None

    def __post_init__(self):
        positive_int(self.update_every, "update_every")
        number_in(self.prune_fraction, "prune_fraction", 0.0, 1.0)
        choice(self.kind, "schedule", SCHEDULES)
        if self.stop_at is not None:
            positive_int(self.stop_at, "stop_at")
        if self.kind == "cosine" and self.stop_at is None:
            raise ValueError("stop_at is required with schedule='cosine' (the cosine decays to it); "
                             "pass stop_at=<total iterations> or use schedule='constant'")

    def before_stop(self, iteration: int) -> bool:
        """True for ``0 < iteration < stop_at`` (no change at the first or the last step)."""
        return iteration > 0 and (self.stop_at is None or iteration < self.stop_at)

    def is_update(self, iteration: int) -> bool:
        return self.before_stop(iteration) and iteration % self.update_every == 0

    def fraction(self, iteration: int) -> float:
        if self.kind == "constant":
            return float(self.prune_fraction)
        low = MIN_FRACTION_RATIO * self.prune_fraction
        progress = min(max(iteration / self.stop_at, 0.0), 1.0)
        return low + (self.prune_fraction - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
