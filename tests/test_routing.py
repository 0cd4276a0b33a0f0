"""The GPU tuning file: auto's per-pass/dtype routes and the Triton launch table it holds."""

from __future__ import annotations

import json

import pytest
import torch

from sparsekit.backends import routing
from sparsekit.backends.triton import tuning


@pytest.fixture
def tuning_env(monkeypatch, tmp_path):
    """Point SPARSEKIT_GPU_TUNING at a file written from a dict; the cache is cleared around."""
    def use(doc):
        path = tmp_path / "tuning.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        monkeypatch.setenv("SPARSEKIT_GPU_TUNING", str(path))
        routing.tuning_file.cache_clear()
        return path
    yield use
    monkeypatch.delenv("SPARSEKIT_GPU_TUNING", raising=False)
    routing.tuning_file.cache_clear()


def test_committed_file_covers_every_triton_key_and_route():
    doc = routing.tuning_file()
    for op in tuning.OPS:
        for side in tuning.SIDES:
            for size in (4, 2):
                small, large = tuning.table_configs(f"{op}/{side}/{size}")
                for cfg in (small, large):
                    assert cfg.block_m >= 16 and cfg.num_warps in (1, 2, 4, 8, 16)
                    assert cfg.num_stages >= 1
    for pass_ in ("fwd", "dx", "dw"):
        for dtype in ("float32", "bfloat16", "float16"):
            assert doc["routes"][f"{pass_}/{dtype}"] in routing.gpu_backends()


def test_dump_round_trips_the_committed_file():
    doc = routing.tuning_file()
    assert json.loads(routing.dump_tuning(doc)) == doc
    assert routing.dump_tuning(doc) == routing.DEFAULT_FILE.read_text()


def test_cuda_order_follows_the_table_and_keeps_the_other_backend(tuning_env):
    doc = json.loads(routing.DEFAULT_FILE.read_text())
    doc["routes"] = {"fwd/float32": "cuda", "dw/bfloat16": "triton"}
    tuning_env(doc)
    assert routing.cuda_order("conv2d_fwd", torch.float32) == ("cuda", "triton")
    assert routing.cuda_order("linear_fwd", torch.float32) == ("cuda", "triton")
    assert routing.cuda_order("conv2d_dw", torch.bfloat16) == ("triton", "cuda")
    assert routing.cuda_order("conv2d_dx", torch.float32) == ("triton", "cuda")  # not named


def test_launch_config_reads_the_file(tuning_env):
    doc = json.loads(routing.DEFAULT_FILE.read_text())
    doc["triton"]["forward/32/4"] = {"small": [32, 2, 3], "large": [256, 8, 4]}
    tuning_env(doc)
    assert tuning.launch_config("forward", 4096, 32, 32, torch.float32, False) == (32, 2, 3)
    assert tuning.launch_config("forward", 4097, 32, 16, torch.float32, False) == (256, 8, 4)
    assert tuning.launch_config("forward", 10**6, 32, 32, torch.float32, True) == tuning.INTERPRETER


@pytest.mark.parametrize("text, match", [
    ("not json", "could not be read"),
    ('{"routes": {}}', "'routes' and 'triton'"),
    ('{"routes": {"fwd/float32": "cpu"}, "triton": {}}', "names 'cpu'"),
])
def test_bad_tuning_file_is_named_in_the_error(tuning_env, text, match):
    path = tuning_env(text)
    with pytest.raises(ValueError, match=match) as info:
        routing.tuning_file()
    assert str(path) in str(info.value)


def test_missing_triton_entry_is_named(tuning_env):
    doc = json.loads(routing.DEFAULT_FILE.read_text())
    del doc["triton"]["grad_weight/64/2"]
    tuning_env(doc)
    with pytest.raises(ValueError, match="grad_weight/64/2"):
        tuning.launch_config("grad_weight", 100, 64, 64, torch.bfloat16, False)
