"""The Triton backend: block-sparse implicit-GEMM kernels for CUDA GPUs (and the interpreter).

Layout of this package:

- ``__init__.py``    the backend: declaration, capability checks, the three launchers
- ``common.py``      ``@triton.jit`` address helpers shared by the kernels
- ``forward.py``     Y = X̂ · W_keptᵀ (+ bias): programs = pixel tile × block row (CSR walk)
- ``grad_input.py``  dX: programs = input-pixel tile (by stride phase) × channel block (CSC walk)
- ``grad_weight.py`` dW at kept blocks: programs = capacity × pixel split, then a fixed-order sum
- ``tuning.py``      launch parameters keyed by op, pixel count, block and dtype
- ``compile_check.py`` compiles every kernel for sm_XX without a GPU (registers, spills)

Every kernel solves one :class:`~sparsekit.backends.problem.Problem` (a linear is the 1×1 conv
of a ``[1, 1, M, K]`` image, so one set of kernels serves linear and conv2d). Kernels read kept
blocks straight from the dense weight through the layout's index buffers. Grids depend only on
shapes and the layout's capacity; loop bounds come from the index buffers in-kernel, so a layout
update needs no recompilation and no host sync (CUDA-graph safe).

fp32 is IEEE fp32 (``input_precision="ieee"``) unless ``allow_tf32`` is set; fp16/bf16 accumulate
in fp32. Importing this package imports neither triton nor the kernels; loading the backend does
(the first time it is used). CPU tensors run under the Triton interpreter when
``TRITON_INTERPRET=1`` was set before the backend was loaded (Triton reads the flag when kernels
are defined).
"""

from __future__ import annotations

import functools
import os

import torch

from ...geometry import zeros_weight_grad
from ..base import Backend, BackendUnavailable

BLOCK_SIDES = (16, 32, 64)


def _on_input_device(launcher):
    """Launch on the device of the first tensor argument (Triton uses the current device)."""
    @functools.wraps(launcher)
    def run(self, p, first, *args):
        if first.is_cuda:
            with torch.cuda.device(first.device):
                return launcher(self, p, first, *args)
        return launcher(self, p, first, *args)
    return run


class TritonBackend(Backend):
    name = "triton"
    device_types = ("cuda",)
    priority = 20  # before cuda where the measured table (routing) names neither
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    #: Run fp32 ``tl.dot`` as TF32 (tolerance 1e-3 instead of 1e-4). Off: fp32 means IEEE fp32.
    allow_tf32 = False
    #: Whether the kernels were defined under ``TRITON_INTERPRET=1`` (they then run CPU tensors).
    INTERPRETED = False

    def load(self):
        try:
            import triton  # noqa: F401
        except ImportError as e:  # pragma: no cover - only without triton installed
            raise BackendUnavailable(f"triton is not importable ({e}); install torch with its "
                                     "triton dependency (pip install triton)") from e
        from . import forward, grad_input, grad_weight

        self._kernels = (forward.launch_forward, grad_input.launch_grad_input,
                         grad_weight.launch_grad_weight)
        self.INTERPRETED = type(forward.forward_kernel).__name__ == "InterpretedFunction"

    def device_reason(self, x):
        device = x.device.type
        if device == "cpu" and not self.INTERPRETED:
            if os.environ.get("TRITON_INTERPRET") == "1":
                return ("TRITON_INTERPRET=1 was set after sparsekit's triton backend was loaded; "
                        "set it before its first use (Triton reads it when kernels are defined)")
            return ("tensors are on cpu: the triton backend runs CUDA tensors, or CPU tensors under "
                    "the Triton interpreter (TRITON_INTERPRET=1, set before its first use)")
        if device == "cuda" and self.INTERPRETED:
            return ("the triton backend was loaded with TRITON_INTERPRET=1 (interpreter, CPU "
                    "tensors only); unset it to run CUDA tensors")
        if device not in ("cpu", "cuda"):
            return f"tensors are on {x.device}; the triton backend runs CUDA tensors"
        return None

    def capability(self, op, x, weight, idx, geom=None):
        if x.dtype == torch.bfloat16 and self.INTERPRETED:
            return "bfloat16 tl.dot is broken in the Triton interpreter; run bf16 on a GPU"
        if idx.block_n not in BLOCK_SIDES or idx.block_k not in BLOCK_SIDES:
            return (f"block {(idx.block_n, idx.block_k)}: the triton kernels need block sides in "
                    f"{BLOCK_SIDES} (tl.dot tiles are at least 16 wide)")
        return None

    def _precision(self, dtype):
        return "tf32" if self.allow_tf32 and dtype == torch.float32 else "ieee"

    @_on_input_device
    def forward(self, p, x, weight, bias, idx):
        return self._kernels[0](p, x, weight, bias, idx, p.empty_output(x),
                                self._precision(x.dtype), self.INTERPRETED)

    @_on_input_device
    def grad_input(self, p, dy, weight, idx):
        return self._kernels[1](p, dy, weight, idx, p.empty_input_grad(dy),
                                self._precision(dy.dtype), self.INTERPRETED)

    @_on_input_device
    def grad_weight(self, p, dy, x, weight, idx, dense_dw):
        return self._kernels[2](p, dy, x, idx, zeros_weight_grad(weight), dense_dw,
                                self._precision(dy.dtype), self.INTERPRETED)


BACKEND = TritonBackend()
