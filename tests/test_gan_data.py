"""Datasets: images served one by one at the run's resolution, files decoded on access, CIFAR-10
pickles read without running code, and the models built for every resolution."""

import os
import pickle

import numpy as np
import pytest
import torch

import gan.models
from gan.config import Config
from gan.data import ImageData, load
from gan.loader import InfiniteBatches
from gan.metrics.classifier import metric_subset
from gan.metrics.suite import classifier_set


def _cifar_batches(root, value=lambda i: 40 * i, protocol=pickle.DEFAULT_PROTOCOL):
    for i in range(1, 6):
        batch = {"data": np.full((4, 3072), value(i), dtype=np.uint8), "labels": [i % 10] * 4}
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar10_batches_load_as_uint8_and_convert_per_image(tmp_path, protocol):
    _cifar_batches(tmp_path, protocol=protocol)  # protocol 2: as the official (python 2) files
    data = load(f"cifar10:{tmp_path}")
    assert len(data) == 20 and data.num_classes == 10 and data.resolution == 32
    assert data.items.pixels.dtype == np.uint8  # 1 byte per value held, not 4
    images = data.gather(range(20))
    assert images.shape == (20, 3, 32, 32)
    assert torch.allclose(images[0], torch.full((3, 32, 32), 40 / 255 * 2 - 1))
    assert load(f"cifar10:{tmp_path}", resolution=16).gather([0]).shape == (1, 3, 16, 16)
    (tmp_path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load(f"cifar10:{tmp_path}")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_cifar10_file_never_runs_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _cifar_batches(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({"data": _Payload(), "labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load posix.system|refusing to load os.system"):
        load(f"cifar10:{tmp_path}")
    assert not (tmp_path / "PWNED").exists()


def _image_folder(root, layout, size=(40, 24)):
    from PIL import Image

    for i, rel in enumerate(layout):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (60 * i % 256, 100, 200)).save(path)


def test_a_folder_is_listed_at_load_and_decoded_when_served(tmp_path, monkeypatch):
    _image_folder(tmp_path, ["cats/0.png", "cats/1.jpg", "dogs/0.png", "dogs/deep/1.PNG"])
    (tmp_path / "notes.txt").write_text("not an image")
    opened = []
    from PIL import Image

    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    data = load(f"folder:{tmp_path}", resolution=16)
    assert opened == [] and data.decodes_files  # nothing decoded yet
    assert data.num_classes == 3 and data.labels.tolist() == [0, 0, 1, 2]
    images = data.gather([0, 3])
    assert images.shape == (2, 3, 16, 16) and len(opened) == 2
    assert images.min() >= -1 and images.max() <= 1


def test_a_flat_folder_is_one_class_and_images_are_centre_cropped(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (48, 32), (255, 0, 0))  # red, with blue 8-pixel bands left and right
    im.paste((0, 0, 255), (0, 0, 8, 32))
    im.paste((0, 0, 255), (40, 0, 48, 32))
    im.save(tmp_path / "a.png")
    data = load(f"folder:{tmp_path}")
    assert data.num_classes == 1 and data.labels.tolist() == [0]
    image = data.gather([0])[0]
    assert torch.allclose(image[0], torch.ones(32, 32)) and torch.allclose(image[2], -torch.ones(32, 32))


def test_hidden_files_and_folders_are_not_images(tmp_path):
    _image_folder(tmp_path, ["a.png", "b/c.png"])
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")  # macOS's resource-fork companion
    (tmp_path / ".thumbs").mkdir()
    _image_folder(tmp_path, [".thumbs/d.png"])
    data = load(f"folder:{tmp_path}")
    assert data.items.paths == [str(tmp_path / "a.png"), str(tmp_path / "b" / "c.png")]


def test_batches_stream_a_subset_in_order(tmp_path):
    _image_folder(tmp_path, [f"{i:02d}.png" for i in range(7)])
    data = load(f"folder:{tmp_path}")
    picked = [6, 0, 3, 2, 5]
    batches = list(data.batches(picked, batch_size=2, workers=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), torch.stack([data.items[i] for i in picked]))
    digits = load("digits")
    assert [len(b) for b in digits.batches(range(5), batch_size=2)] == [2, 2, 1]


def test_closing_the_batches_stops_their_worker_processes(tmp_path):
    import multiprocessing

    _image_folder(tmp_path, [f"{i}.png" for i in range(8)])
    stream = InfiniteBatches(load(f"folder:{tmp_path}"), 2, seed=0, workers=2)
    stream.next()
    assert len(multiprocessing.active_children()) >= 2
    stream.close()
    assert multiprocessing.active_children() == []
    assert stream.next().shape == (2, 3, 32, 32)  # starts again where it was
    stream.close()


def test_a_broken_image_names_its_file(tmp_path):
    _image_folder(tmp_path, ["a.png"])
    (tmp_path / "b.png").write_bytes(b"not a png")
    data = load(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="cannot read the image .*b.png"):
        data.gather([1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images"):
        load(f"folder:{tmp_path / 'empty'}")


def test_worker_processes_serve_the_same_batches(tmp_path):
    _image_folder(tmp_path, [f"{c}/{i}.png" for c in "ab" for i in range(6)])
    data = load(f"folder:{tmp_path}")
    order = [InfiniteBatches(data, 4, seed=1, workers=w) for w in (0, 2)]
    for _ in range(4):  # crosses an epoch boundary (3 batches per epoch)
        a, b = (o.next() for o in order)
        assert torch.equal(a, b)
    assert Config(data=f"folder:{tmp_path}").resolved_workers(data) >= 1
    assert Config().resolved_workers(load("digits")) == 0
    assert Config(workers=3).resolved_workers(data, world_size=2) == 3


def test_the_metrics_read_a_bounded_subset_at_the_classifiers_resolution(tmp_path):
    assert metric_subset(5, 10).tolist() == [0, 1, 2, 3, 4]
    picked = metric_subset(100, 10)
    assert len(picked) == 10 and picked.tolist() == sorted(set(picked.tolist()))
    assert torch.equal(picked, metric_subset(100, 10))  # fixed
    _image_folder(tmp_path, [f"{i}.png" for i in range(12)], size=(64, 64))
    data = load(f"folder:{tmp_path}", resolution=64)
    images, labels = classifier_set(data, limit=8)
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    assert classifier_set(data, limit=8)[0] is images  # decoded once


@pytest.mark.parametrize("model", ["dcgan", "sngan"])
@pytest.mark.parametrize("resolution", [16, 64])
def test_models_build_for_each_resolution(model, resolution):
    G, D = gan.models.build(model, width=0.125, z_dim=8, resolution=resolution)
    fake = G(torch.randn(2, 8))
    assert fake.shape == (2, 3, resolution, resolution)
    assert D(fake).shape == (2,)


def test_the_32x32_models_are_unchanged():
    """The generalised builders give the 32×32 networks their former layer names and shapes."""
    G, D = gan.models.build("dcgan", width=0.125)
    assert [n for n, _ in G.named_children()] == ["fc", "bn0", "up1", "bn1", "up2", "bn2", "up3",
                                                  "bn3", "out"]
    assert [n for n, _ in D.named_children()] == ["conv1", "conv2", "conv3", "conv4", "fc"]
    for model, counts in {"sngan": (4_276_739, 1_053_825), "dcgan": (936_899, 1_706_625)}.items():
        assert tuple(sum(p.numel() for p in net.parameters())
                     for net in gan.models.build(model)) == counts  # as before --resolution
    assert len(gan.models.build("sngan")[1].blocks) == 4


def test_bad_resolutions_are_clear_errors():
    with pytest.raises(ValueError, match="--resolution must be one of 16, 32"):
        Config(resolution=48).validate()
    with pytest.raises(ValueError, match="AlphaGAN's generators .* resolution must be 32"):
        Config(method="alphagan-search", model="alphagan", resolution=64).validate()
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        Config(workers=-1).validate()
    data = ImageData(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.int64), 1, "x")
    with pytest.raises(ValueError, match="16×16, the run's --resolution is 32"):
        from gan.trainer import Trainer
        Trainer(Config(method="dense", steps=1, batch_size=2), data)
