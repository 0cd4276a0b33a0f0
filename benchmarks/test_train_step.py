"""Whole-step benchmarks: one GAN iteration (n_dis D steps + one G step, exactly as the trainer
runs it) for SNGAN-ResNet, dense vs sparse at G/D densities, and the cost of one mask update.

On CPU the default set uses reduced-width models (width 0.5: G 128 channels, D 64) at batch 16;
``--bench-set full`` runs width 1 too. On a GPU: width 1, batch 64.
"""

import pytest
import torch

from gan.config import Config
from gan.data import load
from gan.trainer import Trainer

DENSITY_PAIRS = [(1.0, 1.0), (0.5, 0.5), (0.2, 0.5), (0.1, 0.2), (0.05, 0.1)]
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
SETTINGS = [(1.0, 64, False)] if ON_GPU else [(0.5, 16, False), (1.0, 16, True)]


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _trainer(data, width, batch, g_density, d_density, block=(32, 32)):
    dense = (g_density, d_density) == (1.0, 1.0)
    cfg = Config(method="dense" if dense else "static", model="sngan", width=width, batch_size=batch,
                 steps=1000, device=DEVICE, block=f"{block[0]}x{block[1]}", lr_decay="none",
                 g_density=None if dense else g_density, d_density=None if dense else d_density)
    return Trainer(cfg, data)


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


@pytest.mark.parametrize("width,batch,full", SETTINGS, ids=[f"w{w}-b{b}" for w, b, _ in SETTINGS])
@pytest.mark.parametrize("g_density,d_density", DENSITY_PAIRS, ids=[f"G{g}-D{d}" for g, d in DENSITY_PAIRS])
def test_gan_iteration(benchmark, request, digits, width, batch, full, g_density, d_density):
    if full and request.config.getoption("--bench-set") != "full":
        pytest.skip("in the full set only (--bench-set full)")
    trainer = _trainer(digits, width, batch, g_density, d_density)
    trainer.train_step()  # warm-up: allocations, autotuning

    def step():
        trainer.train_step()
        _sync()

    benchmark.extra_info.update(kind="gan_iteration", model="sngan", width=width, batch=batch,
                                n_dis=trainer.n_dis, g_density=g_density, d_density=d_density,
                                device=DEVICE, block=[32, 32], **trainer.densities())
    benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("width,batch,full", SETTINGS[:1], ids=[f"w{w}-b{b}" for w, b, _ in SETTINGS[:1]])
def test_mask_update(benchmark, digits, width, batch, full):
    """One prune + regrow + index rebuild of G at 10 % (gradient growth uses the .grad present)."""
    cfg_trainer = _trainer(digits, width, batch, 0.1, 0.2)
    cfg_trainer.train_step()
    engine = cfg_trainer.engine_G

    def update():
        engine.prune_and_regrow(0.3)
        _sync()

    benchmark.extra_info.update(kind="mask_update", model="sngan", width=width, batch=batch,
                                device=DEVICE, g_density=0.1)
    benchmark.pedantic(update, rounds=5, warmup_rounds=1, iterations=1)
