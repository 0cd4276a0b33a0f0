"""Multi-process training on CPU (gloo, 2 ranks): masks and weights stay identical on every rank,
two ranks at per-rank batch B/2 compute what one rank computes at B, the mask check names a
desynchronised layer, only rank 0 writes, and a run resumes on another number of processes.

Ranks are started with ``torch.multiprocessing`` (the environment torchrun would set, so
``gan.distributed.from_launch`` reads it as under torchrun); one test runs the real ``torchrun``.
"""

import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

import sparsekit
from gan import checkpoint, distributed
from gan.config import Config
from gan.data import ImageData, TensorImages, load
from gan.loader import InfiniteBatches
from gan.loop import run
from gan.metrics import evaluate
from gan.lottery import run_lottery
from gan.train import main
from sparsekit.dst import DynamicSparsity

WORLD = 2
TINY = dict(model="dcgan", width=0.125, batch_size=8, eval_samples=8, metrics="", log_every=1)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank, port, options, worker, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = distributed.from_launch(distributed.launch_options(options), Config(**TINY))
    with distributed.process_group(ctx):
        worker(ctx, *args)


# Ranks fork from a fresh server process that imported these once (forking pytest itself is
# unsafe once autograd or CUDA threads run in it; spawning re-imports torch in every rank).
_PRELOAD = ["torch", "sklearn.datasets", "gan.loop", "gan.lottery", "gan.train", __name__]


def spawn(worker, *args, options=()):
    """Run ``worker(ctx, *args)`` on 2 ranks joined as under torchrun; a rank's exception fails
    the test with its traceback."""
    multiprocessing.set_forkserver_preload(_PRELOAD)
    mp.start_processes(_rank_entry, args=(_free_port(), list(options), worker, args), nprocs=WORLD,
                       start_method="forkserver")


def _all_equal(ctx, value, what):
    """Assert ``value`` (a picklable object) is the same on every rank."""
    values = [None] * ctx.world_size
    tdist.all_gather_object(values, value)
    if isinstance(value, dict):
        differ = sorted(k for k in value if any(v.get(k) != values[0].get(k) for v in values))
        assert not differ, f"{what} differ across ranks: {differ[:8]}"
    assert all(v == values[0] for v in values), f"{what} differ across ranks"


def _fingerprint(trainer):
    """Exact bytes of every parameter, mask and EMA tensor, the engines' and balance states.
    (Batch-norm running statistics — G's and the EMA's copy of them — are per rank by design.)"""
    out = {}
    for net in ("G", "D", "ema"):
        module = getattr(trainer, net)
        if module is None:
            continue
        for key, value in module.state_dict().items():
            if "running_" in key or "num_batches" in key:
                continue
            out[f"{net}.{key}"] = value.cpu().numpy().tobytes()
    for name in ("engine_G", "engine_D"):
        engine = getattr(trainer, name)
        if engine is not None:
            state = engine.state_dict()
            out[name] = repr({k: v for k, v in state.items() if k not in ("ever_active", "generator")})
            out[name + ".generator"] = state["generator"].numpy().tobytes()
            out.update({f"{name}.ever_active.{k}": v.numpy().tobytes()
                        for k, v in state["ever_active"].items()})
    out["balance"] = repr(trainer.balance.state_dict())
    return out


# ---------------------------------------------------------------------------------- every method
def _methods_worker(ctx, tmp):
    out = os.path.join(tmp, f"rank{ctx.rank}")  # rank 1 must write nothing at all
    for method in ("dense", "static", "set", "rigl", "stu-gan", "sdst", "ddst-strict"):
        cfg = Config(**dict(TINY, method=method, steps=3, update_every=2))
        _, trainer = run(cfg, os.path.join(out, method), dist=ctx)
        _all_equal(ctx, _fingerprint(trainer), f"{method}: weights, masks or engine states")
    # IMP prunes G on every rank from the same weights: --check-masks-every 1 compares the
    # round-1 masks at every iteration
    run_lottery(Config(**dict(TINY, method="lottery", steps=2, rounds=1)),
                os.path.join(out, "lottery"), dist=ctx)

    # DDST, periods scaled to 22 steps: G's masks move at 10 and 20 (gradient growth), the
    # balance ratio is sampled (rank-averaged) at 10 and 20. The controller is made to adjust
    # every 20 iterations, and a full window with a high ratio, set on every rank at 19, makes it
    # grow D at 20 by the rank-averaged dense gradient of that iteration.
    cfg = Config(**dict(TINY, method="ddst", steps=22, d_density=0.3))
    actions = {}

    def adjust_at_20(trainer):
        trainer.controller.adjust_every = 20

    def force_grow(trainer):
        if trainer.iteration == 19:
            trainer.balance.load_state_dict({"window": trainer.balance.window,
                                             "samples": [0.9] * trainer.balance.window})
        if trainer.iteration == 20:
            actions[20] = trainer.controller.last_action

    _, trainer = run(cfg, os.path.join(out, "ddst"), setup=adjust_at_20, on_step=force_grow, dist=ctx)
    assert actions[20] == "grow" and trainer.engine_D.density > 0.3, actions
    assert trainer.engine_G.last_update["iteration"] == 20
    _all_equal(ctx, _fingerprint(trainer), "ddst: weights, masks or engine states")
    if ctx.rank:
        assert not os.path.exists(out), f"rank {ctx.rank} wrote {os.listdir(out)}"
    else:
        assert sorted(os.listdir(out)) == sorted(["dense", "static", "set", "rigl", "stu-gan",
                                                  "sdst", "ddst-strict", "lottery", "ddst"])
        assert os.path.isfile(os.path.join(out, "lottery", "round_1", "ticket.pt"))


def test_every_method_keeps_masks_and_weights_identical_on_two_ranks(tmp_path):
    spawn(_methods_worker, str(tmp_path), options=["--check-masks-every", "1"])


# ---------------------------------------------------------------------------------- data and metrics
def _folder_and_metrics_worker(ctx, folder, cache):
    """Decoding DataLoader workers under a process group keep the ranks in step; rank 0's metrics
    (torchmetrics underneath) run without any collective, as the other rank never joins one."""
    os.environ["SPARSEKIT_CACHE"] = cache
    cfg = Config(**dict(TINY, method="rigl", steps=3, update_every=2, data=f"folder:{folder}",
                        resolution=16, workers=1))
    _, trainer = run(cfg, os.path.join(folder, "..", f"run{ctx.rank}"), dist=ctx)
    _all_equal(ctx, _fingerprint(trainer), "folder data: weights, masks or engine states")
    if ctx.rank == 0:
        def forbidden(*args, **kwargs):
            raise AssertionError("rank 0's metrics started a collective the other ranks never join")

        real = (tdist.barrier, tdist.all_gather, tdist.all_reduce)
        tdist.barrier = tdist.all_gather = tdist.all_reduce = forbidden
        try:
            result = evaluate(trainer.sample(16), trainer.data, ("fd", "coverage"))
        finally:
            tdist.barrier, tdist.all_gather, tdist.all_reduce = real
        assert set(result) == {"fd_folder", "coverage", "coverage_kl"}
    tdist.barrier()


def test_folder_data_with_workers_and_rank0_metrics_on_two_ranks(tmp_path):
    from PIL import Image

    for i in range(24):
        (tmp_path / "images" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (10 * i, 255 - 10 * i, 80 * (i % 2))).save(
            tmp_path / "images" / f"c{i % 2}" / f"{i}.png")
    spawn(_folder_and_metrics_worker, str(tmp_path / "images"), str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------- 2 ranks = 1 rank
def _no_batch_norm(monkeypatch):
    """Build the models with batch norm removed: its per-rank statistics are the one thing that
    legitimately differs between 2 ranks at B/2 and 1 rank at B."""
    import gan.trainer

    build = gan.trainer.build

    def build_without_bn(*args, **kwargs):
        nets = build(*args, **kwargs)
        for net in nets:
            for module in list(net.modules()):
                for name, child in module.named_children():
                    if isinstance(child, nn.BatchNorm2d):
                        setattr(module, name, nn.Identity())
        return nets

    monkeypatch.setattr(gan.trainer, "build", build_without_bn)


def _equivalence_worker(ctx, cfg, out):
    with pytest.MonkeyPatch.context() as monkeypatch:
        _no_batch_norm(monkeypatch)
        run(cfg, out, dist=ctx)


def _assert_close_states(a, b):
    for net in ("G", "D", "ema"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            if a[net][key].dtype == torch.bool:
                assert torch.equal(a[net][key], b[net][key]), f"mask {net}.{key} differs"
            else:
                torch.testing.assert_close(a[net][key], b[net][key], rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f"{net}.{key}: {m}")


def test_two_ranks_at_half_batch_match_one_rank_and_resume_on_one(tmp_path, monkeypatch):
    """RigL (gradient regrowth at iterations 2 and 4) on a model without batch norm: 2 ranks at
    per-rank batch 4 equal 1 rank at batch 8, within float32 summation-order tolerance; the
    2-rank checkpoint at iteration 3 resumed on 1 rank continues as the 1-rank run does."""
    cfg = Config(**dict(TINY, method="rigl", steps=3, update_every=2, ckpt_every=3, ema=0.9))
    spawn(_equivalence_worker, cfg, str(tmp_path / "two"))
    _no_batch_norm(monkeypatch)
    run(cfg, str(tmp_path / "one"))
    two = checkpoint.load(str(tmp_path / "two" / "checkpoint.pt"))
    _assert_close_states(two, checkpoint.load(str(tmp_path / "one" / "checkpoint.pt")))
    assert two["batches"] == {"epoch": 0, "position": 3}

    longer = Config(**dict(TINY, method="rigl", steps=5, update_every=2, ckpt_every=3, ema=0.9))
    run(longer, str(tmp_path / "one"), resume=True)
    run(longer, str(tmp_path / "two"), resume=True)
    _assert_close_states(checkpoint.load(str(tmp_path / "two" / "checkpoint.pt")),
                         checkpoint.load(str(tmp_path / "one" / "checkpoint.pt")))


# ---------------------------------------------------------------------------------- sparse layers
def _sparse_model():
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 32))


def _sparse_ddp_worker(ctx, backends):
    for backend in backends:
        sparsekit.set_backend(backend)
        torch.manual_seed(0)
        model = _sparse_model().to(memory_format=torch.channels_last)
        engine = DynamicSparsity(model, density=0.4, block=(16, 16), method="rigl", stop_at=10, seed=3)
        ddp = ctx.wrap(model)
        x = torch.randn(4, 16, 4, 4, generator=torch.Generator().manual_seed(ctx.rank))
        for dense_dw in (False, True, False):
            for layer in engine.layers:
                layer.layout.dense_dw = dense_dw
            model.zero_grad(set_to_none=True)
            ddp(x).square().mean().backward()
            grads = {layer.name: layer.param.grad for layer in engine.layers}
            for layer in engine.layers:  # all-reduced: a pruned weight's gradient is exactly 0
                pruned = grads[layer.name][~layer.layout.element_mask()]  # unless dense dW is on
                assert (pruned != 0).any() if dense_dw else (pruned == 0).all(), layer.name
            _all_equal(ctx, {n: g.numpy().tobytes() for n, g in grads.items()},
                       f"{backend}: all-reduced gradients")
            # the layouts' index buffers are rewritten in place; DDP's buckets hold grads only
            engine.prune_and_regrow(0.3)
        ctx.check_masks(2, {"net": engine})

    # a mask changed on rank 1 only is caught, naming the layer, on every rank
    layer = engine.layers[1]
    if ctx.rank == 1:
        bitmap = layer.layout.bitmap.clone()
        bitmap[0, 0] = ~bitmap[0, 0]
        layer.layout.update(bitmap)
    with pytest.raises(distributed.MaskMismatch, match=r"mask of net layer '2' differs across ranks "
                                                       r"at iteration 4: ranks \[1\]"):
        ctx.check_masks(4, {"net": engine})


def test_sparse_layers_under_ddp_and_the_mask_check():
    """The CPU backends; the Triton kernels (16×16 blocks fit them) pass the same worker under
    the interpreter too, but take ~10 s per rank there, so they are left to a GPU machine."""
    spawn(_sparse_ddp_worker, ("reference", "cpu"), options=["--check-masks-every", "2"])


# ---------------------------------------------------------------------------------- torchrun CLI
def test_torchrun_run_writes_once_and_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gan.train", "--model", "dcgan", "--width", "0.125", "--batch-size", "8",
           "--metrics", "", "--eval-samples", "8", "--log-every", "1", "--method", "rigl",
           "--update-every", "2", "--steps", "3", "--check-masks-every", "1", "--out", str(out)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"method": "rigl"') == 1  # one summary: rank 0's
    assert main(["--resume", str(out), "--steps", "5"]) == 0
    with open(out / "log.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]
    assert json.loads((out / "summary.json").read_text())["steps"] == 5
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "log.csv", "metrics.jsonl",
                                       "samples", "summary.json"]


# ---------------------------------------------------------------------------------- in one process
def test_sharded_batches_union_is_the_global_batch_at_any_world_size():
    """Global batch k is the same set of images for 1, 2 and 4 ranks, across an epoch boundary,
    and a position saved at one world size continues at another."""
    digits = load("digits")
    image_ids = torch.arange(len(digits), dtype=torch.float32)[:, None, None, None]
    data = ImageData(TensorImages(image_ids), digits.labels, 10, "ids", 1)  # image i = i

    def batches(world, steps, state=None):
        ranks = [InfiniteBatches(data, 64, seed=5, rank=r, world_size=world) for r in range(world)]
        for r in ranks:
            if state is not None:
                r.load_state_dict(state)
        out = [sorted(torch.cat([r.next() for r in ranks]).flatten().tolist()) for _ in range(steps)]
        return out, ranks[0].state_dict()

    one, _ = batches(1, 31)  # 28 batches per epoch: crosses into epoch 1
    assert len(one[0]) == 64 and len(set(one[0])) == 64
    for world in (2, 4):
        assert batches(world, 31)[0] == one
    head, state = batches(2, 20)
    assert state == {"epoch": 0, "position": 20}
    assert batches(4, 11, state)[0] == one[20:]
    with pytest.raises(ValueError, match="must be divisible by the number of processes"):
        InfiniteBatches(data, 63, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="a checkpoint written before"):
        InfiniteBatches(data, 64, seed=0).load_state_dict({"generator": None, "order": None, "pos": 0})


@pytest.mark.parametrize("argv, env, message", [
    (["--dist-backend", "gloo"], {}, "--dist-backend: this process was not started by torchrun"),
    (["--check-masks-every", "5"], {}, "--check-masks-every: this process was not started"),
    (["--check-masks-every", "-1"], {}, "--check-masks-every must be >= 0"),
    (["--batch-size", "7"], {"WORLD_SIZE": "2"}, "--batch-size 7 is the global batch and must be "
                                                 "divisible by the number of processes (2)"),
    (["--sync-bn"], {"WORLD_SIZE": "2"}, "--sync-bn: torch's SyncBatchNorm runs on CUDA devices only"),
    (["--dist-backend", "nccl"], {"WORLD_SIZE": "2"}, "--dist-backend nccl needs --device cuda"),
])
def test_launch_errors_are_one_line_before_any_process_group(argv, env, message, monkeypatch, capsys,
                                                             tmp_path):
    if env:
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    assert main(["--steps", "1", "--out", str(tmp_path / "run")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not tdist.is_initialized() and not (tmp_path / "run").exists()


def test_help_documents_the_launch_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--dist-backend", "--check-masks-every", "--sync-bn", "torchrun", "global batch"):
        assert flag in text
