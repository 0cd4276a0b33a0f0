"""Metrics: Fréchet distance of a set with itself ≈ 0 and growing with noise; fid/is offline."""

import pytest
import torch

from gan.data import load
from gan.metrics import canonical_metrics, evaluate, fd_name, frechet_distance
from gan.metrics.classifier import metric_split


pytestmark = pytest.mark.usefixtures("classifier_cache")  # the session's private classifier cache


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(feats, feats) < 1e-6
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_fd_is_measured_against_the_held_out_half_and_grows_with_noise():
    data = load("digits")
    train, heldout = metric_split(len(data))
    assert len(set(train.tolist()) & set(heldout.tolist())) == 0
    assert len(train) + len(heldout) == len(data)
    g = torch.Generator().manual_seed(0)
    images = data.gather(range(len(data)))
    itself = evaluate(images[heldout], data, ("fd", "coverage"))
    seen = evaluate(images[train], data, ("fd_digits",))  # the classifier's own half
    noisy = [evaluate((images + s * torch.randn(images.shape, generator=g)).clamp(-1, 1),
                      data, ("fd",))["fd_digits"] for s in (0.2, 0.6)]
    assert itself["fd_digits"] < 1e-3 * max(noisy)
    # The classifier's own half sits measurably apart from the held-out half in its features (it
    # was fitted to those images): the reason the real side is the held-out half.
    assert seen["fd_digits"] > 100 * itself["fd_digits"]
    assert noisy[0] < noisy[1]
    assert itself["coverage"] == 1.0


def test_the_fd_metric_is_named_after_its_data():
    assert fd_name("digits") == "fd_digits" and fd_name("cifar10:/data") == "fd_cifar10"
    assert canonical_metrics(("fd_cifar10", "coverage"), "cifar10:/x") == ("fd", "coverage")
    with pytest.raises(ValueError, match="ask for 'fd' \\(reported as 'fd_cifar10'\\)"):
        canonical_metrics(("fd_digits",), "cifar10:/x")
    with pytest.raises(ValueError, match="unknown metric 'kid'"):
        canonical_metrics(("kid",), "digits")


def test_inception_metrics_need_a_weights_file():
    data = load("digits")
    with pytest.raises(FileNotFoundError, match="inception-weights"):
        evaluate(data.gather(range(10)), data, ("fid",), inception_weights=None)


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load(f"cifar10:{tmp_path}")
    with pytest.raises(ValueError, match="--data must be"):
        load("mnist")


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, saved in the real file's format."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3",
                                   reason="fid/is need torch-fidelity (the [fid] extra)")
    from unittest import mock

    cls = fidelity.FeatureExtractorInceptionV3
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save({}, path)
    with mock.patch.object(cls, "load_state_dict", lambda self, state, *a, **k: None):
        torch.manual_seed(0)
        model = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    torch.save(model.state_dict(), path)
    return str(path)


def test_fid_and_is_run_offline_from_a_weights_file(random_inception_weights):
    data = load("digits")
    fake = data.gather(range(100, 120)).flip(-1)
    with pytest.warns(UserWarning, match="fid/is on 20 generated images are biased"):
        result = evaluate(fake, type(data)(data.gather(range(20)), data.labels[:20], 10, "digits"),
                          ("fid", "is"), inception_weights=random_inception_weights)
    assert set(result) == {"fid", "is"}
    assert result["is"] >= 1.0 - 1e-6 and result["fid"] >= 0
