"""``python -m gan.sample CKPT -n 64``: a PNG grid (and optionally a tensor file) of samples.

    python -m gan.sample runs/stu-gan-dcgan-s0/checkpoint.pt -n 64 --out samples.png
"""

from __future__ import annotations

import argparse
import sys

import torch

from .checkpoint import CheckpointError
from .images import save_grid
from .restore import restore


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gan.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint.pt written by gan.train")
    parser.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    parser.add_argument("--out", default="samples.png", help="PNG grid path (default: samples.png)")
    parser.add_argument("--tensor", default=None,
                        help="also save the samples [n, 3, R, R] here (torch.save; R: the run's "
                             "--resolution)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error(f"-n must be > 0, got {args.n}")
    try:
        trainer = restore(args.checkpoint)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    z = torch.randn(args.n, trainer.G.z_dim, generator=torch.Generator().manual_seed(args.seed))
    images = trainer.sample(z=z)
    save_grid(images, args.out)
    if args.tensor:
        torch.save(images, args.tensor)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
