"""The run loop of ``gan.train``: train (or continue) one run directory and write its artefacts.

Shared by the CLI (``gan.train``), lottery rounds (``gan.lottery``) and the study
(``gan.study``); it knows nothing of argument parsing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time

from tqdm import tqdm

from . import checkpoint
from .config import Config
from .data import load as load_data
from .distributed import SINGLE
from .images import save_grid
from .metrics import evaluate
from .trainer import Trainer

LOG_FIELDS = ["iteration", "d_loss", "g_loss", "teacher_term", "br", "br_window", "density_G",
              "density_D", "exploration_G", "mask_change_G", "lr_scale", "sec_per_iter"]


def finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


class RunLog:
    """CSV + JSONL (+ optional TensorBoard) writers of one run directory."""

    def __init__(self, out, resume, tensorboard):
        self.out = out
        mode = "a" if resume else "w"
        self.csv_file = open(os.path.join(out, "log.csv"), mode, newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if not resume:
            self.csv.writeheader()
        self.jsonl = open(os.path.join(out, "metrics.jsonl"), mode)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise SystemExit(f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard")
            self.tb = SummaryWriter(os.path.join(out, "tensorboard"))

    def row(self, row):
        self.csv.writerow(row)
        self.csv_file.flush()
        if self.tb:
            for k, v in row.items():
                if k != "iteration" and finite(v) is not None:
                    self.tb.add_scalar(f"train/{k}", v, row["iteration"])

    def metrics(self, iteration, values):
        self.jsonl.write(json.dumps({"iteration": iteration, **values}) + "\n")
        self.jsonl.flush()
        if self.tb:
            for k, v in values.items():
                if finite(v) is not None:
                    self.tb.add_scalar(f"eval/{k}", v, iteration)

    def close(self):
        self.csv_file.close()
        self.jsonl.close()
        if self.tb:
            self.tb.close()


def run(cfg: Config, out: str, resume: bool = False, setup=None, on_step=None, data=None,
        state=None, teacher=None, trainer_cls=Trainer, dist=SINGLE):
    """Train (or continue) the run in ``out``; returns ``(summary dict, trainer)``.

    ``resume`` continues from ``out``'s checkpoint — ``state`` when the caller has already loaded
    it (``gan.train`` validates it before training), else read here; ``teacher``, the loaded
    ``--teacher`` (gan.teacher), likewise. ``setup(trainer)`` runs once before training (e.g. to
    install a lottery ticket); ``on_step(trainer)`` after every iteration. ``trainer_cls``: a
    Trainer subclass (the AlphaGAN search's). ``dist`` (``gan.distributed``): this process's
    rank; only rank 0 touches ``out`` (its summary alone carries metrics).
    """
    main = dist.is_main
    if main:
        os.makedirs(out, exist_ok=True)
    data = data if data is not None else load_data(cfg.data, cfg.resolution)
    trainer = trainer_cls(cfg, data, teacher=teacher, dist=dist)
    ckpt_path = os.path.join(out, "checkpoint.pt")
    if resume:
        trainer.load_state_dict(state if state is not None else checkpoint.load(ckpt_path))
    if setup is not None:
        setup(trainer)
    if main:
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(cfg.to_json())
    log = RunLog(out, resume, cfg.tensorboard) if main else None
    sample_every, ckpt_every = cfg.period(cfg.sample_every, 8), cfg.period(cfg.ckpt_every, 4)
    eval_every = cfg.period(cfg.eval_every, 4) if cfg.eval_every != 0 else 0
    metrics, wall_start = {}, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=trainer.iteration, desc=f"{cfg.method} {cfg.model}",
               unit="it", dynamic_ncols=True, disable=None if main else True)
    try:
        while trainer.iteration < cfg.steps:
            it = trainer.iteration + 1
            logged = it % cfg.log_every == 0 or it == cfg.steps
            row = trainer.train_step(report=logged)  # scalars are read (a sync) when logged only
            if on_step is not None:
                on_step(trainer)
            dist.check_masks(it, {"G": trainer.engine_G, "D": trainer.engine_D})
            if logged:
                row.update(zip(("d_loss", "g_loss"), dist.mean(row["d_loss"], row["g_loss"])))
                row.update(trainer.exploration(), lr_scale=trainer._lr_scale(it),
                           sec_per_iter=trainer.train_seconds / it)
                if main:
                    log.row(row)
                bar.set_postfix(d=f"{row['d_loss']:.3f}", g=f"{row['g_loss']:.3f}",
                                G=f"{row['density_G']:.2f}", D=f"{row['density_D']:.2f}",
                                br=f"{row['br_window']:.2f}", refresh=False)
            bar.update(1)
            if main and (it % sample_every == 0 or it == cfg.steps):
                grid = trainer.sample(z=trainer.fixed_z)
                save_grid(grid, os.path.join(out, "samples", f"iter_{it:06d}.png"), nrow=8)
                save_grid(grid, os.path.join(out, "samples", "latest.png"), nrow=8)
            if main and ((eval_every and it % eval_every == 0) or it == cfg.steps):
                metrics = evaluate(trainer.sample(cfg.eval_samples), data, cfg.metric_names(),
                                   cfg.inception_weights, cfg.metric_images,
                                   cfg.resolved_workers(data))
                log.metrics(it, metrics)
                bar.write(f"[{it}] " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if main and (it % ckpt_every == 0 or it == cfg.steps):
                checkpoint.save(trainer.state_dict(), ckpt_path)
    finally:
        bar.close()
        trainer.batches.close()  # its DataLoader workers, before the next run (lottery rounds)
        if main:
            log.close()
    densities = trainer.densities()  # reads every layer's kept count (a device sync each)
    summary = {
        "method": cfg.method, "model": cfg.model, "seed": cfg.seed, "steps": cfg.steps,
        "wall_time_s": time.perf_counter() - wall_start,
        "train_time_s": trainer.train_seconds,
        "sec_per_iter": trainer.train_seconds / max(1, trainer.iteration),
        "block": cfg.block,
        "sparse_layers": cfg.sparse_layers or "preset",
        # kept fraction of the weights the engines manage, and of all of G's / D's weights
        "densities": {"G": densities["density_G"], "D": densities["density_D"]},
        "densities_all": trainer.densities_all(),
        "metrics": metrics,
        # share of balance-ratio samples (windowed, once the window is full) inside DDST's band
        "br_band": list(trainer.br_band),
        "br_in_band": trainer.br_in_band / trainer.br_counted if trainer.br_counted else None,
    }
    if trainer.distill is not None and main:  # the summary is rank 0's to write
        summary["distillation"] = trainer.distill.summary(trainer.G, trainer.D)
    if main:
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary, trainer
