"""torch.compile traces the ops; the native build is importable, single-OpenMP and portable."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from sparsekit import SparseConv2d, SparseLinear

from .cases import make_layout


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
    import sparsekit._C  # noqa: F401

    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "gomp" in line.split()[-1]}
    assert len(libs) == 1, f"more than one OpenMP runtime mapped: {sorted(libs)}"


def test_portable_kernels_match_reference():
    """The baseline-ISA build of the kernels (what a machine without AVX-512 runs)."""
    code = (
        "import torch, sparsekit\n"
        "from sparsekit import _C\n"
        "assert _C.isa() == 'generic', _C.isa()\n"
        "from tests.cases import assert_matches_reference, make_layout\n"
        "torch.manual_seed(0)\n"
        "w, x = torch.randn(50, 20, 3, 3), torch.randn(2, 20, 7, 9)\n"
        "layout = make_layout(w.shape, (32, 16), 0.5)\n"
        "assert_matches_reference('cpu', lambda x, w: sparsekit.block_sparse_conv2d(x, w, layout, "
        "stride=2, padding=1), [x, w])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, SPARSEKIT_CPU_ISA="generic")
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
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
