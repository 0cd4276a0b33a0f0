"""The oracle: masked dense torch. Supports every argument (any kernel, dilation, dtype, device,
block shape incl. 1×1 unstructured); every other backend is tested against it, and ``auto``
falls back to it (announced) where no faster backend runs a call — for unstrided CPU layers
called eagerly as :func:`dense_autograd` (torch's own autograd, one fused backward) rather than
through the launchers below."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import ConvGeometry
from ..layout import element_mask
from .base import Backend


def is_full(idx):
    """Every block kept — checked only for CPU layouts, where reading the count costs nothing
    (on a GPU it would be a host sync, so GPU layouts are always masked)."""
    return idx.row_ptr.device.type == "cpu" and int(idx.row_ptr[-1]) == idx.bitmap.numel()


def _mask_like(t, weight, idx):
    """``t`` (weight-shaped) zeroed outside kept blocks."""
    if is_full(idx):
        return t
    return t * element_mask(idx.bitmap, weight.shape, (idx.block_n, idx.block_k)).to(t.dtype)


def _masked(weight, idx):
    return _mask_like(weight, weight, idx)


def _upsampled(x, geom: ConvGeometry):
    if geom.upsample == 1:
        return x
    return F.interpolate(x, scale_factor=geom.upsample, mode="nearest")


def _dilation(geom: ConvGeometry, weight):
    """``geom``'s dilation with 1 on a kernel axis of one tap, where dilation means nothing: torch
    2.14's oneDNN segfaults on a channels_last 1×1 conv with stride 2, padding 1, dilation 2 and a
    bias (input width 1), and the undilated call is the same convolution."""
    return tuple(1 if k == 1 else d for k, d in zip(weight.shape[2:], geom.dilation))


class ReferenceBackend(Backend):
    name = "reference"
    device_types = ()  # never picked by priority: the announced fallback of every device

    def unsupported(self, op, x, weight, idx, geom=None):
        return None

    def forward(self, p, x, weight, bias, idx):
        if p.is_linear:
            return F.linear(x, _masked(weight, idx), bias)
        geom = p.geometry()
        y = F.conv2d(_upsampled(x, geom), _masked(weight, idx), bias, geom.stride, geom.padding,
                     _dilation(geom, weight))
        return y.contiguous(memory_format=torch.channels_last)

    def grad_input(self, p, dy, weight, idx):
        if p.is_linear:
            return dy @ _masked(weight, idx)
        geom, u = p.geometry(), p.upsample
        big_hw = (u * p.in_h, u * p.in_w)
        dx = torch.nn.grad.conv2d_input((dy.shape[0], weight.shape[1], *big_hw),
                                        _masked(weight, idx), dy, geom.stride, geom.padding,
                                        _dilation(geom, weight))
        if u > 1:  # nearest upsampling's adjoint: sum each u×u patch
            b, c = dx.shape[:2]
            dx = dx.reshape(b, c, p.in_h, u, p.in_w, u).sum(dim=(3, 5))
        return dx.contiguous(memory_format=torch.channels_last)

    def grad_weight(self, p, dy, x, weight, idx, dense_dw):
        if p.is_linear:
            dw = dy.t() @ x
        else:
            geom = p.geometry()
            x = _upsampled(x, geom)
            if x.device.type == "cpu" and max(geom.stride) > 1:
                # oneDNN (torch 2.14, AVX2 code path) computes a wrong weight gradient for strided
                # channels_last convs at small odd channel counts (1×1 stride 2, 5→7 channels:
                # relative error 0.64); its NCHW path is right, so the oracle takes that one.
                x, dy = x.contiguous(), dy.contiguous()
            dw = torch.nn.grad.conv2d_weight(x, weight.shape, dy, geom.stride, geom.padding,
                                             _dilation(geom, weight))
        if not dense_dw:
            dw = _mask_like(dw, weight, idx)
        return torch.empty_like(weight).copy_(dw)


BACKEND = ReferenceBackend()


def runs_dense_autograd(geom) -> bool:
    """Whether :func:`dense_autograd` may run a CPU call of this geometry (None: linear): not a
    strided conv, whose channels_last dW oneDNN gets wrong (``grad_weight``) and whose NCHW
    forward it runs up to 2× slower — those keep this backend's launchers."""
    return geom is None or max(geom.stride) == 1


def dense_autograd(x, weight, bias, idx, geom, dense_dw):
    """The layer as plain torch ops that torch's own autograd differentiates: ``auto``'s route on
    the CPU where every pass of a call would fall back to this backend (``ops``; unstrided
    layers only, :func:`runs_dense_autograd`). One oneDNN backward call computes dX, dW and db
    together, where the backend's separate launchers run two (the SNGAN RGB conv 128→3 @32²,
    batch 16, fwd+bwd: 2.9 ms against 8.2 ms).

    Same values and gradients as :class:`ReferenceBackend`: the weight is ``W ⊙ mask`` (the
    gradient reaching ``weight`` masked the same way; full where ``dense_dw``: the mask is then
    applied outside autograd). ``geom`` None means linear. Returns the output (channels_last for
    a conv). With a fused upsample the upsampled input is materialised and kept for the backward,
    as a dense upsample + conv keeps it (the launchers rebuild it in dW instead).
    """
    w = _masked(weight, idx)
    if dense_dw and w is not weight:  # the masked values, the full dW
        w = weight + (w - weight).detach()
    if geom is None:
        return F.linear(x, w, bias)
    y = F.conv2d(_upsampled(x, geom), w, bias, geom.stride, geom.padding, _dilation(geom, weight))
    return y.contiguous(memory_format=torch.channels_last)
