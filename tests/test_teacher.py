"""DGL-GAN distillation (gan.teacher) on tiny models: the teacher loads with its masks and
spectral norm and never changes; λ = 0 is bit-identical to no teacher; the term starts after
--stage1-steps; resume across the switch is exact and refuses another teacher file; bad teacher
files are one-line user errors; --method dgl and sparse students run; summary.json has the
student/teacher ratios."""

import csv
import json
import shutil

import pytest
import torch
from torch import nn

import sparsekit
from gan import checkpoint, losses
from gan.config import Config
from gan.loop import run
from gan.teacher import Distillation, Teacher, network_cost
from gan.train import main

TINY = dict(model="dcgan", width=0.125, batch_size=8, eval_samples=24, metrics="coverage",
            log_every=1)
TINY_ARGV = ["--model", "dcgan", "--width", "0.125", "--batch-size", "8", "--eval-samples", "24",
             "--metrics", "coverage", "--log-every", "1"]


pytestmark = pytest.mark.usefixtures("classifier_cache")  # the session's private classifier cache



@pytest.fixture(scope="module")
def teachers(tmp_path_factory, classifier_cache, digits):
    """Two teacher checkpoints: a dense run (width 0.25) and a sparse one (stu-gan, D 50 %)."""
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name, method in (("dense", "dense"), ("sparse", "stu-gan")):
        cfg = Config(**dict(TINY, width=0.25), method=method, steps=2, d_density=0.5)
        run(cfg, str(root / name), data=digits)
        paths[name] = str(root / name / "checkpoint.pt")
    return paths


def _copy(path, tmp_path, name="teacher.pt"):
    target = tmp_path / name
    shutil.copyfile(path, target)
    return str(target)


def _tensors(module_or_state):
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: v.detach().clone() for k, v in state.items()}


def _assert_same(a, b, what):
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def test_teacher_loads_with_its_masks_and_spectral_norm_frozen(teachers, digits):
    state = checkpoint.load(teachers["sparse"])
    teacher = Teacher.load(teachers["sparse"], Config(**TINY, method="dense"), digits)
    _assert_same(_tensors(teacher.D), state["D"], "teacher D vs its checkpoint")
    assert sparsekit.sparse_layers(teacher.D), "the sparse teacher D lost its sparse layers"
    assert any(m.layout.density() < 1 for _, m in sparsekit.sparse_layers(teacher.D))
    assert any("parametrizations.weight.original" in k for k in state["D"])
    assert not teacher.D.training
    assert not any(p.requires_grad for p in teacher.D.parameters())


def test_teacher_parameters_and_buffers_never_change(teachers, digits, tmp_path):
    teacher = Teacher.load(teachers["sparse"], Config(**TINY, method="dense"), digits)
    before = _tensors(teacher.D)
    cfg = Config(**TINY, method="rigl", update_every=1, steps=4, stage1_steps=1, teacher_weight=1.0,
                 teacher=teachers["sparse"])
    _, trainer = run(cfg, str(tmp_path / "run"), data=digits, teacher=teacher)
    assert trainer.distill.teacher is teacher
    _assert_same(_tensors(teacher.D), before, "teacher D after training")
    assert not teacher.D.training
    trained = {id(p) for opt in (trainer.opt_G, trainer.opt_D) for g in opt.param_groups
               for p in g["params"]}
    assert not any(id(p) in trained for p in teacher.D.parameters())


def test_zero_weight_is_bit_identical_to_no_teacher(teachers, digits, tmp_path):
    common = dict(TINY, method="rigl", update_every=2, steps=4)
    run(Config(**common), str(tmp_path / "plain"), data=digits)
    _, trainer = run(Config(**common, teacher=teachers["dense"], teacher_weight=0.0, stage1_steps=0),
                     str(tmp_path / "zero"), data=digits)
    a = checkpoint.load(str(tmp_path / "plain" / "checkpoint.pt"))
    b = checkpoint.load(str(tmp_path / "zero" / "checkpoint.pt"))
    for net in ("G", "D", "ema"):
        _assert_same(a[net], b[net], f"{net} with λ = 0")
    with open(tmp_path / "zero" / "log.csv") as f:  # the term was computed, with weight 0
        assert all(float(r["teacher_term"]) == float(r["teacher_term"]) for r in csv.DictReader(f))


def test_the_term_is_absent_before_stage1_steps_and_present_after(teachers, digits, tmp_path):
    common = dict(TINY, method="static", steps=4)
    snapshots = {"plain": [], "dgl": []}

    def keep(name):
        return lambda trainer: snapshots[name].append(_tensors(trainer.G))

    run(Config(**common), str(tmp_path / "plain"), data=digits, on_step=keep("plain"))
    run(Config(**common, teacher=teachers["dense"], stage1_steps=2, teacher_weight=1.0),
        str(tmp_path / "dgl"), data=digits, on_step=keep("dgl"))
    for it in (0, 1):  # iterations 1 and 2: stage 1, as without a teacher
        _assert_same(snapshots["dgl"][it], snapshots["plain"][it], f"G at iteration {it + 1}")
    assert not torch.equal(snapshots["dgl"][2]["fc.weight"], snapshots["plain"][2]["fc.weight"])
    with open(tmp_path / "dgl" / "log.csv") as f:
        terms = [float(r["teacher_term"]) for r in csv.DictReader(f)]
    assert [t != t for t in terms] == [True, True, False, False]  # NaN = no term
    assert checkpoint.load(str(tmp_path / "dgl" / "checkpoint.pt"))["teacher"]["stage"] == 2


@pytest.mark.parametrize("kind, loss", [("logit", "hinge"), ("logit", "ns"), ("g-loss", "ns")])
def test_generator_loss_adds_the_weighted_teacher_term(teachers, digits, kind, loss):
    cfg = Config(**TINY, method="dense", steps=4, stage1_steps=1, loss=loss, teacher_term=kind,
                 teacher_weight=0.3, teacher=teachers["dense"])
    distill = Distillation(cfg, Teacher.load(cfg.teacher, cfg, digits), torch.device("cpu"))
    fake, g_loss = digits.gather(range(4)), torch.tensor(0.5)
    assert distill.generator_loss(g_loss, fake, 1) == (g_loss, None)
    total, term = distill.generator_loss(g_loss, fake, 2)
    logits = distill.teacher.D(fake)
    expected = -logits.mean() if kind == "logit" else losses.g_loss(loss, logits)
    torch.testing.assert_close(term, expected, rtol=0, atol=0)
    torch.testing.assert_close(total, g_loss + 0.3 * expected, rtol=0, atol=0)


def _interrupt_after(iteration):
    def on_step(trainer):
        if trainer.iteration == iteration + 1:
            raise KeyboardInterrupt
    return on_step


def test_resume_across_the_stage_switch_is_exact(teachers, digits, tmp_path):
    cfg = Config(**TINY, method="stu-gan", update_every=2, steps=6, ckpt_every=2, sample_every=3,
                 teacher=_copy(teachers["dense"], tmp_path), stage1_steps=3)
    run(cfg, str(tmp_path / "straight"), data=digits)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, str(tmp_path / "resumed"), data=digits, on_step=_interrupt_after(2))
    saved = checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert saved["iteration"] == 2 and saved["teacher"]["stage"] == 1
    assert main(["--resume", str(tmp_path / "resumed")]) == 0
    a = checkpoint.load(str(tmp_path / "straight" / "checkpoint.pt"))
    b = checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert a["teacher"] == b["teacher"] and b["teacher"]["stage"] == 2
    for net in ("G", "D", "ema"):
        _assert_same(a[net], b[net], f"{net} after resuming across the switch")


def test_resume_keeps_the_recorded_stage_switch_when_steps_change(teachers, digits, tmp_path):
    cfg = Config(**TINY, method="dense", steps=4, teacher=teachers["dense"])  # N = steps // 2
    run(cfg, str(tmp_path / "run"), data=digits)
    assert main(["--resume", str(tmp_path / "run"), "--steps", "8"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["distillation"]["stage1_steps"] == 2


def test_resume_refuses_another_teacher_file(teachers, digits, tmp_path, capsys):
    path = _copy(teachers["dense"], tmp_path)
    cfg = Config(**TINY, method="dense", steps=4, ckpt_every=2, teacher=path, stage1_steps=1)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, str(tmp_path / "run"), data=digits, on_step=_interrupt_after(2))
    shutil.copyfile(teachers["sparse"], path)  # the same path, another teacher
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the teacher file this run was trained with" in err[0]


def _not_a_gan_checkpoint(tmp_path, teachers):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, str(path))
    return str(path)


def _garbage(tmp_path, teachers):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    return str(path)


def _mismatched_config(tmp_path, teachers):
    state = checkpoint.load(teachers["dense"])
    state["config"]["width"] = 0.5  # its D's weights no longer fit its own configuration
    path = str(tmp_path / "mismatched.pt")
    checkpoint.save(state, path)
    return path


def _other_data(tmp_path, teachers):
    state = checkpoint.load(teachers["dense"])
    state["config"]["data"] = "cifar10:/somewhere"
    path = str(tmp_path / "cifar_teacher.pt")
    checkpoint.save(state, path)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp_path, teachers: str(tmp_path / "missing.pt"), "no such file"),
    (_garbage, "is not a readable checkpoint"),
    (_not_a_gan_checkpoint, "is not a sparsekit-gan-checkpoint/1 checkpoint"),
    (_mismatched_config, "its networks do not rebuild from its own configuration"),
    (_other_data, "was trained on --data 'cifar10:/somewhere'"),
])
def test_a_bad_teacher_file_is_a_one_line_user_error(teachers, tmp_path, capsys, make, message):
    path = make(tmp_path, teachers)
    out = tmp_path / "run"
    assert main(TINY_ARGV + ["--method", "dgl", "--teacher", path, "--steps", "2",
                             "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m gan.train: error: --teacher "), err
    assert message in err[0]
    assert not out.exists() or not (out / "checkpoint.pt").exists()


def test_the_runs_own_checkpoint_is_refused_as_teacher(teachers, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    own = _copy(teachers["dense"], out, "checkpoint.pt")
    assert main(TINY_ARGV + ["--method", "dgl", "--teacher", own, "--steps", "2",
                             "--out", str(out)]) == 2
    assert "is this run's own checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--method", "dgl"], "--method dgl (a dense student distilled from a teacher "
                          "discriminator) needs --teacher CKPT"),
    (["--teacher-weight", "0.5"], "--teacher-weight needs --teacher CKPT"),
    (["--stage1-steps", "1"], "--stage1-steps needs --teacher CKPT"),
    (["--teacher", "t.pt", "--teacher-weight", "-1"], "--teacher-weight must be a finite number >= 0"),
    (["--teacher", "t.pt", "--stage1-steps", "2"], "--stage1-steps must be in [0, --steps)"),
    (["--teacher", "t.pt", "--teacher-term", "kl"], "--teacher-term must be one of logit, g-loss"),
])
def test_bad_teacher_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(TINY_ARGV + ["--steps", "2"] + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_method_dgl_trains_a_narrower_dense_student_and_reports_ratios(teachers, tmp_path):
    out = tmp_path / "dgl"
    assert main(TINY_ARGV + ["--method", "dgl", "--teacher", teachers["dense"], "--steps", "2",
                             "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dgl" and summary["densities"] == {"G": 1.0, "D": 1.0}
    dist = summary["distillation"]
    assert dist["teacher_weight"] == 0.1 and dist["stage1_steps"] == 1
    assert dist["teacher_term"] == "logit"
    for net in ("G", "D"):  # width 0.125 vs 0.25: about a quarter of the weights and FLOPs
        assert 0.15 < dist["param_ratio"][net] < 0.5 and 0.15 < dist["flop_ratio"][net] < 0.5
        assert dist["param_ratio"][net] == pytest.approx(
            dist["params"]["student"][net] / dist["params"]["teacher"][net])
    with open(out / "log.csv") as f:
        assert "teacher_term" in next(csv.DictReader(f))


@pytest.mark.parametrize("method", ["stu-gan", "ddst", "lottery"])
def test_sparse_students_train_with_a_teacher(teachers, tmp_path, method):
    out = tmp_path / method
    argv = TINY_ARGV + ["--method", method, "--teacher", teachers["sparse"], "--steps", "2",
                        "--out", str(out)]
    assert main(argv + (["--rounds", "1"] if method == "lottery" else [])) == 0
    summary_path = out / ("round_1" if method == "lottery" else "") / "summary.json"
    dist = json.loads(summary_path.read_text())["distillation"]
    assert dist["param_ratio"]["G"] < 1


def test_eval_and_sample_of_a_distilled_run_need_no_teacher_file(teachers, tmp_path, capsys):
    from gan import eval as gan_eval

    path = _copy(teachers["dense"], tmp_path)
    out = tmp_path / "run"
    assert main(TINY_ARGV + ["--method", "dgl", "--teacher", path, "--steps", "2",
                             "--out", str(out)]) == 0
    (tmp_path / "teacher.pt").unlink()
    capsys.readouterr()
    assert gan_eval.main([str(out / "checkpoint.pt"), "--samples", "24"]) == 0
    assert json.loads(capsys.readouterr().out)["iteration"] == 2


def test_network_cost_counts_kept_weights_times_output_positions():
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Flatten(), nn.Linear(32 * 8 * 8, 2))
    cost = network_cost(model, torch.zeros(1, 16, 8, 8))
    assert cost == {"params": sum(p.numel() for p in model.parameters()),
                    "macs": 32 * 16 * 9 * 64 + 32 * 64 * 2}
    sparsekit.sparsify(model, density={"0": 0.5}, block=(16, 16))
    kept = int(model[0].layout.kept_numel())
    sparse = network_cost(model, torch.zeros(1, 16, 8, 8))
    assert kept < 32 * 16 * 9
    assert sparse["macs"] == kept * 64 + 32 * 64 * 2
    assert sparse["params"] == cost["params"] - (32 * 16 * 9 - kept)
