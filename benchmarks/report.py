"""Turn saved pytest-benchmark runs into markdown tables and speedup-vs-density plots.

    python -m benchmarks.report benchmarks/results/*.json [--markdown OUT.md] [--plot OUT.png]

Every sparse layer result is paired with the dense baseline of the *same run*: same file,
device, dtype (and TF32 setting), case, pass and batch. speedup = T_dense / T_sparse and the
fraction of ideal η = kept × T_dense / T_sparse, where kept is the layout's kept fraction of the
weight (the nominal density for files that predate ``kept_fraction``); η = 1: the sparse layer
costs exactly its share of the dense one. Results from several machines sit side by side, one
table per machine / device / dtype / batch; a GPU run's fp32 and bf16 results get a table each.
Whole-step results (``test_train_step.py``) get a table per machine / device / model size.

Several runs of the same configuration on the same machine (files whose results share machine,
device, dtype, case, pass, batch, impl, block and density) are merged: each run's ratio against
its own dense baseline first, then the median over the runs — on a VM with noisy neighbours one
run's cell can move by 2×, the median of three rarely does. Tables say how many runs they merge.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict

PASS_ORDER = {"fwd": 0, "dx": 1, "dw": 2, "fwd+bwd": 3}


def _machine(data, device):
    """The name of the chip a result ran on: the GPU for cuda results, else the CPU with the
    kernels' ISA and oneDNN's ISA cap, e.g. "AMD EPYC (avx2 kernels, oneDNN AVX2)"."""
    info = data.get("machine_info", {}).get("sparsekit", {})
    if device == "cuda" and info.get("gpu"):
        return info["gpu"]
    name = info.get("cpu") or data.get("machine_info", {}).get("node", "?")
    if info.get("cpu_isa"):
        name += f" ({info['cpu_isa']} kernels, oneDNN {info.get('onednn_max_cpu_isa') or 'default'})"
    return name


def _dtype(extra):
    return str(extra.get("dtype", "torch.float32")).replace("torch.", "")


def _load_json(paths):
    for path in paths:
        with open(path) as f:
            yield path, json.load(f)


def load(paths):
    """Layer rows: file, machine, device, dtype, tf32, case, pass, batch, impl, block, density,
    kept, median_s."""
    rows = []
    for path, data in _load_json(paths):
        for bench in data.get("benchmarks", []):
            extra = bench.get("extra_info", {})
            if "impl" not in extra:
                continue
            rows.append(dict(
                file=os.path.abspath(path), machine=_machine(data, extra["device"]),
                device=extra["device"], dtype=_dtype(extra), tf32=extra.get("tf32"),
                case=extra["case"], pass_=extra["pass_"], batch=extra["batch"], impl=extra["impl"],
                block=tuple(extra["block"]), density=extra["density"],
                kept=extra.get("kept_fraction", extra["density"]), median_s=bench["stats"]["median"]))
    return rows


def _run_key(r):
    """What a sparse result and its dense baseline must share: the same run and the same work."""
    return (r["file"], r["device"], r["dtype"], r["tf32"], r["case"], r["pass_"], r["batch"])


def with_ratios(rows):
    """Adds dense_s, speedup and η to every non-dense row whose run has a dense baseline."""
    baseline = {_run_key(r): r["median_s"] for r in rows if r["impl"] == "dense"}
    out = []
    for r in rows:
        if r["impl"] == "dense":
            continue
        base = baseline.get(_run_key(r))
        if base is None:
            continue
        speedup = base / r["median_s"]
        out.append(dict(r, dense_s=base, speedup=speedup, eta=r["kept"] * speedup))
    return merge_runs(out, _layer_cell, ("median_s", "dense_s", "speedup", "eta"))


def merge_runs(rows, cell_key, fields):
    """One row per cell_key: the median over runs (files) of each of `fields`, plus ``runs``."""
    cells = defaultdict(list)
    for r in rows:
        cells[cell_key(r)].append(r)
    out = []
    for group in cells.values():
        merged = dict(group[0], runs=len(group))
        for f in fields:
            values = [r[f] for r in group if r.get(f) is not None]
            merged[f] = statistics.median(values) if values else None
        out.append(merged)
    return out


def _layer_cell(r):
    return (r["machine"], r["device"], r["dtype"], r["tf32"], r["case"], r["pass_"], r["batch"],
            r["impl"], r["block"], r["density"])


def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3g}"


def _cell(r):
    if r["kept"] == 0:
        return "empty layout"  # density × blocks < 1 block: nothing to compute, no ratio to report
    return f"{r['speedup']:.2f}× ({r['eta']:.2f})"


def _precision(dtype, tf32):
    if dtype != "float32" or tf32 is None:
        return ""
    return " (TF32)" if tf32 else " (IEEE, TF32 off)"


def markdown(rows):
    """One table per machine/device/dtype/batch: a row per case/pass/impl/block, a column per
    density."""
    lines = []
    groups = defaultdict(list)
    for r in rows:
        prec = _precision(r["dtype"], r["tf32"])
        groups[(r["machine"], r["device"], r["dtype"], r["batch"], prec)].append(r)
    for (machine, device, dtype, batch, prec), grp in sorted(groups.items()):
        densities = sorted({r["density"] for r in grp}, reverse=True)
        runs = max(r["runs"] for r in grp)
        merged = (f" Median over {runs} runs of each run's ratio to its own dense baseline."
                  if runs > 1 else "")
        lines += [f"### {machine} — {device}, {dtype}{prec}, batch {batch}", "",
                  "Cells: speedup vs dense torch (η = kept fraction × speedup); \"empty layout\": "
                  "no block kept at this density and block size. Dense time in ms." + merged, "",
                  "| layer | pass | dtype | impl | block | dense ms | "
                  + " | ".join(f"d={d:g}" for d in densities) + " |",
                  "|---|---|---|---|---|---:|" + "---:|" * len(densities)]
        table = defaultdict(dict)
        for r in grp:
            table[(r["case"], r["pass_"], r["impl"], r["block"])][r["density"]] = r
        order = sorted(table, key=lambda k: (k[0], PASS_ORDER.get(k[1], 9), k[1], k[2], k[3]))
        for case, pass_, impl, block in order:
            cells = table[(case, pass_, impl, block)]
            dense_ms = _ms(next(iter(cells.values()))["dense_s"])
            text = [_cell(cells[d]) if d in cells else "" for d in densities]
            lines.append(f"| {case} | {pass_} | {dtype} | {impl} | {block[0]}×{block[1]} | {dense_ms} | "
                         + " | ".join(text) + " |")
        lines.append("")
    return "\n".join(lines)


def load_steps(paths):
    """Whole-step rows (``kind`` gan_iteration or mask_update) with ``vs_dense`` where the run
    has a dense iteration of the same device and model size."""
    rows = []
    for path, data in _load_json(paths):
        for bench in data.get("benchmarks", []):
            extra = bench.get("extra_info", {})
            if extra.get("kind") not in ("gan_iteration", "mask_update"):
                continue
            rows.append(dict(extra, file=os.path.abspath(path), machine=_machine(data, extra["device"]),
                             dtype=_dtype(extra), tf32=extra.get("tf32"),
                             median_s=bench["stats"]["median"]))

    def key(r):
        return (r["file"], r["device"], r.get("model"), r.get("width"), r.get("batch"), r["tf32"])

    dense = {key(r): r["median_s"] for r in rows if r["kind"] == "gan_iteration"
             and (r.get("g_density"), r.get("d_density")) == (1.0, 1.0)}
    for r in rows:
        base = dense.get(key(r)) if r["kind"] == "gan_iteration" else None
        r["vs_dense"] = base / r["median_s"] if base else None

    def cell(r):
        return (r["machine"], r["device"], r.get("model"), r.get("width"), r.get("batch"),
                r["tf32"], r["kind"], r.get("g_density"), r.get("d_density"))

    return merge_runs(rows, cell, ("median_s", "vs_dense", "density_G", "density_D"))


def markdown_steps(rows):
    """One table per machine/device/model size: ms per GAN iteration vs dense; mask updates."""
    lines, nan = [], float("nan")
    groups = defaultdict(list)
    for r in rows:
        groups[(r["machine"], r["device"], r.get("model", "?"), r.get("width"), r.get("batch"),
                _precision(r["dtype"], r["tf32"]))].append(r)
    for (machine, device, model, width, batch, prec), grp in sorted(groups.items(), key=str):
        its = sorted((r for r in grp if r["kind"] == "gan_iteration"),
                     key=lambda r: (-r.get("g_density", 0), -r.get("d_density", 0)))
        n_dis = its[0].get("n_dis", "?") if its else "?"
        runs = max(r["runs"] for r in grp)
        lines += [f"### {machine} — {device}, {model} width {width}, batch {batch}, n_dis {n_dis}, "
                  f"float32{prec}", ""]
        if runs > 1:
            lines += [f"Median over {runs} runs (times and each run's ratio to its own dense "
                      "iteration).", ""]
        if its:
            lines += ["| G / D density (target) | G / D density (managed weights) | ms / iteration "
                      "| vs dense |",
                      "|---|---|---:|---:|"]
            for r in its:
                vs = f"{r['vs_dense']:.2f}×" if r["vs_dense"] else "—"
                lines.append(f"| {r.get('g_density', '?'):g} / {r.get('d_density', '?'):g} | "
                             f"{r.get('density_G', nan):.3f} / {r.get('density_D', nan):.3f} | "
                             f"{_ms(r['median_s'])} | {vs} |")
            lines.append("")
        for r in grp:
            if r["kind"] == "mask_update":
                lines += [f"One mask update of G at {r.get('g_density', '?')} (prune + regrow + index "
                          f"rebuild): {_ms(r['median_s'])} ms.", ""]
    return "\n".join(lines)


def plot(rows, path):
    """Speedup vs density, one panel per layer/pass, one line per impl/block; ideal 1/d dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel(r):
        return (r["machine"], r["device"], r["dtype"], r["case"], PASS_ORDER.get(r["pass_"], 9), r["pass_"])

    panels = sorted({panel(r) for r in rows})
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        sel = [r for r in rows if panel(r) == key]
        for impl, block in sorted({(r["impl"], r["block"]) for r in sel}):
            pts = sorted((r["density"], r["speedup"]) for r in sel
                         if (r["impl"], r["block"]) == (impl, block) and r["kept"] > 0)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{impl} {block[0]}×{block[1]}")
        ds = sorted({r["density"] for r in sel})
        ax.plot(ds, [1 / d for d in ds], "k--", lw=0.8, label="ideal 1/d")
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_ylabel("speedup vs dense")
        ax.set_title(f"{key[3]} — {key[5]}\n{key[0]} {key[1]} {key[2]}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--markdown", help="write the tables here (default: print them)")
    parser.add_argument("--plot", help="write speedup-vs-density plots to this PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    for path in args.results:
        if not os.path.isfile(path):
            parser.error(f"no such results file: {path}")
    try:
        rows = with_ratios(load(args.results))
        steps = load_steps(args.results)
    except (ValueError, KeyError, TypeError) as e:
        parser.error(f"not a pytest-benchmark JSON file from benchmarks/ ({type(e).__name__}: {e})")
    if not rows and not steps:
        parser.error("no sparse results with a dense baseline in the same run, and no whole-step "
                     "results, were found")
    text = "\n".join(t for t in (markdown(rows), markdown_steps(steps)) if t)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.plot:
        if not rows:
            parser.error("--plot needs layer results (test_layers.py)")
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
