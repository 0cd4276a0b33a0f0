"""Compile every kernel for a CUDA target without a GPU, and report registers and spills.

    python -m sparsekit.backends.triton.compile_check [--arch 90] [--dtypes fp32,bf16] [--quick]

The interpreter never runs Triton's GPU compiler, so a construct it accepts can still fail to
compile; this runs the real pipeline (TTIR → TTGIR → PTX → cubin with Triton's bundled ptxas) for
each op × dtype × tuning-table config, plus a variant with the geometry ints Triton specialises
to constants on linear layers (value 1). It needs ``TRITON_INTERPRET`` unset. Exit status 1 if
any kernel fails to compile.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import tuning
from .forward import forward_kernel
from .grad_input import grad_input_kernel
from .grad_weight import grad_weight_kernel, reduce_splits_kernel

_INDEX_POINTERS = {"row_ptr", "col_idx", "col_ptr", "row_idx", "block_row"}
_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Geometry of a linear layer (the 1×1 conv of a [1, 1, M, K] image): the ints Triton turns into
# constants when they equal 1.
_LINEAR_CONSTANTS = dict(H=1, HO=1, KH=1, KW=1, SH=1, SW=1, DIL_H=1, DIL_W=1, U=1, B=1,
                         STEP_H=1, STEP_W=1)


def _signature(fn, dtype, constants):
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in _INDEX_POINTERS:
            sig[name] = "*i32"
        elif name == "part_ptr":
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        else:
            sig[name] = "i32"
    return sig


def _resource_usage(cubin):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    return f"regs {found[1]:>3} spill {found[2]:>4} B" if found else ""


def _jobs(dtypes, quick):
    sides = (32,) if quick else (16, 32, 64)
    for dtype in dtypes:
        for side in sides:
            blocks = dict(BN=side, BK=side)
            for op, fn, extra in (("forward", forward_kernel, dict(HAS_BIAS=True)),
                                  ("grad_input", grad_input_kernel, {}),
                                  ("grad_weight", grad_weight_kernel, dict(DENSE=False))):
                small, large = tuning.table_configs(f"{op}/{side}/{_DTYPE_BYTES[dtype]}")
                for cfg in dict.fromkeys((small, large)):
                    consts = dict(BLOCK_M=cfg.block_m, PRECISION="ieee", **blocks, **extra)
                    yield fn, dtype, consts, cfg
            yield reduce_splits_kernel, dtype, dict(DENSE=True, **blocks), None
        cfg = tuning.table_configs(f"forward/16/{_DTYPE_BYTES[dtype]}")[0]
        for fn, extra in ((forward_kernel, dict(HAS_BIAS=False)), (grad_input_kernel, {}),
                          (grad_weight_kernel, dict(DENSE=True, MAX_SPLIT=1))):
            linear = {k: v for k, v in _LINEAR_CONSTANTS.items() if k in fn.arg_names}
            yield fn, dtype, dict(BLOCK_M=cfg.block_m, BN=16, BK=16, PRECISION="ieee", **extra,
                                  **linear), cfg
    if "fp32" in dtypes:
        yield forward_kernel, "fp32", dict(HAS_BIAS=True, BLOCK_M=64, BN=32, BK=32,
                                           PRECISION="tf32"), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--quick", action="store_true", help="32×32 blocks only")
    args = parser.parse_args(argv)
    if type(forward_kernel).__name__ == "InterpretedFunction":
        print("unset TRITON_INTERPRET: the kernels were defined for the interpreter")
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    for fn, dtype, consts, cfg in _jobs(args.dtypes.split(","), args.quick):
        options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages) if cfg else {}
        label = f"{fn.__name__:22s} {dtype} {consts}"
        try:
            kernel = triton.compile(ASTSource(fn, _signature(fn, dtype, consts), constexprs=consts),
                                    target=target, options=options)
        except Exception as e:  # noqa: BLE001 - report every failing kernel, then fail
            failures += 1
            first_line = (str(e).splitlines() or [""])[0]
            print(f"FAIL {label}\n     {type(e).__name__}: {first_line}")
            continue
        print(f"ok   {label} {options} {_resource_usage(kernel.asm['cubin'])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
