"""``python -m gan.study``: a grid of methods × seeds at equal budgets, summarised as mean ± std.

Every cell is one ``gan.train`` run (the default DCGAN pair on the embedded digits unless
``--train-args`` says otherwise) in ``OUT/<method>-s<seed>/``; a cell whose ``summary.json``
exists is skipped, so an interrupted study resumes where it stopped. Every method manages the
same weights (``--sparse-layers``, default ``all``: budgets are equal over all of G's and D's
conv/linear weights) at the same ``--g-density``/``--d-density``. A method may carry a block
shape, ``stu-gan@1x1`` (unstructured masks) or ``static@32x32``; without one, the run's
``--block`` (default 16×16). At the end it writes ``OUT/RESULTS.md`` — per method: runs,
mean ± std (over seeds) of every metric, sec/iteration, the share of balance-ratio samples
inside DDST's band and the densities reached over all weights — and ``OUT/results.png`` (the
quality metric per method, every seed's value and the mean ± std).

The default grid (dense, static, STU-GAN, SDST, DDST; 3 seeds, 800 iterations each) takes
~25 min on a 2-core CPU; ``--methods`` adds SET, RigL and unstructured (``@1x1``) variants.
Quality numbers from one seed move a lot (a second seed moved the default STU-GAN run's
fd_digits by 2×), so compare methods by their mean ± std only, and only where the means differ
by more than the stds. sec/iteration is only comparable within one study run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time

from .config import DENSE_METHODS

DEFAULT_METHODS = "dense,static,stu-gan,sdst,ddst"


def _cell_args(method, seed, args):
    """gan.train's argv for one cell; ``method`` may end in ``@<block>`` (e.g. stu-gan@1x1)."""
    name, _, block = method.partition("@")
    argv = ["--method", name, "--seed", str(seed)] + shlex.split(args.train_args)
    if name not in DENSE_METHODS:
        argv += ["--g-density", str(args.g_density), "--d-density", str(args.d_density),
                 "--sparse-layers", args.sparse_layers]
    if block:
        argv += ["--block", block]
    return argv


def run_grid(args, log=print):
    """Run every missing cell; returns {method: [summary, ...]} for every finished one."""
    from .train import main as train_main, parse

    methods = [m for m in args.methods.split(",") if m]
    for method in methods:  # every cell's flags are checked (argparse error) before any run
        parse(_cell_args(method, 0, args) + ["--out", os.devnull])
    seeds = list(range(args.seeds))
    results = {m: [] for m in methods}
    for i, (method, seed) in enumerate((m, s) for m in methods for s in seeds):
        out = os.path.join(args.out, f"{method}-s{seed}")
        summary_path = os.path.join(out, "summary.json")
        if not os.path.isfile(summary_path):
            log(f"[{i + 1}/{len(methods) * len(seeds)}] {method} seed {seed} -> {out}")
            t = time.perf_counter()
            code = train_main(_cell_args(method, seed, args) + ["--out", out])
            if code != 0:
                raise SystemExit(f"gan.study: the run {out} failed (exit {code})")
            log(f"    done in {time.perf_counter() - t:.0f} s")
        with open(summary_path) as f:
            results[method].append(json.load(f))
    return results


def _mean_std(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _fmt(mean, std, digits=3):
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}g} ± {std:.2g}" if not math.isnan(std) else f"{mean:.{digits}g}"


def report(results, args) -> str:
    """RESULTS.md's text."""
    metrics = sorted({k for runs in results.values() for r in runs for k in r.get("metrics", {})})
    lines = [
        "# Study results (`python -m gan.study`)",
        "",
        f"Grid: methods {', '.join(results)}; seeds 0..{args.seeds - 1}; sparse methods at "
        f"G {args.g_density} / D {args.d_density} over `--sparse-layers {args.sparse_layers}`; "
        f"train args `{args.train_args or '(defaults)'}`. Cells: mean ± std over seeds "
        "(sample std).",
        "",
        "| method | runs | " + " | ".join(metrics) +
        " | sec/iter | BR in DDST band | density G / D (all weights) |",
        "|---|---:|" + "---:|" * len(metrics) + "---:|---:|---|",
    ]
    for method, runs in results.items():
        cells = [_fmt(*_mean_std([r["metrics"].get(m) for r in runs])) for m in metrics]
        spi = _fmt(*_mean_std([r["sec_per_iter"] for r in runs]))
        band = _fmt(*_mean_std([r.get("br_in_band") for r in runs]), digits=2)
        dens = [r.get("densities_all", r.get("densities", {})) for r in runs]
        g = _mean_std([d.get("G") for d in dens])[0]
        d = _mean_std([d.get("D") for d in dens])[0]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) +
                     f" | {spi} | {band} | {g:.3f} / {d:.3f} |")
    lo_hi = next((r["br_band"] for runs in results.values() for r in runs if "br_band" in r), None)
    lines += ["", "BR in DDST band: share of balance-ratio samples whose window mean lies in "
              f"DDST's band {lo_hi} (counted once the window is full).",
              "", "Each run's own numbers: `<method>-s<seed>/summary.json`; curves: "
              "`python -m gan.plot <run dir>`.", ""]
    return "\n".join(lines)


def plot(results, metric, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(results), 3.2))
    for x, (method, runs) in enumerate(results.items()):
        values = [r["metrics"].get(metric) for r in runs]
        values = [v for v in values if v is not None and math.isfinite(v)]
        ax.scatter([x] * len(values), values, color="0.5", s=14, zorder=2)
        mean, std = _mean_std(values)
        ax.errorbar([x], [mean], yerr=[0 if math.isnan(std) else std], fmt="o", color="C0",
                    capsize=5, zorder=3)
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gan.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("runs", "study"),
                        help="directory of the grid's runs and of RESULTS.md / results.png")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="comma-separated gan.train methods, each optionally with a block "
                             f"shape: stu-gan@1x1 is unstructured (default: {DEFAULT_METHODS})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default 3)")
    parser.add_argument("--g-density", type=float, default=0.2, help="G density of sparse methods")
    parser.add_argument("--d-density", type=float, default=0.5, help="D density of sparse methods")
    parser.add_argument("--sparse-layers", choices=("convs", "all"), default="all",
                        help="weights every sparse method manages (equal budgets; default all)")
    parser.add_argument("--train-args", default="",
                        help="extra gan.train flags for every cell, e.g. \"--steps 400 --block 32x32\"")
    parser.add_argument("--metric", default="fd",
                        help="metric plotted in results.png (default fd: the run's fd_<data>)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    results = run_grid(args)
    text = report(results, args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(text)
    metric = args.metric
    if metric == "fd":
        metric = next((k for runs in results.values() for r in runs for k in r.get("metrics", {})
                       if k.startswith("fd_")), metric)
    if any(metric in r.get("metrics", {}) for runs in results.values() for r in runs):
        plot(results, metric, os.path.join(args.out, "results.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
