"""Budgeted greedy selection on blocks of unequal size."""

import torch

from sparsekit.dst.criteria import cover_greedy, fill_greedy


def test_fill_greedy_prefix_and_skip():
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    sizes = torch.tensor([4, 16, 4, 16, 4])
    everyone = torch.ones(5, dtype=torch.bool)
    assert fill_greedy(scores, sizes, everyone, 12, skip=False).tolist() == [True, False, False, False, False]
    assert fill_greedy(scores, sizes, everyone, 12).tolist() == [True, False, True, False, True]
    assert fill_greedy(scores, sizes, everyone, 100).all()
    assert not fill_greedy(scores, sizes, everyone, 3).any()
    some = torch.tensor([False, True, True, True, True])
    assert fill_greedy(scores, sizes, some, 20).tolist() == [False, True, True, False, False]


def test_fill_greedy_never_above_and_within_one_block():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 40, (1,), generator=g))
        sizes = torch.tensor([16, 12, 4, 3])[torch.randint(0, 4, (n,), generator=g)]
        candidates = torch.rand(n, generator=g) < 0.7
        budget = int(torch.randint(0, 300, (1,), generator=g))
        chosen = fill_greedy(torch.rand(n, generator=g), sizes, candidates, budget)
        total = int(sizes[chosen].sum())
        assert not (chosen & ~candidates).any() and total <= budget
        left = sizes[candidates & ~chosen]
        assert left.numel() == 0 or budget - total < int(left.min())


def test_cover_greedy_takes_fewest_lowest():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sizes = torch.tensor([4, 16, 4, 16])
    everyone = torch.ones(4, dtype=torch.bool)
    assert cover_greedy(scores, sizes, everyone, 5).tolist() == [True, True, False, False]
    assert cover_greedy(scores, sizes, everyone, 4).tolist() == [True, False, False, False]
    assert not cover_greedy(scores, sizes, everyone, 0).any()
    some = torch.tensor([False, True, True, True])
    assert cover_greedy(scores, sizes, some, 100).tolist() == [False, True, True, True]
