"""What a backend declares, and the six ops written once over its three launchers.

A backend is one module (or package) of ``sparsekit/backends/`` that defines ``BACKEND``, an
instance of a :class:`Backend` subclass declaring:

- ``name`` (the module's name: what ``set_backend`` takes), ``device_types`` (the devices
  ``auto`` may pick it for) and ``priority`` (higher is tried first among those; on CUDA the
  measured table of ``routing`` may put another one first);
- what it runs: ``dtypes`` (checked here) and :meth:`Backend.capability` (anything else — block
  sides, a runtime — as the reason it cannot run a call, or None); :meth:`Backend.auto_declines`
  where ``auto`` should run a call it supports as dense torch (a forced backend ignores it);
- :meth:`Backend.load`: import what it needs, raising :class:`BackendUnavailable` saying why it
  cannot run in this process (not built, not installed); called once, by the registry;
- three launchers over one :class:`~sparsekit.backends.problem.Problem`::

      forward(p, x, weight, bias, idx) -> y            # y  [M, N] / NHWC [B, C_out, H_out, W_out]
      grad_input(p, dy, weight, idx) -> dx             # dx [M, K] / NHWC [B, C_in, H, W]
      grad_weight(p, dy, x, weight, idx, dense_dw) -> dw   # dw in weight's shape and strides

  Their inputs are contiguous: row-major for a linear layer (x ``[M, K]``, dy ``[M, N]``,
  weight ``[N, K]``), channels_last for a conv (activations NHWC, weight K-contiguous with K
  ordered (kh, kw, c_in)); bias is contiguous or None. ``idx`` is a :class:`BlockIndex`.
  Outputs come from ``p.empty_output`` / ``p.empty_input_grad`` (or the backend's own torch).

The six ops ``sparsekit.ops`` calls (``linear_fwd`` … ``conv2d_dw``, see ``OPS``) are
:class:`Backend` methods: they bring the inputs into that layout, describe the problem, and
return dW in the strides of the weight they were given.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..geometry import ConvGeometry
from .problem import conv_problem, linear_problem

OPS = ("linear_fwd", "linear_dx", "linear_dw", "conv2d_fwd", "conv2d_dx", "conv2d_dw")
_CL = torch.channels_last


class BlockIndex(NamedTuple):
    """A layout's tensors and block shape as the kernels see them (see ``sparsekit.layout``)."""

    bitmap: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    block_row: torch.Tensor
    block_n: int
    block_k: int


class BackendUnavailable(RuntimeError):
    """The backend cannot be used in this process (not built, no device, ...)."""


def dtype_names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def blocks_up_to(idx: BlockIndex, max_side: int) -> Optional[str]:
    """Why kernels taking structured blocks up to ``max_side`` cannot run ``idx``, or None."""
    if (idx.block_n, idx.block_k) == (1, 1):
        return "unstructured (1×1) blocks run on the reference backend"
    if idx.block_n > max_side or idx.block_k > max_side:
        return f"block {(idx.block_n, idx.block_k)} has a side above {max_side}"
    return None


class Backend:
    """One backend's declaration, capability checks and launchers (see the module docstring)."""

    name: str = ""
    device_types: tuple[str, ...] = ()
    priority: int = 0
    dtypes: tuple[torch.dtype, ...] = ()  # () = any dtype

    def __repr__(self):
        return f"<sparsekit backend {self.name!r}>"

    def load(self) -> None:
        """Import what the kernels need; raise BackendUnavailable saying why they cannot run."""

    # ------------------------------------------------------------------ what it runs
    def unsupported(self, op, x, weight, idx, geom=None) -> Optional[str]:
        """None if this backend can run ``op`` on these arguments, else the reason (for
        dispatch's errors and fallback warnings)."""
        return (self.device_reason(x) or self.dtype_reason(x)
                or self.capability(op, x, weight, idx, geom))

    def device_reason(self, x) -> Optional[str]:
        if x.device.type in self.device_types:
            return None
        kinds = " or ".join(t.upper() for t in self.device_types)
        return f"tensors are on {x.device}, the {self.name} backend runs on {kinds} tensors"

    def dtype_reason(self, x) -> Optional[str]:
        if not self.dtypes or x.dtype in self.dtypes:
            return None
        return f"dtype {x.dtype} (the {self.name} kernels take {dtype_names(self.dtypes)})"

    def capability(self, op, x, weight, idx, geom=None) -> Optional[str]:
        """What else this backend cannot run (block sides, its runtime), or None."""
        return None

    def auto_declines(self, op, x, weight, idx, geom=None) -> Optional[str]:
        """Why ``auto`` should run this supported call as dense torch (it would be slower), or
        None. A forced backend ignores it."""
        return None

    # ------------------------------------------------------------------ the three launchers
    def forward(self, p, x, weight, bias, idx):
        raise NotImplementedError

    def grad_input(self, p, dy, weight, idx):
        raise NotImplementedError

    def grad_weight(self, p, dy, x, weight, idx, dense_dw):
        raise NotImplementedError

    # ------------------------------------------------------------------ the six ops
    def linear_fwd(self, x, weight, bias, idx):
        """x ``[M, K]``, weight ``[N, K]``, bias ``[N]`` or None → y ``[M, N]``."""
        x, weight = x.contiguous(), weight.contiguous()
        return self.forward(linear_problem(x.shape[0], weight.shape), x, weight, _contiguous(bias),
                            idx)

    def linear_dx(self, dy, weight, idx):
        """dy ``[M, N]`` → dx ``[M, K]``."""
        dy, weight = dy.contiguous(), weight.contiguous()
        return self.grad_input(linear_problem(dy.shape[0], weight.shape), dy, weight, idx)

    def linear_dw(self, dy, x, weight, idx, dense_dw):
        """dW ``[N, K]`` at kept blocks (every block with ``dense_dw``), zero elsewhere."""
        dy, x = dy.contiguous(), x.contiguous()
        return self._weight_grad(linear_problem(x.shape[0], weight.shape), dy, x, weight, idx,
                                 dense_dw, torch.contiguous_format)

    def conv2d_fwd(self, x, weight, bias, idx, geom: ConvGeometry):
        """x ``[B, C_in, H, W]`` → NHWC y ``[B, C_out, H_out, W_out]``."""
        x, weight = x.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
        return self.forward(conv_problem(x.shape, weight.shape, geom), x, weight, _contiguous(bias),
                            idx)

    def conv2d_dx(self, dy, weight, idx, geom: ConvGeometry, input_hw):
        """dy NHWC ``[B, C_out, H_out, W_out]`` → NHWC dx ``[B, C_in, *input_hw]``."""
        dy, weight = dy.contiguous(memory_format=_CL), weight.contiguous(memory_format=_CL)
        p = conv_problem((dy.shape[0], weight.shape[1], *input_hw), weight.shape, geom)
        return self.grad_input(p, dy, weight, idx)

    def conv2d_dw(self, dy, x, weight, idx, geom: ConvGeometry, dense_dw):
        """dW ``[C_out, C_in, kh, kw]`` at kept blocks (every block with ``dense_dw``)."""
        dy, x = dy.contiguous(memory_format=_CL), x.contiguous(memory_format=_CL)
        return self._weight_grad(conv_problem(x.shape, weight.shape, geom), dy, x, weight, idx,
                                 dense_dw, _CL)

    def _weight_grad(self, p, dy, x, weight, idx, dense_dw, memory_format):
        """The launcher computes dW in the K-contiguous layout; a weight given in another memory
        format gets that result copied into its own strides."""
        weight_k = weight.contiguous(memory_format=memory_format)
        dw = self.grad_weight(p, dy, x, weight_k, idx, dense_dw)
        if weight_k is weight or dw.stride() == weight.stride():
            return dw
        return torch.empty_like(weight).copy_(dw)


def _contiguous(t):
    return t.contiguous() if t is not None else None
