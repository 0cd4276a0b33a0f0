"""A GAN model is one module of gan/models and a dataset one registered loader: the trainer's
choices and defaults come from those declarations."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import gan.models
from gan import data
from gan.config import Config

TOY_MODEL = '''
"""A toy pair."""
from torch import nn

N_DIS = 3


def build_pair(width, z_dim, resolution):
    return nn.Linear(z_dim, 4), nn.Linear(4, 1)
'''


def test_models_are_found_by_their_declarations():
    assert gan.models.MODELS == ("dcgan", "sngan") and gan.models.N_DIS == {"dcgan": 1, "sngan": 5}
    g, d = gan.models.build("dcgan", width=0.125, z_dim=16)
    assert type(g).__name__ == "DCGANGenerator" and type(d).__name__ == "DCGANDiscriminator"
    with pytest.raises(ValueError, match="model must be one of"):
        gan.models.build("biggan")
    assert Config(model="sngan").resolved_n_dis() == 5
    assert Config(model="sngan", n_dis=2).resolved_n_dis() == 2


def test_a_new_model_is_one_module(monkeypatch, tmp_path):
    (tmp_path / "toy.py").write_text(textwrap.dedent(TOY_MODEL))
    monkeypatch.setattr(gan.models, "__path__", [*gan.models.__path__, str(tmp_path)])
    try:
        found = gan.models._find_models()
        assert list(found) == ["dcgan", "sngan", "toy"] and found["toy"].N_DIS == 3
        assert found["toy"].build_pair(1.0, 8, 32)[0].in_features == 8
    finally:
        sys.modules.pop("gan.models.toy", None)


def test_a_new_dataset_is_one_function(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))

    @data.dataset("noise", takes_path=True)
    def load_noise(seed, resolution):
        g = torch.Generator().manual_seed(int(seed))
        images = torch.rand(8, 3, resolution, resolution, generator=g) * 2 - 1
        return data.ImageData(images, torch.zeros(8, dtype=torch.int64), 1, f"noise:{seed}")

    assert data.specs() == "'digits', 'cifar10:/path', 'folder:/path' or 'noise:/path'"
    assert len(data.load("noise:3")) == 8
    assert data.load("noise:3", resolution=16).gather([0, 1]).shape == (2, 3, 16, 16)
    for bad in ("noise", "digits:x", "svhn:/x"):
        with pytest.raises(ValueError, match="'noise:/path', got"):
            data.load(bad)
