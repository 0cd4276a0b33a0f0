"""``python -m sparsekit.info``: what this machine can run — backends, ISA, threads, GPU, Triton.

Answers a user's first question ("which kernels will my layers use here?") in one command.
"""

from __future__ import annotations

import os
import platform

import torch

from . import backends, ops
from .backends import availability, routing


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect() -> dict:
    """Facts about the build and the machine, as a dict (also used by the benchmarks)."""
    info = {
        "sparsekit": __import__("sparsekit").__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "backend_setting": ops.get_backend(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if torch.cuda.is_available() else None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "backends": {},
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        from . import _C

        availability("cpu")  # applies SPARSEKIT_CPU_ISA
        info["cpu_isa"] = _C.isa()
        info["cpu_isas_built"] = ", ".join(_C.isas_built())
        info["cpu_isas_supported"] = ", ".join(_C.isas_supported())
        info["openmp_max_threads"] = _C.openmp_max_threads()
    except ImportError:
        info["cpu_isa"] = None
    try:
        from . import _C_cuda

        count, err = _C_cuda.device_count()
        info["cuda_extension"] = f"built; runtime sees {count} device(s)" + (f" ({err})" if err else "")
        availability("cuda")  # applies SPARSEKIT_CUDA_MMA
        info["cuda_bf16_fp16_kernels"] = ("tensor cores (mma.sync)" if _C_cuda.tensor_cores()
                                          else "FFMA (SPARSEKIT_CUDA_MMA=0)")
    except ImportError:
        info["cuda_extension"] = "not built"
    for name in backends.names():
        ok, reason = availability(name)
        info["backends"][name] = "available" if ok else f"unavailable: {reason}"
    return info


def main():
    info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backends":
            continue
        print(f"{key:<{width}}  {value}")
    print("backends:")
    for name, status in info["backends"].items():
        print(f"  {name:<10} {status}")
    taken = ops.fallbacks_taken()
    if taken:
        print("fallbacks to reference taken in this process:")
        for reason, op in taken.items():
            print(f"  {op}: {reason}")
    print(f"auto dispatch: CPU tensors -> {'>'.join(backends.serving('cpu'))}; CUDA tensors -> "
          f"first of (else {backends.FALLBACK}, announced once):")
    for pass_, op in (("fwd", "conv2d_fwd"), ("dx", "conv2d_dx"), ("dw", "conv2d_dw")):
        orders = ", ".join(f"{routing.dtype_name(dt)} {'>'.join(routing.cuda_order(op, dt))}"
                           for dt in (torch.float32, torch.bfloat16, torch.float16))
        print(f"  {pass_:<3} {orders}")
    print(f"  (measured table: {routing.tuning_file().get('measured_on', '?')})")


if __name__ == "__main__":
    main()
