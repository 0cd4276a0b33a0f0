"""Layer benchmarks: sparsekit's backends vs dense torch (and torch BSR) in the same run.

    pytest benchmarks/ --benchmark-only                     # quick CPU set (≤ 10 min, 2 cores)
    pytest benchmarks/ --benchmark-only --bench-set full    # every shape, dX and dW separately
    pytest benchmarks/ --benchmark-only --benchmark-json benchmarks/results/NAME.json
    python -m benchmarks.report benchmarks/results/NAME.json

Each result's ``extra_info`` names its case, impl, pass, density, block, dtype, batch and MACs so
the report can pair it with the dense baseline of the same run.
"""

import itertools

import pytest
import torch

import sparsekit
from sparsekit import backends

from .runners import bsr_applies, make_inputs, make_runner
from .shapes import BLOCKS, CPU_CASES, DENSITIES, GPU_CASES

CPU_BATCH, GPU_BATCH = 16, 64


def _available(name):
    return backends.availability(name)[0]


def _params():
    """(device, dtype, batch, case, impl, pass, density, block) for every benchmark."""
    out = []
    devices = [("cpu", torch.float32, CPU_BATCH, CPU_CASES, ["sparse:cpu"])]
    if torch.cuda.is_available():
        gpu_impls = [f"sparse:{b}" for b in ("triton", "cuda") if _available(b)]
        for dtype in (torch.float32, torch.bfloat16):
            devices.append(("cuda", dtype, GPU_BATCH, GPU_CASES, gpu_impls))
    for device, dtype, batch, cases, impls in devices:
        for case in cases:
            passes = ["fwd", "fwd+bwd"] + ([] if device == "cpu" else ["dx", "dw"])
            full_passes = ["dx", "dw"] if device == "cpu" else []
            for pass_ in passes + full_passes:
                quick = case.quick and pass_ in passes
                out.append(pytest.param(device, dtype, batch, case, "dense", pass_, 1.0, (32, 32),
                                        marks=() if quick else pytest.mark.full))
                combos = itertools.product(impls + (["bsr"] if bsr_applies(case) and pass_ == "fwd" else []),
                                           DENSITIES, BLOCKS)
                for impl, density, block in combos:
                    out.append(pytest.param(device, dtype, batch, case, impl, pass_, density, block,
                                            marks=() if quick else pytest.mark.full))
    return out


def _id(p):
    device, dtype, batch, case, impl, pass_, density, block = p.values
    name = case.name.replace("->", "to").replace(" ", "_").replace("@", "at")
    return f"{device}-{str(dtype)[6:]}-{name}-{pass_}-{impl}-d{density}-b{block[0]}x{block[1]}"


PARAMS = _params()


@pytest.mark.parametrize("device,dtype,batch,case,impl,pass_,density,block", PARAMS,
                         ids=[_id(p) for p in PARAMS])
def test_layer(benchmark, request, device, dtype, batch, case, impl, pass_, density, block):
    if request.node.get_closest_marker("full") and request.config.getoption("--bench-set") != "full":
        pytest.skip("in the full set only (--bench-set full)")
    x, w, layout = make_inputs(case, batch, density, block, torch.device(device), dtype)
    run = make_runner(case, impl, pass_, x, w, layout)
    benchmark.extra_info.update(
        case=case.name, impl=impl, pass_=pass_, density=density, block=list(block), device=device,
        dtype=str(dtype), batch=batch, macs=case.macs(batch),
        kept_fraction=float(layout.kept_numel()) / layout.numel)
    try:
        # Warm-up builds kernels/autotunes; a handful of rounds gives a stable median.
        benchmark.pedantic(run, rounds=15, warmup_rounds=2, iterations=1)
    finally:
        sparsekit.set_backend("auto")
