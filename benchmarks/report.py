"""Turn saved pytest-benchmark runs into a markdown table and speedup-vs-density plots.

    python -m benchmarks.report benchmarks/results/*.json [--markdown OUT.md] [--plot OUT.png]

Every sparse result is paired with the dense baseline of the *same run* (same file, device, dtype,
case, pass and batch): speedup = T_dense / T_sparse and the fraction of ideal
η = density × T_dense / T_sparse (η = 1: the sparse layer costs exactly its share of the dense one).
Results from several machines sit side by side, one table per machine/device/dtype.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict


def load(paths):
    """Rows of dicts: machine, device, dtype, case, pass, impl, block, density, median_s."""
    rows = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        info = data.get("machine_info", {}).get("sparsekit", {})
        machine = info.get("gpu") or info.get("cpu") or data.get("machine_info", {}).get("node", "?")
        for bench in data.get("benchmarks", []):
            extra = bench.get("extra_info", {})
            if "impl" not in extra:
                continue
            rows.append(dict(
                file=os.path.basename(path), machine=machine, device=extra["device"],
                dtype=extra["dtype"].replace("torch.", ""), case=extra["case"], pass_=extra["pass_"],
                batch=extra["batch"], impl=extra["impl"], block=tuple(extra["block"]),
                density=extra["density"], median_s=bench["stats"]["median"]))
    return rows


def with_ratios(rows):
    """Adds speedup and η to every non-dense row whose run has a dense baseline."""
    baseline = {}
    for r in rows:
        if r["impl"] == "dense":
            baseline[(r["file"], r["device"], r["dtype"], r["case"], r["pass_"], r["batch"])] = r["median_s"]
    out = []
    for r in rows:
        if r["impl"] == "dense":
            continue
        base = baseline.get((r["file"], r["device"], r["dtype"], r["case"], r["pass_"], r["batch"]))
        if base is None:
            continue
        speedup = base / r["median_s"]
        out.append(dict(r, dense_s=base, speedup=speedup, eta=r["density"] * speedup))
    return out


def markdown(rows):
    """One table per machine/device/dtype: a row per case/pass/impl/block, a column per density."""
    lines = []
    groups = defaultdict(list)
    for r in rows:
        groups[(r["machine"], r["device"], r["dtype"])].append(r)
    for (machine, device, dtype), grp in sorted(groups.items()):
        densities = sorted({r["density"] for r in grp}, reverse=True)
        lines += [f"### {machine} — {device}, {dtype}", "",
                  "Cells: speedup vs dense torch (η = density × speedup). Dense time in ms.", "",
                  "| layer | pass | impl | block | dense ms | " + " | ".join(f"d={d:g}" for d in densities) + " |",
                  "|---|---|---|---|---:|" + "---:|" * len(densities)]
        table = defaultdict(dict)
        for r in grp:
            table[(r["case"], r["pass_"], r["impl"], r["block"])][r["density"]] = r
        for (case, pass_, impl, block), cells in sorted(table.items()):
            dense_ms = next(iter(cells.values()))["dense_s"] * 1e3
            text = [f"{cells[d]['speedup']:.2f}× ({cells[d]['eta']:.2f})" if d in cells else ""
                    for d in densities]
            lines.append(f"| {case} | {pass_} | {impl} | {block[0]}×{block[1]} | {dense_ms:.2f} | "
                         + " | ".join(text) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    """Speedup vs density, one panel per layer/pass, one line per impl/block; ideal 1/d dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["machine"], r["device"], r["dtype"], r["case"], r["pass_"]) for r in rows})
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        sel = [r for r in rows if (r["machine"], r["device"], r["dtype"], r["case"], r["pass_"]) == key]
        for impl, block in sorted({(r["impl"], r["block"]) for r in sel}):
            pts = sorted((r["density"], r["speedup"]) for r in sel if (r["impl"], r["block"]) == (impl, block))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{impl} {block[0]}×{block[1]}")
        ds = sorted({r["density"] for r in sel})
        ax.plot(ds, [1 / d for d in ds], "k--", lw=0.8, label="ideal 1/d")
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_ylabel("speedup vs dense")
        ax.set_title(f"{key[3]} — {key[4]}\n{key[0]} {key[2]}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--markdown", help="write the table here (default: print it)")
    parser.add_argument("--plot", help="write speedup-vs-density plots to this PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    for path in args.results:
        if not os.path.isfile(path):
            parser.error(f"no such results file: {path}")
    rows = with_ratios(load(args.results))
    if not rows:
        parser.error("no sparse results with a dense baseline in the same run were found")
    text = markdown(rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
