"""The trainer end to end on tiny models: every method runs and writes every artefact; resume is
bit-identical; checkpoints are never lost or half-loaded; bad flags are refused."""

import csv
import json
import os

import pytest
import torch

from gan import checkpoint
from gan.config import Config
from gan.train import main, run

TINY = ["--model", "dcgan", "--width", "0.125", "--batch-size", "8", "--eval-samples", "24",
        "--metrics", "coverage", "--log-every", "1"]
ARTEFACTS = ["config.json", "log.csv", "metrics.jsonl", "checkpoint.pt", "summary.json",
             "samples/latest.png"]


pytestmark = pytest.mark.usefixtures("classifier_cache")  # the session's private classifier cache


@pytest.mark.parametrize("method", ["dense", "static", "set", "rigl", "stu-gan", "sdst", "ddst",
                                    "ddst-strict"])
def test_two_step_run_writes_every_artefact(tmp_path, method):
    out = tmp_path / method
    assert main(TINY + ["--method", method, "--steps", "2", "--out", str(out)]) == 0
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2
    assert set(summary["densities"]) == {"G", "D"} and "coverage" in summary["metrics"]


def test_lottery_rounds(tmp_path):
    out = tmp_path / "lottery"
    assert main(TINY + ["--method", "lottery", "--steps", "2", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads((out / "lottery.json").read_text())
    densities = [r["density_G"] for r in result["rounds"]]
    assert densities[0] == 1.0 and 0.7 < densities[1] <= 0.8
    assert (out / "round_1" / "ticket.pt").is_file()


def test_masks_keep_their_density_through_training(tmp_path):
    cfg = Config(model="dcgan", width=0.25, batch_size=8, steps=6, method="rigl", update_every=2,
                 g_density=0.3, d_density=0.6, eval_samples=24, metrics="coverage")
    summary, trainer = run(cfg, str(tmp_path / "rigl"))
    for engine, target in ((trainer.engine_G, 0.3), (trainer.engine_D, 0.6)):
        assert engine.kept() <= round(target * engine.total_numel)
        assert abs(engine.kept() / engine.total_numel - target) < 0.05
        for layer in engine.layers:
            assert (layer.param[~layer.layout.element_mask()] == 0).all()
    with open(tmp_path / "rigl" / "log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    # masks moved (update_every 2): G has explored beyond its kept share
    assert float(last["exploration_G"]) > float(last["density_G"])


def _interrupt_after(iteration):
    def on_step(trainer):
        if trainer.iteration == iteration + 1:
            raise KeyboardInterrupt
    return on_step


def test_resume_is_bit_identical(tmp_path):
    cfg = Config(model="dcgan", width=0.125, batch_size=8, steps=6, method="rigl", update_every=2,
                 ckpt_every=2, eval_samples=24, metrics="coverage", sample_every=3)
    run(cfg, str(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, str(tmp_path / "resumed"), on_step=_interrupt_after(4))
    assert checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))["iteration"] == 4
    assert main(["--resume", str(tmp_path / "resumed")]) == 0
    a = checkpoint.load(str(tmp_path / "straight" / "checkpoint.pt"))
    b = checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))
    for net in ("G", "D", "ema"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"


def test_resume_accepts_only_steps(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path), "--seed", "3"])
    assert "--resume takes only --steps" in capsys.readouterr().err


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(str(path))
    checkpoint.save({"iteration": 1, "config": {}, "G": {}, "D": {}, "opt_G": {}, "opt_D": {},
                     "rng": {}}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(str(path))
    torch.save({"format": "something else"}, str(path))
    with pytest.raises(checkpoint.CheckpointError, match="is not a"):
        checkpoint.load(str(path))


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    good = {"iteration": 1, "config": {}, "G": {"w": torch.ones(3)}, "D": {}, "opt_G": {},
            "opt_D": {}, "rng": {}}
    checkpoint.save(good, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(dict(good, iteration=2), path)
    monkeypatch.undo()
    assert checkpoint.load(path)["iteration"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be > 0"),
    (["--method", "magic"], "--method must be one of"),
    (["--block", "16by16"], "--block must be BNxBK"),
    (["--g-density", "1.5"], "--g-density must be in (0, 1]"),
    (["--metrics", "fid,bogus"], "unknown metric 'bogus'"),
])
def test_bad_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--method", "--g-density", "--block", "--resume", "--paper-exact", "--inception-weights"):
        assert flag in text


def test_eval_and_sample_clis(tmp_path, capsys):
    from gan import eval as gan_eval
    from gan import sample as gan_sample

    out = tmp_path / "run"
    assert main(TINY + ["--method", "static", "--steps", "2", "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.pt")
    capsys.readouterr()
    assert gan_eval.main([ckpt, "--samples", "24"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["iteration"] == 2 and "coverage" in result
    grid = tmp_path / "grid.png"
    assert gan_sample.main([ckpt, "-n", "9", "--out", str(grid)]) == 0
    assert grid.is_file() and grid.stat().st_size > 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(SystemExit):
        gan_sample.main([str(bad)])


def test_plot_writes_training_curves(tmp_path):
    pytest.importorskip("matplotlib", reason="gan.plot needs matplotlib (the [bench] extra)")
    from gan import plot

    out = tmp_path / "run"
    assert main(TINY + ["--method", "ddst", "--steps", "2", "--out", str(out)]) == 0
    assert plot.main([str(out)]) == 0
    assert (out / "training.png").stat().st_size > 0


class _RunsCodeWhenUnpickled:
    """What a crafted checkpoint can carry: an object whose unpickling calls a function."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_loading_a_checkpoint_never_runs_code_from_it(tmp_path, capsys):
    from gan import eval as gan_eval

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "iteration": 1, "config": {}, "G": {}, "D": {},
                "opt_G": {}, "opt_D": {}, "rng": _RunsCodeWhenUnpickled(str(marker))}, str(evil))
    with pytest.raises(checkpoint.CheckpointError, match="never runs its code"):
        checkpoint.load(str(evil))
    with pytest.raises(SystemExit) as exit_info:
        gan_eval.main([str(evil)])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
    assert not marker.exists(), "unpickling ran code from the checkpoint"


@pytest.mark.parametrize("argv, message", [
    (["--data", "cifar10:/no/such/dir"], "cifar10: expected the python pickle batches"),
    (["--data", "folder:/no/such/dir"], "folder: '/no/such/dir' is not a directory"),
    (["--metrics", "fid"], "--inception-weights: fid/is need a local InceptionV3 weights file"),
    (["--metrics", "fid", "--inception-weights", "/no/such.pth"], "got '/no/such.pth'"),
])
def test_user_errors_print_one_error_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(TINY + ["--steps", "2", "--out", str(tmp_path / "run")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m gan.train: error: ") and message in err[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(Config(model="dcgan", width=0.125, batch_size=8).to_json())
    assert main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: no checkpoint at" in err and "Traceback" not in err


def test_sparse_layers_gives_every_method_the_same_managed_weights(tmp_path):
    """stu-gan manages G's convs only; --sparse-layers all makes it manage the linear too, so its
    G density over all weights equals the target like static's."""
    out = {}
    for method, flag in (("stu-gan", []), ("stu-gan", ["--sparse-layers", "all"]),
                         ("static", [])):
        run_dir = tmp_path / f"{method}-{len(flag)}"
        assert main(TINY + ["--method", method, "--steps", "2", "--g-density", "0.2",
                            "--d-density", "0.5", "--out", str(run_dir)] + flag) == 0
        out[(method, len(flag))] = json.loads((run_dir / "summary.json").read_text())
        assert json.loads((run_dir / "config.json").read_text())["sparse_layers"] == \
            (flag[1] if flag else None)
    preset, fair, static = out[("stu-gan", 0)], out[("stu-gan", 2)], out[("static", 0)]
    for summary in (preset, fair, static):
        assert summary["block"] == "16x16" and set(summary["densities_all"]) == {"G", "D"}
    assert preset["sparse_layers"] == "preset" and fair["sparse_layers"] == "all"
    # the dense fc of DCGAN's G holds most of its weights: managed 20 % is far more overall
    assert preset["densities_all"]["G"] > 0.5
    assert abs(fair["densities_all"]["G"] - 0.2) < 0.05
    assert abs(static["densities_all"]["G"] - 0.2) < 0.05


def test_bad_sparse_layers_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(TINY + ["--sparse-layers", "linears"])
    assert "--sparse-layers must be convs or all" in capsys.readouterr().err


def test_study_runs_a_grid_resumes_and_writes_results(tmp_path, capsys):
    from gan import study

    argv = ["--out", str(tmp_path), "--methods", "dense,static", "--seeds", "2",
            "--metric", "coverage", "--train-args", " ".join(TINY + ["--steps", "2"])]
    assert study.main(argv) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| dense | 2 |" in text and "| static | 2 |" in text and "±" in text
    assert (tmp_path / "results.png").stat().st_size > 0
    assert json.loads((tmp_path / "static-s1" / "config.json").read_text())["sparse_layers"] == "all"
    assert "BR in DDST band" in text
    capsys.readouterr()
    assert study.main(argv) == 0  # every cell done: nothing reruns
    assert "->" not in capsys.readouterr().out


def test_study_method_variants_carry_a_block_shape(tmp_path):
    from gan import study

    argv = ["--out", str(tmp_path), "--methods", "static@1x1", "--seeds", "1",
            "--metric", "coverage", "--train-args", " ".join(TINY + ["--steps", "2"])]
    assert study.main(argv) == 0
    assert json.loads((tmp_path / "static@1x1-s0" / "config.json").read_text())["block"] == "1x1"
    with pytest.raises(SystemExit):  # a bad cell is refused before any run starts
        study.main(argv[:3] + ["dense,static@0x4"] + argv[4:])
    assert not (tmp_path / "dense-s0").exists()


def test_a_ddst_run_reaches_mask_updates_br_samples_and_an_adjustment(tmp_path):
    """210 iterations with the scaled periods (ΔT 10, BR every 10 into a 10-sample window, the
    DDST period = the window's 100-iteration span): G's mask is updated several times, the
    balance ratio is sampled, and the controller acts at iteration 200 (at 100 the window holds 9
    samples: D's steps, where the controller runs, come before that iteration's BR sample)."""
    from gan.config import Config
    from gan.data import load

    cfg = Config(method="ddst", model="dcgan", width=0.125, batch_size=8, steps=210,
                 eval_samples=24, metrics="coverage", log_every=10, d_density=0.3).validate()
    updates, samples, actions = set(), [], {}

    def watch(trainer):
        if trainer.engine_G.last_update:
            updates.add(trainer.engine_G.last_update["iteration"])
        samples.append(len(trainer.balance))
        if trainer.controller.last_action is not None:
            actions.setdefault(trainer.iteration, trainer.controller.last_action)

    summary, trainer = run(cfg, str(tmp_path / "ddst"), on_step=watch, data=load("digits"))
    assert len(updates) >= 2, f"G's mask was updated at {sorted(updates)}"
    assert max(samples) >= 2 and trainer.balance.full
    assert min(actions) == 200 and actions[200] in ("grow", "prune", "hold"), actions
    assert summary["densities"]["D"] > 0
    # BR samples at 10..210 with a 10-sample window: counted from the window's first full sample
    assert trainer.br_counted >= 10 and summary["br_band"] == [0.45, 0.55]
    assert summary["br_in_band"] == trainer.br_in_band / trainer.br_counted


def test_an_sngan_trainer_run(tmp_path):
    out = tmp_path / "sngan"
    assert main(["--model", "sngan", "--width", "0.125", "--batch-size", "8", "--steps", "2",
                 "--eval-samples", "24", "--metrics", "coverage", "--method", "stu-gan",
                 "--block", "16x16", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "sngan" and 0 < summary["densities_all"]["G"] < 1


def test_lottery_late_rewind_resumes_g_and_d_from_iteration_t(tmp_path):
    out = tmp_path / "lth"
    assert main(TINY + ["--method", "lottery", "--steps", "4", "--rounds", "1",
                        "--rewind-step", "2", "--out", str(out)]) == 0
    with open(out / "round_1" / "log.csv") as f:
        iterations = [int(float(r["iteration"])) for r in csv.DictReader(f)]
    assert iterations == [3, 4]  # round 1 resumed after the rewind point
    summary = json.loads((out / "lottery.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["density_G"] < 0.85


def test_lottery_defaults_come_from_the_imp_preset():
    from sparsekit.dst.presets import IMPPreset

    cfg = Config(method="lottery")
    assert (cfg.rounds, cfg.prune_rate, cfg.rewind_step) == (IMPPreset.rounds, IMPPreset.rate,
                                                              IMPPreset.rewind_step) == (10, 0.2, 0)


def test_bf16_training_keeps_fp32_master_weights(tmp_path):
    out = tmp_path / "bf16"
    assert main(TINY + ["--method", "static", "--steps", "2", "--precision", "bf16",
                        "--out", str(out)]) == 0
    state = checkpoint.load(str(out / "checkpoint.pt"))
    assert all(v.dtype == torch.float32 for k, v in state["G"].items()
               if k.endswith("weight") and v.is_floating_point())


def test_a_dense_run_samples_the_balance_ratio_as_ddst_does():
    """Dense runs sample the ratio on DDST's scaled schedule, so their br_in_band is measured in
    short runs too (an unscaled 100-sample window never filled in 800 iterations)."""
    from gan.data import load
    from gan.trainer import Trainer

    data = load("digits")
    for steps in (800, 100_000):
        dense = Trainer(Config(method="dense", model="dcgan", width=0.125, steps=steps), data)
        ddst = Trainer(Config(method="ddst", model="dcgan", width=0.125, steps=steps), data)
        assert (dense.br_every, dense.balance.window) == (ddst.br_every, ddst.balance.window)
    assert (dense.br_every, dense.balance.window) == (10, 100)  # the papers' at 100k steps
