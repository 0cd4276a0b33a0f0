"""Bad input gets a clear exception naming the argument — never a crash or a wrong answer."""

import pytest
import torch

import sparsekit
from sparsekit import BlockLayout, SparseConv2d, block_sparse_conv2d, block_sparse_linear


@pytest.fixture
def lin():
    w = torch.randn(32, 16)
    return w, BlockLayout(w.shape, (16, 16))


@pytest.fixture
def conv():
    w = torch.randn(32, 16, 3, 3)
    return w, BlockLayout(w.shape, (16, 16))


def test_linear_shape_mismatch(lin):
    w, layout = lin
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 16\]"):
        block_sparse_linear(torch.randn(4, 15), w, layout)


def test_layout_not_matching_weight(lin):
    w, _ = lin
    with pytest.raises(ValueError, match="layout was built for a weight of shape"):
        block_sparse_linear(torch.randn(4, 16), w, BlockLayout((32, 32), (16, 16)))


def test_wrong_dtype(lin):
    w, layout = lin
    with pytest.raises(TypeError, match="same dtype"):
        block_sparse_linear(torch.randn(4, 16, dtype=torch.float64), w, layout)
    with pytest.raises(TypeError, match="floating-point"):
        block_sparse_linear(torch.ones(4, 16, dtype=torch.int64), w, layout)


def test_not_a_layout(lin):
    w, _ = lin
    with pytest.raises(TypeError, match="layout must be a sparsekit.BlockLayout"):
        block_sparse_linear(torch.randn(4, 16), w, torch.ones(2, 1, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_wrong_device(lin):
    w, layout = lin
    with pytest.raises(ValueError, match="same device"):
        block_sparse_linear(torch.randn(4, 16, device="cuda"), w, layout)


def test_layout_on_another_device_is_named(lin):
    w, layout = lin
    w_meta = w.to("meta")
    with pytest.raises(ValueError, match="layout lives on cpu but weight on meta"):
        block_sparse_linear(torch.randn(4, 16, device="meta"), w_meta, layout)


def test_bias_shape(lin):
    w, layout = lin
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\)"):
        block_sparse_linear(torch.randn(4, 16), w, layout, torch.randn(16))


def test_conv_channel_mismatch(conv):
    w, layout = conv
    with pytest.raises(ValueError, match=r"x must have shape \[B, 16, H, W\]"):
        block_sparse_conv2d(torch.randn(2, 8, 6, 6), w, layout)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=0), "stride must be >= 1"),
    (dict(padding=-1), "padding must be >= 0"),
    (dict(stride=(1, 2, 3)), "stride must be an int or a pair"),
    (dict(upsample=0), "upsample must be an int >= 1"),
    (dict(padding=0, dilation=5), "output would be empty"),
])
def test_conv_bad_geometry(conv, kwargs, match):
    w, layout = conv
    with pytest.raises((ValueError, TypeError), match=match):
        block_sparse_conv2d(torch.randn(2, 16, 6, 6), w, layout, **kwargs)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        sparsekit.set_backend("fast")


def test_forced_backend_names_what_it_lacks():
    w = torch.randn(32, 16, dtype=torch.float64)
    layout = BlockLayout(w.shape, (16, 16))
    sparsekit.set_backend("cpu")
    try:
        with pytest.raises(NotImplementedError, match="cpu.*float64"):
            block_sparse_linear(torch.randn(4, 16, dtype=torch.float64), w, layout)
    finally:
        sparsekit.set_backend("auto")


def test_module_bad_density():
    with pytest.raises(ValueError, match="density"):
        SparseConv2d(8, 8, 3, block=(8, 8), density=1.5)
