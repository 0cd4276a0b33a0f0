"""AlphaGAN's generator search space (PAPERS.md, seed 004) and the networks found in it.

A generator: z ``[N, z_dim]`` → fc → ``[N, C, 4, 4]`` (channels_last) → three cells, each
doubling the resolution (4² → 8² → 16² → 32²) → BN, ReLU, conv3×3 → 3, tanh → ``[N, 3, 32, 32]``
in [-1, 1]. ``C = 256·width`` (as SNGAN's G, so ``--width`` means the same for both).

Cell k (k = 0, 1, 2; input x at r², output at (2r)²), the authors' cell topology::

    n1 = up[0](x)                 n3 = up[1](x)        up edges:  nearest | bilinear | deconv
    n2 = normal[0](n1)
    out = normal[1](n2) + normal[2](n3) + Σ_{j<k} skip[j](n1 of cell j)
                                  skip edges (up ×2^(k-j)): nearest | bilinear | deconv

Every edge holds its candidate ops. With several candidates (the *supernet*) it is a mixed edge:
``Σ_i softmax(α)_i · op_i(x)`` with ``α`` an ``nn.Parameter [n_candidates]`` of its own
(:meth:`AlphaGANGenerator.arch_parameters`; every other parameter is a weight). With one
candidate (a *found network*, built from a genotype) it is that op, and its parameters have the
same names as in the supernet.

Normal-edge ops (all keep C channels and the resolution): ``conv_1x1``/``conv_3x3``/``conv_5x5``
(ReLU, conv with bias, as the authors), ``sep_conv_3x3``/``sep_conv_5x5`` (DARTS's separable
conv: (ReLU, depthwise k×k, pointwise 1×1, BN without affine) twice), ``dil_conv_3x3`` (ReLU,
full 3×3 conv with dilation 2), ``skip_connect`` (identity), ``none`` (zeros). Search spaces:
``paper`` — PAPERS.md's five (conv 1×1/3×3/5×5, sep-conv 3×3/5×5); ``extended`` — issue 17's
eight (those, dilated 3×3, skip, none).

Sparsity: the plain convs (conv_k×k, dil_conv_3x3, the pointwise halves of the separable convs,
the output conv) and the fc are ``nn.Conv2d``/``nn.Linear``, which the DST engines sparsify like
any model's. The depthwise halves (:class:`DepthwiseConv2d`, groups = C) and the transposed convs
of ``deconv`` stay dense torch: sparsekit has no grouped or transposed kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import xavier_init_
from .sngan import _channels

N_CELLS = 3
UP_OPS = ("nearest", "bilinear", "deconv")
NORMAL_OPS = {
    "paper": ("conv_1x1", "conv_3x3", "conv_5x5", "sep_conv_3x3", "sep_conv_5x5"),
    "extended": ("conv_1x1", "conv_3x3", "conv_5x5", "sep_conv_3x3", "sep_conv_5x5",
                 "dil_conv_3x3", "skip_connect", "none"),
}
SPACES = tuple(NORMAL_OPS)
ALL_NORMAL_OPS = NORMAL_OPS["extended"]
# Every op name, in a fixed order: an edge's candidate set is stored as a bitmask over it.
_VOCABULARY = ALL_NORMAL_OPS + UP_OPS
EDGE_KINDS = ("up", "normal", "skip")


def edge_count(kind: str, cell: int) -> int:
    """Edges of ``kind`` in cell ``cell`` (0-based): 2 up, 3 normal, one skip per earlier cell."""
    return {"up": 2, "normal": 3, "skip": cell}[kind]


def edge_names():
    """``[(cell, kind, index), ...]`` of every edge, in the order of the cells and EDGE_KINDS."""
    return [(c, kind, i) for c in range(N_CELLS) for kind in EDGE_KINDS
            for i in range(edge_count(kind, c))]


class DepthwiseConv2d(nn.Conv2d):
    """A k×k depthwise conv (groups = channels, no bias). Its own type, so that the DST engines
    (which manage ``nn.Conv2d`` exactly) leave it dense: sparsekit has no grouped kernels."""

    def __init__(self, channels, kernel_size, padding):
        super().__init__(channels, channels, kernel_size, padding=padding, groups=channels, bias=False)


class ReLUConv(nn.Module):
    """ReLU then a full conv keeping the channels and the resolution."""

    def __init__(self, c, kernel_size, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(c, c, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)

    def forward(self, x):
        return self.conv(F.relu(x))


class SepConv(nn.Module):
    """DARTS's separable conv: (ReLU, depthwise k×k, pointwise 1×1, BN without affine) twice."""

    def __init__(self, c, kernel_size):
        super().__init__()
        pad = kernel_size // 2
        self.dw1, self.pw1 = DepthwiseConv2d(c, kernel_size, pad), nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, affine=False)
        self.dw2, self.pw2 = DepthwiseConv2d(c, kernel_size, pad), nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c, affine=False)

    def forward(self, x):
        h = self.bn1(self.pw1(self.dw1(F.relu(x))))
        return self.bn2(self.pw2(self.dw2(F.relu(h))))


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


class Upsample(nn.Module):
    """Parameter-free ×scale upsampling (``nearest`` or ``bilinear``, align_corners=False)."""

    def __init__(self, mode, scale):
        super().__init__()
        self.mode, self.scale = mode, scale

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode)


class Deconv(nn.Module):
    """×scale transposed conv (kernel = stride = scale, bias); stays dense (see the module doc)."""

    def __init__(self, c, scale):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(c, c, scale, stride=scale)

    def forward(self, x):
        return self.deconv(x)


def make_op(name: str, c: int, scale: int = 1) -> nn.Module:
    """The op ``name`` on C channels; up ops (``scale`` > 1) multiply the resolution by scale."""
    if name in UP_OPS:
        return Deconv(c, scale) if name == "deconv" else Upsample(name, scale)
    builders = {
        "conv_1x1": lambda: ReLUConv(c, 1), "conv_3x3": lambda: ReLUConv(c, 3),
        "conv_5x5": lambda: ReLUConv(c, 5), "dil_conv_3x3": lambda: ReLUConv(c, 3, dilation=2),
        "sep_conv_3x3": lambda: SepConv(c, 3), "sep_conv_5x5": lambda: SepConv(c, 5),
        "skip_connect": Identity, "none": Zero,
    }
    if name not in builders:
        raise ValueError(f"unknown op {name!r}; known: {', '.join(_VOCABULARY)}")
    return builders[name]()


def mix(weights: torch.Tensor, outputs):
    """``Σ_i weights[i] · outputs[i]``: a mixed edge's output. With one-hot ``weights`` this is
    exactly the chosen output (0 · y = 0 and y + 0 = y in floating point)."""
    return sum(w * y for w, y in zip(weights, outputs))


class Edge(nn.Module):
    """One edge: its candidate ops (``ops``, a ModuleDict keyed by op name) and, with more than
    one candidate, its architecture weights ``alpha [n_candidates]`` (init 1e-3·N(0, 1), as the
    authors)."""

    def __init__(self, candidates, c, scale=1):
        super().__init__()
        self.names = tuple(candidates)
        self.ops = nn.ModuleDict({name: make_op(name, c, scale) for name in self.names})
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.names))) if len(self.names) > 1 else None

    def weights(self) -> torch.Tensor:
        """softmax(α): the mixing weights ``[n_candidates]``."""
        return F.softmax(self.alpha, dim=0)

    def forward(self, x):
        if self.alpha is None:
            return self.ops[self.names[0]](x)
        return mix(self.weights(), [op(x) for op in self.ops.values()])

    def chosen(self) -> str:
        """The op of largest α, ``none`` excluded (as DARTS), or the only candidate."""
        if self.alpha is None:
            return self.names[0]
        order = torch.argsort(self.alpha.detach(), descending=True).tolist()
        return next(self.names[i] for i in order if self.names[i] != "none")

    def entropy(self) -> float:
        """Entropy (nats) of softmax(α); 0 for a single-op edge."""
        if self.alpha is None:
            return 0.0
        p = self.weights().detach()
        return float(-(p * torch.log(p.clamp_min(1e-30))).sum())


class Cell(nn.Module):
    def __init__(self, index, candidates, c):
        super().__init__()
        self.up = nn.ModuleList(Edge(cands, c, 2) for cands in candidates["up"])
        self.normal = nn.ModuleList(Edge(cands, c) for cands in candidates["normal"])
        self.skip = nn.ModuleList(Edge(cands, c, 2 ** (index - j)) for j, cands in enumerate(candidates["skip"]))

    def forward(self, x, earlier):
        """x: ``[N, C, r, r]``; earlier: the n1 of every earlier cell. Returns (n1, out) at 2r."""
        n1, n3 = self.up[0](x), self.up[1](x)
        out = self.normal[1](self.normal[0](n1)) + self.normal[2](n3)
        for edge, h in zip(self.skip, earlier):
            out = out + edge(h)
        return n1, out


def _bitmask(names) -> int:
    return sum(1 << _VOCABULARY.index(n) for n in names)


def _names(mask: int):
    return [n for i, n in enumerate(_VOCABULARY) if mask >> i & 1]


class AlphaGANGenerator(nn.Module):
    """A generator of the search space; ``candidates`` has a genotype's structure
    (``{"cells": [{"up": [...], "normal": [...], "skip": [...]}] * 3}``) with a *list* of op names
    per edge. Build it with :meth:`supernet` or :meth:`from_genotype`."""

    def __init__(self, candidates: dict, z_dim=128, width=1.0):
        super().__init__()
        c = _channels(256, width)
        self.z_dim, self.channels = z_dim, c
        self.fc = nn.Linear(z_dim, 4 * 4 * c)
        self.cells = nn.ModuleList(Cell(k, cell, c) for k, cell in enumerate(candidates["cells"]))
        self.bn = nn.BatchNorm2d(c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        xavier_init_(self)
        # Which candidates each edge holds, in the state_dict: a checkpoint of another
        # architecture is refused by name (parameter-free ops would otherwise load silently).
        self.register_buffer("arch_code", torch.tensor([_bitmask(e.names) for _, e in self.edges()]))

    @classmethod
    def supernet(cls, space="paper", z_dim=128, width=1.0):
        """Every edge mixing every candidate of ``space`` (``paper`` or ``extended``)."""
        if space not in NORMAL_OPS:
            raise ValueError(f"search space must be one of {', '.join(SPACES)}, got {space!r}")
        ops = {"up": list(UP_OPS), "normal": list(NORMAL_OPS[space]), "skip": list(UP_OPS)}
        cells = [{kind: [ops[kind]] * edge_count(kind, k) for kind in EDGE_KINDS} for k in range(N_CELLS)]
        return cls({"cells": cells}, z_dim, width)

    @classmethod
    def from_genotype(cls, genotype: dict, z_dim=128, width=1.0):
        """The found network: one op per edge (a genotype checked by ``genotype.validate``)."""
        cells = [{kind: [[op] for op in cell[kind]] for kind in EDGE_KINDS} for cell in genotype["cells"]]
        return cls({"cells": cells}, z_dim, width)

    def edges(self):
        """``[(name, Edge)]`` in :func:`edge_names` order; name e.g. ``cell1.normal2``."""
        return [(f"cell{c}.{kind}{i}", getattr(self.cells[c], kind)[i]) for c, kind, i in edge_names()]

    def arch_parameters(self):
        """Every mixed edge's α (empty for a found network)."""
        return [e.alpha for _, e in self.edges() if e.alpha is not None]

    def genotype(self) -> dict:
        """The discrete architecture: the op of largest α on every edge (``none`` excluded)."""
        cells = [{kind: [getattr(cell, kind)[i].chosen() for i in range(edge_count(kind, k))]
                  for kind in EDGE_KINDS} for k, cell in enumerate(self.cells)]
        return {"cells": cells}

    def entropies(self) -> dict:
        """``{edge name: entropy of softmax(α) in nats}`` of the mixed edges."""
        return {name: e.entropy() for name, e in self.edges() if e.alpha is not None}

    def forward(self, z):
        h = self.fc(z).view(-1, self.channels, 4, 4).contiguous(memory_format=torch.channels_last)
        earlier = []
        for cell in self.cells:
            n1, h = cell(h, earlier)
            earlier.append(n1)
        return torch.tanh(self.out(F.relu(self.bn(h))))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        code = state_dict.get(prefix + "arch_code")
        if code is not None and not torch.equal(code.to(self.arch_code.device), self.arch_code):
            diffs = [f"{name}: {'|'.join(_names(int(theirs)))} there, {'|'.join(e.names)} here"
                     for (name, e), theirs in zip(self.edges(), code.tolist())
                     if int(theirs) != _bitmask(e.names)] if code.shape == self.arch_code.shape else []
            raise ValueError("the state was saved from a generator of another architecture"
                             + (": " + "; ".join(diffs) if diffs else ""))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
