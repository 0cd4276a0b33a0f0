"""Dynamic sparse training for sparsekit layers (DESIGN.md §4).

- :class:`DynamicSparsity` (engine.py) — one network's masks: ERK/uniform budgets, prune/regrow
  on a schedule (SET, RigL), per-layer or global selection, exact element budgets, EMA sync,
  metrics, state_dict.
- :class:`BalanceRatio` (balance.py) and :class:`DDSTController` (ddst.py) — ADAPT's balance
  ratio and D-density controller.
- :func:`imp_prune`, :func:`snapshot`, :func:`rewind_`, :class:`Ticket` (imp.py) — lottery tickets.
- :func:`get_preset` / ``PRESETS`` (presets.py) — the methods by name.
- distribution.py (ERK), schedule.py (when and how much), criteria.py (which blocks),
  layers.py (managed-layer handles), metrics.py (FLOPs bookkeeping).

Nothing here imports the GAN code.
"""

import warnings

from .balance import BalanceRatio
from .ddst import DDSTController
from .distribution import distribute_density, erk_densities, uniform_densities
from .engine import METHODS, DynamicSparsity
from .imp import Ticket, imp_prune, rewind_, snapshot
from .presets import PRESETS, DDSTPreset, IMPPreset, MethodPreset, NetworkPreset, get_preset
from .schedule import UpdateSchedule

__all__ = [
    "BalanceRatio",
    "DDSTController",
    "DDSTPreset",
    "DynamicSparsity",
    "IMPPreset",
    "METHODS",
    "MethodPreset",
    "NetworkPreset",
    "PRESETS",
    "Ticket",
    "UpdateSchedule",
    "distribute_density",
    "erk_densities",
    "get_preset",
    "imp_prune",
    "rewind_",
    "snapshot",
    "uniform_densities",
]


def __getattr__(name):
    if name == "layer_densities":  # the engine's method of that name means something else
        warnings.warn("sparsekit.dst.layer_densities is renamed distribute_density",
                      DeprecationWarning, stacklevel=2)
        return distribute_density
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
