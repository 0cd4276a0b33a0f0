"""Datasets as in-memory float tensors ``[N, 3, 32, 32]`` in [-1, 1] with integer labels ``[N]``.

A dataset is one loader function registered with ``@dataset(name, takes_path)``; ``--data``
names it (``name``, or ``name:/path`` for a loader that takes a path). Specs (``--data``):
- ``digits`` (default): scikit-learn's 1,797 handwritten 8×8 digits (ships with the install),
  bilinearly resized to 32×32 and repeated to 3 channels; 10 known classes make quality
  measurable offline (classifier-feature Fréchet distance and class coverage).
- ``cifar10:/path``: the standard python pickle batches (``data_batch_1..5``) in /path.
- ``folder:/path``: every .png/.jpg/.jpeg under /path (label = sub-folder index), resized to 32×32.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ImageData:
    images: torch.Tensor  # [N, 3, 32, 32] float32 in [-1, 1]
    labels: torch.Tensor  # [N] int64
    num_classes: int
    name: str

    def __len__(self):
        return self.images.shape[0]


def _to_rgb32(images_01: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] → [N, 3, 32, 32] in [-1, 1]."""
    if images_01.shape[-2:] != (32, 32):
        images_01 = F.interpolate(images_01, size=(32, 32), mode="bilinear", align_corners=False)
    if images_01.shape[1] == 1:
        images_01 = images_01.repeat(1, 3, 1, 1)
    return (images_01.clamp(0, 1) * 2 - 1).contiguous()


class Dataset(NamedTuple):
    loader: Callable[..., ImageData]
    takes_path: bool

    def spec(self, name):
        return f"{name}:/path" if self.takes_path else name


#: ``{name: Dataset}`` of every registered loader (``--data``'s choices)
DATASETS: dict[str, Dataset] = {}


def dataset(name: str, takes_path: bool = False):
    """Register the decorated loader as ``--data name`` (``name:/path`` if it ``takes_path``:
    the loader is then called with the path)."""
    def register(loader):
        DATASETS[name] = Dataset(loader, takes_path)
        return loader
    return register


def specs() -> str:
    """The ``--data`` forms, for help texts and errors: "'digits', 'cifar10:/path' or ..."."""
    forms = [repr(d.spec(name)) for name, d in DATASETS.items()]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


@dataset("digits")
def load_digits() -> ImageData:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    return ImageData(_to_rgb32(images), torch.from_numpy(d.target.astype(np.int64)), 10, "digits")


@dataset("cifar10", takes_path=True)
def load_cifar10(root: str) -> ImageData:
    files = [os.path.join(root, f"data_batch_{i}") for i in range(1, 6)]
    missing = [f for f in files if not os.path.isfile(f)]
    if not os.path.isdir(root) or missing:
        raise FileNotFoundError(
            f"cifar10: expected the python pickle batches data_batch_1..5 in {root!r}; missing: "
            f"{[os.path.basename(m) for m in missing] or root}")
    xs, ys = [], []
    for path in files:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
            raise ValueError(f"cifar10: {path} is not a CIFAR-10 python batch ({e})") from e
        xs.append(x)
        ys.append(y)
    images = torch.from_numpy(np.concatenate(xs)).float() / 255.0
    return ImageData(_to_rgb32(images), torch.from_numpy(np.concatenate(ys)), 10, "cifar10")


@dataset("folder", takes_path=True)
def load_folder(root: str) -> ImageData:
    from PIL import Image

    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder: {root!r} is not a directory")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not paths:
        raise ValueError(f"folder: no .png/.jpg/.jpeg images under {root!r}")
    classes = sorted({os.path.relpath(os.path.dirname(p), root) for p in paths})
    images, labels = [], []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB").resize((32, 32), Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
        labels.append(classes.index(os.path.relpath(os.path.dirname(p), root)))
    return ImageData(_to_rgb32(torch.stack(images)), torch.tensor(labels), len(classes), f"folder:{root}")


def load(spec: str) -> ImageData:
    """Load a dataset from its ``--data`` spec (see the module docstring)."""
    name, sep, path = spec.partition(":")
    if name not in DATASETS or DATASETS[name].takes_path != bool(sep):
        raise ValueError(f"--data must be {specs()}, got {spec!r}")
    loader = DATASETS[name].loader
    return loader(path) if sep else loader()

