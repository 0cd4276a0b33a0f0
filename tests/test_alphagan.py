"""AlphaGAN: the generator search space, genotypes, the search's α and weight steps, exact resume,
and the found network trained by the other methods — all at tiny sizes."""

import copy
import csv
import json
import random
import warnings

import pytest
import torch

from gan import checkpoint
from gan.config import Config
from gan.models import alphagan, build, genotype
from gan.models.alphagan import AlphaGANGenerator, Edge
from gan.search import SearchTrainer
from gan.train import main, parse
from sparsekit.dst import DynamicSparsity

WIDTH = 0.0625  # G: 16 channels, D: 8
TINY = ["--width", str(WIDTH), "--batch-size", "8", "--eval-samples", "24", "--metrics", "coverage",
        "--log-every", "1"]
TINY_SEARCH = TINY + ["--method", "alphagan-search", "--n-dis", "1", "--search-inner", "2",
                      "--search-worst", "2", "--search-outer", "2"]


pytestmark = pytest.mark.usefixtures("classifier_cache")  # the session's private classifier cache



def _one_hot_logits(n, k):
    """α whose softmax is exactly one-hot at k (exp(-inf) = 0)."""
    alpha = torch.full((n,), float("-inf"))
    alpha[k] = 0.0
    return alpha


def _random_genotype(seed, space="extended"):
    rng = random.Random(seed)
    ops = {"up": alphagan.UP_OPS, "skip": alphagan.UP_OPS,
           "normal": [o for o in alphagan.NORMAL_OPS[space] if o != "none"]}
    return {"cells": [{kind: [rng.choice(ops[kind]) for _ in range(alphagan.edge_count(kind, k))]
                       for kind in alphagan.EDGE_KINDS} for k in range(alphagan.N_CELLS)]}


def _cfg(**kw):
    base = dict(method="alphagan-search", model="alphagan", width=WIDTH, batch_size=8, n_dis=1,
                search_inner=2, search_worst=2, search_outer=2, eval_samples=24, metrics="coverage")
    return Config(**dict(base, **kw)).validate()


# ---------------------------------------------------------------- the search space
@pytest.mark.parametrize("kind", ["normal", "up"])
def test_mixed_edge_equals_the_chosen_op_when_its_weights_are_one_hot(kind):
    torch.manual_seed(0)
    names = alphagan.NORMAL_OPS["extended"] if kind == "normal" else alphagan.UP_OPS
    edge = Edge(names, 8, scale=1 if kind == "normal" else 2)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    for k, name in enumerate(names):
        with torch.no_grad():
            edge.alpha.copy_(_one_hot_logits(len(names), k))
        assert torch.equal(edge(x), edge.ops[name](x)), name


def test_supernet_with_one_hot_alpha_equals_the_found_network():
    torch.manual_seed(0)
    found_genotype = _random_genotype(1)
    supernet = AlphaGANGenerator.supernet("extended", width=WIDTH)
    found = AlphaGANGenerator.from_genotype(found_genotype, width=WIDTH)
    for (_, edge), (_, chosen) in zip(supernet.edges(), found.edges()):
        with torch.no_grad():
            edge.alpha.copy_(_one_hot_logits(len(edge.names), edge.names.index(chosen.names[0])))
    # The found network's parameters and buffers have the supernet's names.
    theirs = supernet.state_dict()
    found.load_state_dict({k: theirs[k] if k != "arch_code" else v for k, v in found.state_dict().items()})
    assert supernet.genotype() == found_genotype
    z = torch.randn(4, 128)
    assert torch.equal(supernet(z), found(z))


def test_genotype_skips_none_and_entropies_are_per_edge():
    supernet = AlphaGANGenerator.supernet("extended", width=WIDTH)
    edge = supernet.cells[1].normal[2]
    with torch.no_grad():
        edge.alpha.copy_(torch.arange(len(edge.names), dtype=torch.float))  # 'none' is last: largest
    assert edge.names[-1] == "none" and edge.chosen() == edge.names[-2]
    entropies = supernet.entropies()
    assert len(entropies) == 18 and all(0 < h <= 2.08 for h in entropies.values())
    assert entropies["cell1.normal2"] < entropies["cell1.normal1"]


def test_genotype_round_trips_through_json_and_builds(tmp_path):
    torch.manual_seed(0)
    supernet = AlphaGANGenerator.supernet("paper", width=WIDTH)
    found = supernet.genotype()
    path = tmp_path / "g.json"
    genotype.save(found, str(path), note="anything JSON")
    assert genotype.load(str(path))["cells"] == found["cells"]
    G, D = build(f"alphagan:{path}", WIDTH)
    assert G.genotype() == found and not G.arch_parameters()
    out = G(torch.randn(2, 128))
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    assert D(out).shape == (2,)


BAD_GENOTYPES = {
    "not json": ("{'cells': ", "not a JSON genotype"),
    "a list": ("[]", "expected a JSON object"),
    "no format": (json.dumps({"cells": []}), "'format' must be"),
    "two cells": (json.dumps({"format": genotype.FORMAT, "cells": [{}, {}]}), "'cells' must be a list of 3"),
}


def _document(cells):
    return json.dumps({"format": genotype.FORMAT, "cells": cells})


@pytest.mark.parametrize("case", list(BAD_GENOTYPES) + ["unknown op", "skip count", "missing key"])
def test_malformed_genotype_file_names_what_is_wrong(tmp_path, case):
    cells = copy.deepcopy(_random_genotype(0)["cells"])
    if case == "unknown op":
        cells[1]["normal"][2] = "conv_7x7"
        text, message = _document(cells), r"cells\[1\]\.normal\[2\]: unknown op 'conv_7x7'"
    elif case == "skip count":
        cells[2]["skip"] = ["nearest"]
        text, message = _document(cells), r"cells\[2\]\.skip must be a list of 2 op names"
    elif case == "missing key":
        del cells[0]["up"]
        text, message = _document(cells), r"cells\[0\] must be an object with exactly the keys"
    else:
        text, message = BAD_GENOTYPES[case]
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        genotype.load(str(path))


def test_bad_genotype_at_the_cli_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": genotype.FORMAT, "cells": "none"}))
    with pytest.raises(SystemExit) as info:
        main(["--model", f"alphagan:{path}", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --model:" in err and "'cells' must be a list of 3" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["--model", f"alphagan:{tmp_path / 'missing.json'}"])
    assert "does not exist" in capsys.readouterr().err


def test_a_checkpoint_of_another_architecture_is_refused_by_edge():
    a = _random_genotype(0)
    b = copy.deepcopy(a)
    a["cells"][2]["up"][1], b["cells"][2]["up"][1] = "nearest", "bilinear"  # same parameters
    state = AlphaGANGenerator.from_genotype(a, width=WIDTH).state_dict()
    with pytest.raises(ValueError, match="cell2.up1: nearest there, bilinear here"):
        AlphaGANGenerator.from_genotype(b, width=WIDTH).load_state_dict(state)


def test_method_and_model_go_together():
    with pytest.raises(ValueError, match="searches a supernet"):
        Config(method="alphagan-search", model="dcgan").validate()
    with pytest.raises(ValueError, match="searches a supernet"):
        Config(method="dense", model="alphagan").validate()
    with pytest.raises(ValueError, match="--search-inner must be a multiple of n_dis"):
        Config(method="alphagan-search", model="alphagan", search_inner=7).validate()
    cfg, out, _ = parse(["--method", "alphagan-search"])  # the CLI defaults of the search
    assert (cfg.model, cfg.width, cfg.batch_size, cfg.steps, cfg.resolved_n_dis()) == ("alphagan", 0.125, 16, 120, 5)
    assert out.endswith("alphagan-search-alphagan-s0")
    with pytest.raises(ValueError, match="does not apply to --method alphagan-search"):
        Config(method="alphagan-search", model="alphagan", teacher="t.pt").validate()


# ---------------------------------------------------------------- the search's two kinds of step
def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _opt_state(optimizer):
    return copy.deepcopy(optimizer.state_dict()["state"])


def test_an_architecture_round_changes_only_alpha(digits):
    trainer = SearchTrainer(_cfg(search_inner=4), digits)
    trainer.train_step()  # iteration 1: weights only (a round every 4), so Adam has state
    alpha_names = {n for n, p in trainer.G.named_parameters() if any(p is a for a in trainer.alphas)}
    G0, D0, ema0 = _state(trainer.G), _state(trainer.D), _state(trainer.ema)
    opt_G0, opt_D0 = _opt_state(trainer.opt_G), _opt_state(trainer.opt_D)
    trainer.architecture_round()
    G1 = trainer.G.state_dict()
    for k in G0:
        assert torch.equal(G0[k], G1[k]) != (k in alpha_names), f"G.{k}"
    for before, module in ((D0, trainer.D), (ema0, trainer.ema)):
        for k, v in module.state_dict().items():
            assert torch.equal(before[k], v), k
    for before, opt in ((opt_G0, trainer.opt_G), (opt_D0, trainer.opt_D)):
        after = opt.state_dict()["state"]
        assert all(torch.equal(before[i][s], after[i][s]) for i in before for s in before[i])
    assert len(trainer.opt_arch.state) == len(trainer.alphas) == 18  # 3 × (2 up + 3 normal) + 3 skip


def test_a_weight_step_changes_only_weights(digits):
    trainer = SearchTrainer(_cfg(search_inner=4), digits)
    alphas = [a.detach().clone() for a in trainer.alphas]
    weights = {n: p.detach().clone() for n, p in trainer.G.named_parameters()}
    trainer.train_step()
    assert trainer.round_stats is None
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(alphas, trainer.alphas))
    changed = [n for n, p in trainer.G.named_parameters() if not torch.equal(weights[n], p)]
    assert len(changed) == len(weights) - len(alphas)


# ---------------------------------------------------------------- the search end to end
def test_resume_mid_search_continues_exactly(tmp_path, monkeypatch):
    args = TINY_SEARCH + ["--steps", "4", "--ckpt-every", "2", "--sample-every", "4"]
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    train_step = SearchTrainer.train_step

    def dying(self, report=True):
        if self.iteration == 3:  # iterations 1-3 done, the checkpoint holds 2
            raise KeyboardInterrupt
        return train_step(self, report)

    monkeypatch.setattr(SearchTrainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--out", str(tmp_path / "resumed")])
    monkeypatch.undo()
    assert checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))["iteration"] == 2
    assert main(["--resume", str(tmp_path / "resumed")]) == 0
    a = checkpoint.load(str(tmp_path / "straight" / "checkpoint.pt"))
    b = checkpoint.load(str(tmp_path / "resumed" / "checkpoint.pt"))
    for net in ("G", "D", "ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs after resume"
    for opt in ("opt_G", "opt_D", "opt_arch"):
        for i, s in a[opt]["state"].items():
            assert all(torch.equal(v, b[opt]["state"][i][k]) for k, v in s.items()), opt
    rows = [list(csv.DictReader(open(tmp_path / run / "search.csv"))) for run in ("straight", "resumed")]
    assert [r["iteration"] for r in rows[1]] == ["2", "4"] and rows[0] == rows[1]
    assert (json.loads((tmp_path / "straight" / "genotype.json").read_text()) ==
            json.loads((tmp_path / "resumed" / "genotype.json").read_text()))


def test_search_writes_a_genotype_that_every_method_trains(tmp_path):
    search = tmp_path / "search"
    assert main(TINY_SEARCH + ["--steps", "2", "--out", str(search)]) == 0
    summary = json.loads((search / "summary.json").read_text())
    assert summary["search"]["rounds"] == 1 and "last_dg" in summary["search"]
    rows = list(csv.DictReader(open(search / "search.csv")))
    assert len(rows) == 1 and "entropy/cell2.skip1" in rows[0] and float(rows[0]["entropy_mean"]) > 0
    found = genotype.load(str(search / "genotype.json"))
    assert set(found["alphas"]["cell0.normal0"]) == set(alphagan.NORMAL_OPS["paper"])
    out = tmp_path / "stu"
    assert main(TINY + ["--model", f"alphagan:{search / 'genotype.json'}", "--method", "stu-gan",
                        "--steps", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"].startswith("alphagan:") and summary["densities"]["G"] < 0.5


def test_found_network_is_sparsified_without_a_word_about_its_depthwise_and_transposed_convs():
    g = _random_genotype(3)
    g["cells"][0]["normal"][0], g["cells"][1]["up"][0] = "sep_conv_3x3", "deconv"
    G = AlphaGANGenerator.from_genotype(g, width=WIDTH)
    opt = torch.optim.Adam(G.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = DynamicSparsity(G, opt, density=0.3, block=(8, 8), method="static",
                                 layer_types=("conv",))
    names = {layer.name for layer in engine.layers}
    assert "cells.0.normal.0.ops.sep_conv_3x3.pw1" in names
    assert not any(".dw" in n or "deconv" in n for n in names)
    G(torch.randn(2, 128)).mean().backward()
