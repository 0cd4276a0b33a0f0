"""``python -m gan.plot RUN_DIR``: training curves of a run as one PNG (needs matplotlib).

Panels: D and G losses; the balance ratio (window mean; ADAPT's 0.45 / 0.55 band); G and D
densities (DDST moves D's); every evaluated metric. Written to ``RUN_DIR/training.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys


def _read(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    evals = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            evals = [json.loads(line) for line in f if line.strip()]
    return rows, evals


def plot_run(run_dir, out=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, evals = _read(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/log.csv has no rows yet")
    it = [r["iteration"] for r in rows]
    metric_names = sorted({k for e in evals for k in e if k != "iteration"})
    panels = 3 + len(metric_names)
    cols = 3
    rows_n = -(-panels // cols)
    fig, grid = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.3 * rows_n), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.axis("off")
    axes = axes[:panels]
    axes[0].plot(it, [r["d_loss"] for r in rows], label="D loss")
    axes[0].plot(it, [r["g_loss"] for r in rows], label="G loss")
    axes[0].set_title("losses")
    br = [(i, r["br_window"]) for i, r in zip(it, rows) if math.isfinite(r.get("br_window", math.nan))]
    if br:
        axes[1].plot([b[0] for b in br], [b[1] for b in br], label="BR (window mean)")
    axes[1].axhspan(0.45, 0.55, color="grey", alpha=0.2, label="ADAPT band")
    axes[1].set_title("balance ratio")
    axes[2].plot(it, [r["density_G"] for r in rows], label="G")
    axes[2].plot(it, [r["density_D"] for r in rows], label="D")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("density")
    for ax, name in zip(axes[3:], metric_names):
        pts = [(e["iteration"], e[name]) for e in evals if name in e]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_title(name)
    for ax in axes:
        ax.set_xlabel("iteration")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "training.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gan.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory written by gan.train")
    parser.add_argument("--out", help="PNG path (default: RUN_DIR/training.png)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.run_dir, "log.csv")):
        parser.error(f"{args.run_dir}: no log.csv (not a gan.train run directory?)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("gan.plot needs matplotlib: pip install -e \".[bench]\" (or pip install matplotlib)")
    print(plot_run(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
