"""Whole-step benchmarks: one GAN iteration (n_dis D steps + one G step, exactly as the trainer
runs it) for SNGAN-ResNet, dense vs sparse at G/D densities, and the cost of one mask update.

CPU: the default set uses reduced-width models (width 0.5: G 128 channels, D 64) at batch 16;
``--bench-set full`` runs width 1 too. GPU: width 1, batch 64; the quick set times dense and
G/D 0.5/0.5 and 0.1/0.2 (the other density pairs are in the full set). The trainer runs in fp32,
which is IEEE fp32 (DESIGN §3): TF32 off for cuBLAS/cuDNN and the Triton kernels while each
benchmark runs, restored afterwards (``runners.ieee_fp32``); ``--precision bf16`` is not
supported by the trainer yet, so there is no bf16 whole-step benchmark.
"""

import pytest
import torch

from gan.data import load

from .runners import ieee_fp32, sngan_trainer

DENSITY_PAIRS = [(1.0, 1.0), (0.5, 0.5), (0.2, 0.5), (0.1, 0.2), (0.05, 0.1)]
GPU_QUICK_PAIRS = [(1.0, 1.0), (0.5, 0.5), (0.1, 0.2)]
# (device, width, batch, full-set only)
SETTINGS = [("cpu", 0.5, 16, False), ("cpu", 1.0, 16, True)]
if torch.cuda.is_available():
    SETTINGS.append(("cuda", 1.0, 64, False))
# benchmark.pedantic per device: a GPU iteration takes tens of ms, so it gets more rounds.
PEDANTIC = {"cpu": dict(rounds=5, warmup_rounds=1, iterations=1),
            "cuda": dict(rounds=10, warmup_rounds=2, iterations=1)}


def _setting_id(s):
    device, width, batch, _ = s
    return f"{device}-w{width}-b{batch}"


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device,width,batch,full", SETTINGS, ids=[_setting_id(s) for s in SETTINGS])
@pytest.mark.parametrize("g_density,d_density", DENSITY_PAIRS, ids=[f"G{g}-D{d}" for g, d in DENSITY_PAIRS])
def test_gan_iteration(benchmark, request, digits, device, width, batch, full, g_density, d_density):
    full_only = full or (device == "cuda" and (g_density, d_density) not in GPU_QUICK_PAIRS)
    if full_only and request.config.getoption("--bench-set") != "full":
        pytest.skip("in the full set only (--bench-set full)")
    with ieee_fp32(torch.float32) as tf32:
        trainer = sngan_trainer(digits, device, width, batch, g_density, d_density)
        trainer.train_step()  # warm-up: allocations, kernel compilation
        _sync(device)

        def step():
            trainer.train_step()
            _sync(device)

        benchmark.extra_info.update(kind="gan_iteration", model="sngan", width=width, batch=batch,
                                    n_dis=trainer.n_dis, g_density=g_density, d_density=d_density,
                                    device=device, dtype="torch.float32", tf32=tf32, block=[32, 32],
                                    **trainer.densities())
        benchmark.pedantic(step, **PEDANTIC[device])


FIRST_PER_DEVICE = [s for i, s in enumerate(SETTINGS) if s[0] not in {t[0] for t in SETTINGS[:i]}]


@pytest.mark.parametrize("device,width,batch,full", FIRST_PER_DEVICE,
                         ids=[_setting_id(s) for s in FIRST_PER_DEVICE])
def test_mask_update(benchmark, digits, device, width, batch, full):
    """One prune + regrow + index rebuild of G at 10 % (gradient growth uses the .grad present)."""
    with ieee_fp32(torch.float32) as tf32:
        trainer = sngan_trainer(digits, device, width, batch, 0.1, 0.2)
        trainer.train_step()
        _sync(device)
        engine = trainer.engine_G

        def update():
            engine.prune_and_regrow(0.3)
            _sync(device)

        benchmark.extra_info.update(kind="mask_update", model="sngan", width=width, batch=batch,
                                    device=device, dtype="torch.float32", tf32=tf32, g_density=0.1)
        benchmark.pedantic(update, **PEDANTIC[device])
