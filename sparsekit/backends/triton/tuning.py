"""Launch parameters for the Triton kernels: a table keyed by op, pixel count, block and dtype.

Kept apart from the kernels (as ``torch.sparse._triton_ops_meta`` does) so tuning never edits a
kernel. Everything here depends on shapes, the block and the dtype only — never on which blocks
are kept — so a layout update never changes a launch (no recompilation, CUDA-graph safe).

The GPU entries are starting points (BLOCK_M 32–128 pixel rows against the narrow sparse block)
that a benchmark sweep on the target GPU should refine. Under the interpreter programs run one
after another in Python, so one small config keeps CPU test runs short.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class LaunchConfig(NamedTuple):
    block_m: int      # pixel rows per program (tl.dot needs >= 16)
    num_warps: int
    num_stages: int


INTERPRETER = LaunchConfig(block_m=32, num_warps=1, num_stages=1)


def _gpu(block_m, num_warps):
    return LaunchConfig(block_m, num_warps, 2)


# (op, block side class, dtype size) -> (config for M <= SMALL_M, config above).
# "Block side class" is max(BN, BK): wider blocks hold more accumulator and operand registers per
# pixel row. Entries avoid register spills in the sm_90 compile (`cuobjdump -res-usage`, checked
# without a GPU); fp32 is IEEE, i.e. FMA dots, whose operands live in registers, so its dX takes
# 32-row tiles for wide blocks. Runtimes are unmeasured: refine with benchmarks on the GPU.
SMALL_M = 4096
GPU_TABLE = {
    ("forward", 16, 4): (_gpu(64, 4), _gpu(128, 8)),
    ("forward", 32, 4): (_gpu(64, 4), _gpu(128, 8)),
    ("forward", 64, 4): (_gpu(64, 8), _gpu(64, 8)),
    ("grad_input", 16, 4): (_gpu(64, 8), _gpu(128, 8)),
    ("grad_input", 32, 4): (_gpu(32, 8), _gpu(32, 8)),
    ("grad_input", 64, 4): (_gpu(32, 8), _gpu(32, 8)),
    ("grad_weight", 16, 4): (_gpu(64, 4), _gpu(128, 8)),
    ("grad_weight", 32, 4): (_gpu(64, 4), _gpu(128, 8)),
    ("grad_weight", 64, 4): (_gpu(64, 8), _gpu(64, 8)),
    ("forward", 16, 2): (_gpu(64, 4), _gpu(128, 4)),
    ("forward", 32, 2): (_gpu(64, 4), _gpu(128, 8)),
    ("forward", 64, 2): (_gpu(64, 8), _gpu(64, 8)),
    ("grad_input", 16, 2): (_gpu(64, 4), _gpu(128, 8)),
    ("grad_input", 32, 2): (_gpu(64, 4), _gpu(128, 8)),
    ("grad_input", 64, 2): (_gpu(64, 8), _gpu(64, 8)),
    ("grad_weight", 16, 2): (_gpu(64, 4), _gpu(128, 4)),
    ("grad_weight", 32, 2): (_gpu(64, 4), _gpu(128, 8)),
    ("grad_weight", 64, 2): (_gpu(64, 8), _gpu(128, 8)),
}

# dW: capacity × split programs, of which only the live fraction (the density) works — the rest
# exit after one load. Aim for ~4096 so that even at density 0.1 ~400 programs (3 waves of 132
# SMs) do work, each reducing >= 4 pixel tiles; partials cost split × |W| fp32 of memory.
_DW_TARGET_PROGRAMS = 4096
_DW_MIN_TILES_PER_SPLIT = 4
_DW_MAX_SPLIT = 32


def bucket(m):
    """M rounded up to a power of two (the key autotuners use, so nearby sizes share a config)."""
    return 1 << max(0, (int(m) - 1).bit_length())


def launch_config(op, m, block_n, block_k, dtype: torch.dtype, interpreted: bool) -> LaunchConfig:
    """Config for ``op`` ("forward", "grad_input", "grad_weight") over ``m`` pixel rows."""
    if interpreted:
        return INTERPRETER
    small, large = GPU_TABLE[(op, max(block_n, block_k), dtype.itemsize)]
    return small if bucket(m) <= SMALL_M else large


def dw_split(pixel_tiles, capacity, interpreted: bool) -> int:
    """Programs sharing one block's pixel reduction in dW (partials reduced by a second kernel).

    Depends on the capacity (full block grid), never the live block count. Under the
    interpreter it is 2 whenever there are two tiles, so CPU tests exercise the split path.
    """
    if interpreted:
        return min(2, pixel_tiles)
    want = math.ceil(_DW_TARGET_PROGRAMS / max(1, capacity))
    return max(1, min(want, _DW_MAX_SPLIT, pixel_tiles // _DW_MIN_TILES_PER_SPLIT))
