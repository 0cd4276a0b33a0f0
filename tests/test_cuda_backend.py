"""The hand-written CUDA backend (``sparsekit._C_cuda``) against the reference backend.

Three layers, so that machines without a GPU still check what they can:

- Wherever the extension is built: it imports without a GPU, ``unsupported`` names its reasons,
  and the bindings reject bad arguments with a message instead of launching.
- Wherever a C++20 compiler is found: the unmodified kernels (csrc/cuda/*.cu) run on host
  threads through the small CUDA emulation in csrc/cuda/emulation, driven by
  ``sparsekit/backends/cuda.py`` itself on CPU tensors: odd shapes in fp32, bf16 and fp16, the
  dW split reduction included. This checks indexing, masking and barrier placement — not the
  GPU's behaviour or speed.
- On a CUDA device: values and gradients through the public API against the reference (fp32
  1e-4, bf16/fp16 1e-2 relative to max |value|) at SNGAN sizes and odd shapes, determinism, and
  a CUDA-graph replay that sees a layout update.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

import sparsekit
from sparsekit import backends, block_sparse_conv2d, block_sparse_linear
from sparsekit.backends import BlockIndex
from sparsekit.geometry import make_geometry

from .cases import make_layout, rel_err

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
ON_GPU = torch.cuda.is_available()
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


def _cuda_backend():
    try:
        return backends.load("cuda")
    except backends.BackendUnavailable as e:
        pytest.skip(f"cuda backend not built here: {e}")


def _cuda_extension():
    _cuda_backend()
    return sys.modules["sparsekit.backends.cuda"]._C_cuda


def _index(layout):
    return BlockIndex(*layout.index_tensors(), *layout.block)


# ------------------------------------------------------------------------- everywhere (built)
def test_extension_imports_and_names_why_it_cannot_run_cpu_tensors():
    cuda = _cuda_backend()
    w, x = torch.randn(32, 32), torch.randn(4, 32)
    idx = _index(make_layout(w.shape, (16, 16), 0.5))
    reason = cuda.unsupported("linear_fwd", x, w, idx)
    assert reason is not None and "cpu" in reason and "CUDA tensors" in reason


def test_unsupported_names_dtype_and_block_reasons():
    cuda = _cuda_backend()
    w = torch.randn(32, 32)
    on_cuda = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float64)
    idx = _index(make_layout(w.shape, (16, 16), 0.5))
    assert "float64" in cuda.unsupported("linear_fwd", on_cuda, w, idx)
    on_cuda.dtype = FP32
    unstructured = _index(make_layout(w.shape, (1, 1), 0.5))
    assert "reference" in cuda.unsupported("linear_fwd", on_cuda, w, unstructured)
    wide = idx._replace(block_n=128)
    assert "128" in cuda.unsupported("linear_fwd", on_cuda, w, wide)
    reason = cuda.unsupported("linear_fwd", on_cuda, w, idx)  # fine, if the runtime sees a GPU
    assert reason is None if ON_GPU else "runtime" in reason


def test_bindings_reject_bad_arguments_without_launching():
    C = _cuda_extension()
    good = [1, 1, 8, 32, 1, 8, 32, 1, 1, 1, 1, 0, 0, 1, 1, 1, 32, 16, 16, 2, 2, 2]
    assert len(good) == C.PROBLEM_FIELDS
    with pytest.raises(ValueError, match="22 sizes"):
        C.forward(good[:-1], 0, 0, 0, 0, 0, 0, 0, 0, 0)
    bad_block = good[:17] + [65] + good[18:]
    assert "block sides" in C.forward(bad_block, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert "dtype" in C.grad_input(good, 7, 0, 0, 0, 0, 0, 0, 0)
    assert "items" in C.grad_weight(good, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0)  # capacity is 4
    assert "scratch" in C.grad_weight(good, 0, 0, 0, 0, 0, 0, 0, 0, 4, 2, 0, 0)
    assert "all null" in C.grad_weight(good, 0, 0, 0, 0, 0, 8, 0, 0, 4, 1, 0, 0)


# ------------------------------------------------------------------------- emulated kernels
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(.*?)>>>\(", re.S)


class _Problem(ctypes.Structure):
    _fields_ = [(f"size{i}", ctypes.c_int64) for i in range(22)] + [("threads", ctypes.c_int)]


class _EmulatedModule:
    """The ``_C_cuda`` interface over the emulated launchers (ctypes; no pybind11 needed)."""

    DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2}
    PROBLEM_FIELDS = 22

    def __init__(self, lib):
        self.set_tensor_cores = lambda enabled: lib.sparsekit_cuda_set_tensor_cores(int(enabled))
        P, i, p, i64 = ctypes.POINTER(_Problem), ctypes.c_int, ctypes.c_void_p, ctypes.c_int64
        sig = {"forward": [P, i, i, p, p, p, p, p, p, p],
               "grad_input": [P, i, i, p, p, p, p, p, p],
               "grad_weight": [P, i, i, p, p, p, i64, i64, p, p, p, p, p]}
        self._fn = {}
        for name, args in sig.items():
            fn = getattr(lib, f"sparsekit_cuda_{name}")
            fn.argtypes, fn.restype = args, ctypes.c_char_p
            self._fn[name] = fn

    def _call(self, name, dims, *args):
        err = self._fn[name](ctypes.byref(_Problem(*dims, 1)), *args)
        return (err or b"").decode()

    def device_count(self):
        return 1, ""

    def forward(self, dims, dtype, device, x, w, bias, y, row_ptr, col_idx, stream):
        return self._call("forward", dims, dtype, device, row_ptr, col_idx, x, w, bias or None, y,
                          stream or None)

    def grad_input(self, dims, dtype, device, dy, w, dx, col_ptr, row_idx, stream):
        return self._call("grad_input", dims, dtype, device, col_ptr, row_idx, dy, w, dx,
                          stream or None)

    def grad_weight(self, dims, dtype, device, dy, x, dw, block_row, col_idx, block_count,
                    items, max_splits, scratch, stream):
        return self._call("grad_weight", dims, dtype, device, block_row or None, col_idx or None,
                          block_count or None, items, max_splits, dy, x, dw, scratch or None,
                          stream or None)


def _compiles(cxx, tmp, source):
    probe = tmp / "probe.cpp"
    probe.write_text(source)
    r = subprocess.run([cxx, "-std=c++20", "-fsyntax-only", str(probe)], capture_output=True)
    return r.returncode == 0


def _build_emulated(out, defines=()):
    """The kernels compiled for the host emulation into ``out`` (``defines``: extra -D flags)."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None or not (CUDA_SRC / "forward.cu").exists():
        pytest.skip("no C++ compiler (or no CUDA sources) to run the kernels in emulation")
    if not _compiles(cxx, out, "#include <barrier>\nstd::barrier<> b(1);\n_Float16 h;\n"):
        pytest.skip(f"{cxx} lacks C++20 <barrier> or _Float16, which the emulation needs")
    units = []
    for src in sorted(CUDA_SRC.glob("*.cu")):
        text = _LAUNCH.sub(lambda m: f"emu_launch({m[1]}, emu_cfg({m[2]}), ", src.read_text())
        unit = out / f"{src.stem}.cpp"
        unit.write_text(f'#line 1 "{src}"\n{text}')
        units.append(str(unit))
    lib = out / "libsparsekit_cuda_emulated.so"
    cmd = [cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-Wno-unknown-pragmas",
           f"-I{CUDA_SRC / 'emulation'}", f"-I{CUDA_SRC}", f"-I{ROOT / 'csrc' / 'common'}",
           *defines, *units, "-o", str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"emulated build failed:\n{r.stderr[-4000:]}"
    return _EmulatedModule(ctypes.CDLL(str(lib)))


@pytest.fixture(scope="module")
def emulated_lib(tmp_path_factory):
    return _build_emulated(tmp_path_factory.mktemp("cuda_emulation"))


@pytest.fixture(scope="module")
def backend_module(emulated_lib):
    """sparsekit.backends.cuda; where _C_cuda is not built (no nvcc), a private copy of it
    imported over the emulated library, so the kernels are checked there too."""
    try:
        backends.load("cuda")
        return sys.modules["sparsekit.backends.cuda"]
    except backends.BackendUnavailable:
        pass
    saved = sys.modules.get("sparsekit._C_cuda")
    sys.modules["sparsekit._C_cuda"] = emulated_lib
    try:
        spec = importlib.util.find_spec("sparsekit.backends.cuda")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["sparsekit._C_cuda"]
        else:
            sys.modules["sparsekit._C_cuda"] = saved
    return module


@pytest.fixture(params=["fp32", "bf16", "fp16", "bf16-ffma"])
def emulated(request, backend_module, emulated_lib, monkeypatch):
    """sparsekit.backends.cuda running the emulated kernels on CPU tensors, and the dtype."""
    cuda = backend_module
    flavour = request.param
    emulated_lib.set_tensor_cores(not flavour.endswith("ffma"))
    request.addfinalizer(lambda: emulated_lib.set_tensor_cores(True))
    monkeypatch.setattr(cuda, "_C_cuda", emulated_lib)
    monkeypatch.setattr(cuda, "_launch_args", lambda t: (cuda.DTYPES[t.dtype], 0, 0))
    monkeypatch.setattr(cuda, "_sm_count", lambda device: 4)
    return cuda, {"fp32": FP32, "bf16": BF16, "fp16": FP16, "bf16-ffma": BF16}[flavour]


def _compare_ops(cuda, x, w, b, layout, geom, dtype, dense_dw=False):
    """Each of the three kernels (``cuda``: the backend module) against the reference backend on
    the same (rounded) inputs."""
    ref, cuda = backends.load("reference"), cuda.BACKEND
    idx = _index(layout)
    CL = torch.channels_last
    xq, wq = x.to(dtype), w.to(dtype)
    bq = b.to(dtype) if b is not None else None
    if geom is not None:
        xq, wq = xq.contiguous(memory_format=CL), wq.contiguous(memory_format=CL)
    xf, wf, bf = xq.float(), wq.float(), bq.float() if bq is not None else None
    if geom is None:
        y, y0 = cuda.linear_fwd(xq, wq, bq, idx), ref.linear_fwd(xf, wf, bf, idx)
        dy = torch.randn(y.shape).to(dtype)
        dx, dx0 = cuda.linear_dx(dy, wq, idx), ref.linear_dx(dy.float(), wf, idx)
        dw = cuda.linear_dw(dy, xq, wq, idx, dense_dw)
        dw0 = ref.linear_dw(dy.float(), xf, wf, idx, dense_dw)
    else:
        hw = tuple(x.shape[2:])
        y, y0 = cuda.conv2d_fwd(xq, wq, bq, idx, geom), ref.conv2d_fwd(xf, wf, bf, idx, geom)
        dy = torch.randn(y.shape).to(dtype).contiguous(memory_format=CL)
        dx = cuda.conv2d_dx(dy, wq, idx, geom, hw)
        dx0 = ref.conv2d_dx(dy.float(), wf, idx, geom, hw)
        dw = cuda.conv2d_dw(dy, xq, wq, idx, geom, dense_dw)
        dw0 = ref.conv2d_dw(dy.float(), xf, wf, idx, geom, dense_dw)
        assert y.is_contiguous(memory_format=CL) and dx.is_contiguous(memory_format=CL)
    assert dw.stride() == wq.stride()
    for name, got, want in (("y", y, y0), ("dx", dx, dx0), ("dw", dw, dw0)):
        assert got.dtype == dtype and got.shape == want.shape, name
        err = rel_err(want.float(), got.float())
        assert err <= TOL[dtype], f"{name} differs from reference: rel err {err:.2e}"
    if not dense_dw:
        assert (dw[~layout.element_mask()] == 0).all(), "dW must be zero outside kept blocks"


# (out, in, rows, block, density, empty block rows)
EMU_LINEAR = [
    (70, 45, 13, (16, 16), 0.5, (1,)),       # partial edge blocks, an empty block row
    (40, 20, 9, (8, 4), 0.6, ()),            # blocks under the 16-wide tiles
    (50, 70, 129, (32, 64), 0.7, (0,)),      # a second pixel tile
    (96, 80, 300, (64, 16), 0.5, ()),        # dW split two ways
    (33, 130, 1, (64, 64), 1.0, ()),         # one row, density 1
    (48, 48, 5, (32, 32), 0.0, ()),          # density 0
    (48, 64, 7, (16, 16), 1.0, ()),          # main loop: as many chunks as stages (fp32: 4)
    (112, 48, 33, (16, 16), 1.0, ()),        # rows: chunks = stages - 1; dX columns: 7 > stages
    (48, 96, 7, (32, 32), 1.0, ()),          # tensor cores' 32-deep chunks: as many as stages
]
# (c_out, c_in, kernel, stride, padding, dilation, upsample, hw, batch, block, density)
EMU_CONV = [
    (50, 40, 3, 1, 1, 1, 1, (9, 7), 2, (32, 32), 0.4),    # partial edge blocks
    (33, 20, 3, 2, 1, 1, 1, (8, 9), 2, (16, 16), 0.5),    # stride 2, odd sizes: phases
    (40, 17, 3, 2, 0, 1, 1, (11, 10), 1, (32, 16), 0.5),  # stride 2, no padding
    (64, 3, 4, 2, 1, 1, 1, (16, 16), 1, (16, 64), 0.6),   # RGB input, 4×4 stride 2, 16×64
    (32, 24, 4, 1, 2, 1, 1, (6, 6), 2, (16, 16), 0.5),    # 4×4, padding 2
    (64, 64, 1, 1, 0, 1, 2, (5, 5), 2, (32, 32), 0.5),    # 1×1 on fused 2× upsample
    (65, 70, 3, 1, 1, 1, 2, (4, 6), 2, (64, 64), 0.5),    # 3×3 on fused 2× upsample, 64×64
    (16, 16, 3, 1, 2, 2, 1, (6, 6), 1, (16, 16), 0.5),    # dilation 2
    (24, 20, 3, 3, 1, 1, 2, (7, 5), 1, (16, 16), 0.6),    # stride 3 on upsample 2
    (40, 36, 3, 1, 1, 1, 1, (10, 25), 4, (16, 32), 0.5),  # 1000 pixels: dW splits
]


def _random_problem(seed):
    """A small random linear or conv problem for the emulated kernels: odd channel counts, blocks
    from 1×8 to 64×64 (some not powers of two), density 0, 1 or between, strides, padding,
    dilation, fused upsampling, and the SM count that sets dW's pixel splits."""
    r = random.Random(seed)
    p = dict(block=r.choice([(16, 16), (32, 32), (64, 64), (16, 64), (64, 16), (32, 16), (8, 4),
                             (13, 7), (48, 24), (1, 8)]),
             density=r.choice([0.0, 1.0, round(r.uniform(0.05, 0.95), 2)]),
             sm=r.choice([1, 4, 1000]), bias=r.random() < 0.7)
    if r.random() < 0.4:
        return dict(p, kind="linear", n=r.randint(1, 130), k=r.randint(1, 130),
                    m=r.choice([1, r.randint(2, 160)]))
    while True:
        k, up = r.choice([1, 3, 4]), r.choice([1, 1, 2])
        geom = make_geometry(r.choice([1, 2]), r.choice([0, 1, 2]), r.choice([1, 1, 2]), up)
        hw = (r.randint(1, 8), r.randint(1, 8))
        if min(geom.output_hw(hw, (k, k))) >= 1:
            return dict(p, kind="conv", c_out=r.randint(1, 100), c_in=r.randint(1, 64), k=k,
                        geom=geom, hw=hw, batch=r.randint(1, 3))


@pytest.mark.parametrize("seed", range(10))
def test_emulated_random_problems_match_reference(emulated, monkeypatch, seed):
    """A seeded sweep beyond the hand-picked cases (a wider scratch sweep of 3,007 such problems,
    non-contiguous inputs and the z fold included, passed on 2026-12-01)."""
    cuda, dtype = emulated
    p = _random_problem(seed)
    monkeypatch.setattr(cuda, "_sm_count", lambda device: p["sm"])
    torch.manual_seed(seed)
    if p["kind"] == "linear":
        w, x, geom = torch.randn(p["n"], p["k"]), torch.randn(p["m"], p["k"]), None
    else:
        w = torch.randn(p["c_out"], p["c_in"], p["k"], p["k"])
        x, geom = torch.randn(p["batch"], p["c_in"], *p["hw"]), p["geom"]
    b = torch.randn(w.shape[0]) if p["bias"] else None
    layout = make_layout(w.shape, p["block"], p["density"], seed=seed)
    _compare_ops(cuda, x, w, b, layout, geom, dtype, dense_dw=seed % 4 == 3)


@pytest.mark.parametrize("case", EMU_LINEAR, ids=[f"lin{i}" for i in range(len(EMU_LINEAR))])
def test_emulated_linear_matches_reference(emulated, case):
    cuda, dtype = emulated
    n, k, m, block, density, empty = case
    torch.manual_seed(0)
    w, x, b = torch.randn(n, k), torch.randn(m, k), torch.randn(n)
    layout = make_layout(w.shape, block, density, empty_rows=empty)
    _compare_ops(cuda, x, w, b, layout, None, dtype)


@pytest.mark.parametrize("case", EMU_CONV, ids=[f"conv{i}" for i in range(len(EMU_CONV))])
def test_emulated_conv2d_matches_reference(emulated, monkeypatch, case):
    cuda, dtype = emulated
    c_out, c_in, k, stride, padding, dilation, up, hw, batch, block, density = case
    monkeypatch.setattr(cuda, "_sm_count", lambda device: 1000)  # as many dW splits as fit
    torch.manual_seed(0)
    w, x, b = torch.randn(c_out, c_in, k, k), torch.randn(batch, c_in, *hw), torch.randn(c_out)
    rows = -(-c_out // block[0])
    layout = make_layout(w.shape, block, density, empty_rows=(0,) if rows > 1 else ())
    _compare_ops(cuda, x, w, b, layout, make_geometry(stride, padding, dilation, up), dtype)


def test_emulated_pixel_tiles_fold_into_grid_z(backend_module, tmp_path_factory, monkeypatch):
    """Pixel tiles go on grid y, folded into z past 65535 (mainloop.cuh: tile_grid). Built with
    the fold at 2 tiles, 7 tiles of pixels run as a 2 × 4 y/z grid with one CTA past the end."""
    lib = _build_emulated(tmp_path_factory.mktemp("cuda_emulation_fold"),
                          ["-DSPARSEKIT_GRID_Y_MAX=2"])
    cuda = backend_module
    monkeypatch.setattr(cuda, "_C_cuda", lib)
    monkeypatch.setattr(cuda, "_launch_args", lambda t: (cuda.DTYPES[t.dtype], 0, 0))
    monkeypatch.setattr(cuda, "_sm_count", lambda device: 4)
    torch.manual_seed(0)
    w, x, b = torch.randn(40, 24, 3, 3), torch.randn(2, 24, 20, 20), torch.randn(40)
    layout = make_layout(w.shape, (16, 16), 0.5, empty_rows=(0,))
    for dtype in (FP32, BF16):
        _compare_ops(cuda, x, w, b, layout, make_geometry(1, 1, 1, 1), dtype)


def test_emulated_dense_dw_gives_the_full_gradient(emulated, monkeypatch):
    cuda, dtype = emulated
    monkeypatch.setattr(cuda, "_sm_count", lambda device: 1000)  # 2 pixel splits per block
    torch.manual_seed(0)
    w, x = torch.randn(32, 16, 3, 3), torch.randn(2, 16, 16, 16)
    layout = make_layout(w.shape, (16, 16), 0.3)
    _compare_ops(cuda, x, w, None, layout, make_geometry(1, 1, 1, 1), dtype, dense_dw=True)


# ------------------------------------------------------------------------- on a CUDA device
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (torch.cuda.is_available() is "
                                            "False); the emulated tests above cover the logic")


@pytest.fixture
def ieee_fp32():
    """The reference's dense GPU kernels in IEEE fp32 (DESIGN.md §3: no TF32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run(backend, fn, tensors, dtype, round_to):
    """fn on CUDA copies of ``tensors`` rounded to ``round_to`` and run in ``dtype``.

    Returns the output and the grads of the tensors given (``None`` entries skipped)."""
    sparsekit.set_backend(backend)
    try:
        leaves = [t.to("cuda").to(round_to).to(dtype).detach().requires_grad_(True)
                  if t is not None else None for t in tensors]
        y = fn(*leaves)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        y.backward(dy.to("cuda").to(round_to).to(dtype))
        return [y.detach()] + [t.grad for t in leaves if t is not None]
    finally:
        sparsekit.set_backend("auto")


def _assert_matches_reference(fn, tensors, dtype=FP32):
    """The cuda backend in ``dtype`` vs the reference in fp32 on the same rounded values."""
    want = _run("reference", fn, tensors, FP32, dtype)
    got = _run("cuda", fn, tensors, dtype, dtype)
    for name, a, b in zip(["output", "grad_x", "grad_w", "grad_b"], want, got):
        assert b is not None and b.dtype == dtype and a.shape == b.shape, name
        err = rel_err(a.float(), b.float())
        assert err <= TOL[dtype], f"cuda {name} ({dtype}) differs from reference: rel err {err:.2e}"


# (id, c_out, c_in, kernel, stride, padding, upsample, hw, batch, block, density)
GPU_CONV = [
    ("sngan-3x3-b16", 256, 256, 3, 1, 1, 1, (16, 16), 8, (16, 16), 0.3),
    ("sngan-3x3-b32", 256, 256, 3, 1, 1, 1, (16, 16), 8, (32, 32), 0.3),
    ("sngan-3x3-b64", 256, 256, 3, 1, 1, 1, (16, 16), 8, (64, 64), 0.3),
    ("sngan-3x3-b16x64", 256, 256, 3, 1, 1, 1, (16, 16), 8, (16, 64), 0.3),
    ("sngan-G-upsample", 256, 256, 3, 1, 1, 2, (8, 8), 8, (32, 32), 0.2),
    ("sngan-G-shortcut-1x1", 256, 256, 1, 1, 0, 1, (8, 8), 8, (32, 32), 0.2),
    ("sngan-D-rgb", 128, 3, 3, 1, 1, 1, (32, 32), 8, (16, 16), 0.5),
    ("dcgan-D-4x4-s2", 128, 64, 4, 2, 1, 1, (32, 32), 8, (32, 32), 0.5),
    ("partial-blocks", 50, 40, 3, 1, 1, 1, (9, 7), 2, (32, 32), 0.4),
    ("stride2-odd", 33, 20, 3, 2, 1, 1, (8, 9), 2, (16, 16), 0.5),
    ("upsample-3x3-b64", 65, 70, 3, 1, 1, 2, (4, 6), 2, (64, 64), 0.5),
    ("stride2-on-upsample", 32, 16, 3, 2, 1, 2, (5, 5), 1, (16, 16), 0.5),
    ("density-1", 48, 32, 3, 1, 1, 1, (6, 6), 2, (16, 16), 1.0),
    ("density-0", 48, 32, 3, 1, 1, 1, (6, 6), 2, (16, 16), 0.0),
]
# (id, out, in, rows, block, density)
GPU_LINEAR = [
    ("sngan-G-linear", 4096, 128, 8, (32, 32), 0.3),
    ("sngan-D-linear", 1, 128, 64, (16, 16), 1.0),
    ("partial-blocks", 70, 45, 13, (16, 16), 0.5),
    ("small-blocks", 40, 20, 9, (8, 4), 0.6),
    ("many-rows", 96, 80, 3000, (64, 16), 0.5),
]
HALF_IDS = {"sngan-3x3-b32", "sngan-3x3-b16x64", "sngan-G-upsample", "dcgan-D-4x4-s2",
            "stride2-odd", "sngan-G-linear", "partial-blocks"}


def _gpu_params(cases):
    params = []
    for case in cases:
        params.append(pytest.param(case, FP32, id=f"{case[0]}-fp32"))
        if case[0] in HALF_IDS:
            params.append(pytest.param(case, BF16, id=f"{case[0]}-bf16"))
            params.append(pytest.param(case, FP16, id=f"{case[0]}-fp16"))
    return params


@gpu
@pytest.mark.parametrize("case,dtype", _gpu_params(GPU_CONV))
def test_gpu_conv2d_matches_reference(ieee_fp32, case, dtype):
    _, c_out, c_in, k, stride, padding, up, hw, batch, block, density = case
    torch.manual_seed(0)
    w, x, b = torch.randn(c_out, c_in, k, k), torch.randn(batch, c_in, *hw), torch.randn(c_out)
    rows = -(-c_out // block[0])
    layout = make_layout(w.shape, block, density, empty_rows=(0,) if rows > 1 else ()).to("cuda")
    _assert_matches_reference(
        lambda x, w, b: block_sparse_conv2d(x, w, layout, b, stride=stride, padding=padding,
                                            upsample=up), [x, w, b], dtype)


@gpu
@pytest.mark.parametrize("case,dtype", _gpu_params(GPU_LINEAR))
def test_gpu_linear_matches_reference(ieee_fp32, case, dtype):
    _, n, k, m, block, density = case
    torch.manual_seed(0)
    w, x, b = torch.randn(n, k), torch.randn(m, k), torch.randn(n)
    layout = make_layout(w.shape, block, density).to("cuda")
    _assert_matches_reference(lambda x, w, b: block_sparse_linear(x, w, layout, b), [x, w, b],
                              dtype)


@gpu
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_gpu_half_precision_ffma_fallback_matches_reference(dtype):
    C = _cuda_extension()
    torch.manual_seed(0)
    w, x, b = torch.randn(96, 80, 3, 3), torch.randn(4, 80, 9, 11), torch.randn(96)
    layout = make_layout(w.shape, (32, 16), 0.4).to("cuda")
    C.set_tensor_cores(False)
    try:
        _assert_matches_reference(
            lambda x, w, b: block_sparse_conv2d(x, w, layout, b, stride=2, padding=1),
            [x, w, b], dtype)
    finally:
        C.set_tensor_cores(True)


@gpu
def test_gpu_dilation_and_non_contiguous_input(ieee_fp32):
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    x = torch.randn(2, 32, 12, 12)[:, ::2, 1:11, 1:11]  # non-contiguous NCHW view
    layout = make_layout(w.shape, (16, 16), 0.5).to("cuda")
    _assert_matches_reference(
        lambda x, w: block_sparse_conv2d(x, w, layout, padding=2, dilation=2), [x, w])


@gpu
def test_gpu_dw_is_zero_outside_kept_blocks_and_dense_dw_is_full(ieee_fp32):
    torch.manual_seed(0)
    w, x = torch.randn(64, 32, 3, 3), torch.randn(4, 32, 8, 8)
    layout = make_layout(w.shape, (16, 16), 0.3).to("cuda")
    fn = lambda x, w: block_sparse_conv2d(x, w, layout, padding=1)  # noqa: E731
    _, _, gw = _run("cuda", fn, [x, w], FP32, FP32)
    assert (gw[~layout.element_mask()] == 0).all()
    layout.dense_dw = True
    _, _, gw_ref = _run("reference", fn, [x, w], FP32, FP32)
    _, _, gw = _run("cuda", fn, [x, w], FP32, FP32)
    assert (gw_ref[~layout.element_mask()] != 0).any(), "dense dW must reach pruned blocks"
    assert rel_err(gw_ref, gw) <= 1e-4


@gpu
def test_gpu_results_are_bit_identical_run_to_run():
    torch.manual_seed(0)
    w, x = torch.randn(256, 256, 3, 3), torch.randn(8, 256, 16, 16)
    layout = make_layout(w.shape, (32, 32), 0.5).to("cuda")
    fn = lambda x, w: block_sparse_conv2d(x, w, layout, padding=1)  # noqa: E731
    first, second = (_run("cuda", fn, [x, w], FP32, FP32) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@gpu
def test_gpu_graph_replay_sees_layout_update(ieee_fp32):
    torch.manual_seed(0)
    w = torch.randn(64, 64, 3, 3, device="cuda").contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 8, 8, device="cuda")
    layout = make_layout(w.shape, (16, 16), 0.5).to("cuda")
    sparsekit.set_backend("cuda")
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture
            block_sparse_conv2d(x, w, layout, padding=1)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = block_sparse_conv2d(x, w, layout, padding=1)
        layout.update(make_layout(w.shape, (16, 16), 0.3, seed=7).bitmap.to("cuda"))
        graph.replay()
        torch.cuda.synchronize()
    finally:
        sparsekit.set_backend("auto")
    sparsekit.set_backend("reference")
    try:
        want = block_sparse_conv2d(x, w, layout, padding=1)
    finally:
        sparsekit.set_backend("auto")
    assert rel_err(want, y) <= 1e-4
