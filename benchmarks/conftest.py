"""pytest-benchmark setup: the ``--bench-set`` option and machine facts in every saved result."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "0")


def pytest_addoption(parser):
    parser.addoption("--bench-set", choices=("quick", "full"), default="quick",
                     help="quick: the default set (≤ 10 min on 2 CPU cores); full: every shape/pass")


def pytest_benchmark_update_machine_info(config, machine_info):
    from sparsekit.info import collect

    machine_info["sparsekit"] = collect()
