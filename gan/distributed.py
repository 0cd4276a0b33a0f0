"""Multi-process training under ``torchrun``: launch detection, the process group, DDP wrapping,
rank-0 duties, rank-averaged scalars and the mask-hash check.

``torchrun --nproc_per_node N -m gan.train ...`` starts N copies of ``gan.train``; each finds its
place in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``: :func:`from_launch`) and :func:`process_group` joins the process group
(``nccl`` for ``--device cuda``, ``gloo`` for CPU; ``--dist-backend`` overrides). A plain
``python -m gan.train`` gets :data:`SINGLE` and never touches ``torch.distributed``.

What keeps the ranks identical (every rank builds the same run from the same seed):

- G and D train through ``DistributedDataParallel`` (:meth:`Distributed.wrap`), so every
  optimizer step sees the rank-averaged ``.grad`` — also the dense dW of the iterations that
  regrow by gradient, because the engine reads ``.grad`` after ``backward()`` returned and DDP's
  all-reduce has finished by then. Buffers are not re-broadcast from rank 0 before every forward
  (nothing overwrites the mask bitmaps or the layouts' index buffers behind the engines' backs);
  spectral norm's u/v stay identical because the power iteration is a deterministic function of
  the (identical) weights, and batch-norm running statistics are per rank (``--sync-bn`` on CUDA
  syncs them).
- The DST engines draw from generators seeded identically on every rank and decide from
  identical weights and gradients; the balance ratio's inputs are averaged over ranks
  (:meth:`Distributed.mean`) before DDST's controller reads them.
- The noise is drawn for the global batch from the run's generator and each rank keeps its rows
  (:meth:`Distributed.local_rows`); the data sampler does the same for real images
  (``gan.loader``). So W processes at a global batch B compute what one process computes at B
  (up to floating-point summation order, and per-rank batch-norm statistics), and the
  checkpoint's random state does not depend on W: ``--resume`` may change the process count.
- ``--check-masks-every K`` compares a hash of every managed layer's mask across ranks and stops
  with :class:`MaskMismatch` naming the first layer that differs.

Only rank 0 writes (run directory, logs, samples, metrics, checkpoints) and evaluates metrics, on
its own samples; the other ranks wait for it in their next collective (the process group's
timeout, :data:`TIMEOUT`, bounds an evaluation).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .graphs import NOT_DISTRIBUTED
from .loader import local_batch

BACKENDS = ("gloo", "nccl")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=30)
# No buffer broadcast before each forward; torch 2.14 renamed the flag (the old one still works
# there, with a FutureWarning), and the GPU machines run older torch.
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                           else {"broadcast_buffers": False})


class MaskMismatch(RuntimeError):
    """A managed layer's mask differs between ranks."""


def add_arguments(parser: argparse.ArgumentParser):
    """The launch flags (not part of config.json: they may change on ``--resume``)."""
    group = parser.add_argument_group(
        "multi-process training (under torchrun)",
        "torchrun --nproc_per_node N -m gan.train ... trains on N processes (data-parallel DDP); "
        "--batch-size is the global batch, split evenly: each process gets --batch-size / N "
        "(which must divide). Only rank 0 writes files and evaluates metrics.")
    group.add_argument("--dist-backend", choices=BACKENDS, default=None,
                       help="torch.distributed backend (default: nccl with --device cuda, gloo on CPU)")
    group.add_argument("--check-masks-every", type=int, default=0, metavar="K",
                       help="every K iterations compare every mask across ranks and stop naming "
                            "the layer that differs (a debug check; default 0: off)")
    group.add_argument("--sync-bn", action="store_true",
                       help="synchronise G's batch-norm statistics across processes "
                            "(torch's SyncBatchNorm; CUDA only; default: per-process statistics)")


def launch_options(argv=None) -> argparse.Namespace:
    """The launch flags of a ``gan.train`` command line (that ``gan.train.parse`` has accepted)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser.parse_known_args(argv)[0]


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(v in os.environ for v in LAUNCH_VARIABLES)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; ``enabled``: one of several processes (in the process
    group of :func:`process_group`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    backend: str = "gloo"
    device: str = "cpu"
    sync_bn: bool = False
    check_masks_every: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and evaluates."""
        return self.rank == 0

    # ------------------------------------------------------------------ models and tensors
    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP (with SyncBatchNorm when asked; it replaces batch-norm children
        in place, keeping their Parameters and buffers), or ``module`` itself in one process.
        Call it for the forward passes whose gradients must be averaged; the module itself stays
        the owner of state dicts, engines and EMA."""
        if not self.enabled:
            return module
        if self.sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        device_ids = [self.local_rank] if self.device == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **_NO_FORWARD_BUFFER_SYNC)

    def local_rows(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of ``x``'s rows (``len(x)`` divisible by the world size)."""
        if not self.enabled:
            return x
        n = x.shape[0] // self.world_size
        return x[self.rank * n:(self.rank + 1) * n]

    def mean(self, *values):
        """The rank-average of each scalar (floats or 0-d tensors); floats back, in order."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu().reshape(())
                         for v in values]).to(self._collective_device())
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def _collective_device(self):
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ checks
    def check_masks(self, iteration: int, engines: dict):
        """Every ``check_masks_every`` iterations: compare a hash of each mask of ``engines``
        (``{"G": engine or None, "D": ...}``) across ranks; raise :class:`MaskMismatch` naming
        the first layer that differs (on every rank, so none waits for the others)."""
        if not (self.enabled and self.check_masks_every and iteration % self.check_masks_every == 0):
            return
        names, hashes = [], []
        for network, engine in engines.items():
            for layer in engine.layers if engine is not None else ():
                names.append(f"{network} layer {layer.name!r}")
                hashes.append(mask_hash(layer.layout.bitmap))
        local = torch.tensor(hashes, dtype=torch.int64, device=self._collective_device())
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered).cpu()  # [ranks, layers]
        differs = (table != table[0]).any(dim=0)
        if differs.any():
            i = int(differs.nonzero()[0])
            ranks = [r for r in range(self.world_size) if table[r, i] != table[0, i]]
            raise MaskMismatch(
                f"the mask of {names[i]} differs across ranks at iteration {iteration}: ranks "
                f"{ranks} disagree with rank 0 ({int(differs.sum())} of {len(names)} layers differ). "
                "Every mask change must be decided from identical inputs on every rank.")


def mask_hash(bitmap: torch.Tensor) -> int:
    """A 64-bit hash (signed int) of a bool bitmap's shape and values."""
    digest = hashlib.blake2b(repr(tuple(bitmap.shape)).encode(), digest_size=8)
    digest.update(bitmap.detach().to(torch.uint8).cpu().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


SINGLE = Distributed()


def from_launch(options: argparse.Namespace, cfg) -> Distributed:
    """This process's place from torchrun's environment (:data:`SINGLE` without a launch),
    after checking the launch flags against ``cfg`` (a ``gan.config.Config``); ValueError names
    the bad flag. Join the group with :func:`process_group`."""
    if options.check_masks_every < 0:
        raise ValueError(f"--check-masks-every must be >= 0, got {options.check_masks_every}")
    if not launched():
        given = [flag for flag, value in (("--dist-backend", options.dist_backend),
                                          ("--check-masks-every", options.check_masks_every),
                                          ("--sync-bn", options.sync_bn)) if value]
        if given:
            raise ValueError(f"{', '.join(given)}: this process was not started by torchrun "
                             f"({'/'.join(LAUNCH_VARIABLES)} are not set)")
        return SINGLE
    if cfg.cuda_graphs:
        raise ValueError(NOT_DISTRIBUTED)
    rank, world_size, local_rank = (int(os.environ[v]) for v in LAUNCH_VARIABLES)
    backend = options.dist_backend or ("nccl" if cfg.device == "cuda" else "gloo")
    if backend == "nccl" and cfg.device != "cuda":
        raise ValueError("--dist-backend nccl needs --device cuda (use gloo on CPU)")
    if options.sync_bn and cfg.device != "cuda":
        raise ValueError("--sync-bn: torch's SyncBatchNorm runs on CUDA devices only (--device cuda)")
    local_batch(cfg.batch_size, world_size)
    if cfg.device == "cuda" and local_rank >= torch.cuda.device_count():
        raise ValueError(f"--device cuda: LOCAL_RANK {local_rank} but this node has "
                         f"{torch.cuda.device_count()} CUDA devices")
    return Distributed(rank, world_size, local_rank, enabled=True, backend=backend,
                       device=cfg.device, sync_bn=options.sync_bn,
                       check_masks_every=options.check_masks_every)


@contextlib.contextmanager
def process_group(ctx: Distributed):
    """Join the process group of ``ctx`` for the block (nothing for a single process); on CUDA
    this rank's device becomes ``LOCAL_RANK``'s."""
    if not ctx.enabled:
        yield ctx
        return
    if ctx.device == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world_size, timeout=TIMEOUT)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()
