"""Balance ratio (ADAPT): how far a generator step moves D's score on fakes toward the reals'.

Per sample, with raw D logits averaged over a batch:

    BR_i = (GF_i − DF_i) / (DR_i − DF_i)

DF = mean D(G_t(z)) before G's update, GF = mean D(G_{t+1}(z)) with the same z after it (no grad,
D frozen), DR = mean D(x) on the last real batch. The window's value is the **mean of per-sample
ratios** (not a ratio of means). Small BR: D too strong for G; large BR: D too weak.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from ..checks import positive_int


def _mean(value) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean())
    return float(value)


class BalanceRatio:
    """A window of the last ``window`` balance-ratio samples."""

    def __init__(self, window: int = 100):
        self.window = positive_int(window, "window")
        self._samples: deque[float] = deque(maxlen=window)

    def add(self, d_fake_before, d_fake_after, d_real) -> float | None:
        """Add one sample from D's logits (tensors are averaged, floats taken as means).

        Returns the sample's ratio, or None (sample skipped) when ``DR == DF`` or a value is not
        finite.
        """
        df, gf, dr = _mean(d_fake_before), _mean(d_fake_after), _mean(d_real)
        denominator = dr - df
        if denominator == 0.0 or not all(map(math.isfinite, (df, gf, dr))):
            return None
        ratio = (gf - df) / denominator
        self._samples.append(ratio)
        return ratio

    @property
    def value(self) -> float:
        """Mean ratio over the window (NaN while empty)."""
        return sum(self._samples) / len(self._samples) if self._samples else math.nan

    @property
    def full(self) -> bool:
        return len(self._samples) == self.window

    def __len__(self):
        return len(self._samples)

    def reset(self):
        self._samples.clear()

    def state_dict(self) -> dict:
        return {"window": self.window, "samples": list(self._samples)}

    def load_state_dict(self, state: dict):
        self.window = int(state["window"])
        self._samples = deque(state["samples"], maxlen=self.window)
