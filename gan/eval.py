"""``python -m gan.eval CKPT``: the metrics of a checkpoint's (EMA) generator.

    python -m gan.eval runs/stu-gan-dcgan-s0/checkpoint.pt --samples 2000 --metrics fd,coverage
"""

from __future__ import annotations

import argparse
import json
import sys

from .checkpoint import CheckpointError
from .metrics.suite import METRICS, evaluate
from .restore import restore


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gan.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint.pt written by gan.train")
    parser.add_argument("--samples", type=int, default=1000, help="generated images (default: 1000)")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated, of {', '.join(METRICS)} (default: the run's)")
    parser.add_argument("--inception-weights", default=None, help="InceptionV3 weights for fid/is")
    parser.add_argument("--data", default=None, help="dataset spec to compare with (default: the run's)")
    args = parser.parse_args(argv)
    if args.samples <= 0:
        parser.error(f"--samples must be > 0, got {args.samples}")
    try:
        trainer = restore(args.checkpoint, data_spec=args.data)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    names = tuple(args.metrics.split(",")) if args.metrics else trainer.cfg.metric_names()
    weights = args.inception_weights or trainer.cfg.inception_weights
    try:
        cfg = trainer.cfg
        result = evaluate(trainer.sample(args.samples), trainer.data, names, weights,
                          cfg.metric_images, cfg.resolved_workers(trainer.data))
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(json.dumps({"iteration": trainer.iteration, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
