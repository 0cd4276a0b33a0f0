"""How fast ``--data folder:DIR`` starts and serves: time to the first batch, images per second,
and this process's peak memory, for several ``--workers`` counts.

    python -m benchmarks.data_loading                        # 20,000 synthetic 96×80 JPEGs
    python -m benchmarks.data_loading --folder /data/celeba --resolution 64

Without ``--folder`` it writes ``--images`` random JPEGs in 10 sub-folders of a temporary
directory first (not timed). Each worker count runs in a fresh process, so memory and start-up
are measured from zero; the training step is not included (the loader alone, batch 64).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def write_folder(root, images, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = (rng.random((20, 96, 80, 3)) * 255).astype(np.uint8)
    for i in range(images):
        folder = os.path.join(root, f"c{i % 10}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(np.roll(base[i % 20], i, axis=1)).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def measure(folder, resolution, workers, batches):
    """One line: start-up to the first batch, then the rate over ``batches`` batches."""
    from gan.data import load
    from gan.loader import InfiniteBatches

    start = time.perf_counter()
    stream = InfiniteBatches(load(f"folder:{folder}", resolution), 64, seed=0, workers=workers)
    stream.next()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        stream.next()
    rate = batches * 64 / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"workers {workers}: first batch after {first:.1f} s, then {rate:.0f} images/s; "
          f"peak memory {peak:.0f} MB (training process)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_loading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="an image folder (default: write synthetic JPEGs)")
    parser.add_argument("--images", type=int, default=20_000, help="synthetic images (default: 20000)")
    parser.add_argument("--resolution", type=int, default=32, help="--resolution (default: 32)")
    parser.add_argument("--workers", default="0,2", help="worker counts to compare (default: 0,2)")
    parser.add_argument("--batches", type=int, default=50, help="batches timed after the first (default: 50)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one count
    args = parser.parse_args(argv)
    if args.one is not None:
        measure(args.folder, args.resolution, args.one, args.batches)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = tmp
            write_folder(folder, args.images)
        print(f"folder:{folder}, {args.resolution}×{args.resolution}, batch 64, {os.cpu_count()} CPUs")
        for workers in (int(w) for w in args.workers.split(",")):
            subprocess.run([sys.executable, "-m", "benchmarks.data_loading", "--folder", folder,
                            "--resolution", str(args.resolution), "--batches", str(args.batches),
                            "--one", str(workers)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
