"""Layer shapes of the SNGAN-ResNet 32×32 pair (PAPERS.md) that the benchmarks time.

A ``LayerCase`` is one sparse layer at one batch size; ``quick`` marks the default set, the rest
run with ``--bench-set full``. The quick sets:

- CPU (≤ 10 min on 2 cores): the quick ``CPU_CASES`` × ``DENSITIES`` × ``BLOCKS``, passes fwd and
  fwd+bwd.
- GPU (a few minutes of a short GPU lease): the quick ``GPU_CASES`` × ``GPU_QUICK_DENSITIES`` ×
  ``GPU_QUICK_BLOCKS``, passes fwd, dx, dw and fwd+bwd, fp32 (IEEE) and bf16. The full GPU set is
  every GPU case × ``DENSITIES`` × ``BLOCKS``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerCase:
    name: str
    kind: str  # "conv" or "linear"
    c_in: int
    c_out: int
    kernel: int = 1
    hw: int = 1
    stride: int = 1
    padding: int = 0
    upsample: int = 1
    quick: bool = True

    def weight_shape(self):
        if self.kind == "linear":
            return (self.c_out, self.c_in)
        return (self.c_out, self.c_in, self.kernel, self.kernel)

    def input_shape(self, batch):
        if self.kind == "linear":
            return (batch, self.c_in)
        return (batch, self.c_in, self.hw, self.hw)

    def macs(self, batch):
        """Nominal multiply-adds of the dense layer's forward (padding taps included)."""
        if self.kind == "linear":
            return batch * self.c_in * self.c_out
        out = (self.upsample * self.hw + 2 * self.padding - self.kernel) // self.stride + 1
        return batch * out * out * self.c_out * self.c_in * self.kernel ** 2


CPU_CASES = [
    LayerCase("G conv3x3 256->256 @8", "conv", 256, 256, 3, 8, padding=1),
    LayerCase("G conv3x3 256->256 @16", "conv", 256, 256, 3, 16, padding=1),
    LayerCase("G conv1x1 256->256 @16", "conv", 256, 256, 1, 16),
    LayerCase("D conv3x3 128->128 @32", "conv", 128, 128, 3, 32, padding=1),
    LayerCase("G linear 128->4096", "linear", 128, 4096),
    LayerCase("D conv3x3 128->128 @16", "conv", 128, 128, 3, 16, padding=1, quick=False),
    LayerCase("G conv3x3 256->256 @32", "conv", 256, 256, 3, 32, padding=1, quick=False),
    LayerCase("G up2+conv3x3 256->256 @8", "conv", 256, 256, 3, 8, padding=1, upsample=2, quick=False),
    LayerCase("D conv3x3 s2 128->128 @32", "conv", 128, 128, 3, 32, stride=2, padding=1, quick=False),
]

GPU_CASES = [
    LayerCase("G conv3x3 256->256 @8", "conv", 256, 256, 3, 8, padding=1, quick=False),
    LayerCase("G conv3x3 256->256 @16", "conv", 256, 256, 3, 16, padding=1),
    LayerCase("G conv3x3 256->256 @32", "conv", 256, 256, 3, 32, padding=1),
    LayerCase("G conv1x1 256->256 @16", "conv", 256, 256, 1, 16),
    LayerCase("D conv3x3 128->128 @32", "conv", 128, 128, 3, 32, padding=1),
    LayerCase("D conv3x3 128->128 @16", "conv", 128, 128, 3, 16, padding=1, quick=False),
    LayerCase("D conv3x3 128->128 @8", "conv", 128, 128, 3, 8, padding=1, quick=False),
]

DENSITIES = (1.0, 0.5, 0.25, 0.1, 0.05)
BLOCKS = ((16, 16), (32, 32), (64, 64))

#: The GPU quick set's sparse points (the dense baseline is always timed too).
GPU_QUICK_DENSITIES = (0.5, 0.1)
GPU_QUICK_BLOCKS = ((32, 32),)
