"""The backend registry: backends are found by their declarations, ``auto``'s order follows them,
and a new backend is one module (here a toy one, written to a temporary folder of the package)."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch

import sparsekit
from sparsekit import backends, block_sparse_conv2d, block_sparse_linear
from sparsekit.backends import routing
from sparsekit.backends.problem import conv_problem, linear_problem
from sparsekit.geometry import make_geometry

from .cases import assert_matches_reference, make_layout

TOY = '''
"""A toy backend: the reference's launchers, counted."""
import torch

from sparsekit.backends import reference
from sparsekit.backends.base import Backend


class ToyBackend(Backend):
    name = "toy"
    device_types = ("cpu",)
    priority = 100
    dtypes = (torch.float32,)
    calls = []

    def forward(self, p, *args):
        self.calls.append("forward")
        return reference.BACKEND.forward(p, *args)

    def grad_input(self, p, *args):
        self.calls.append("grad_input")
        return reference.BACKEND.grad_input(p, *args)

    def grad_weight(self, p, *args):
        self.calls.append("grad_weight")
        return reference.BACKEND.grad_weight(p, *args)


BACKEND = ToyBackend()
'''


@pytest.fixture
def fresh_registry(monkeypatch, tmp_path):
    """The registry read again (and again after the test); ``add(name, source)`` puts a module
    into a temporary folder of ``sparsekit.backends``."""
    def add(name, source):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.setattr(backends, "__path__", [*backends.__path__, str(tmp_path)])
        monkeypatch.delitem(sys.modules, f"sparsekit.backends.{name}", raising=False)
        backends.declared.cache_clear()
        backends.serving.cache_clear()

    yield add
    backends.declared.cache_clear()
    backends.serving.cache_clear()
    for name in [p.stem for p in tmp_path.glob("*.py")]:
        sys.modules.pop(f"sparsekit.backends.{name}", None)
        backends._loaded.pop(name, None)
        if hasattr(backends, name):
            delattr(backends, name)
    sparsekit.set_backend("auto")


def test_every_backend_module_is_found_by_its_declaration():
    assert sparsekit.BACKENDS == backends.names() == ("reference", "cpu", "triton", "cuda")
    for name, backend in backends.declared().items():
        assert backend.name == name and sys.modules[f"sparsekit.backends.{name}"].BACKEND is backend
    assert backends.names()[0] == backends.FALLBACK
    assert backends.serving("cpu") == ("cpu",)
    assert backends.serving("cuda") == routing.gpu_backends() == ("triton", "cuda")
    assert backends.serving("mps") == ()


@pytest.fixture
def fresh_order():
    backends.serving.cache_clear()
    yield
    backends.serving.cache_clear()


def test_auto_order_follows_the_declared_priority(monkeypatch, fresh_order):
    cuda = backends.declared()["cuda"]
    monkeypatch.setattr(cuda, "priority", 30)
    assert backends.serving("cuda") == ("cuda", "triton")
    doc = routing.tuning_file()  # a pass/dtype the table does not name takes the priority order
    monkeypatch.setitem(doc, "routes", {})
    assert routing.cuda_order("conv2d_dx", torch.float32) == ("cuda", "triton")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'reference', 'cpu', 'triton', 'cuda'"):
        sparsekit.set_backend("tpu")
    with pytest.raises(ValueError, match="got 'tpu'"):
        backends.load("tpu")


def test_a_new_backend_is_one_module(fresh_registry):
    fresh_registry("toy", TOY)
    assert "toy" in sparsekit.BACKENDS and backends.serving("cpu") == ("toy", "cpu")
    toy = backends.load("toy")
    torch.manual_seed(0)
    w, x = torch.randn(24, 20, 3, 3), torch.randn(2, 20, 6, 5)
    layout = make_layout(w.shape, (8, 4), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto picks it: no fallback to announce
        y = block_sparse_conv2d(x, w, layout, padding=1)
    assert toy.calls == ["forward"] and y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference("toy", lambda x, w: block_sparse_conv2d(x, w, layout, stride=2),
                             [x, w])
    lw, lx = torch.randn(24, 20), torch.randn(5, 20)
    lin = make_layout(lw.shape, (8, 4), 0.5)
    assert_matches_reference("toy", lambda x, w: block_sparse_linear(x, w, lin), [lx, lw])
    assert {"forward", "grad_input", "grad_weight"} <= set(toy.calls)
    sparsekit.set_backend("toy")
    with pytest.raises(NotImplementedError, match="toy.*float64"):
        block_sparse_linear(lx.double(), lw.double(), lin)


def test_a_declaration_must_match_its_module(fresh_registry):
    fresh_registry("misnamed", TOY)
    with pytest.raises(TypeError, match="misnamed"):
        backends.names()


def test_one_problem_for_every_kernel():
    geom = make_geometry(2, 1, 1, 2)
    p = conv_problem((3, 5, 7, 9), (6, 5, 3, 3), geom)
    assert p.geometry() == geom and not p.is_linear
    assert (p.out_h, p.out_w) == geom.output_hw((7, 9), (3, 3)) and p.pixels == 3 * p.out_h * p.out_w
    x = torch.empty(0)
    assert p.empty_output(x).shape == (3, 6, p.out_h, p.out_w)
    assert p.empty_input_grad(x).is_contiguous(memory_format=torch.channels_last)
    idx = backends.BlockIndex(torch.ones(2, 9 * 2, dtype=torch.bool), *[None] * 5, 4, 4)
    sizes = p.native_sizes(45, idx)
    assert len(sizes) == 22 and sizes[16:] == [45, 4, 4, 2, 18, 2]
    lin = linear_problem(13, (8, 20))
    assert lin.is_linear and lin.pixels == 13 and lin.kernel_args()[:3] == (1, 13, 20)
    assert lin.empty_output(x).shape == (13, 8) and lin.empty_input_grad(x).shape == (13, 20)


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_weight_grad_comes_back_in_the_weights_own_strides(name, monkeypatch):
    """The six ops bring inputs into the launchers' layout once for every backend: a contiguous
    (NCHW) conv weight gets the same dW as a channels_last one, in its own strides."""
    from sparsekit.backends import cpu

    monkeypatch.setattr(cpu, "DENSE_WHEN_FULL", False)
    backend, ref = backends.load(name), backends.load("reference")
    torch.manual_seed(0)
    w, x = torch.randn(24, 20, 3, 3), torch.randn(2, 20, 6, 5)
    layout = make_layout(w.shape, (8, 4), 0.5)
    idx = backends.BlockIndex(*layout.index_tensors(), *layout.block)
    geom = make_geometry(1, 1, 1, 1)
    dy = torch.randn(2, 24, 6, 5)
    want = ref.conv2d_dw(dy, x, w.contiguous(memory_format=torch.channels_last), idx, geom, False)
    got = backend.conv2d_dw(dy, x, w, idx, geom, False)
    assert got.stride() == w.stride()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_reference_runs_a_dilated_one_by_one_conv_undilated():
    """torch 2.14's oneDNN segfaults on this channels_last 1×1 conv (stride 2, padding 1,
    dilation 2, bias, width-1 input); dilation means nothing on a one-tap axis, so the oracle
    runs it undilated — the same convolution (checked against an NCHW dense conv)."""
    x = torch.randn(3, 18, 6, 1, requires_grad=True)
    weight = torch.randn(35, 18, 1, 1, requires_grad=True)
    bias = torch.randn(35, requires_grad=True)
    layout = make_layout(weight.shape, (16, 16), 1.0, full=True)
    previous = sparsekit.get_backend()
    sparsekit.set_backend("reference")
    try:
        y = block_sparse_conv2d(x.contiguous(memory_format=torch.channels_last), weight, layout,
                                bias, stride=2, padding=1, dilation=2)
        y.sum().backward()
    finally:
        sparsekit.set_backend(previous)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y2 = torch.nn.functional.conv2d(x2, w2, b2, stride=2, padding=1, dilation=2)  # NCHW: no crash
    y2.sum().backward()
    torch.testing.assert_close(y, y2)
    for a, b in ((x.grad, x2.grad), (weight.grad, w2.grad), (bias.grad, b2.grad)):
        torch.testing.assert_close(a, b)
