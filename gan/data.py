"""Datasets: images ``[3, R, R]`` float32 in [-1, 1] served one by one, with integer labels ``[N]``.

An :class:`ImageData` holds a map-style torch ``Dataset`` of images at the run's resolution R
(``--resolution``, default 32) and every label. Training reads it through a ``DataLoader``
(gan/loader.py); the metrics gather a bounded subset of it (:meth:`ImageData.gather`).

A dataset is one loader function registered with ``@dataset(name, takes_path)``, called as
``loader([path,] resolution=R)``; ``--data`` names it (``name``, or ``name:/path`` for a loader
that takes a path). Specs (``--data``):
- ``digits`` (default): scikit-learn's 1,797 handwritten 8×8 digits (ships with the install),
  bilinearly resized to R×R and repeated to 3 channels, held in memory; 10 known classes make
  quality measurable offline (classifier-feature Fréchet distance and class coverage).
- ``cifar10:/path``: the standard python batches (``data_batch_1..5``) in /path, held in memory
  as uint8 (150 MB) and converted per image. The batches are pickles: they are read with an
  unpickler that builds numpy arrays, lists and strings only, so a file can never run code.
- ``folder:/path``: every .png/.jpg/.jpeg under /path, hidden files and folders left out (label =
  its sub-folder, images directly in /path form one class). Only the file list is read at start;
  each image is decoded when served (in DataLoader worker processes: ``--workers``), its shorter
  side resized to R and the centre cropped to R×R. An unreadable image stops the run with an
  error naming its file.

torchvision's ``CIFAR10``/``ImageFolder`` are not used: the first unpickles with plain ``pickle``
(a file could run code) and wants its own directory layout, the second refuses a folder without
class sub-folders — the usual layout of an unconditional GAN dataset.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class TensorImages(Dataset):
    """Images already in memory: item i = ``images[i]`` (``images``: ``[N, 3, R, R]``)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index]


class ArrayImages(Dataset):
    """uint8 images in memory (``[N, 3, h, w]``), converted to ``[3, R, R]`` in [-1, 1] per item."""

    def __init__(self, pixels: np.ndarray, resolution: int):
        self.pixels, self.resolution = pixels, resolution

    def __len__(self):
        return self.pixels.shape[0]

    def __getitem__(self, index):
        return _from_unit(torch.from_numpy(self.pixels[index][None]).float() / 255.0, self.resolution)[0]


class ImageFiles(Dataset):
    """Image files decoded on access: item i = ``paths[i]`` as RGB, shorter side resized to R
    (bilinear, antialiased), centre-cropped to ``[3, R, R]`` in [-1, 1]."""

    def __init__(self, paths: list[str], resolution: int):
        self.paths, self.resolution = paths, resolution

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image

        path, r = self.paths[index], self.resolution
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = r / min(im.size)
                w, h = max(r, round(im.width * scale)), max(r, round(im.height * scale))
                im = im.resize((w, h), Image.BILINEAR)
                left, top = (w - r) // 2, (h - r) // 2
                im = im.crop((left, top, left + r, top + r))
                pixels = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"folder: cannot read the image {path!r}: {e}") from None
        return torch.from_numpy(pixels).permute(2, 0, 1) * 2 - 1


@dataclass(eq=False)  # compared and hashed by identity (the metrics cache per dataset)
class ImageData:
    """A dataset at one resolution.

    Args:
        items: map-style ``Dataset``; item i is image i, ``[3, R, R]`` float32 in [-1, 1]. A
            tensor ``[N, 3, R, R]`` is accepted and wrapped in :class:`TensorImages`.
        labels: ``[N]`` int64.
        num_classes: number of distinct labels.
        name: the data's name as the metrics report it ("digits", "cifar10", "folder:/path").
        resolution: R (taken from a tensor ``items`` when not given).
        decodes_files: items are read and decoded from files on access (DataLoader worker
            processes pay off: ``--workers``' default starts them only then).
    """

    items: Dataset
    labels: torch.Tensor
    num_classes: int
    name: str
    resolution: int = 0
    decodes_files: bool = False

    def __post_init__(self):
        if isinstance(self.items, torch.Tensor):
            if self.items.dim() != 4 or self.items.shape[1] != 3:
                raise ValueError(f"ImageData: images must be [N, 3, R, R], got {tuple(self.items.shape)}")
            self.resolution = self.resolution or self.items.shape[-1]
            self.items = TensorImages(self.items)
        if len(self.items) != len(self.labels):
            raise ValueError(f"ImageData: {len(self.items)} images but {len(self.labels)} labels")
        if self.resolution <= 0:
            raise ValueError("ImageData: resolution must be given for a Dataset of items")

    def __len__(self):
        return len(self.labels)

    def gather(self, indices, workers: int = 0) -> torch.Tensor:
        """Images ``indices`` (a sequence or 1-D tensor of ints) stacked: ``[n, 3, R, R]``;
        decoded by ``workers`` processes when the items read files."""
        batches = list(self.batches(indices, workers=workers))
        return torch.cat(batches) if batches else torch.empty(0, 3, self.resolution, self.resolution)

    def batches(self, indices, batch_size: int = 256, workers: int = 0):
        """Images ``indices`` in order, as batches ``[≤ batch_size, 3, R, R]`` from one
        DataLoader (``workers`` processes when the items read files): a large subset is streamed
        with bounded memory."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if isinstance(self.items, TensorImages):
            yield from (self.items.images[chunk] for chunk in indices.split(batch_size))
            return
        yield from DataLoader(Subset(self.items, indices.tolist()), batch_size=batch_size,
                              num_workers=workers if self.decodes_files else 0)


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """``[N, C, h, w]`` → ``[N, C, side, side]``, bilinear (antialiased when shrinking); the same
    tensor when it already has that size."""
    if images.shape[-2:] == (side, side):
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > side)


def _from_unit(images_01: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N, C, h, w] in [0, 1] (C = 1 or 3) → [N, 3, R, R] in [-1, 1] (bilinear resize; C = 1
    repeated)."""
    images_01 = resize(images_01, resolution)
    if images_01.shape[1] == 1:
        images_01 = images_01.repeat(1, 3, 1, 1)
    return (images_01.clamp(0, 1) * 2 - 1).contiguous()


class Loader(NamedTuple):
    function: Callable[..., ImageData]
    takes_path: bool

    def spec(self, name):
        return f"{name}:/path" if self.takes_path else name


#: ``{name: Loader}`` of every registered loader (``--data``'s choices)
DATASETS: dict[str, Loader] = {}


def dataset(name: str, takes_path: bool = False):
    """Register the decorated loader as ``--data name`` (``name:/path`` if it ``takes_path``:
    the loader is then called with the path). It is called with ``resolution=R`` too and returns
    an :class:`ImageData` of that resolution."""
    def register(loader):
        DATASETS[name] = Loader(loader, takes_path)
        return loader
    return register


def specs() -> str:
    """The ``--data`` forms, for help texts and errors: "'digits', 'cifar10:/path' or ..."."""
    forms = [repr(d.spec(name)) for name, d in DATASETS.items()]
    return ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]


@dataset("digits")
def load_digits(resolution: int = 32) -> ImageData:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8]
    return ImageData(_from_unit(images, resolution), torch.from_numpy(d.target.astype(np.int64)),
                     10, "digits")


_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers only: a crafted file raises
    ``UnpicklingError`` instead of running code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # bytes, protocol < 3
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays)")
        if _NUMPY_2 and module.startswith("numpy.core."):  # pickled by numpy 1 (every CIFAR-10 file)
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


@dataset("cifar10", takes_path=True)
def load_cifar10(root: str, resolution: int = 32) -> ImageData:
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
                batch = _ArraysOnly(f, encoding="latin1").load()
            x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError,
                ImportError) as e:  # ImportError: pickled by a numpy 2, read by a numpy 1
            raise ValueError(f"cifar10: {path} is not a CIFAR-10 python batch ({e})") from None
        xs.append(x)
        ys.append(y)
    return ImageData(ArrayImages(np.concatenate(xs), resolution), torch.from_numpy(np.concatenate(ys)),
                     10, "cifar10", resolution)


def _image_paths(root: str) -> list[str]:
    """Sorted paths of the images under ``root``, hidden files and folders left out (macOS's
    ``._name.jpg`` AppleDouble companions and ``.Trashes``, thumbnails caches: not images)."""
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        paths += [os.path.join(folder, f) for f in files
                  if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return sorted(paths)


@dataset("folder", takes_path=True)
def load_folder(root: str, resolution: int = 32) -> ImageData:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder: {root!r} is not a directory")
    paths = _image_paths(root)
    if not paths:
        raise ValueError(f"folder: no .png/.jpg/.jpeg images under {root!r}")
    folders = [os.path.relpath(os.path.dirname(p), root) for p in paths]
    index = {name: i for i, name in enumerate(sorted(set(folders)))}
    labels = torch.tensor([index[f] for f in folders], dtype=torch.int64)
    return ImageData(ImageFiles(paths, resolution), labels, len(index), f"folder:{root}", resolution,
                     decodes_files=True)


def load(spec: str, resolution: int = 32) -> ImageData:
    """Load a dataset from its ``--data`` spec (see the module docstring) at ``resolution``."""
    name, sep, path = spec.partition(":")
    if name not in DATASETS or DATASETS[name].takes_path != bool(sep):
        raise ValueError(f"--data must be {specs()}, got {spec!r}")
    function = DATASETS[name].function
    data = function(path, resolution=resolution) if sep else function(resolution=resolution)
    if data.resolution != resolution:
        raise ValueError(f"--data {spec!r}: its loader gave {data.resolution}×{data.resolution} "
                         f"images, expected --resolution {resolution}")
    return data
