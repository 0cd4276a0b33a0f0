"""The C++ CPU backend equals the reference backend on values and gradients (x, weight, bias).

Every test runs once per instruction set this machine can run (``_C.isas_supported()``: e.g.
avx512, avx2 and the portable build on an AVX-512 x86-64 CPU), not only the one picked.
"""

import pytest
import torch

import sparsekit
from sparsekit import block_sparse_conv2d, block_sparse_linear

from .cases import assert_matches_reference, make_layout, run_with_grads

try:
    from sparsekit import _C

    ISAS = _C.isas_supported()
except ImportError:  # reported by the backend's own tests
    ISAS = []


@pytest.fixture(autouse=True, params=ISAS)
def isa(request):
    """Run the test with the kernels of one instruction set, then restore the default."""
    assert _C.select_isa(request.param) == ""
    yield request.param
    assert _C.select_isa("") == ""


@pytest.fixture(autouse=True)
def block_kernels_even_when_full(monkeypatch):
    """Test the C++ kernels at density 1 too (by default a full layout runs oneDNN)."""
    from sparsekit.backends import cpu

    monkeypatch.setattr(cpu, "DENSE_WHEN_FULL", False)

# (out, in, rows of x, block, density, empty block rows)
LINEAR_CASES = [
    (64, 64, 16, (32, 32), 0.5, ()),
    (70, 45, 13, (16, 16), 0.5, ()),          # partial edge blocks both ways
    (128, 96, 7, (16, 64), 0.3, (1, 3)),      # empty block rows
    (33, 130, 1, (64, 64), 1.0, ()),          # batch 1, density 1
    (48, 48, 5, (32, 32), 0.0, ()),           # density 0
    (40, 20, 9, (8, 4), 0.6, ()),             # small blocks
    (100, 90, 5, (48, 40), 0.5, ()),          # block sides not a whole number of vectors
]


@pytest.mark.parametrize("n,k,m,block,density,empty", LINEAR_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(n, k, m, block, density, empty, bias):
    torch.manual_seed(0)
    w, x = torch.randn(n, k), torch.randn(m, k)
    b = torch.randn(n) if bias else None
    layout = make_layout(w.shape, block, density, empty_rows=empty)
    assert_matches_reference(
        "cpu", lambda x, w, b: block_sparse_linear(x, w, layout, b), [x, w, b])


# (c_out, c_in, kernel, stride, padding, upsample, hw, batch, block, density)
CONV_CASES = [
    (64, 64, 3, 1, 1, 1, (8, 8), 2, (32, 32), 0.3),
    (50, 40, 3, 1, 1, 1, (9, 7), 2, (32, 32), 0.4),    # partial edge blocks
    (33, 20, 3, 2, 1, 1, (8, 9), 2, (16, 16), 0.5),    # stride 2, odd sizes
    (40, 17, 3, 2, 0, 1, (11, 10), 1, (32, 16), 0.5),  # stride 2, no padding, batch 1
    (64, 3, 3, 1, 1, 1, (8, 8), 2, (16, 16), 0.7),     # RGB input: narrow blocks
    (64, 3, 4, 2, 1, 1, (16, 16), 1, (16, 64), 0.6),   # 4×4 stride 2, narrow BK
    (32, 24, 4, 1, 2, 1, (6, 6), 2, (16, 16), 0.5),    # 4×4 stride 1, padding 2
    (64, 64, 1, 1, 0, 1, (5, 5), 2, (32, 32), 0.5),    # 1×1
    (64, 64, 1, 1, 0, 2, (5, 5), 2, (32, 32), 0.5),    # 1×1 on fused 2× upsample
    (65, 70, 3, 1, 1, 2, (4, 6), 2, (64, 64), 0.5),    # 3×3 on fused 2× upsample
    (48, 32, 3, 1, 1, 1, (6, 6), 2, (16, 16), 1.0),    # density 1
    (48, 32, 3, 1, 1, 1, (6, 6), 2, (16, 16), 0.0),    # density 0
    (32, 32, 3, 1, 0, 1, (7, 7), 2, (16, 16), 0.5),    # no padding
    (32, 16, 3, 2, 1, 2, (5, 5), 1, (16, 16), 0.5),    # stride 2 on upsampled input
    (16, 16, 3, 1, 2, 1, (6, 6), 1, (16, 16), 0.5),    # dilation 2 (passed below)
    (96, 50, 3, 1, 1, 1, (6, 5), 2, (48, 24), 0.5),    # 48-row, 24-column blocks
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv2d_matches_reference(case):
    c_out, c_in, k, stride, padding, up, hw, batch, block, density = case
    dilation = 2 if padding == 2 and k == 3 else 1
    torch.manual_seed(0)
    w, x, b = torch.randn(c_out, c_in, k, k), torch.randn(batch, c_in, *hw), torch.randn(c_out)
    layout = make_layout(w.shape, block, density, empty_rows=(0,) if layout_rows(c_out, block) > 1 else ())
    assert_matches_reference(
        "cpu", lambda x, w, b: block_sparse_conv2d(x, w, layout, b, stride=stride, padding=padding,
                                                   dilation=dilation, upsample=up), [x, w, b])


def layout_rows(c_out, block):
    return -(-c_out // block[0])


def test_conv2d_non_contiguous_and_nchw_inputs():
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    x_big = torch.randn(2, 32, 10, 10)
    x = x_big[:, ::2, 1:9, 1:9]  # non-contiguous NCHW view
    layout = make_layout(w.shape, (16, 16), 0.5)
    assert not x.is_contiguous()
    assert_matches_reference(
        "cpu", lambda x, w: block_sparse_conv2d(x, w, layout, padding=1), [x, w])


def test_linear_non_contiguous_and_batched_input():
    torch.manual_seed(0)
    w = torch.randn(48, 32)
    x = torch.randn(3, 32, 5).transpose(1, 2)  # [3, 5, 32], non-contiguous
    layout = make_layout(w.shape, (16, 16), 0.5)
    assert_matches_reference("cpu", lambda x, w: block_sparse_linear(x, w, layout), [x, w])


def test_output_and_grad_memory_formats():
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    layout = make_layout(w.shape, (16, 16), 0.5)
    sparsekit.set_backend("cpu")
    try:
        y = block_sparse_conv2d(x, w, layout, padding=1)
        y.sum().backward()
    finally:
        sparsekit.set_backend("auto")
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert w.grad.stride() == w.stride()
    # dW is exactly zero outside kept blocks
    assert (w.grad[~layout.element_mask()] == 0).all()


def test_dense_dw_gives_the_full_gradient():
    torch.manual_seed(0)
    w, x = torch.randn(32, 16, 3, 3), torch.randn(2, 16, 6, 6)
    layout = make_layout(w.shape, (16, 16), 0.3)
    layout.dense_dw = True
    _, (gx_ref, gw_ref) = run_with_grads("reference", lambda x, w: block_sparse_conv2d(x, w, layout, padding=1), [x, w])
    _, (gx, gw) = run_with_grads("cpu", lambda x, w: block_sparse_conv2d(x, w, layout, padding=1), [x, w])
    assert (gw_ref[~layout.element_mask()] != 0).any(), "dense dW must reach pruned blocks"
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_weight_without_grad_skips_dw():
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    layout = make_layout(w.shape, (16, 16), 0.5)
    y = block_sparse_conv2d(x, w, layout, padding=1)
    y.sum().backward()
    assert w.grad is None and x.grad is not None


def test_results_are_bit_identical_run_to_run():
    torch.manual_seed(0)
    w, x = torch.randn(64, 64, 3, 3), torch.randn(4, 64, 8, 8)
    layout = make_layout(w.shape, (32, 32), 0.5)
    runs = [run_with_grads("cpu", lambda x, w: block_sparse_conv2d(x, w, layout, padding=1), [x, w])
            for _ in range(2)]
    (y0, g0), (y1, g1) = runs
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_index_update_is_seen_by_the_next_call():
    torch.manual_seed(0)
    w, x = torch.randn(32, 32), torch.randn(4, 32)
    layout = make_layout(w.shape, (16, 16), 1.0)
    sparsekit.set_backend("cpu")
    try:
        y_full = block_sparse_linear(x, w, layout)
        layout.update(torch.zeros(layout.grid, dtype=torch.bool))
        y_empty = block_sparse_linear(x, w, layout)
    finally:
        sparsekit.set_backend("auto")
    torch.testing.assert_close(y_full, x @ w.t())
    assert torch.equal(y_empty, torch.zeros_like(y_empty))


def test_full_layout_runs_the_dense_kernels(monkeypatch):
    from sparsekit.backends import cpu

    monkeypatch.setattr(cpu, "DENSE_WHEN_FULL", True)
    torch.manual_seed(0)
    w, x = torch.randn(32, 3, 3, 3), torch.randn(2, 3, 8, 8)
    layout = make_layout(w.shape, (16, 16), 1.0)
    assert_matches_reference("cpu", lambda x, w: block_sparse_conv2d(x, w, layout, padding=1), [x, w])
    sparsekit.set_backend("cpu")
    try:
        y = block_sparse_conv2d(x, w, layout, padding=1)
    finally:
        sparsekit.set_backend("auto")
    assert torch.equal(y, torch.nn.functional.conv2d(x, w, padding=1))


def test_auto_runs_dense_torch_where_the_kernels_would_be_slower(isa, monkeypatch):
    """Never slower than dense: on the portable build, and above the ISA's density crossover,
    ``auto`` runs the layer as masked dense torch (announced); below it, the kernels."""
    from sparsekit import ops
    from sparsekit.backends import cpu

    monkeypatch.setattr(ops, "_fallbacks", {})
    torch.manual_seed(0)
    w, x = torch.randn(64, 32, 3, 3), torch.randn(2, 32, 6, 6)
    for density in (0.25, 1.0):
        layout = make_layout(w.shape, (16, 16), density)
        declined = isa not in cpu.CROSSOVER or density > cpu.CROSSOVER[isa]
        idx = ops._idx(*layout.index_tensors(), *layout.block)
        assert (cpu.BACKEND.auto_declines("conv2d_fwd", x, w, idx) is not None) == declined
        with pytest.warns(UserWarning, match="reference backend") if declined else _no_warning():
            y = block_sparse_conv2d(x, w, layout, padding=1)
        torch.testing.assert_close(
            y, torch.nn.functional.conv2d(x, w * layout.element_mask(), padding=1),
            rtol=1e-4, atol=1e-4)
        monkeypatch.setattr(ops, "_fallbacks", {})


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def guard():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    return guard()


def test_eager_path_equals_the_registered_ops_bit_for_bit(monkeypatch):
    """Eager calls skip torch.library's dispatch (ops._EagerSparse); the registered ops (what
    torch.compile runs) must give the same values and gradients, to the bit."""
    from sparsekit import ops

    torch.manual_seed(0)
    w, x, b = torch.randn(48, 40, 3, 3), torch.randn(2, 40, 7, 6), torch.randn(48)
    layout = make_layout(w.shape, (16, 16), 0.5)
    wl, xl = torch.randn(40, 70), torch.randn(9, 70)
    layout_l = make_layout(wl.shape, (16, 32), 0.5)
    runs = {}
    for eager in (True, False):
        monkeypatch.setattr(ops, "_eager", lambda *t, _e=eager: _e)
        runs[eager] = (
            run_with_grads("cpu", lambda x, w, b: block_sparse_conv2d(x, w, layout, b, stride=2,
                                                                      padding=1), [x, w, b]),
            run_with_grads("cpu", lambda x, w: block_sparse_linear(x, w, layout_l), [xl, wl]))
    for (y0, g0), (y1, g1) in zip(runs[True], runs[False]):
        assert torch.equal(y0, y1) and all(torch.equal(a, c) for a, c in zip(g0, g1))


# (weight shape, block, x shape, conv kwargs or None for linear)
DENSE_ROUTE_CASES = [
    ((48, 40, 3, 3), (16, 16), (2, 40, 7, 6), dict(padding=1)),
    ((20, 6, 1, 1), (4, 2), (2, 6, 9, 7), dict(stride=2)),         # stays on the launchers
    ((24, 16, 3, 3), (8, 8), (2, 16, 5, 4), dict(padding=1, upsample=2)),
    ((40, 70), (16, 16), (9, 70), None),
]


@pytest.mark.parametrize("dense_dw", [False, True])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("w_shape,block,x_shape,conv", DENSE_ROUTE_CASES)
def test_auto_runs_declined_layers_through_torch_autograd(w_shape, block, x_shape, conv, full,
                                                          dense_dw, monkeypatch):
    """Where ``auto`` hands an unstrided CPU layer to dense torch it runs it through torch's own
    autograd (one fused oneDNN backward, not the reference backend's separate dX and dW
    launchers; strided convs keep those), with the reference backend's values and gradients: dW
    masked, or dense with ``dense_dw``."""
    from sparsekit import ops

    monkeypatch.setattr(ops, "_fallbacks", {})
    torch.manual_seed(0)
    w, x, b = torch.randn(w_shape), torch.randn(x_shape), torch.randn(w_shape[0])
    layout = make_layout(w.shape, block, 0.9, full=full)
    assert layout.bitmap.float().mean() > 0.8  # above every ISA's crossover
    layout.dense_dw = dense_dw

    def layer(x, w, b):
        if conv is None:
            return block_sparse_linear(x, w, layout, b)
        return block_sparse_conv2d(x, w, layout, b, **conv)
    strided = conv is not None and conv.get("stride", 1) > 1  # keeps the reference launchers
    with pytest.warns(UserWarning, match="reference backend"):
        eager_sparse = "_EagerSparse" in type(layer(x, w.requires_grad_(), b).grad_fn).__name__
    assert eager_sparse == strided
    assert_matches_reference("auto", layer, [x, w.detach(), b])
