"""Where the CPU kernels stop beating dense torch: speedups of the SNGAN 3×3 convs per density.

    python -m benchmarks.crossover                                   # the ISA picked here
    SPARSEKIT_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.crossover

Times forward and forward+backward (batch 16, 32×32 blocks, fp32) of the forced ``cpu`` backend
against dense torch (oneDNN; ``ONEDNN_MAX_CPU_ISA`` limits it to the same ISA) at each of
``--densities``, medians of ``--rounds``, and prints one line per layer. The density at which
the speedup falls to 1 is what ``sparsekit.backends.cpu.CROSSOVER`` holds per ISA.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import BlockLayout

SHAPES = (("G conv3x3 256->256 @8", 256, 8), ("G conv3x3 256->256 @16", 256, 16),
          ("D conv3x3 128->128 @32", 128, 32))


def median_ms(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", default="0.1,0.5,0.75,0.9",
                    help="comma-separated layout densities to time")
    ap.add_argument("--rounds", type=int, default=7, help="timed calls per measurement (median)")
    args = ap.parse_args(argv)
    densities = [float(d) for d in args.densities.split(",")]
    from sparsekit.backends import cpu

    print(f"cpu kernels: {cpu._C.isa()}; batch 16, block 32x32; speedup vs dense torch, "
          "fwd / fwd+bwd")
    torch.manual_seed(0)
    sparsekit.set_backend("cpu")
    cl = torch.channels_last
    for name, c, hw in SHAPES:
        x = torch.randn(16, c, hw, hw).contiguous(memory_format=cl)
        w = torch.randn(c, c, 3, 3).contiguous(memory_format=cl)
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

        def dense_fwd():
            with torch.no_grad():
                F.conv2d(x, w, padding=1)

        def dense_both():
            y = F.conv2d(xg, wg, padding=1)
            y.backward(torch.ones_like(y))

        t_fwd, t_both = median_ms(dense_fwd, args.rounds), median_ms(dense_both, args.rounds)
        cells = []
        for d in densities:
            layout = BlockLayout.random(w.shape, (32, 32), d,
                                        generator=torch.Generator().manual_seed(1))
            wm = (w * layout.element_mask()).contiguous(memory_format=cl).requires_grad_()

            def sparse_fwd():
                with torch.no_grad():
                    sparsekit.block_sparse_conv2d(x, wm, layout, padding=1)

            def sparse_both():
                y = sparsekit.block_sparse_conv2d(xg, wm, layout, padding=1)
                y.backward(torch.ones_like(y))

            cells.append(f"d={d}: {t_fwd / median_ms(sparse_fwd, args.rounds):.2f}x / "
                         f"{t_both / median_ms(sparse_both, args.rounds):.2f}x")
        print(f"{name:24s} dense {t_fwd:.1f} / {t_both:.1f} ms | " + "  ".join(cells), flush=True)
    sparsekit.set_backend("auto")


if __name__ == "__main__":
    main()
