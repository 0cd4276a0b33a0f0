"""The CPU kernels of instruction sets this machine cannot run natively, checked under emulation.

aarch64 (NEON): tests/native/cpu_kernels_check.cpp (torch-free: scalar reference loops over odd
convs) is cross-compiled with ``kernels_neon.cpp`` by ``aarch64-linux-gnu-g++`` and run under
``qemu-aarch64``; the bindings (``module.cpp``) are syntax-checked for aarch64 too. Debian's
``g++-aarch64-linux-gnu`` and ``qemu-user`` provide both (``.ci/run`` installs them); where they
are missing the tests skip and say so. The ISAs the machine runs natively are tested against the
reference backend in test_cpu_backend.py (every one of ``_C.isas_supported()``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian: apt-get install g++-aarch64-linux-gnu "
                    "qemu-user; .ci/run installs them)")
    return path


def _kernel_check_binary(tmp_path, isa="neon"):
    out = tmp_path / f"cpu_kernels_check_{isa}"
    cmd = [_tool(CXX), "-std=c++17", "-O2", "-fopenmp", "-static", f"-DISA={isa}",
           "-Icsrc/common", "-Icsrc/cpu", "tests/native/cpu_kernels_check.cpp",
           f"csrc/cpu/kernels_{isa}.cpp", "-o", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"cross-compile failed:\n{r.stderr[-3000:]}"
    return out


@pytest.mark.parametrize("isa", ["neon", "generic"])
def test_aarch64_kernels_match_scalar_loops_under_qemu(tmp_path, isa):
    binary = _kernel_check_binary(tmp_path, isa)
    r = subprocess.run([_tool(QEMU), str(binary)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{isa} kernels differ from the scalar loops:\n{r.stdout}{r.stderr}"
    assert r.stdout.count("ok ") >= 12, r.stdout


def test_aarch64_bindings_compile():
    cxx = _tool(CXX)
    try:
        import pybind11
    except ImportError:
        pytest.skip("pybind11 not installed (pip install -e '.[test]' brings it)")
    includes = [f"-I{pybind11.get_include()}",
                f"-I{__import__('sysconfig').get_paths()['include']}"]
    r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-fopenmp", *includes,
                        "-Icsrc/common", "-Icsrc/cpu", "csrc/cpu/module.cpp"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_native_check_passes_for_every_isa_this_machine_runs(tmp_path, monkeypatch):
    """The same torch-free check, compiled natively for each ISA the CPU supports (so a failure
    in it is told apart from a failure of the emulator)."""
    from sparsekit import _C

    from .cases import load_setup_module

    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    flags = load_setup_module(monkeypatch).ISA_FLAGS
    for isa in _C.isas_supported():
        out = tmp_path / f"check_{isa}"
        r = subprocess.run([cxx, "-std=c++17", "-O2", "-fopenmp", f"-DISA={isa}", *flags[isa],
                            "-Icsrc/common", "-Icsrc/cpu", "tests/native/cpu_kernels_check.cpp",
                            f"csrc/cpu/kernels_{isa}.cpp", "-o", str(out)],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        run = subprocess.run([str(out)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{isa}:\n{run.stdout}"
