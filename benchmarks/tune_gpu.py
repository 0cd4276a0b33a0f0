"""Tune the GPU backends on the GPU at hand and write the tuning file ``auto`` and Triton read.

    python -m benchmarks.tune_gpu --out /tmp/gpu_tuning.json       # ~1-2 min on an H200
    SPARSEKIT_GPU_TUNING=/tmp/gpu_tuning.json pytest benchmarks/ --benchmark-only --bench-device cuda
    cp /tmp/gpu_tuning.json sparsekit/backends/gpu_tuning.json     # commit it with the results

What it measures: conv 3×3 C→C (padding 1, batch 64) at 8² (M = 4096 pixels: the table's "small"
row) and at 16² and 32² ("large"), layouts of density 0.1 and 0.5, for each block side in
``--sides`` and each dtype (fp32 IEEE, bf16). For every Triton op (forward, grad_input,
grad_weight) it times each candidate launch config (``CANDIDATES``) and keeps, per table row, the
one with the least total time over that row's problems — after checking that its result equals
the current config's (a config that computes something else is dropped and reported). Then it
times the CUDA backend on the same problems and routes each pass/dtype of ``auto`` to the faster
of the two (total time). Entries it does not measure are copied from the current file.

Compilation runs first in ``--workers`` processes (Triton's disk cache keeps the binaries), so
timing in this process loads compiled kernels and measures a quiet GPU; every time is the median
of ``triton.testing.do_bench``. It also prints where eager host time goes for one layer's
forward+backward (cProfile), since eager calls cost far more than their GPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing as mp
import os
import pstats
import sys
import time

import torch

CHANNELS, BATCH, DEVICE = 256, 64, "cuda"
SMALL_HW, LARGE_HW = (8,), (16, 32)
DENSITIES = (0.1, 0.5)
OPS = ("forward", "grad_input", "grad_weight")
PASS_OF = {"forward": "fwd", "grad_input": "dx", "grad_weight": "dw"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# (BLOCK_M, num_warps, num_stages): fp32 IEEE dots run on FMA units with operands in registers
# (small tiles); bf16 dots on tensor cores, where deeper pipelines and larger tiles pay.
CANDIDATES = {
    4: [(32, 4, 2), (64, 4, 2), (64, 8, 2), (128, 4, 2), (128, 8, 2), (64, 4, 3), (128, 8, 3),
        (256, 8, 2)],
    2: [(64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 4, 3), (128, 8, 2), (128, 8, 3), (256, 8, 3),
        (32, 4, 3)],
}


def log(msg):
    print(f"[tune {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------- problems
_problems: dict = {}


def problem(side, dtype_name, hw, density):
    """(x, w, dy, idx, geom) for one conv problem, built once per process (fixed seeds)."""
    key = (side, dtype_name, hw, density)
    if key not in _problems:
        from sparsekit import BlockLayout
        from sparsekit.backends import BlockIndex
        from sparsekit.geometry import make_geometry

        dtype = DTYPES[dtype_name]
        g = torch.Generator(device=DEVICE).manual_seed(hw * 1000 + side)
        cl = torch.channels_last
        x = torch.randn(BATCH, CHANNELS, hw, hw, device=DEVICE, generator=g).to(dtype)
        dy = torch.randn(BATCH, CHANNELS, hw, hw, device=DEVICE, generator=g).to(dtype)
        w = (torch.randn(CHANNELS, CHANNELS, 3, 3, device=DEVICE, generator=g)
             * (9 * CHANNELS) ** -0.5).to(dtype)
        layout = BlockLayout.random(tuple(w.shape), (side, side), density,
                                    generator=torch.Generator().manual_seed(side + int(density * 100)))
        layout = layout.to(DEVICE)
        idx = BlockIndex(*layout.index_tensors(), *layout.block)
        _problems[key] = (x.contiguous(memory_format=cl), w.contiguous(memory_format=cl),
                          dy.contiguous(memory_format=cl), idx, make_geometry(1, 1, 1, 1))
    return _problems[key]


def op_call(backend, op, side, dtype_name, hw, density):
    """A zero-argument callable running ``op`` of ``backend`` on one problem."""
    x, w, dy, idx, geom = problem(side, dtype_name, hw, density)
    if op == "forward":
        return lambda: backend.conv2d_fwd(x, w, None, idx, geom)
    if op == "grad_input":
        return lambda: backend.conv2d_dx(dy, w, idx, geom, (hw, hw))
    return lambda: backend.conv2d_dw(dy, x, w, idx, geom, False)


def force_config(cfg):
    """Make every Triton launch use ``cfg`` (a LaunchConfig), or the table again (None)."""
    from sparsekit.backends.triton import forward, grad_input, grad_weight, tuning

    for mod in (forward, grad_input, grad_weight):
        mod.launch_config = tuning.launch_config if cfg is None else (lambda *a, **k: cfg)


# ------------------------------------------------------------------------------- compile
def _compile_task(task):
    """Worker: run one (op, side, dtype, cfg, hw) once so Triton compiles and caches it."""
    op, side, dtype_name, cfg, hw = task
    try:
        from sparsekit import backends
        from sparsekit.backends.triton import tuning

        force_config(tuning.LaunchConfig(*cfg))
        op_call(backends.load("triton"), op, side, dtype_name, hw, DENSITIES[0])()
        torch.cuda.synchronize()
        return task, None
    except Exception as e:  # noqa: BLE001 - reported, the config is dropped
        return task, f"{type(e).__name__}: {str(e)[:300]}"


def compile_all(tasks, workers):
    t = time.time()
    failed = {}
    with mp.get_context("spawn").Pool(workers) as pool:
        for task, err in pool.imap_unordered(_compile_task, tasks):
            if err:
                failed[task[:4]] = err
    log(f"compiled {len(tasks)} kernel variants in {time.time() - t:.0f} s with {workers} "
        f"workers; {len(failed)} failed")
    return failed


# ------------------------------------------------------------------------------- timing
def bench(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def rel_err(ref, got):
    ref, got = ref.float(), got.float()
    return float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))


def tune_triton(sides, dtypes, deadline, failed):
    """{table key: {"small": cfg, "large": cfg}}, and a log of every timing."""
    from sparsekit import backends
    from sparsekit.backends.triton import tuning

    tb = backends.load("triton")
    tuned, records = {}, []
    for side in sides:
        for dtype_name in dtypes:
            size = DTYPES[dtype_name].itemsize
            for op in OPS:
                key = f"{op}/{side}/{size}"
                current = dict(zip(("small", "large"), tuning.table_configs(key)))
                entry = {}
                for row, hws in (("small", SMALL_HW), ("large", LARGE_HW)):
                    probs = [(hw, d) for hw in hws for d in DENSITIES]
                    force_config(current[row])
                    refs = {p: op_call(tb, op, side, dtype_name, *p)() for p in probs}
                    best = None
                    cands = dict.fromkeys([tuple(current[row])] + CANDIDATES[size])
                    for cfg in cands:
                        if time.time() > deadline:
                            break
                        if (op, side, dtype_name, cfg) in failed:
                            continue
                        force_config(tuning.LaunchConfig(*cfg))
                        try:
                            errs = [rel_err(refs[p], op_call(tb, op, side, dtype_name, *p)())
                                    for p in probs]
                            tol = 1e-4 if size == 4 else 2e-2
                            if max(errs) > tol:
                                records.append(dict(key=key, row=row, cfg=cfg, error=f"rel err {max(errs):.1e}"))
                                continue
                            ms = [bench(op_call(tb, op, side, dtype_name, *p)) for p in probs]
                        except Exception as e:  # noqa: BLE001
                            records.append(dict(key=key, row=row, cfg=cfg, error=str(e)[:200]))
                            continue
                        total = sum(ms)
                        records.append(dict(key=key, row=row, cfg=cfg, ms=ms, total=total,
                                            problems=probs))
                        if best is None or total < best[1]:
                            best = (cfg, total)
                    entry[row] = list(best[0]) if best else list(current[row])
                    log(f"{key:18s} {row:5s} best {entry[row]} "
                        f"({best[1] * 1e3 if best else float('nan'):.1f} µs total; "
                        f"current {list(current[row])})")
                force_config(None)
                tuned[key] = entry
    return tuned, records


def route(sides, dtypes, tuned):
    """{"pass/dtype": backend}: the faster of triton (tuned) and cuda over the large problems."""
    from sparsekit import backends
    from sparsekit.backends.triton import tuning

    routes, records = {}, []
    try:
        cb = backends.load("cuda")
    except backends.BackendUnavailable as e:
        log(f"cuda backend unavailable ({e}): every route goes to triton")
        cb = None
    tb = backends.load("triton")
    for dtype_name in dtypes:
        size = DTYPES[dtype_name].itemsize
        for op in OPS:
            totals = {"triton": 0.0, "cuda": 0.0 if cb else float("inf")}
            for side in sides:
                key = f"{op}/{side}/{size}"
                for hw in SMALL_HW + LARGE_HW:
                    row = "small" if hw in SMALL_HW else "large"
                    for d in DENSITIES:
                        force_config(tuning.LaunchConfig(*tuned[key][row]))
                        t_triton = bench(op_call(tb, op, side, dtype_name, hw, d))
                        force_config(None)
                        t_cuda = bench(op_call(cb, op, side, dtype_name, hw, d)) if cb else None
                        totals["triton"] += t_triton
                        if cb:
                            totals["cuda"] += t_cuda
                        records.append(dict(op=op, dtype=dtype_name, side=side, hw=hw, density=d,
                                            triton_ms=t_triton, cuda_ms=t_cuda))
            pass_ = PASS_OF[op]
            routes[f"{pass_}/{dtype_name}"] = min(totals, key=totals.get)
            log(f"route {pass_}/{dtype_name}: triton {totals['triton'] * 1e3:.0f} µs, cuda "
                f"{totals['cuda'] * 1e3:.0f} µs -> {routes[f'{pass_}/{dtype_name}']}")
    if "fwd/bfloat16" in routes:  # fp16 runs the same kernels as bf16 (tensor cores, 2 bytes)
        for pass_ in ("fwd", "dx", "dw"):
            routes[f"{pass_}/float16"] = routes[f"{pass_}/bfloat16"]
    return routes, records


def profile_eager(side=32, hw=16, density=0.1):
    """Top host-side costs of eager forward+backward of one sparse conv per GPU backend."""
    import sparsekit

    out = []
    for name in ("triton", "cuda"):
        x, w, dy, _, _ = problem(side, "float32", hw, density)
        from sparsekit import BlockLayout

        layout = BlockLayout.random(tuple(w.shape), (side, side), density,
                                    generator=torch.Generator().manual_seed(3)).to("cuda")
        xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        sparsekit.set_backend(name)
        try:
            def step():
                y = sparsekit.block_sparse_conv2d(xr, wr, layout, padding=1)
                torch.autograd.grad(y, (xr, wr), dy)
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            t = time.perf_counter()
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(50):
                step()
            prof.disable()
            host = (time.perf_counter() - t) / 50
            torch.cuda.synchronize()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
            out.append(f"=== eager fwd+bwd host profile, {name}: {host * 1e6:.0f} µs per call "
                       f"(cProfile on)\n{s.getvalue()}")
        finally:
            sparsekit.set_backend("auto")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the new tuning file (JSON)")
    ap.add_argument("--log", help="also write every timing here (JSON)")
    ap.add_argument("--sides", default="32,16", help="block sides to tune (16, 32, 64)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1),
                    help="processes compiling kernels before the timing")
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds; once past it the remaining candidates are skipped")
    ap.add_argument("--no-profile", action="store_true", help="skip the eager host profile")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: tune_gpu needs a CUDA device", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    deadline = time.time() + args.budget
    sides = [int(s) for s in args.sides.split(",")]
    dtypes = args.dtypes.split(",")
    for dt in dtypes:
        if dt not in DTYPES:
            ap.error(f"--dtypes: {dt!r} is not one of {sorted(DTYPES)}")

    from sparsekit.backends import routing

    tasks = [(op, side, dt, cfg, hw) for side in sides for dt in dtypes for op in OPS
             for cfg in CANDIDATES[DTYPES[dt].itemsize] for hw in (SMALL_HW[0], LARGE_HW[0])]
    failed = compile_all(tasks, args.workers)
    for task, err in sorted(failed.items()):
        log(f"compile failed {task}: {err}")
    tuned, trecs = tune_triton(sides, dtypes, deadline, failed)
    routes, rrecs = route(sides, dtypes, tuned)

    doc = json.loads(json.dumps(routing.tuning_file()))  # a copy of the current file
    doc["triton"].update(tuned)
    doc["routes"].update(routes)
    props = torch.cuda.get_device_properties(0)
    import triton

    doc["measured_on"] = (f"{props.name}, torch {torch.__version__}, triton {triton.__version__}, "
                          f"{time.strftime('%Y-%m-%d')}: python -m benchmarks.tune_gpu "
                          f"--sides {args.sides} (entries for other sides kept from before)")
    with open(args.out, "w") as f:
        f.write(routing.dump_tuning(doc))
    log(f"wrote {args.out}")
    if args.log:
        with open(args.log, "w") as f:
            json.dump(dict(triton=trecs, routes=rrecs, compile_failed={str(k): v for k, v in failed.items()}),
                      f, indent=1, default=str)
    if not args.no_profile:
        print(profile_eager(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
