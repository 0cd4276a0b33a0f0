"""pytest-benchmark setup: the ``--bench-set`` and ``--bench-device`` options and machine facts
in every saved result."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "0")


def pytest_addoption(parser):
    parser.addoption("--bench-set", choices=("quick", "full"), default="quick",
                     help="quick: the default sets (CPU ≤ 10 min on 2 cores; GPU a few minutes); "
                          "full: every shape/density/block/pass")
    parser.addoption("--bench-device", choices=("all", "cpu", "cuda"), default="all",
                     help="run only the benchmarks on this device (default: all, i.e. CPU and, "
                          "where one is present, the GPU); use cuda on a short GPU lease")


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--bench-device")
    if wanted == "all":
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        device = callspec.params.get("device") if callspec is not None else None
        (drop if device is not None and device != wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info):
    from sparsekit.info import collect

    machine_info["sparsekit"] = collect()
    # oneDNN's ISA cap: with ONEDNN_MAX_CPU_ISA=AVX2 the dense baseline runs as on an AVX2-only CPU
    machine_info["sparsekit"]["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
