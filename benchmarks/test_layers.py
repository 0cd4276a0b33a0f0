"""Layer benchmarks: sparsekit's backends vs dense torch (and torch BSR) in the same run.

    pytest benchmarks/ --benchmark-only                     # quick sets (CPU ≤ 10 min on 2 cores)
    pytest benchmarks/ --benchmark-only --bench-device cuda # the GPU quick set only
    pytest benchmarks/ --benchmark-only --bench-set full    # every shape, density, block and pass
    pytest benchmarks/ --benchmark-only --benchmark-json benchmarks/results/NAME.json
    python -m benchmarks.report benchmarks/results/NAME.json

Quick sets (``shapes.py``): CPU — the quick CPU cases × every density × every block, passes fwd
and fwd+bwd, fp32. GPU — the quick GPU cases × densities 0.5 / 0.1 × block 32×32, passes fwd, dx,
dw and fwd+bwd, fp32 and bf16. The dense baseline runs for every case/pass/dtype of either set.

fp32 is IEEE fp32 (DESIGN §3): TF32 is off for the dense baseline and the sparse kernels alike
while each fp32 benchmark runs (``runners.ieee_fp32``), and restored afterwards. The dense
baseline times an unmasked random weight; the sparse impls the same draw masked to the layout.

Each result's ``extra_info`` names its case, impl, pass, density, block, device, dtype, tf32,
batch, MACs and kept fraction so the report can pair it with the dense baseline of the same run.
"""

import itertools

import pytest
import torch

import sparsekit
from sparsekit import backends

from .runners import PEDANTIC, bsr_applies, ieee_fp32, make_inputs, make_runner
from .shapes import (BLOCKS, CPU_CASES, DENSITIES, GPU_CASES, GPU_QUICK_BLOCKS,
                     GPU_QUICK_DENSITIES)

CPU_BATCH, GPU_BATCH = 16, 64
PASSES = ("fwd", "fwd+bwd", "dx", "dw")


def _available(name):
    return backends.availability(name)[0]


def _params():
    """(device, dtype, batch, case, impl, pass, density, block) for every benchmark."""
    out = []
    # device, dtype, batch, cases, impls, quick passes, quick densities, quick blocks
    # sparse:auto is what a user gets: the kernels, or dense torch where they would be slower
    # (the cpu backend's auto_declines); quick for 32×32 blocks only.
    devices = [("cpu", torch.float32, CPU_BATCH, CPU_CASES, ["sparse:cpu", "sparse:auto"],
                ("fwd", "fwd+bwd"), DENSITIES, BLOCKS)]
    if torch.cuda.is_available():
        gpu_impls = [f"sparse:{b}" for b in ("triton", "cuda") if _available(b)]
        for dtype in (torch.float32, torch.bfloat16):
            devices.append(("cuda", dtype, GPU_BATCH, GPU_CASES, gpu_impls,
                            PASSES, GPU_QUICK_DENSITIES, GPU_QUICK_BLOCKS))
    for device, dtype, batch, cases, impls, quick_passes, quick_densities, quick_blocks in devices:
        for case in cases:
            for pass_ in PASSES:
                quick = case.quick and pass_ in quick_passes
                out.append(pytest.param(device, dtype, batch, case, "dense", pass_, 1.0, (32, 32),
                                        marks=() if quick else pytest.mark.full))
                combos = itertools.product(impls + (["bsr"] if bsr_applies(case) and pass_ == "fwd" else []),
                                           DENSITIES, BLOCKS)
                for impl, density, block in combos:
                    in_quick = (quick and density in quick_densities and block in quick_blocks
                                and (impl != "sparse:auto" or block == (32, 32)))
                    out.append(pytest.param(device, dtype, batch, case, impl, pass_, density, block,
                                            marks=() if in_quick else pytest.mark.full))
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
    dense = impl == "dense"
    try:
        with ieee_fp32(dtype) as tf32:
            x, w, layout = make_inputs(case, batch, density, block, torch.device(device), dtype,
                                       mask_weight=not dense)
            run = make_runner(case, impl, pass_, x, w, layout)
            if impl == "bsr":
                try:  # torch's BSR kernels do not cover every dtype/device; say so, don't fail
                    run()
                except (RuntimeError, NotImplementedError) as e:
                    pytest.skip(f"torch BSR cannot run this case here: {e}")
            benchmark.extra_info.update(
                case=case.name, impl=impl, pass_=pass_, density=density, block=list(block),
                device=device, dtype=str(dtype), tf32=tf32, batch=batch, macs=case.macs(batch),
                kept_fraction=1.0 if dense else float(layout.kept_numel()) / layout.numel)
            # Warm-up builds kernels (Triton compiles on first call); the median of the rounds
            # is what the report uses.
            benchmark.pedantic(run, **PEDANTIC[device])
    finally:
        sparsekit.set_backend("auto")
