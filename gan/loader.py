"""Endless training minibatches: a ``DataLoader`` over the dataset with a ``DistributedSampler``.

The sampler shuffles every epoch with ``seed + epoch`` (the same permutation on every rank) and
gives rank r the items r, r + W, r + 2W, … of it (W processes). With a per-rank batch b = B / W,
batch k of an epoch holds, over all ranks together, exactly the items [kB, (k+1)B) of the
epoch's permutation — the global batch k of a one-process run with the same ``--batch-size`` B.
An epoch is ⌊N / B⌋ batches at every W (the tail that does not fill a global batch is dropped).
The position — (epoch, global batches consumed in it) — therefore means the same at every world
size, which is what lets ``--resume`` change the number of processes.

A batch is ``[b, 3, R, R]`` float32 in [-1, 1], on the CPU (pinned when asked). Data that decode
files (``folder:``) are decoded by ``workers`` worker processes per rank, which prefetch the
next batches while the step runs.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from .data import ImageData


def local_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global ``batch_size``; ValueError unless it divides evenly."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must be divisible "
                         f"by the number of processes ({world_size})")
    return batch_size // world_size


class _ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, tail dropped) that can start an epoch after ``start`` of
    this rank's items."""

    def __init__(self, dataset, world_size, rank, seed):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self):
        return self.num_samples - self.start


class InfiniteBatches:
    """This rank's share of endless shuffled global batches (see the module docstring).

    Args:
        data: the dataset (an :class:`ImageData`).
        batch_size: the *global* batch B; each of the ``world_size`` ranks gets B / world_size.
        seed: seeds the epoch permutations (``seed + epoch``).
        rank, world_size: this process's place (0 and 1 in a single process).
        pin_memory: pin batches for a fast, asynchronous copy to a GPU.
        workers: DataLoader worker processes (0: decode in this process).
    """

    def __init__(self, data: ImageData, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False, workers: int = 0):
        if batch_size > len(data):
            raise ValueError(f"batch size {batch_size} exceeds the dataset's {len(data)} images")
        self.local_batch = local_batch(batch_size, world_size)
        self.sampler = _ResumableSampler(data.items, world_size, rank, seed)
        # The loader's own generator: creating an iterator then never draws from torch's global RNG.
        # Workers belong to one epoch's iterator (not persistent): dropping it (``close``, an epoch
        # boundary, a resume) stops them — a second of start-up per epoch at most.
        self.loader = DataLoader(data.items, batch_size=self.local_batch, sampler=self.sampler,
                                 drop_last=True, pin_memory=pin_memory, generator=torch.Generator(),
                                 num_workers=workers)
        self.epoch, self.position = 0, 0
        self._batches = None

    def next(self) -> torch.Tensor:
        """The next batch ``[B / world_size, 3, R, R]`` of this rank."""
        if self._batches is None:
            self._start()
        batch = next(self._batches, None)
        if batch is None:
            self.epoch, self.position = self.epoch + 1, 0
            self._start()
            batch = next(self._batches)
        self.position += 1
        return batch

    def close(self):
        """Stop this epoch's worker processes now (``next`` starts new ones if called again)."""
        self._batches = None

    def _start(self):
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.position * self.local_batch
        self._batches = iter(self.loader)

    def state_dict(self):
        """The position, independent of the number of processes."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        if set(state) != {"epoch", "position"}:
            raise ValueError(f"batches state has keys {sorted(state)}, expected ['epoch', 'position'] "
                             "(a checkpoint written before the DataLoader-based batches; its data "
                             "order cannot be continued)")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._batches = None
