"""Backends: the kernel implementations ``sparsekit.ops`` dispatches between, found by looking.

A backend is one module (or package) of this folder that defines ``BACKEND``, an instance of a
:class:`~sparsekit.backends.base.Backend` subclass: its name, the device types ``auto`` may pick
it for and its priority there, what it can run, and three launchers (see ``base.py``, which also
writes the six ops once for all of them). Nothing else names a backend: :func:`names` lists what
this folder holds, ``auto``'s order follows the declarations (:func:`serving`; on CUDA the
measured table of ``routing`` may put another one first), and ``sparsekit.BACKENDS``,
``python -m sparsekit.info`` and the trainer's ``--backend`` read :func:`names`.

``reference`` (masked dense torch, ``FALLBACK``) is the oracle every backend is tested against and
``auto``'s announced fallback; ``auto`` never picks it by priority.

Modules here import without their kernels' dependencies (an extension, triton); :func:`load`
loads a backend on first use and raises :class:`BackendUnavailable` saying why it cannot run.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from .base import OPS, Backend, BackendUnavailable, BlockIndex

FALLBACK = "reference"

__all__ = ["FALLBACK", "OPS", "Backend", "BackendUnavailable", "BlockIndex", "availability",
           "declared", "load", "names", "serving"]


@functools.cache
def declared() -> dict[str, Backend]:
    """``{name: BACKEND}`` of every backend module here (loaded or not), in :func:`names` order."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        backend = getattr(importlib.import_module(f"{__name__}.{module.name}"), "BACKEND", None)
        if backend is None:  # a helper module (base, problem, routing)
            continue
        if not isinstance(backend, Backend) or backend.name != module.name:
            raise TypeError(f"{__name__}.{module.name}.BACKEND must be a Backend named "
                            f"{module.name!r}, got {backend!r}")
        found[backend.name] = backend
    if FALLBACK not in found:
        raise RuntimeError(f"the {FALLBACK!r} backend (auto's fallback) is missing")
    # the fallback first, then grouped by the devices they serve, higher priority first
    order = sorted(found.values(), key=lambda b: (b.name != FALLBACK, b.device_types, -b.priority,
                                                  b.name))
    return {b.name: b for b in order}


def names() -> tuple[str, ...]:
    """Every backend's name: the fallback first, then by device types served and priority."""
    return tuple(declared())


@functools.cache
def serving(device_type: str) -> tuple[str, ...]:
    """Backends ``auto`` may pick for tensors on ``device_type``, highest priority first."""
    backends = [b for b in declared().values() if device_type in b.device_types]
    return tuple(b.name for b in sorted(backends, key=lambda b: -b.priority))


_loaded: dict[str, Backend] = {}


def load(name: str) -> Backend:
    """Backend ``name``, loaded (once); raises BackendUnavailable saying why it cannot run here,
    or ValueError for an unknown name or a bad setting (e.g. ``SPARSEKIT_CPU_ISA``)."""
    backend = _loaded.get(name)  # dispatch calls this for every op: the common case first
    if backend is not None:
        return backend
    backends = declared()
    if name not in backends:
        raise ValueError(f"backend must be one of {names()} or 'auto', got {name!r}")
    try:
        backends[name].load()
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} could not be loaded: {e}") from e
    _loaded[name] = backends[name]
    return backends[name]


def availability(name: str) -> tuple[bool, str]:
    """(available, reason) for ``sparsekit.info``."""
    try:
        load(name)
        return True, ""
    except (BackendUnavailable, ValueError) as e:  # ValueError: a bad SPARSEKIT_* setting
        return False, str(e)
