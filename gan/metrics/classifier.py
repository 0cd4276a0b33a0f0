"""A small classifier of the run's own data whose features make a weights-free quality metric.

The metrics read a bounded set of real images (:func:`metric_subset`: every image up to
``--metric-images``, else a fixed random subset of that many), downsampled to the classifier's
32×32. That set is split once, by a fixed seed, into halves (:func:`metric_split`): the
classifier is trained on the first (~10 s for the embedded digits on 2 CPU cores) and the
metric's real-side statistics come from the second, held out, so the features are not fitted to
the very images they describe. The network is cached under ``$SPARSEKIT_CACHE`` (default
``~/.cache/sparsekit``), keyed by a hash of the data and of this version, so every run measures
with the same network.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..data import resize

VERSION = 2  # 2: trained on the first half of metric_split (1: on 90 % of every image)
FEATURES = 128
RESOLUTION = 32  # the classifier's input side; other images are resized to it


def to_classifier_resolution(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, R, R]`` → ``[N, 3, 32, 32]`` (gan.data.resize: unchanged at R = 32)."""
    return resize(images, RESOLUTION)


class DigitFeatures(nn.Module):
    """[B, 3, 32, 32] in [-1, 1] → features [B, 128] (``features``) or logits [B, classes]."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64 * 4 * 4, FEATURES)
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x):
        return F.relu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def _cache_path(images):
    root = os.environ.get("SPARSEKIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sparsekit"))
    digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    return os.path.join(root, f"digit_classifier_v{VERSION}_{digest}.pt")


def metric_subset(n, limit, seed=0):
    """Indices of the real images the metrics read: all ``n`` when ``n <= limit``, else a fixed
    random ``limit`` of them (in index order)."""
    if n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def metric_split(n, seed=0):
    """(classifier_idx, heldout_idx): a fixed random split of n images into halves; the
    classifier trains on the first, the metric's real-side statistics use the second."""
    if n < 2:
        raise ValueError(f"the classifier metrics need at least 2 images, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2], order[n // 2:]


def train_classifier(images, labels, num_classes, epochs=12, seed=0):
    """Train on the classifier half of ``metric_split``; returns (model, accuracy on the held-out
    half)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitFeatures(num_classes)
    train, val = metric_split(len(images))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.enable_grad():  # callers may evaluate under no_grad
        _fit(model, opt, images, labels, train, epochs, g)
    model.eval()
    with torch.no_grad():
        acc = (model(images[val]).argmax(1) == labels[val]).float().mean().item()
    return model, acc


def _fit(model, opt, images, labels, train, epochs, g):
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            x = images[idx] + 0.05 * torch.randn(images[idx].shape, generator=g)  # mild robustness
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def load_or_train_classifier(images, labels, num_classes):
    """The cached classifier of ``images [N, 3, 32, 32]`` with ``labels [N]`` (the metric set),
    training and caching it if needed; returns (model, held-out accuracy)."""
    path = _cache_path(images)
    model = DigitFeatures(num_classes)
    if os.path.isfile(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            model.eval()
            return model, state["accuracy"]
        except (RuntimeError, KeyError, EOFError):
            pass  # a stale or corrupt cache entry is rebuilt below
    model, acc = train_classifier(images, labels, num_classes)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    torch.save({"model": model.state_dict(), "accuracy": acc}, tmp)
    os.replace(tmp, path)
    return model, acc
