"""Backends: modules that each export the same six kernels and an ``unsupported`` predicate.

Every backend module defines::

    unsupported(op, x, weight, idx, geom=None) -> str | None   # None: it can run this call
    linear_fwd(x, weight, bias, idx) -> y                      # x [M, K], y [M, N]
    linear_dx(dy, weight, idx) -> dx                           # dy [M, N], dx [M, K]
    linear_dw(dy, x, weight, idx, dense_dw) -> dw              # dw like weight
    conv2d_fwd(x, weight, bias, idx, geom) -> y                # NHWC x [B, C_in, H, W]
    conv2d_dx(dy, weight, idx, geom, input_hw) -> dx           # dx [B, C_in, H, W] NHWC
    conv2d_dw(dy, x, weight, idx, geom, dense_dw) -> dw

where ``idx`` is a :class:`BlockIndex` and ``geom`` a :class:`sparsekit.geometry.ConvGeometry`.
A backend may also define ``auto_declines(op, x, weight, idx, geom=None) -> str | None``: why
``auto`` should run a call it supports as masked dense torch instead (it would be slower than
dense there); a forced backend ignores it.
``op`` names one of the six. Inputs arrive contiguous (linear) or channels_last (conv) with the
weight in channels_last; only ``sparsekit.ops`` dispatches between backends.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

NAMES = ("reference", "cpu", "triton", "cuda")
OPS = ("linear_fwd", "linear_dx", "linear_dw", "conv2d_fwd", "conv2d_dx", "conv2d_dw")


class BlockIndex(NamedTuple):
    """A layout's tensors and block shape as the kernels see them (see ``sparsekit.layout``)."""

    bitmap: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    block_row: torch.Tensor
    block_n: int
    block_k: int


class BackendUnavailable(RuntimeError):
    """The backend cannot be used in this process (not built, no device, ...)."""


_loaded: dict[str, object] = {}


def load(name):
    """Import backend ``name`` (lazily, once); raises BackendUnavailable saying why it cannot run."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES} or 'auto', got {name!r}")
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(f"{__name__}.{name}")
        except BackendUnavailable:
            raise
        except ImportError as e:
            raise BackendUnavailable(f"backend {name!r} could not be imported: {e}") from e
    return _loaded[name]


def availability(name):
    """(available, reason) for ``sparsekit.info``."""
    try:
        load(name)
        return True, ""
    except (BackendUnavailable, ValueError) as e:  # ValueError: a bad SPARSEKIT_* setting
        return False, str(e)
