"""Metrics: Fréchet distance of a set with itself ≈ 0 and growing with noise; data errors."""

import pytest
import torch

from gan.data import load
from gan.metrics import evaluate, frechet_distance


@pytest.fixture(autouse=True)
def _classifier_cache(classifier_cache):
    """Every test here uses the session's private classifier cache."""


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(feats, feats) < 1e-6
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_fd_digits_grows_with_noise():
    data = load("digits")
    g = torch.Generator().manual_seed(0)
    clean = evaluate(data.images, data, ("fd_digits", "coverage"))
    noisy = [evaluate((data.images + s * torch.randn(data.images.shape, generator=g)).clamp(-1, 1),
                      data, ("fd_digits",))["fd_digits"] for s in (0.2, 0.6)]
    assert clean["fd_digits"] < 1e-3 * max(noisy)
    assert noisy[0] < noisy[1]
    assert clean["coverage"] == 1.0


def test_inception_metrics_need_a_weights_file():
    data = load("digits")
    with pytest.raises(FileNotFoundError, match="inception-weights"):
        evaluate(data.images[:10], data, ("fid",), inception_weights=None)


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load(f"cifar10:{tmp_path}")
    with pytest.raises(ValueError, match="--data must be"):
        load("mnist")
