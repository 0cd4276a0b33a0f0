"""Sample grids as PNG files."""

from __future__ import annotations

import math
import os

import numpy as np
import torch


def save_grid(images: torch.Tensor, path: str, nrow: int | None = None, pad: int = 2) -> None:
    """Save ``images [N, C, H, W]`` in [-1, 1] as one PNG grid (``nrow`` per row, default √N)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images.detach().float().cpu()):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = \
            (img.clamp(-1, 1) + 1) / 2
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if c == 1:
        array = array[:, :, 0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)
