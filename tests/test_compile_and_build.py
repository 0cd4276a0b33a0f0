"""torch.compile traces the ops; the native build is importable, single-OpenMP and portable."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from sparsekit import SparseConv2d, SparseLinear

from .cases import make_layout, run_python


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SparseConv2d(16, 32, 3, padding=1, block=(16, 16), density=0.5)
        self.up = SparseConv2d(32, 16, 3, padding=1, upsample=2, block=(16, 16), density=0.5)
        self.fc = SparseLinear(16, 8, block=(16, 16), density=0.5)

    def forward(self, x):
        return self.fc(torch.relu(self.up(torch.relu(self.conv(x)))).mean(dim=(2, 3)))


def test_opcheck_linear():
    torch.manual_seed(0)
    w, x = torch.randn(32, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    layout = make_layout(w.shape, (16, 16), 0.5)
    args = (x, w, None, *layout.index_tensors(), 16, 16, False)
    torch.library.opcheck(torch.ops.sparsekit.linear_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compile_fullgraph_forward_and_backward_and_layout_update():
    torch.manual_seed(0)
    model = Small()
    x = torch.randn(2, 16, 6, 6)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert model.conv.weight.grad is not None
    # Rewriting the index buffers in place is seen by the compiled graph.
    model.conv.layout.update(torch.zeros_like(model.conv.layout.bitmap))
    torch.testing.assert_close(compiled(x), model(x))


def test_one_openmp_runtime_is_mapped():
    """sparsekit._C uses torch's libgomp: importing torch and the extension maps one OpenMP
    runtime. (In a fresh process: other packages, e.g. scikit-learn, vendor their own.)"""
    code = ("import torch, sparsekit._C\n"
            "libs = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l.split()[-1]}\n"
            "assert len(libs) == 1, f'more than one OpenMP runtime mapped: {sorted(libs)}'\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_cpu_isa_variable_picks_the_portable_kernels():
    """SPARSEKIT_CPU_ISA=generic selects the portable build when the cpu backend loads."""
    code = (
        "import torch, sparsekit\n"
        "from sparsekit.backends import cpu\n"
        "assert cpu._C.isa() == 'generic', cpu._C.isa()\n"
        "from tests.cases import assert_matches_reference, make_layout\n"
        "torch.manual_seed(0)\n"
        "w, x = torch.randn(50, 20, 3, 3), torch.randn(2, 20, 7, 9)\n"
        "layout = make_layout(w.shape, (32, 16), 0.5)\n"
        "assert_matches_reference('cpu', lambda x, w: sparsekit.block_sparse_conv2d(x, w, layout, "
        "stride=2, padding=1), [x, w])\n"
    )
    result = run_python(code, SPARSEKIT_CPU_ISA="generic")
    assert result.returncode == 0, result.stderr


def test_cuda_module_imports_without_a_gpu():
    try:
        from sparsekit import _C_cuda
    except ImportError:
        pytest.skip("sparsekit._C_cuda not built here (no nvcc at install time)")
    count, error = _C_cuda.device_count()
    assert count >= 0 and isinstance(error, str)


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "sparsekit.info"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "cpu" in out.stdout and "reference" in out.stdout


def test_unknown_or_unsupported_isa_is_refused_with_the_choices():
    from sparsekit import _C

    code = "import torch, sparsekit\nsparsekit.backends.load('cpu')\n"
    for isa, match in (("sse9", "no sse9 kernels are built"),
                       *((("avx512", "cannot run the avx512"),)
                         if "avx512" in _C.isas_built() and "avx512" not in _C.isas_supported()
                         else ())):
        r = run_python(code, SPARSEKIT_CPU_ISA=isa)
        assert r.returncode != 0 and match in r.stderr and "SPARSEKIT_CPU_ISA" in r.stderr, r.stderr


def test_setup_builds_each_architectures_isas_and_no_x86_flag_reaches_arm(monkeypatch):
    from .cases import load_setup_module

    setup = load_setup_module(monkeypatch)
    names = lambda arch: sorted(os.path.basename(s) for s in setup.cpu_sources(arch))  # noqa: E731
    assert names("x86_64") == ["kernels_avx2.cpp", "kernels_avx512.cpp", "kernels_generic.cpp",
                               "module.cpp"]
    assert names("aarch64") == ["kernels_generic.cpp", "kernels_neon.cpp", "module.cpp"]
    assert names("riscv64") == ["kernels_generic.cpp", "module.cpp"]
    for src in setup.cpu_sources("aarch64"):
        assert not any(f.startswith("-m") for f in setup.isa_flags(src)), src
    assert "-mavx2" in setup.isa_flags("csrc/cpu/kernels_avx2.cpp")
    monkeypatch.setenv("SPARSEKIT_TARGET_ARCH", "arm64")
    assert setup.target_arch() == "aarch64"


def test_cuda_module_embeds_sm80_sm90a_code_and_ptx_for_newer_gpus():
    """sm_80/sm_90a machine code, and compute_90 PTX the driver can JIT on a newer GPU."""
    try:
        from sparsekit import _C_cuda
    except ImportError:
        pytest.skip("sparsekit._C_cuda not built here (no nvcc at install time)")
    try:
        import triton
    except ImportError:
        pytest.skip("no cuobjdump: it comes with triton's package")
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        pytest.skip("triton's package carries no cuobjdump here")
    ptx = subprocess.run([tool, "--list-ptx", _C_cuda.__file__], capture_output=True, text=True)
    elf = subprocess.run([tool, "--list-elf", _C_cuda.__file__], capture_output=True, text=True)
    assert "sm_90.ptx" in ptx.stdout, ptx.stdout + ptx.stderr
    assert "sm_80.cubin" in elf.stdout and "sm_90a.cubin" in elf.stdout, elf.stdout


def test_import_sparsekit_leaves_the_dst_engine_for_first_use():
    code = ("import sys, sparsekit\n"
            "assert 'sparsekit.dst' not in sys.modules\n"
            "assert sparsekit.dst.DynamicSparsity and 'sparsekit.dst' in sys.modules\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
