"""Where one SNGAN training iteration spends its time: layer ops against everything else.

    python -m benchmarks.step_profile                       # dense and G 0.1 / D 0.2, CPU
    python -m benchmarks.step_profile --pairs 1,1 0.05,0.1 --top 15

Builds the whole-step benchmark's trainer (``runners.sngan_trainer``: SNGAN-ResNet,
``--width`` 0.5, batch 16, n_dis 5, 32×32 blocks, static masks, fp32), runs two warm-up
iterations and profiles ``--iterations`` more with ``torch.profiler``. Prints per iteration the
self CPU time of the layer ops (sparse ops, whichever backend runs them, and torch's own
convolutions and matmuls — what density can shrink) and of everything else (batch norm, ReLU,
residual adds, pooling, spectral norm's power iterations, Adam, autograd: what every density
pays alike), then the ``--top`` ops (``--shapes``: per op and input shapes, which tells one
layer from another). The split bounds the whole-iteration speedup: with the rest
fixed, a sparse run cannot beat dense by more than (layers + rest) / rest. The split counts ops'
own time, so an op a layer calls outside those (the dense route's weight mask, the dense model's
upsampling) lands in the rest; the rest is alike across densities only to within such ops.
Profiler times run a few percent above unprofiled ones.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from gan.data import load

from .runners import sngan_trainer

LAYER_OPS = {"_EagerSparse", "_EagerSparseBackward", "aten::mkldnn_convolution",
             "aten::convolution_backward", "aten::addmm", "aten::mm"}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=["1,1", "0.1,0.2"], metavar="G,D",
                    help="G and D densities to profile, one pair per argument (1,1 = dense)")
    ap.add_argument("--width", type=float, default=0.5, help="SNGAN width multiplier")
    ap.add_argument("--iterations", type=int, default=3, help="profiled iterations per pair")
    ap.add_argument("--top", type=int, default=8, help="ops listed per pair, by self CPU time")
    ap.add_argument("--shapes", action="store_true",
                    help="list ops per input shapes (one line per layer shape) instead of per op")
    args = ap.parse_args(argv)
    pairs = []
    for text in args.pairs:
        try:
            g, d = (float(v) for v in text.split(","))
        except ValueError:
            ap.error(f"--pairs: expected G,D densities such as 0.1,0.2, got {text!r}")
        pairs.append((g, d))
    if args.iterations < 1:
        ap.error(f"--iterations must be at least 1, got {args.iterations}")

    data = load("digits")
    n = args.iterations
    for g, d in pairs:
        try:
            trainer = sngan_trainer(data, "cpu", args.width, 16, g, d)
        except ValueError as e:  # a density, or a width whose layers a 32×32 block cannot split
            ap.error(f"--pairs {g:g},{d:g} / --width {args.width:g}: {e}")
        for _ in range(2):
            trainer.train_step(report=False)
        with profile(record_shapes=args.shapes) as prof:
            for _ in range(n):
                trainer.train_step(report=False)
        events = sorted(prof.key_averages(group_by_input_shape=args.shapes),
                        key=lambda e: -e.self_cpu_time_total)
        layers = sum(e.self_cpu_time_total for e in events if e.key in LAYER_OPS) / n / 1e3
        rest = sum(e.self_cpu_time_total for e in events if e.key not in LAYER_OPS) / n / 1e3
        print(f"G {g:g} / D {d:g}: {layers + rest:.0f} ms per iteration = layer ops {layers:.0f} "
              f"+ everything else {rest:.0f} ms (profiled, {torch.get_num_threads()} threads)")
        for e in events[:args.top]:
            shapes = f"  {[list(s) for s in e.input_shapes[:3]]}" if args.shapes else ""
            print(f"    {e.key[:40]:40s} {e.self_cpu_time_total / n / 1e3:7.1f} ms  "
                  f"{e.count // n:5d} calls{shapes}")


if __name__ == "__main__":
    main()
