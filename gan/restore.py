"""Rebuild a run from its checkpoint (for gan.eval and gan.sample)."""

from __future__ import annotations

import dataclasses

from . import checkpoint
from .config import Config
from .data import load as load_data
from .trainer import Trainer


def restore(path: str, data_spec: str | None = None) -> Trainer:
    """A Trainer with the checkpoint's configuration and state (validated before it is applied),
    for sampling: a DGL-GAN run's teacher file is not needed, so not loaded."""
    state = checkpoint.load(path)
    known = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in state["config"].items() if k in known})
    trainer = Trainer(cfg, load_data(data_spec or cfg.data, cfg.resolution), load_teacher=False)
    trainer.load_state_dict(state)
    return trainer
