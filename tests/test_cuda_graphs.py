"""``--cuda-graphs`` (gan.graphs) on the CPU stand-in, and on a GPU where there is one.

Without a GPU the graphs run through ``gan.graphs.emulated()``: a capture runs the step under a
guard that refuses host reads of tensor values, and every replay reruns the captured step and must
repeat its capture's op trace (ops, Python numbers and flags, addresses of outside tensors). On
that stand-in a graphed run is bit-identical to the same run with every step eager, through mask
updates, dense-dW steps, balance-ratio samples, a DDST adjustment and the DGL stage switch; and
it matches the default eager run up to rounding: capturable Adam's arithmetic against plain Adam
(the CPU's fused Adam is switched off for that comparison), and the eager CPU path's fused dense
backward for layers ``auto`` runs dense against the registered ops' separate dX and dW.
"""

import dataclasses
import math

import pytest
import torch

from gan import checkpoint, graphs, losses
from gan import trainer as trainer_module
from gan.config import Config
from gan.distributed import Distributed
from gan.loop import run
from gan.train import main
from gan.trainer import Trainer

STEPS = 9
TINY = dict(model="dcgan", width=0.125, batch_size=8, eval_samples=24, metrics="coverage",
            n_dis=2, update_every=3, steps=STEPS)
NEVER = 10 ** 9  # warm-ups: a graph-mode run that never captures (every step eager)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


pytestmark = pytest.mark.usefixtures("classifier_cache")  # the session's private classifier cache



@pytest.fixture(scope="module")
def teacher(tmp_path_factory, classifier_cache, digits):
    """A dense teacher checkpoint (2 steps)."""
    out = tmp_path_factory.mktemp("teacher")
    run(Config(**dict(TINY, steps=2), method="dense"), str(out), data=digits)
    return str(out / "checkpoint.pt")


def _quicken(trainer):
    """Balance-ratio samples every 2 iterations; DDST's controller, on a 2-sample window, acts
    every 4 iterations and grows D (a band no ratio reaches), by gradient: so within STEPS
    iterations there are BR samples, G mask updates (ΔT 3) and one DDST adjustment."""
    trainer.br_every = 2
    if trainer.controller is not None:
        trainer.balance.load_state_dict({"window": 2, "samples": []})
        trainer.controller.adjust_every = 4
        trainer.controller.lower, trainer.controller.upper = -2e9, -1e9


def _train(cfg, digits, steps=STEPS):
    """(trainer, rows) after ``steps`` iterations of ``cfg`` (``_quicken``-ed)."""
    trainer = Trainer(cfg, digits)
    _quicken(trainer)
    return trainer, [trainer.train_step() for _ in range(steps)]


def _emulated(cfg, digits, warmup=1, steps=STEPS):
    """``_train`` with --cuda-graphs on the CPU stand-in, capturing each step after ``warmup``
    eager runs (``NEVER``: the graph-mode run with every step eager)."""
    with graphs.emulated(warmup):
        return _train(dataclasses.replace(cfg, cuda_graphs=True), digits, steps)


def _outputs(trainer):
    """G(z) and EMA(z) on fixed noise, with batch statistics (the conv biases batch norm cancels
    drop out), and D's logits on a fixed batch. Ends the trainer's training."""
    z = torch.randn(16, trainer.G.z_dim, generator=torch.Generator().manual_seed(5))
    z, x = z.to(trainer.device), trainer.data.gather(range(16)).to(trainer.device)
    with torch.no_grad():
        return {"G": trainer.G.train()(z), "EMA": trainer.ema.train()(z), "D": trainer.D.eval()(x)}


def _assert_rows_equal(a, b):
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            assert ra[key] == rb[key] or (math.isnan(ra[key]) and math.isnan(rb[key])), \
                f"iteration {ra['iteration']}: {key} {ra[key]} != {rb[key]}"


METHODS = [dict(method="stu-gan"), dict(method="ddst"), dict(method="rigl"),
           dict(method="dense", precision="bf16")]


@pytest.mark.parametrize("kw", METHODS, ids=lambda kw: "-".join(kw.values()))
def test_graphed_steps_are_bit_identical_to_the_same_steps_run_eagerly(kw, digits):
    """Replays (of the captured functions, on static inputs) change nothing: every weight, mask,
    EMA weight, optimizer state and logged value equals the graph-mode run that never captures."""
    cfg = Config(**TINY, **kw)
    graphed, rows = _emulated(cfg, digits)
    eager, eager_rows = _emulated(cfg, digits, warmup=NEVER)
    _assert_rows_equal(rows, eager_rows)
    a, b = graphed.state_dict(), eager.state_dict()
    for key in ("G", "D", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs"
    for key in ("opt_G", "opt_D"):
        for p, state in a[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b[key]["state"][p][name]), f"{key} {p} {name} differs"
    # After the first iteration the steps ran as replays, in the dense-dW variants too (those
    # used only once ran as their warm-up).
    replays = graphed.graphs.replays
    assert replays[("D", False, False)] and replays[("G", False, False, 1)]
    assert replays[("EMA",)] == STEPS - 1
    dense = [key for key in replays if True in key[1:3]]  # (kind, G's dense dW, D's, ...)
    if kw["method"] in ("stu-gan", "rigl"):  # G regrows by gradient
        assert ("G", True, False, 1) in dense
    if kw["method"] in ("ddst", "rigl"):  # D regrows (grows, for DDST) by gradient
        assert any(key[0] == "D" and key[2] for key in dense)
    if kw["method"] == "ddst":  # D grew at iteration 8, from the dense dW of its first D step
        assert graphed.controller.last_action == "grow" and graphed.engine_D.density > 0.1
    assert sum(1 for r in rows if not math.isnan(r["br"])) >= 3


def test_a_dgl_run_switches_stage_between_graphs(digits, teacher):
    cfg = Config(**TINY, method="dgl", teacher=teacher, stage1_steps=4)
    graphed, rows = _emulated(cfg, digits)
    _, eager_rows = _emulated(cfg, digits, warmup=NEVER)
    _assert_rows_equal(rows, eager_rows)
    assert graphed.graphs.replays[("G", False, False, 2)] == STEPS - 5
    assert [math.isnan(r["teacher_term"]) for r in rows] == [True] * 4 + [False] * 5


@pytest.mark.parametrize("method", ["stu-gan", "ddst"])
def test_a_graphed_run_matches_the_default_eager_run(method, digits, monkeypatch):
    """Against the default run (plain Adam: step counts and learning rate on the host; not the
    fused CPU Adam, whose rounding differs more) the graphed run differs by rounding only —
    capturable Adam's arithmetic, and the eager path's fused dense backward for the layers
    ``auto`` runs dense (the graphed steps take the registered ops): the same masks,
    losses to 1e-5, outputs to 1e-4 of their scale, weights to 1e-5. The conv biases in front of
    G's batch norms are the exception: batch norm cancels them, so their gradients are rounding
    noise that Adam scales to steps of up to lr, which differ between the two runs (as do the
    running means that follow them)."""
    cfg = Config(**TINY, method=method)
    graphed, rows = _emulated(cfg, digits)
    monkeypatch.setattr(trainer_module, "FUSED_CPU_ADAM", False)  # as on a GPU: Adam's own ops
    eager, eager_rows = _train(cfg, digits)
    for ra, rb in zip(rows, eager_rows, strict=True):
        for key in ("d_loss", "g_loss", "br", "density_G", "density_D"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-5, nan_ok=True), (ra, rb)
    for name, value in graphed.G.state_dict().items():
        want = eager.G.state_dict()[name]
        if not value.is_floating_point():
            assert torch.equal(value, want), name
        elif name.endswith("conv.bias") or name.endswith("running_mean"):
            torch.testing.assert_close(value, want, rtol=0, atol=cfg.lr_g * STEPS, msg=name)
        else:
            torch.testing.assert_close(value, want, rtol=1e-4, atol=1e-5, msg=name)
    for name, value in graphed.D.state_dict().items():
        torch.testing.assert_close(value, eager.D.state_dict()[name], rtol=1e-4, atol=1e-5)
    got, want = _outputs(graphed), _outputs(eager)
    for net in got:
        scale = want[net].abs().max().item()
        torch.testing.assert_close(got[net], want[net], rtol=0, atol=1e-4 * scale, msg=net)


# ----------------------------------------------------------------------------------- the guard
def _emulated_graphs(warmup=1):
    return graphs.StepGraphs(graphs.EmulatedGraphs(), warmup, addresses=set)


def test_a_host_read_in_a_captured_step_is_refused():
    steps = _emulated_graphs()
    x = torch.ones(4)
    bad = {
        "item": lambda x: (x * x.sum().item(),),
        "bool": lambda x: (x if bool(x.sum() > 0) else -x,),
        "tolist": lambda x: (x * len(x.tolist()),),
        "mask": lambda x: (x[x > 0].sum(),),
        "nonzero": lambda x: (x.nonzero(),),
    }
    for name, fn in bad.items():
        steps.run(("bad", name), fn, x)  # the warm-up runs eagerly
        with pytest.raises(graphs.HostSyncError, match="CUDA graph cannot read device values"):
            steps.run(("bad", name), fn, x)


def test_a_planted_item_in_the_d_step_is_caught_at_capture(digits, monkeypatch):
    d_loss = losses.d_loss

    def syncing(*args):
        loss = d_loss(*args)
        print(f"D loss {loss.item():.3f}")
        return loss

    monkeypatch.setattr(losses, "d_loss", syncing)
    with pytest.raises(graphs.HostSyncError, match=r"_local_scalar_dense.*\.item\(\)"):
        _emulated(Config(**TINY, method="stu-gan"), digits, steps=1)


def test_a_baked_in_value_or_moved_tensor_makes_the_replay_diverge():
    steps = _emulated_graphs()
    scale, weight = [1.0], {"w": torch.ones(3)}
    fn = lambda x: (x * scale[0] * weight["w"],)  # noqa: E731
    x = torch.arange(3.0)
    for _ in range(3):  # warm-up, capture, replay
        out, = steps.run(("f",), fn, x)
    assert torch.equal(out, x)
    scale[0] = 2.0  # a Python number read at capture: a real graph would keep 1.0
    with pytest.raises(graphs.GraphDivergence, match="captured 1.0, replayed 2.0"):
        steps.run(("f",), fn, x)
    scale[0] = 1.0
    weight["w"] = torch.ones(3)  # a new tensor: a real graph keeps reading the old address
    with pytest.raises(graphs.GraphDivergence, match=r"captured \('tensor', \(3,\), torch.float32, "
                                                     r"\('at', \d+\)\), replayed"):
        steps.run(("f",), fn, x)


def test_a_lasting_tensor_made_while_captured_is_refused():
    state = {}

    def step(x):  # as zero_grad(set_to_none=True) then backward: a new .grad every run
        state["grad"] = x * 2
        return ()

    steps = graphs.StepGraphs(graphs.EmulatedGraphs(), 1, lambda: {state["grad"].data_ptr()})
    steps.run(("f",), step, torch.ones(3))
    with pytest.raises(graphs.GraphMemoryError, match="made 1 lasting tensors while captured"):
        steps.run(("f",), step, torch.ones(3))


def test_inputs_are_static_and_outputs_are_the_captured_tensors():
    steps = _emulated_graphs()
    fn = lambda x, w: (x * w,)  # noqa: E731
    outs = [steps.run(("k", 1), fn, torch.full((2,), float(i)), 0.5)[0] for i in range(4)]
    assert outs[1] is outs[2] is outs[3] and outs[3].tolist() == [1.5, 1.5]
    with pytest.raises(ValueError, match=r"changed from \(2,\).*a graph replays fixed shapes"):
        steps.run(("k", 1), fn, torch.ones(3), 0.5)


def test_a_moved_tensor_drops_the_graphs_and_they_are_captured_again():
    weight = {"w": torch.ones(3)}
    steps = graphs.StepGraphs(graphs.EmulatedGraphs(), 1, lambda: {weight["w"].data_ptr()})
    fn = lambda x: (x * weight["w"],)  # noqa: E731
    for _ in range(3):
        steps.run(("f",), fn, torch.ones(3))
    assert not steps.check() and steps.replays[("f",)] == 2
    weight["w"] = torch.full((3,), 2.0)
    assert steps.check()  # dropped: the next run warms up again, then captures the new tensor
    assert steps.run(("f",), fn, torch.ones(3))[0].tolist() == [2.0] * 3
    assert steps.run(("f",), fn, torch.ones(3))[0].tolist() == [2.0] * 3
    assert steps.replays[("f",)] == 3


# ----------------------------------------------------------------------------------- refusals
def test_cuda_graphs_on_the_cpu_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="--cuda-graphs needs --device cuda"):
        Config(cuda_graphs=True).validate()
    with pytest.raises(SystemExit):
        main(["--cuda-graphs", "--steps", "1", "--out", str(tmp_path / "run")])
    assert "error: --cuda-graphs needs --device cuda" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not apply to --method alphagan-search"):
        Config(method="alphagan-search", model="alphagan", cuda_graphs=True,
               device="cuda").validate()


def test_cuda_graphs_under_torchrun_is_refused(digits, monkeypatch, tmp_path, capsys):
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    assert main(["--device", "cuda", "--cuda-graphs", "--steps", "1", "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cuda-graphs runs in one process" in err[0], err
    with graphs.emulated(), pytest.raises(ValueError, match="runs in one process"):
        Trainer(Config(**TINY, cuda_graphs=True), digits, dist=Distributed(world_size=2, enabled=True))


# ----------------------------------------------------------------------------------- checkpoints
def _interrupt_after(iteration):
    def on_step(trainer):
        if trainer.iteration == iteration + 1:
            raise KeyboardInterrupt
    return on_step


def test_a_graphed_run_resumes_bit_identically(tmp_path, digits):
    cfg = Config(**dict(TINY, steps=6), method="rigl", ckpt_every=2, sample_every=6,
                 cuda_graphs=True)
    with graphs.emulated():
        run(cfg, str(tmp_path / "straight"), data=digits)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, str(tmp_path / "resumed"), data=digits, on_step=_interrupt_after(4))
        state = checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))
        assert state["iteration"] == 4
        run(cfg, str(tmp_path / "resumed"), resume=True, data=digits)
    a = checkpoint.load(str(tmp_path / "straight" / "checkpoint.pt"))
    b = checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))
    for net in ("G", "D", "ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    # the checkpoint is a plain Adam's, as an eager run writes it
    group = a["opt_G"]["param_groups"][0]
    assert isinstance(group["lr"], float) and not group["capturable"] and group["foreach"] is None
    assert all(s["step"].device.type == "cpu" for s in a["opt_G"]["state"].values())


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_checkpoints_load_across_the_flag(first, then, digits, tmp_path):
    """An eager run's checkpoint continues under --cuda-graphs and the reverse — loaded into a
    trainer that has already captured its graphs, which are dropped and captured again."""
    cfg = Config(**TINY, method="rigl")
    with graphs.emulated():
        source = Trainer(dataclasses.replace(cfg, cuda_graphs=first), digits)
        for _ in range(4):
            source.train_step()
        target = Trainer(dataclasses.replace(cfg, cuda_graphs=then), digits)
        for _ in range(3):
            target.train_step()
        checkpoint.save(source.state_dict(), str(tmp_path / "checkpoint.pt"))
        target.load_state_dict(checkpoint.load(str(tmp_path / "checkpoint.pt")))
        for trainer in (source, target):
            for _ in range(3):
                trainer.train_step()
    for opt in (target.opt_G, target.opt_D):
        group = opt.param_groups[0]
        assert group["capturable"] is then and isinstance(group["lr"], torch.Tensor) is then
        assert all(s["step"].device == target.device and s["step"].dtype == torch.float32
                   for s in opt.state.values())
        assert all(s["step"].item() == 7 * (2 if opt is target.opt_D else 1)
                   for s in opt.state.values())
    for name, value in target.D.state_dict().items():
        torch.testing.assert_close(value, source.D.state_dict()[name], rtol=1e-4, atol=1e-5)
    for layer, other in zip(target.engine_G.layers, source.engine_G.layers):
        assert torch.equal(layer.layout.bitmap, other.layout.bitmap)


# ----------------------------------------------------------------------------------- GPU
@gpu
@pytest.mark.parametrize("method, backend", [("ddst", "triton"), ("ddst", "cuda"),
                                             ("stu-gan", "auto"), ("dense", "auto")])
def test_gpu_graphed_run_matches_eager(method, backend, digits, monkeypatch):
    """On a GPU: real CUDA graphs (captures after one warm-up, replays across mask updates, the
    dense-dW and DDST variants) against the same run eager, with the CPU comparison's tolerances
    widened ten-fold for the GPU's reduction orders."""
    monkeypatch.setattr(graphs, "WARMUP", 1)
    cfg = Config(**TINY, method=method, device="cuda", backend=backend)
    graphed, rows = _train(dataclasses.replace(cfg, cuda_graphs=True), digits)
    eager, eager_rows = _train(cfg, digits)
    torch.cuda.synchronize()
    replays = graphed.graphs.replays
    assert replays[("D", False, False)] and replays[("G", False, False, 1)]
    assert (method == "dense") != any(True in key[1:3] for key in replays)  # dense-dW variants
    for ra, rb in zip(rows, eager_rows, strict=True):
        for key in ("d_loss", "g_loss", "density_G", "density_D"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-4), (ra, rb)
    for a, b in ((graphed.engine_G, eager.engine_G), (graphed.engine_D, eager.engine_D)):
        for layer, other in zip(a.layers if a else (), b.layers if b else (), strict=True):
            assert torch.equal(layer.layout.bitmap, other.layout.bitmap), layer.name
    got, want = _outputs(graphed), _outputs(eager)
    for net in got:
        scale = want[net].abs().max().item()
        torch.testing.assert_close(got[net], want[net], rtol=0, atol=1e-3 * scale, msg=net)


@gpu
def test_gpu_bf16_graphed_run_trains(digits):
    """Capture under bf16 autocast (without its weight cache): replays happen, losses stay
    finite and near the eager run's."""
    cfg = Config(**TINY, method="stu-gan", device="cuda", precision="bf16")
    graphed, rows = _train(dataclasses.replace(cfg, cuda_graphs=True), digits)
    _, eager_rows = _train(cfg, digits)
    assert sum(graphed.graphs.replays.values()) > STEPS
    for ra, rb in zip(rows, eager_rows, strict=True):
        assert math.isfinite(ra["d_loss"]) and math.isfinite(ra["g_loss"])
        assert ra["d_loss"] == pytest.approx(rb["d_loss"], rel=5e-2, abs=5e-2), (ra, rb)
