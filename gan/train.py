"""``python -m gan.train``: train a sparse GAN and write a run directory.

With no arguments: STU-GAN (G 20 % / D 50 % dense, 16×16 blocks) on a small DCGAN pair, on the
embedded digits, on CPU, in a few minutes. The run directory (``--out``, default
``runs/<method>-<model>-s<seed>``) receives::

    config.json      the full configuration (what --resume rebuilds)
    log.csv          losses, balance ratio, densities every --log-every iterations
    metrics.jsonl    one line per evaluation {iteration, metrics...}
    samples/         PNG grids of the EMA generator at fixed noise; samples/latest.png
    checkpoint.pt    everything needed to continue bit-identically (written atomically)
    summary.json     method, seed, steps, wall time, time per iteration, densities, metrics

``--method alphagan-search`` also writes ``search.csv`` and ``genotype.json`` (gan.search).
``--teacher CKPT`` adds DGL-GAN's frozen teacher discriminator to G's loss (see gan.teacher).

``--resume DIR`` continues DIR's run with its saved configuration; only ``--steps`` and
``--workers`` may change (and the launch: the number of processes and the multi-process flags).

Under ``torchrun --nproc_per_node N -m gan.train ...`` the run trains data-parallel on N
processes (``gan.distributed``): --batch-size is the global batch, each process gets
--batch-size / N; only rank 0 writes the run directory and evaluates metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import checkpoint, distributed
from . import teacher as distill
from .config import Config, add_arguments, from_args, given_flags, load_json
from .data import load as load_data
from .lottery import run_lottery
from .loop import run
from .search import run_search

__all__ = ["main", "parse", "preflight", "run"]


def _model_tag(model):
    """The model's name for a directory: ``alphagan:PATH/x.json`` → ``alphagan-x``."""
    if model.startswith("alphagan:"):
        return "alphagan-" + os.path.splitext(os.path.basename(model.partition(":")[2]))[0]
    return model


def parse(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gan.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="run directory (default: runs/<method>-<model>-s<seed>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR (only --steps and --workers may change)")
    add_arguments(parser)
    distributed.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.resume:
            extra = [f for f in given_flags(args) if f not in ("steps", "workers")]
            if extra or args.out:
                parser.error(f"--resume takes only --steps and --workers; also given: "
                             f"{', '.join('--' + f.replace('_', '-') for f in extra + (['out'] if args.out else []))}")
            config_path = os.path.join(args.resume, "config.json")
            if not os.path.isfile(config_path):
                parser.error(f"--resume {args.resume}: no config.json there")
            cfg = from_args(args, load_json(config_path)).validate()
            return cfg, args.resume, True
        cfg = from_args(args).validate()
    except ValueError as e:
        parser.error(str(e))
    out = args.out or os.path.join("runs", f"{cfg.method}-{_model_tag(cfg.model)}-s{cfg.seed}")
    return cfg, out, False


def preflight(cfg: Config, out: str, resume: bool):
    """Check what a user can get wrong before any training: the data, the checkpoint to resume,
    the InceptionV3 weights file and the teacher. Raises FileNotFoundError, ValueError or
    CheckpointError with a message naming the flag; returns the loaded data, checkpoint (None
    unless resuming) and teacher (None without --teacher), for ``run`` to use rather than read
    again."""
    data = load_data(cfg.data, cfg.resolution)
    if set(cfg.metric_names()) & {"fid", "is"} and not (
            cfg.inception_weights and os.path.isfile(cfg.inception_weights)):
        raise FileNotFoundError(f"--inception-weights: fid/is need a local InceptionV3 weights "
                                f"file (torch-fidelity's); got {cfg.inception_weights!r}")
    if resume:
        if cfg.method == "lottery":
            raise ValueError("--resume is not supported for --method lottery (rerun the rounds)")
        state = checkpoint.load(os.path.join(out, "checkpoint.pt"))
        return data, state, distill.preflight(cfg, data, out, state)
    return data, None, distill.preflight(cfg, data, out, None)


def main(argv=None):
    cfg, out, resume = parse(argv)
    try:
        dist = distributed.from_launch(distributed.launch_options(argv), cfg)
        if cfg.method == "alphagan-search" and dist.world_size > 1:
            raise ValueError("--method alphagan-search runs in one process (its architecture "
                             "rounds are not data-parallel); launch it without torchrun")
        data, state, teacher = preflight(cfg, out, resume)
    except (FileNotFoundError, ValueError, checkpoint.CheckpointError) as e:
        # A user error: one line and exit 2, as argparse does for a bad value.
        print(f"python -m gan.train: error: {e}", file=sys.stderr)
        return 2
    with distributed.process_group(dist):
        if cfg.method == "lottery":
            summary = run_lottery(cfg, out, data=data, teacher=teacher, dist=dist)
        elif cfg.method == "alphagan-search":
            summary = run_search(cfg, out, resume, data=data, state=state)
        else:
            summary, _ = run(cfg, out, resume, data=data, state=state, teacher=teacher, dist=dist)
    if dist.is_main:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
