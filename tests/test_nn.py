"""SparseLinear / SparseConv2d / sparsify: drop-in behaviour, Parameters kept, checkpoints."""

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import SparseConv2d, SparseLinear, sparsify


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def test_from_dense_keeps_parameter_objects_and_masks():
    conv = nn.Conv2d(32, 64, 3, padding=1)
    weight, bias = conv.weight, conv.bias
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    sparse = SparseConv2d.from_dense(conv, density=0.25, block=(16, 16))
    assert sparse.weight is weight and sparse.bias is bias
    assert sparse.weight.is_contiguous(memory_format=torch.channels_last)
    assert (sparse.weight[~sparse.layout.element_mask()] == 0).all()
    assert abs(sparse.density() - 0.25) < 1e-6
    sparse(torch.randn(2, 32, 8, 8)).sum().backward()
    before = weight.detach().clone()
    opt.step()  # the optimizer built before sparsifying steps the live weight
    assert not torch.equal(before, weight.detach())


def test_sparse_layers_equal_masked_dense_layers():
    torch.manual_seed(0)
    lin = SparseLinear(40, 24, block=(16, 16), density=0.5)
    x = torch.randn(5, 40)
    torch.testing.assert_close(lin(x), lin.to_dense()(x), rtol=1e-5, atol=1e-5)
    conv = SparseConv2d(16, 32, 3, stride=2, padding=1, block=(16, 16), density=0.5)
    x = torch.randn(2, 16, 9, 9)
    torch.testing.assert_close(conv(x), conv.to_dense()(x), rtol=1e-5, atol=1e-5)


def test_fused_upsample_equals_upsample_then_conv():
    torch.manual_seed(0)
    conv = SparseConv2d(16, 16, 3, padding=1, upsample=2, block=(16, 16), density=0.5)
    plain = SparseConv2d(16, 16, 3, padding=1, block=(16, 16))
    plain.weight.data.copy_(conv.weight.data)
    plain.bias.data.copy_(conv.bias.data)
    plain.layout.update(conv.layout.bitmap)
    x = torch.randn(2, 16, 5, 5)
    up = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(conv(x), plain(up), rtol=1e-5, atol=1e-5)


def test_sparsify_include_exclude():
    model = Tiny()
    sparsify(model, density=0.5, block=(16, 16), exclude=["stem"])
    assert isinstance(model.stem, nn.Conv2d)
    assert isinstance(model.body[1], SparseConv2d) and isinstance(model.head, SparseLinear)
    assert [n for n, _ in sparsekit.sparse_layers(model)] == ["body.1", "head"]
    model(torch.randn(2, 3, 8, 8)).sum().backward()


def test_one_layer_selection_for_sparsify_and_the_dst_engine():
    names = {"stem": None, "body.1": None, "head": None}
    assert sparsekit.nn.select_layers(names, include=["body.*", "head"], exclude=["head"]) == {
        "stem": "not matched by include", "body.1": "", "head": "excluded"}
    with pytest.raises(ValueError, match="exclude must be a sequence"):
        sparsekit.nn.select_layers(names, exclude="head")
    with pytest.raises(ValueError, match="include pattern 'x\\*' matches no"):
        sparsekit.nn.select_layers(names, include=["x*"])


def test_sparsify_refuses_unknown_names():
    with pytest.raises(ValueError, match="matches no nn.Linear/nn.Conv2d"):
        sparsify(Tiny(), density=0.5, block=(16, 16), include=["nope*"])
    with pytest.raises(ValueError, match="unknown layers"):
        sparsify(Tiny(), density={"nope": 0.5}, block=(16, 16))


def test_from_dense_refuses_weight_norm_naming_the_layer():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="Conv2d.*_WeightNorm.*spectral norm only"):
        SparseConv2d.from_dense(conv, density=0.5, block=(8, 8))
    with pytest.warns(UserWarning, match="stays dense"):
        model, report = sparsify(nn.Sequential(conv), density=0.5, block=(8, 8), return_report=True)
    assert not report[0].sparse and "_WeightNorm" in report[0].reason


def test_state_dict_round_trip_and_dense_checkpoint_load():
    torch.manual_seed(0)
    a = SparseConv2d(16, 32, 3, padding=1, block=(16, 16), density=0.4)
    b = SparseConv2d(16, 32, 3, padding=1, block=(16, 16), density=0.9)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.layout.bitmap, b.layout.bitmap) and torch.equal(a.weight, b.weight)
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(a(x), b(x))
    # A dense nn.Conv2d checkpoint loads into the sparse layer and is masked with its layout.
    dense = nn.Conv2d(16, 32, 3, padding=1)
    a.load_state_dict(dense.state_dict())
    assert torch.equal(a.weight, dense.weight * a.layout.element_mask())


def test_unstructured_falls_back_to_reference_with_a_warning():
    import sparsekit.ops as ops

    ops._fallbacks.clear()
    lin = SparseLinear(8, 8, block=(1, 1), density=0.5)
    with pytest.warns(UserWarning, match="unstructured"):
        lin(torch.randn(2, 8))
    torch.testing.assert_close(lin(torch.randn(2, 8)) * 0, torch.zeros(2, 8))


def test_spectral_norm_state_survives_a_checkpoint_load():
    """Masking after a load must touch the stored weight, not run spectral norm's power iteration."""
    from torch.nn.utils.parametrizations import spectral_norm

    a = spectral_norm(SparseConv2d(16, 16, 3, block=(16, 16), density=0.5))
    b = spectral_norm(SparseConv2d(16, 16, 3, block=(16, 16), density=0.5))
    a(torch.randn(2, 16, 5, 5))
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_autocast_rules_of_the_sparse_ops():
    """CPU autocast keeps sparse layers on the fp32 CPU kernels; CUDA autocast runs them in bf16
    (registered for both devices; the CUDA rule runs where a GPU is)."""
    import sparsekit.ops as ops

    ops._fallbacks.clear()
    conv = SparseConv2d(16, 16, 3, padding=1, block=(16, 16), density=0.5)
    x = torch.randn(2, 16, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x.to(torch.bfloat16))
        y.float().sum().backward()
    assert y.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    assert not ops.fallbacks_taken(), ops.fallbacks_taken()
    for name in ("conv2d_fwd", "linear_fwd"):
        op = getattr(torch.ops.sparsekit, name).default
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert op.has_kernel_for_dispatch_key(getattr(torch._C.DispatchKey, key)), (name, key)


@pytest.mark.parametrize("kwargs, match", [
    (dict(density=1.5), "density must be a number in"),
    (dict(density={"0": -0.1}), "density must be a number in"),
    (dict(density=0.5, block=(0, 8)), "block must be a pair of positive ints"),
    (dict(density=0.5, init="largest"), "init must be 'magnitude' or 'random'"),
])
def test_sparsify_bad_arguments_raise_instead_of_leaving_layers_dense(kwargs, match):
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match=match):
        sparsify(model, **kwargs)
    assert isinstance(model[0], nn.Conv2d) and type(model[0]) is nn.Conv2d
