"""``evaluate``: compute the named metrics of a generator against a dataset.

Names (see the package docstring): ``fd`` (reported as ``fd_<data>``: ``fd_digits`` on the
embedded digits, ``fd_cifar10``, ``fd_folder``), ``coverage`` (adds ``coverage_kl``), ``fid``,
``is``. ``fid``/``is`` need ``inception_weights`` (torch-fidelity's
``weights-inception-2015-12-05`` file); asking for them without it is an error, never a skip.
"""

from __future__ import annotations

import math
import os
import warnings
import weakref

import torch

from .classifier import load_or_train_classifier, metric_split, metric_subset, to_classifier_resolution
from .frechet import frechet_distance

METRICS = ("fd", "coverage", "fid", "is")
METRIC_IMAGES = 10_000  # --metric-images' default
_CLASSIFIER_SETS = weakref.WeakKeyDictionary()  # {ImageData: {limit: (images 32², labels)}}


def fd_name(data_name):
    """The name ``fd`` is reported under for data named ``data_name`` ("digits", "cifar10",
    "folder:DIR" or the --data strings "cifar10:DIR", "folder:DIR"): fd_digits, fd_cifar10,
    fd_folder — the metric is named after the data its classifier learnt."""
    return "fd_" + data_name.split(":", 1)[0]


def canonical_metrics(names, data_name):
    """``names`` with ``fd_<data>`` read as ``fd``; ValueError for unknown names and for the
    Fréchet distance of another dataset's classifier."""
    out = []
    for name in names:
        if name.startswith("fd_"):
            if name != fd_name(data_name):
                raise ValueError(
                    f"metric {name!r}: the Fréchet-distance metric uses a classifier of the run's "
                    f"own data; for data {data_name.split(':', 1)[0]!r} ask for 'fd' (reported as "
                    f"{fd_name(data_name)!r})")
            name = "fd"
        elif name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)} (fd also as "
                             f"{fd_name(data_name)})")
        out.append(name)
    return tuple(out)


def _batched(fn, images, batch=256):
    return torch.cat([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def classifier_set(data, limit=METRIC_IMAGES, workers=0):
    """``(images [n, 3, 32, 32], labels [n])``: ``data``'s metric subset (``metric_subset``) at
    the classifier's resolution, decoded once per data and limit and then kept (n ≤ ``limit``:
    123 MB at 10k images, whatever the data's resolution)."""
    sets = _CLASSIFIER_SETS.setdefault(data, {})
    if limit not in sets:
        indices = metric_subset(len(data), limit)
        images = torch.cat([to_classifier_resolution(batch)
                            for batch in data.batches(indices, workers=workers)])
        sets[limit] = (images, data.labels[indices])
    return sets[limit]


def _inception(path, features_list):
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=features_list,
                              feature_extractor_weights_path=path)


def _to_uint8(images):
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def inception_metrics(real_batches, fake, weights_path, names):
    """FID (``fid``) and Inception Score (``is``) with InceptionV3 weights from ``weights_path``;
    ``real_batches``: an iterable of real image batches ``[b, 3, R, R]`` (read only for fid)."""
    if not weights_path or not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"fid/is need torch-fidelity's InceptionV3 weights file (--inception-weights); "
            f"got {weights_path!r}. Without network access it must be a local copy of "
            "weights-inception-2015-12-05-6726825d.pth")
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    if len(fake) < 10_000:
        warnings.warn(f"fid/is on {len(fake)} generated images are biased (FID upward): the "
                      "papers use 50k; compare only runs evaluated on the same count",
                      stacklevel=3)
    out = {}
    if "fid" in names:
        fid = FrechetInceptionDistance(feature=_inception(weights_path, ["2048"]),
                                       sync_on_compute=False)  # rank 0 alone (frechet.py)
        for real in real_batches:
            fid.update(_to_uint8(real), real=True)
        for i in range(0, len(fake), 100):
            fid.update(_to_uint8(fake[i:i + 100]), real=False)
        out["fid"] = float(fid.compute())
    if "is" in names:
        # 10 splits, the convention since Salimans et al. (fewer when there are too few images)
        score = InceptionScore(feature=_inception(weights_path, ["logits_unbiased"]),
                               splits=max(1, min(10, len(fake) // 100)), sync_on_compute=False)
        for i in range(0, len(fake), 100):
            score.update(_to_uint8(fake[i:i + 100]))
        out["is"] = float(score.compute()[0])
    return out


@torch.no_grad()
def evaluate(fake_images, data, names=("fd", "coverage"), inception_weights=None,
             metric_images=METRIC_IMAGES, workers=0):
    """Metrics of ``fake_images [N, 3, R, R]`` in [-1, 1] against ``data`` (an ImageData of
    resolution R), on at most ``metric_images`` real images (``metric_subset``; decoded by
    ``workers`` processes). ``fd``'s real side is the held-out half of ``metric_split`` (the
    classifier never saw it); ``fid`` reads the whole subset at R."""
    names = canonical_metrics(names, data.name)
    fake = fake_images.float().contiguous()
    out = {}
    if "fd" in names or "coverage" in names:
        images, labels = classifier_set(data, metric_images, workers)
        classifier, _ = load_or_train_classifier(images, labels, data.num_classes)
        fake_32 = to_classifier_resolution(fake)
        if "fd" in names:
            _, heldout = metric_split(len(images))
            real_f = _batched(classifier.features, images[heldout])
            fake_f = _batched(classifier.features, fake_32)
            out[fd_name(data.name)] = frechet_distance(real_f, fake_f)
        if "coverage" in names:
            pred = _batched(classifier, fake_32).argmax(1)
            hist = torch.bincount(pred, minlength=data.num_classes).double() / len(pred)
            out["coverage"] = float((hist > 0.5 / data.num_classes).double().mean())
            nz = hist[hist > 0]
            out["coverage_kl"] = float((nz * (nz * data.num_classes).log()).sum())
    if "fid" in names or "is" in names:
        # streamed at R every evaluation (10k images at R = 256 would be 7.8 GB kept)
        real = data.batches(metric_subset(len(data), metric_images), 100, workers)
        out.update(inception_metrics(real, fake, inception_weights, names))
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}
