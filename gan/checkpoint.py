"""Checkpoints that are never lost or half-loaded.

``save`` writes to a temporary file in the same directory, fsyncs it and renames it over the
old checkpoint (atomic on POSIX), so a kill at any moment leaves the previous checkpoint intact.
``load`` reads the whole file and checks its format and required keys before anything is applied
to a model; a truncated or foreign file raises ``CheckpointError`` naming the path. Loading never
runs code from the file: ``torch.load(weights_only=True)`` unpickles tensors and plain Python
types only (what ``save`` writes), and refuses anything else.
"""

from __future__ import annotations

import os

import torch

FORMAT = "sparsekit-gan-checkpoint/1"
REQUIRED = ("format", "iteration", "config", "G", "D", "opt_G", "opt_D", "rng")


class CheckpointError(RuntimeError):
    """The file is not a complete checkpoint of this format."""


def save(state: dict, path: str) -> None:
    state = dict(state, format=FORMAT)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, objects beyond tensors and plain types
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path!r} is not a readable checkpoint: {type(e).__name__}: {first} "
                              "(only tensors and plain Python types are loaded; a file needing "
                              "anything else is refused, so loading never runs its code)") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a {FORMAT} checkpoint")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path!r} is incomplete: missing {missing}")
    return state
