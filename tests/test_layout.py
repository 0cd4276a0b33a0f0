"""BlockLayout: grid shapes, constructors, index buffers, in-place update, state_dict."""

import pytest
import torch

from sparsekit import BlockLayout


def _expected_indices(bitmap):
    rows, cols = bitmap.shape
    kept = [(r, c) for r in range(rows) for c in range(cols) if bitmap[r, c]]
    kept_t = [(r, c) for c in range(cols) for r in range(rows) if bitmap[r, c]]
    row_ptr = [0] + [sum(1 for r2, _ in kept if r2 <= r) for r in range(rows)]
    col_ptr = [0] + [sum(1 for _, c2 in kept_t if c2 <= c) for c in range(cols)]
    return kept, kept_t, row_ptr, col_ptr


def _check_indices(layout):
    kept, kept_t, row_ptr, col_ptr = _expected_indices(layout.bitmap)
    nnz = len(kept)
    assert layout.row_ptr.tolist() == row_ptr
    assert layout.col_ptr.tolist() == col_ptr
    assert list(zip(layout.block_row[:nnz].tolist(), layout.col_idx[:nnz].tolist())) == kept
    assert layout.row_idx[:nnz].tolist() == [r for r, _ in kept_t]


def test_grid_shapes_linear_and_conv():
    assert BlockLayout((100, 70), (32, 32)).grid == (4, 3)
    # conv: blocks never straddle taps; C_in < BK gives one narrow block per tap
    conv = BlockLayout((64, 3, 3, 3), (16, 64))
    assert conv.grid == (4, 9) and conv.blocks_per_tap == 1
    conv = BlockLayout((256, 96, 3, 3), (32, 64))
    assert conv.grid == (8, 18)  # ceil(96/64) = 2 blocks per tap
    assert conv.block_numel()[0, :2].tolist() == [32 * 64, 32 * 32]


@pytest.mark.parametrize("shape,block", [((70, 45), (16, 16)), ((64, 20, 3, 3), (16, 16)),
                                         ((33, 3, 4, 4), (16, 64))])
def test_index_buffers_match_the_bitmap(shape, block):
    layout = BlockLayout.random(shape, block, 0.4, generator=torch.Generator().manual_seed(0))
    _check_indices(layout)


def test_update_rewrites_buffers_in_place():
    layout = BlockLayout((64, 64), (16, 16))
    ptrs = [t.data_ptr() for t in layout.index_tensors()]
    for density in (0.0, 0.3, 1.0):
        fresh = BlockLayout.random((64, 64), (16, 16), density, generator=torch.Generator().manual_seed(1))
        layout.update(fresh.bitmap)
        _check_indices(layout)
        assert [t.data_ptr() for t in layout.index_tensors()] == ptrs


def test_from_mask_keeps_a_block_if_any_element_is_kept():
    mask = torch.zeros(32, 16, 3, 3, dtype=torch.bool)
    mask[17, 5, 1, 2] = True  # block row 1, tap (1, 2) = 5, channel block 0
    layout = BlockLayout.from_mask(mask, (16, 16))
    assert layout.bitmap.sum() == 1 and layout.bitmap[1, 5]
    assert layout.element_mask()[16:32, :, 1, 2].all()


def test_element_mask_round_trips_through_from_mask():
    layout = BlockLayout.random((40, 24, 3, 3), (16, 16), 0.5, generator=torch.Generator().manual_seed(2))
    again = BlockLayout.from_mask(layout.element_mask(), (16, 16))
    assert torch.equal(again.bitmap, layout.bitmap)


def test_from_weight_keeps_the_largest_blocks():
    w = torch.zeros(64, 64)
    w[:16, :16] = 5.0
    w[32:48, 16:32] = 3.0
    w[48:, 48:] = 1.0
    layout = BlockLayout.from_weight(w, (16, 16), density=2 / 16)
    assert layout.bitmap.sum() == 2 and layout.bitmap[0, 0] and layout.bitmap[2, 1]


@pytest.mark.parametrize("density", [0.0, 0.05, 0.1, 0.37, 0.5, 1.0])
def test_density_budget_counts_elements_with_unequal_blocks(density):
    layout = BlockLayout.random((70, 45, 3, 3), (32, 32), density, generator=torch.Generator().manual_seed(3))
    budget = round(density * layout.numel)
    kept = int(layout.kept_numel())
    assert kept <= budget
    assert budget - kept < 32 * 32  # shortfall under one block


def test_unstructured_layout_is_exact():
    layout = BlockLayout.random((10, 7), (1, 1), 0.3, generator=torch.Generator().manual_seed(4))
    assert int(layout.kept_numel()) == round(0.3 * 70)
    assert layout.is_unstructured


def test_state_dict_round_trip_rebuilds_indices():
    a = BlockLayout.random((64, 32, 3, 3), (16, 16), 0.3, generator=torch.Generator().manual_seed(5))
    b = BlockLayout((64, 32, 3, 3), (16, 16))
    assert list(a.state_dict()) == ["bitmap"]
    b.load_state_dict(a.state_dict())
    for x, y in zip(a.index_tensors(), b.index_tensors()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("bad", [(0, 16), (16,), (16, 16.0), "16x16", (True, 16)])
def test_bad_block_is_refused(bad):
    with pytest.raises(ValueError, match="block"):
        BlockLayout((32, 32), bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_bad_density_is_refused(bad):
    with pytest.raises(ValueError, match="density"):
        BlockLayout.random((32, 32), (16, 16), bad)


def test_bad_bitmap_is_refused():
    layout = BlockLayout((32, 32), (16, 16))
    with pytest.raises(ValueError, match="bitmap must have the block grid's shape"):
        layout.update(torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bitmap"):
        layout.update([[True, True], [True, True]])


def test_pruned_mask_is_cached_and_refreshed_in_place():
    layout = BlockLayout.random((32, 16, 3, 3), (16, 16), 0.5, generator=torch.Generator().manual_seed(6))
    mask = layout.pruned_mask()
    assert torch.equal(mask, ~layout.element_mask()) and layout.pruned_mask() is mask
    layout.update(~layout.bitmap)
    assert layout.pruned_mask() is mask and torch.equal(mask, ~layout.element_mask())
