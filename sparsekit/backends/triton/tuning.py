"""Launch parameters for the Triton kernels: a table keyed by op, pixel count, block and dtype.

Kept apart from the kernels (as ``torch.sparse._triton_ops_meta`` does) so tuning never edits a
kernel. Everything here depends on shapes, the block and the dtype only — never on which blocks
are kept — so a layout update never changes a launch (no recompilation, CUDA-graph safe).

The GPU table is data: the ``triton`` section of ``sparsekit/backends/gpu_tuning.json`` (see
``backends.routing``), written by ``python -m benchmarks.tune_gpu`` from a sweep on the GPU. Its
keys are ``"op/side/size"``: op ``forward``, ``grad_input`` or ``grad_weight``; side the block
side class max(BN, BK) (16, 32, 64: wider blocks hold more accumulator and operand registers per
pixel row); size the dtype's bytes (4 for fp32, 2 for bf16/fp16). Each entry gives
``[BLOCK_M, num_warps, num_stages]`` for M ≤ SMALL_M pixel rows ("small") and above ("large").
Under the interpreter programs run one after another in Python, so one small config keeps CPU
test runs short.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..routing import tuning_file


class LaunchConfig(NamedTuple):
    block_m: int      # pixel rows per program (tl.dot needs >= 16)
    num_warps: int
    num_stages: int


INTERPRETER = LaunchConfig(block_m=32, num_warps=1, num_stages=1)
OPS = ("forward", "grad_input", "grad_weight")
SIDES = (16, 32, 64)
SMALL_M = 4096


def table_key(op, block_n, block_k, dtype: torch.dtype) -> str:
    """The tuning file's key for ``op`` with a ``block_n × block_k`` block in ``dtype``."""
    return f"{op}/{max(block_n, block_k)}/{dtype.itemsize}"


# dW (grad_weight.py): a 1-D grid of `items` programs, items = min(capacity · max_split,
# max(capacity, _DW_TARGET_ITEMS)) with max_split = max(1, tiles // _DW_MIN_TILES_PER_SPLIT).
# On the device each live block gets S = max(1, min(items // live, max_split)) programs, so the
# work follows the live count: at density 0.1 of a 4096-block grid the ~410 live blocks get
# S = 9 programs each (pixels permitting: every split keeps >= 4 pixel tiles) instead of 410
# programs working out of 4096 — ~3700 programs fill 132 SMs. Partials (only when max_split > 1)
# cost items × BN × BK fp32: at most max(capacity, 4096) blocks.
_DW_TARGET_ITEMS = 4096
_DW_MIN_TILES_PER_SPLIT = 4


def bucket(m):
    """M rounded up to a power of two (the key autotuners use, so nearby sizes share a config)."""
    return 1 << max(0, (int(m) - 1).bit_length())


def launch_config(op, m, block_n, block_k, dtype: torch.dtype, interpreted: bool) -> LaunchConfig:
    """Config for ``op`` ("forward", "grad_input", "grad_weight") over ``m`` pixel rows."""
    if interpreted:
        return INTERPRETER
    small, large = table_configs(table_key(op, block_n, block_k, dtype))
    return small if bucket(m) <= SMALL_M else large


def table_configs(key: str) -> tuple[LaunchConfig, LaunchConfig]:
    """(small-M, large-M) configs of the tuning file's Triton entry ``key`` ("op/side/size")."""
    entry = tuning_file()["triton"].get(key)
    if entry is None:
        raise ValueError(f"the GPU tuning file has no Triton entry {key!r} (sparsekit/backends/"
                         "gpu_tuning.json or SPARSEKIT_GPU_TUNING)")
    return LaunchConfig(*entry["small"]), LaunchConfig(*entry["large"])


def dw_work(pixel_tiles, capacity, interpreted: bool) -> tuple[int, int]:
    """(items, max_split) of the dW launch: its 1-D grid and the most programs per block.

    Shapes and capacity (full block grid) only, never the live block count, which the kernels
    read on the device to pick S = max(1, min(items // live, max_split)); live · S <= items.
    Under the interpreter items = 2 · capacity and max_split = min(2, pixel_tiles): S = 2 whenever
    there are two pixel tiles, so CPU tests exercise both the split and the direct-store path.
    """
    if interpreted:
        max_split, target = min(2, pixel_tiles), 2 * capacity
    else:
        max_split, target = max(1, pixel_tiles // _DW_MIN_TILES_PER_SPLIT), _DW_TARGET_ITEMS
    return min(capacity * max_split, max(capacity, target)), max_split
