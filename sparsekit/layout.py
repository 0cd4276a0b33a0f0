"""BlockLayout: which (BN × BK) blocks of a weight are kept, and the index buffers kernels walk.

A weight is seen as the matrix ``W[N, K]``: a linear weight ``[out, in]`` as it is; a conv weight
``[C_out, C_in, kh, kw]`` as ``[C_out, (kh, kw, c_in)]`` (its channels_last memory). The block grid
is ``[ceil(N / BN), taps · ceil(C_in / BK)]`` with ``taps = kh·kw`` (1 for linear): blocks never
straddle two taps, so a tap's last block column is narrower when BK does not divide C_in.

Buffers (all on the weight's device; ``cap = grid rows × grid cols`` so any density fits):

- ``bitmap``    bool  ``[R, C]``     the layout itself (persistent: it is in ``state_dict``)
- ``row_ptr``   int32 ``[R + 1]``    forward CSR: kept blocks of block-row r are
- ``col_idx``   int32 ``[cap]``        ``col_idx[row_ptr[r]:row_ptr[r+1]]`` (ascending)
- ``block_row`` int32 ``[cap]``      ``(block_row[i], col_idx[i])`` for ``i < row_ptr[R]`` lists
                                     every kept block, row-major (the dW work list)
- ``col_ptr``   int32 ``[C + 1]``    transpose CSC for dX: kept blocks of block-column c are
- ``row_idx``   int32 ``[cap]``        ``row_idx[col_ptr[c]:col_ptr[c+1]]`` (ascending)

Entries past the live count are unspecified. Buffers are rebuilt with cumsum/argsort only — no
host synchronisation — and rewritten in place by :meth:`BlockLayout.update`, so their storage never
moves (CUDA-graph safe, no recompilation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import checks
from .geometry import weight_matrix_dims


def check_block(block):
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"block must be a pair of positive ints (BN, BK), got {block!r}")
    return int(block[0]), int(block[1])


def _as_block_matrix(tensor, weight_shape):
    """View a weight-shaped tensor as ``[N, taps, C_in]`` (K in (kh, kw, c_in) order)."""
    if tuple(tensor.shape) != tuple(weight_shape):
        raise ValueError(f"expected a tensor of the weight's shape {tuple(weight_shape)}, "
                         f"got {tuple(tensor.shape)}")
    n, c_in, taps = weight_matrix_dims(weight_shape)
    if tensor.dim() == 4:
        tensor = tensor.permute(0, 2, 3, 1)
    return tensor.reshape(n, taps, c_in)


def element_mask(bitmap, weight_shape, block):
    """Expand a block bitmap ``[R, C]`` to a bool mask of ``weight_shape`` (no host sync)."""
    bn, bk = block
    n, c_in, taps = weight_matrix_dims(weight_shape)
    m = bitmap.reshape(bitmap.shape[0], taps, -1)
    m = m.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 2)[:, :, :c_in]
    if len(weight_shape) == 2:
        return m.reshape(n, c_in)
    c_out, c_in, kh, kw = weight_shape
    return m.reshape(c_out, kh, kw, c_in).permute(0, 3, 1, 2)


def _rebuild_after_load(layout, incompatible_keys):
    layout._rebuild()


class BlockLayout(nn.Module):
    """The kept blocks of one weight and the index buffers kernels read.

    Args:
        weight_shape: ``(N, K)`` for a linear weight or ``(C_out, C_in, kh, kw)`` for a conv.
        block: ``(BN, BK)`` — output channels × input columns per block; ``(1, 1)`` is an
            unstructured (element) mask.
        bitmap: optional bool ``[R, C]`` initial layout; default all blocks kept (dense).
        device: where the buffers live (the weight's device).

    ``dense_dw`` (a plain attribute, default False) asks the ops for the full dense weight
    gradient instead of kept blocks only — used by gradient-based regrowth on update steps.
    """

    def __init__(self, weight_shape, block, bitmap=None, device=None):
        super().__init__()
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.block = check_block(block)
        self.n_out, self.c_in, self.taps = weight_matrix_dims(self.weight_shape)
        bn, bk = self.block
        self.blocks_per_tap = math.ceil(self.c_in / bk)
        self.grid = (math.ceil(self.n_out / bn), self.taps * self.blocks_per_tap)
        self.capacity = self.grid[0] * self.grid[1]
        self.dense_dw = False
        self._pruned, self._pruned_key = None, None  # pruned_mask() cache
        rows, cols = self.grid
        if device is None and bitmap is not None:
            device = bitmap.device
        i32 = dict(dtype=torch.int32, device=device)
        self.register_buffer("bitmap", torch.ones(self.grid, dtype=torch.bool, device=device))
        self.register_buffer("row_ptr", torch.zeros(rows + 1, **i32), persistent=False)
        self.register_buffer("col_idx", torch.zeros(self.capacity, **i32), persistent=False)
        self.register_buffer("block_row", torch.zeros(self.capacity, **i32), persistent=False)
        self.register_buffer("col_ptr", torch.zeros(cols + 1, **i32), persistent=False)
        self.register_buffer("row_idx", torch.zeros(self.capacity, **i32), persistent=False)
        self.register_buffer("_block_numel", self._count_block_numel(device), persistent=False)
        self.register_load_state_dict_post_hook(_rebuild_after_load)
        if bitmap is not None:
            self.update(bitmap)
        else:
            self._rebuild()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_mask(cls, mask, block):
        """A layout from an element mask of the weight's shape: a block is kept if any element is."""
        layout = cls(mask.shape, block, device=mask.device)
        layout.update(layout.reduce_blocks(mask.bool(), "any"))
        return layout

    @classmethod
    def from_weight(cls, weight, block, density):
        """Keep the blocks of largest mean |w| until ``density`` of the elements is reached."""
        return cls(weight.shape, block, device=weight.device).keep_largest_(weight, density)

    @classmethod
    def random(cls, weight_shape, block, density, generator=None, device=None):
        """Uniformly random blocks up to ``density`` of the elements (``generator`` for seeding)."""
        return cls(weight_shape, block, device=device).keep_random_(density, generator)

    def keep_largest_(self, weight, density):
        """Keep (in place) the blocks of ``weight`` with the largest mean |w|, up to ``density``."""
        return self.update(self.select(self.reduce_blocks(weight.detach().abs().float(), "mean"),
                                       density))

    def keep_random_(self, density, generator=None):
        """Keep (in place) uniformly random blocks up to ``density`` (``generator`` for seeding:
        the scores are drawn on its device, else on the layout's)."""
        scores = torch.rand(self.grid, generator=generator,
                            device=generator.device if generator is not None else self.bitmap.device)
        return self.update(self.select(scores.to(self.bitmap.device), density))

    # ------------------------------------------------------------------ block geometry
    def block_numel(self):
        """int64 ``[R, C]``: elements in each block (edge and narrow blocks hold fewer). The
        layout's own buffer: callers must not modify it."""
        return self._block_numel

    def _count_block_numel(self, device):
        bn, bk = self.block
        rows = torch.full((self.grid[0],), bn, dtype=torch.int64, device=device)
        rows[-1] = self.n_out - bn * (self.grid[0] - 1)
        cols = torch.full((self.blocks_per_tap,), bk, dtype=torch.int64, device=device)
        cols[-1] = self.c_in - bk * (self.blocks_per_tap - 1)
        return rows[:, None] * cols.repeat(self.taps)[None, :]

    def reduce_blocks(self, tensor, op):
        """Reduce a weight-shaped tensor over each block: ``op`` is "any", "sum" or "mean"."""
        bn, bk = self.block
        rows, _ = self.grid
        m = _as_block_matrix(tensor, self.weight_shape)
        pad_n, pad_c = rows * bn - self.n_out, self.blocks_per_tap * bk - self.c_in
        m = nn.functional.pad(m.float() if op != "any" else m.to(torch.uint8), (0, pad_c, 0, 0, 0, pad_n))
        m = m.reshape(rows, bn, self.taps, self.blocks_per_tap, bk)
        total = m.sum(dim=(1, 4), dtype=torch.float32 if op != "any" else torch.int64)
        total = total.reshape(self.grid)
        if op == "any":
            return total > 0
        if op == "sum":
            return total
        if op == "mean":
            return total / self.block_numel()
        raise ValueError(f"op must be 'any', 'sum' or 'mean', got {op!r}")

    def select(self, scores, density):
        """Bitmap of the highest-scoring blocks whose element count stays within ``density``.

        Greedy in score order and never above the budget ``round(density · numel)``; with blocks
        of unequal size the shortfall is under one block.
        """
        density = checks.density(density)
        if tuple(scores.shape) != self.grid:
            raise ValueError(f"scores must have the block grid's shape {self.grid}, got {tuple(scores.shape)}")
        budget = round(density * self.numel)
        order = torch.argsort(scores.flatten(), descending=True, stable=True)
        kept_sorted = torch.cumsum(self.block_numel().flatten()[order], 0) <= budget
        bitmap = torch.zeros(self.capacity, dtype=torch.bool, device=scores.device)
        bitmap[order] = kept_sorted
        return bitmap.reshape(self.grid)

    def element_mask(self, bitmap=None):
        """Bool mask of the weight's shape: True inside the blocks ``bitmap`` (bool ``[R, C]``,
        default the layout's own) keeps."""
        return element_mask(self.bitmap if bitmap is None else bitmap, self.weight_shape, self.block)

    def pruned_mask(self):
        """Bool mask of the weight's shape, True outside kept blocks (what masking zeroes).

        Cached, and refreshed in place when the bitmap changes: its storage never moves, so a
        captured CUDA graph sees new masks. Callers must not modify it.
        """
        key = (self.bitmap.data_ptr(), self.bitmap._version)
        if key != self._pruned_key:
            pruned = ~self.element_mask()
            if self._pruned is None or self._pruned.device != pruned.device:
                self._pruned = torch.empty_like(pruned)
            self._pruned.copy_(pruned)
            self._pruned_key = key
        return self._pruned

    # ------------------------------------------------------------------ state
    @property
    def numel(self):
        """Elements of the whole weight."""
        return self.n_out * self.c_in * self.taps

    @property
    def is_unstructured(self):
        return self.block == (1, 1)

    def kept_numel(self):
        """Elements inside kept blocks, as a 0-d int64 tensor (no host sync)."""
        return (self.block_numel() * self.bitmap).sum()

    def density(self):
        """Fraction of the weight's elements inside kept blocks (a Python float: syncs)."""
        return float(self.kept_numel()) / self.numel

    def update(self, bitmap):
        """Replace the kept blocks with ``bitmap`` (bool ``[R, C]``), rewriting buffers in place."""
        if not isinstance(bitmap, torch.Tensor):
            raise TypeError(f"bitmap must be a torch.Tensor, got {type(bitmap).__name__}")
        if tuple(bitmap.shape) != self.grid:
            raise ValueError(f"bitmap must have the block grid's shape {self.grid} for weight "
                             f"{self.weight_shape} and block {self.block}, got {tuple(bitmap.shape)}")
        self.bitmap.copy_(bitmap.to(torch.bool))
        self._rebuild()
        return self

    def _rebuild(self):
        """Derive the index buffers from ``bitmap`` with device ops only (cumsum + stable sort)."""
        rows, cols = self.grid
        bm = self.bitmap
        torch.cumsum(bm.sum(1, dtype=torch.int32), 0, dtype=torch.int32, out=self.row_ptr[1:])
        torch.cumsum(bm.sum(0, dtype=torch.int32), 0, dtype=torch.int32, out=self.col_ptr[1:])
        self.row_ptr[:1].zero_()
        self.col_ptr[:1].zero_()
        # Kept blocks sort first (key 0), in row-major (resp. column-major) order.
        order = torch.argsort((~bm).flatten().to(torch.uint8), stable=True)
        self.col_idx.copy_(order % cols)
        self.block_row.copy_(order // cols)
        order_t = torch.argsort((~bm).t().flatten().to(torch.uint8), stable=True)
        self.row_idx.copy_(order_t % rows)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A dense layer's checkpoint has no bitmap: the layout stays as it is (and the owning
        # sparse layer masks the loaded weight with it).
        if prefix + "bitmap" not in state_dict:
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def index_tensors(self):
        """The tensors every registered op takes, in order (see ``sparsekit.ops``)."""
        return self.bitmap, self.row_ptr, self.col_idx, self.col_ptr, self.row_idx, self.block_row

    def extra_repr(self):
        return f"weight_shape={self.weight_shape}, block={self.block}, grid={self.grid}"
