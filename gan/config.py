"""The trainer's configuration: one dataclass, its command line, and its validation.

Every flag of ``python -m gan.train`` is a field here with its help text; ``None`` means "the
method preset's value" (sparsekit.dst.presets). The run directory's ``config.json`` is this
dataclass, so ``--resume DIR`` rebuilds exactly the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from sparsekit import BACKENDS
from sparsekit.dst.presets import PRESETS, IMPPreset

from . import graphs, models
from .data import specs as data_specs
from .losses import LOSSES
from .metrics.suite import METRIC_IMAGES, METRICS, canonical_metrics

# No DST engine: dgl = a dense student with --teacher; alphagan-search trains a supernet dense.
DENSE_METHODS = ("dense", "dgl", "alphagan-search")
METHODS = DENSE_METHODS + tuple(sorted(PRESETS))
TEACHER_TERMS = ("logit", "g-loss")
# Flags whose default a method changes (the CLI's defaults; a Config built in code is explicit).
# alphagan-search: the supernet, at a width and length that search in ~10 min on 2 CPU cores.
METHOD_DEFAULTS = {"alphagan-search": dict(model="alphagan", width=0.125, batch_size=16, steps=120)}
PRECISIONS = ("fp32", "tf32", "bf16")


def _h(text, shown=None, **kw):
    """A field with its ``--help`` text; ``shown``: what the help calls a default of None."""
    return field(metadata={"help": text, "shown": shown or "preset"}, **kw)


@dataclass
class Config:
    method: str = _h("dense, dgl (a dense student distilled from --teacher), a "
                     f"sparse-training preset of sparsekit.dst ({', '.join(PRESETS)}), or "
                     "alphagan-search (AlphaGAN's architecture search of G; defaults then: "
                     "--model alphagan --width 0.125 --batch-size 16 --steps 120)",
                     default="stu-gan")
    model: str = _h(f"architecture pair: {', '.join(models.MODELS)}; or alphagan, "
                    "alphagan-extended (the search supernets, for --method alphagan-search "
                    "only) or alphagan:PATH.json (the generator of a genotype file, with the "
                    "SNGAN D)", default="dcgan")
    width: float = _h("channel-width multiplier of both networks", default=0.5)
    data: str = _h(f"dataset: {data_specs()} (gan/data.py says what each is)", default="digits")
    resolution: int = _h("image side R: the data are resized to R×R and both networks built for "
                         f"it; one of {', '.join(map(str, models.RESOLUTIONS))} (the alphagan models: "
                         "32 only)", default=32)
    workers: Optional[int] = _h("DataLoader worker processes per training process that decode "
                                "--data's images (0: decode in the training process)",
                                shown="min(4, CPU cores / processes) for folder: data, 0 for "
                                      "data held in memory (digits, cifar10)", default=None)
    steps: int = _h("total generator iterations", default=800)
    batch_size: int = _h("images per batch (real and fake); under torchrun the global batch, split "
                         "evenly over the processes", default=64)
    n_dis: Optional[int] = _h("discriminator steps per generator step", shown=", ".join(
        f"{n} for {m}" for m, n in models.N_DIS.items()) + ", 5 for the alphagan models", default=None)
    loss: str = _h(f"GAN loss: {', '.join(LOSSES)}", default="hinge")
    lr_g: float = _h("generator Adam learning rate", default=2e-4)
    lr_d: float = _h("discriminator Adam learning rate", default=2e-4)
    beta1: float = _h("Adam beta1", default=0.0)
    beta2: float = _h("Adam beta2", default=0.9)
    lr_decay: str = _h("learning-rate schedule: 'linear' (to 0 at --steps) or 'none'", default="linear")
    ema: float = _h("decay of the generator's EMA copy, evaluated and sampled (0 disables); "
                    "warmed up as min(ema, (1+t)/(10+t))", default=0.999)
    g_density: Optional[float] = _h("generator density (fraction of managed weights kept)", default=None)
    d_density: Optional[float] = _h("discriminator density", default=None)
    block: str = _h("sparse block BNxBK (e.g. 16x16, 32x32, 16x64) or 'unstructured' (1x1, runs on "
                    "the reference backend)", default="16x16")
    distribution: Optional[str] = _h("per-layer densities: erk or uniform", default=None)
    sparse_layers: Optional[str] = _h("weights the DST engines manage, for equal budgets across "
                                      "methods: 'convs' or 'all' (convs and linears)",
                                      shown="the preset's: convs for stu-gan and lottery, all for "
                                            "the others", default=None)
    update_every: Optional[int] = _h("mask-update period ΔT in generator iterations (never scaled)",
                                     default=None)
    prune_fraction: Optional[float] = _h("initial prune fraction p0 of each mask update", default=None)
    paper_exact: bool = _h("keep the papers' periods (ΔT, DDST period, BR window) instead of "
                           "scaling them by steps/100k (floor 10)", default=False)
    teacher: Optional[str] = _h("DGL-GAN: a gan.train checkpoint.pt whose discriminator, frozen, "
                                "adds a term to G's loss after --stage1-steps (any --method)",
                                shown="none", default=None)
    teacher_weight: float = _h("DGL-GAN: λ, the teacher term's weight in G's loss", default=0.1)
    stage1_steps: Optional[int] = _h("DGL-GAN: generator iterations trained without the teacher "
                                     "term before it is added", shown="half of --steps",
                                     default=None)
    teacher_term: str = _h("DGL-GAN: the teacher term, 'logit' (-mean D_t(G(z)), PAPERS.md) or "
                           "'g-loss' (the --loss generator term on D_t's logits; the same for "
                           "hinge)", default="logit")
    backend: str = _h(f"sparsekit backend: auto, {', '.join(BACKENDS)}", default="auto")
    precision: str = _h("fp32 (IEEE), tf32 (CUDA matmul/conv and the Triton layers in TF32) or "
                        "bf16 (autocast; fp32 master weights and Adam state; sparse layers in "
                        "bf16 on CUDA, on the fp32 kernels on CPU)", default="fp32")
    device: str = _h("cpu or cuda", default="cpu")
    cuda_graphs: bool = _h("replay the D step, G step and EMA update from CUDA graphs (--device "
                           "cuda, one process); mask updates, DDST and balance-ratio samples run "
                           "eagerly between replays", default=False)
    seed: int = _h("seed of everything (init, masks, data order, noise)", default=0)
    eval_every: Optional[int] = _h("evaluate every N iterations (0: only at the end)",
                                   shown="steps/4", default=None)
    eval_samples: int = _h("generated images per evaluation", default=1000)
    metric_images: int = _h("real images the metrics read: a fixed random subset when --data has "
                            "more (fd's classifier trains on one half of them, its real side is "
                            "the other half)", default=METRIC_IMAGES)
    metrics: str = _h(f"comma-separated metrics: {', '.join(METRICS)}; fd is the Fréchet distance "
                      "in a classifier trained on half of --data, against the other half, "
                      "reported as fd_<data> (fd_digits, fd_cifar10, fd_folder); fid/is need "
                      "--inception-weights", default="fd,coverage")
    inception_weights: Optional[str] = _h("local torch-fidelity InceptionV3 weights file for fid/is",
                                          shown="none", default=None)
    sample_every: Optional[int] = _h("write a sample grid every N iterations", shown="steps/8",
                                     default=None)
    ckpt_every: Optional[int] = _h("checkpoint every N iterations; always at the end",
                                   shown="steps/4", default=None)
    log_every: int = _h("log losses every N iterations", default=10)
    tensorboard: bool = _h("also write TensorBoard logs (needs the tensorboard package)", default=False)
    search_inner: int = _h("alphagan-search: weight steps (D steps; G steps after every "
                           "n_dis-th) before each architecture round; a multiple of n_dis",
                           default=20)
    search_worst: int = _h("alphagan-search: Adam steps that improve the copies D' and G' "
                           "(worst cases of the duality gap) in each round", default=20)
    search_outer: int = _h("alphagan-search: Adam steps of the architecture weights α on the "
                           "duality gap in each round", default=20)
    lr_arch: float = _h("alphagan-search: learning rate of α's Adam (betas (0.5, 0.999), weight "
                        "decay 1e-3)", default=3e-4)
    rounds: int = _h("lottery: IMP rounds after the dense round (the paper's 10)",
                     default=IMPPreset.rounds)
    prune_rate: float = _h("lottery: share of the remaining weights pruned per round (the "
                           "paper's 0.2)", default=IMPPreset.rate)
    rewind_step: int = _h("lottery: rewind G's survivors and D to their values at this iteration "
                          "and retrain from there (0 = the initialisation θ₀; the paper's option: "
                          "5-20 %% of --steps)", default=IMPPreset.rewind_step)

    # ------------------------------------------------------------------ derived values
    def block_shape(self):
        if self.block == "unstructured":
            return (1, 1)
        try:
            bn, bk = (int(v) for v in self.block.lower().split("x"))
        except ValueError:
            raise ValueError(f"--block must be BNxBK (e.g. 32x32) or 'unstructured', got {self.block!r}") from None
        if bn < 1 or bk < 1:
            raise ValueError(f"--block sides must be positive, got {self.block!r}")
        return (bn, bk)

    def resolved_n_dis(self):
        return self.n_dis if self.n_dis is not None else models.default_n_dis(self.model)

    def resolved_workers(self, data, world_size: int = 1) -> int:
        """``--workers``, or its default for ``data`` (an ImageData) with ``world_size`` processes."""
        if self.workers is not None:
            return self.workers
        return min(4, max(1, (os.cpu_count() or 1) // world_size)) if data.decodes_files else 0

    def period(self, value, fraction):
        return value if value is not None else max(1, self.steps // fraction)

    def metric_names(self):
        return tuple(m for m in self.metrics.split(",") if m)

    def validate(self):
        """Raise ValueError naming the flag for any bad value."""
        choices = dict(method=METHODS, loss=LOSSES, precision=PRECISIONS,
                       teacher_term=TEACHER_TERMS,
                       lr_decay=("linear", "none"), device=("cpu", "cuda"),
                       backend=("auto",) + BACKENDS)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.distribution not in (None, "erk", "uniform"):
            raise ValueError(f"--distribution must be erk or uniform, got {self.distribution!r}")
        if self.sparse_layers not in (None, "convs", "all"):
            raise ValueError(f"--sparse-layers must be convs or all, got {self.sparse_layers!r}")
        positive = ["steps", "batch_size", "eval_samples", "log_every", "metric_images"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("n_dis", "update_every", "sample_every", "ckpt_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.eval_every is not None and self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0, got {self.eval_every}")
        for name in ("g_density", "d_density"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
        if self.prune_fraction is not None and not 0.0 <= self.prune_fraction <= 1.0:
            raise ValueError(f"--prune-fraction must be in [0, 1], got {self.prune_fraction}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if self.width <= 0:
            raise ValueError(f"--width must be > 0, got {self.width}")
        if not 0.0 < self.prune_rate < 1.0:
            raise ValueError(f"--prune-rate must be in (0, 1), got {self.prune_rate}")
        if self.method == "lottery" and self.rewind_step >= self.steps:
            raise ValueError(f"--rewind-step must be below --steps ({self.steps}), got "
                             f"{self.rewind_step}")
        if self.rounds < 1 or self.rewind_step < 0:
            raise ValueError("--rounds must be >= 1 and --rewind-step >= 0")
        if self.cuda_graphs:
            graphs.check_device(self.device)
            if self.method == "alphagan-search":
                raise ValueError("--cuda-graphs does not apply to --method alphagan-search (its "
                                 "architecture rounds run eagerly); train the genotype with it")
        self._validate_teacher()
        self._validate_model_and_search()
        try:
            canonical_metrics(self.metric_names(), self.data)
        except ValueError as e:
            raise ValueError(f"--metrics: {e}") from None
        self.block_shape()
        return self

    def _validate_teacher(self):
        if self.method == "dgl" and not self.teacher:
            raise ValueError("--method dgl (a dense student distilled from a teacher "
                             "discriminator) needs --teacher CKPT")
        if not self.teacher:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            given = [name for name in ("teacher_weight", "stage1_steps", "teacher_term")
                     if getattr(self, name) != defaults[name]]
            if given:
                raise ValueError(f"--{given[0].replace('_', '-')} needs --teacher CKPT")
            return
        if not 0.0 <= self.teacher_weight < float("inf"):
            raise ValueError(f"--teacher-weight must be a finite number >= 0, got "
                             f"{self.teacher_weight}")
        if self.stage1_steps is not None and not 0 <= self.stage1_steps < self.steps:
            raise ValueError(f"--stage1-steps must be in [0, --steps) = [0, {self.steps}) or the "
                             f"teacher is never used, got {self.stage1_steps}")

    def resolved_stage1_steps(self):
        return self.stage1_steps if self.stage1_steps is not None else self.steps // 2

    def _validate_model_and_search(self):
        try:
            models.check_resolution(self.resolution)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        try:
            models.check(self.model, self.resolution)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"--model: {e}") from None
        searching = self.method == "alphagan-search"
        if searching and self.teacher:
            raise ValueError("--teacher distils into a generator being trained; it does not apply "
                             "to --method alphagan-search (search, then train the genotype with it)")
        if searching != models.is_supernet(self.model):
            raise ValueError(f"--method alphagan-search searches a supernet (--model "
                             f"{' or '.join(models.SUPERNETS)}) and a supernet is only searched; got "
                             f"--method {self.method} --model {self.model}")
        for name in ("search_inner", "search_worst", "search_outer"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if searching and self.search_inner % self.resolved_n_dis():
            raise ValueError(f"--search-inner must be a multiple of n_dis ({self.resolved_n_dis()}): "
                             f"a round is whole generator iterations; got {self.search_inner}")
        if self.lr_arch <= 0:
            raise ValueError(f"--lr-arch must be > 0, got {self.lr_arch}")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def add_arguments(parser: argparse.ArgumentParser):
    """One ``--flag`` per Config field, help text from the field, default None (= unset)."""
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=None,
                                help=f.metadata["help"])
            continue
        kind = {"int": int, "float": float, "Optional[int]": int, "Optional[float]": float}.get(
            f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), str)
        shown = f.metadata["shown"] if default is None else default
        parser.add_argument(flag, type=kind, default=None,
                            help=f"{f.metadata['help']} (default: {shown})")


def from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """A Config from parsed flags over ``base`` (when None: the defaults, with METHOD_DEFAULTS of
    the ``--method`` given)."""
    cfg = (dataclasses.replace(base) if base is not None
           else Config(**METHOD_DEFAULTS.get(getattr(args, "method", None), {})))
    for f in dataclasses.fields(Config):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    return cfg


def given_flags(args: argparse.Namespace):
    return [f.name for f in dataclasses.fields(Config) if getattr(args, f.name, None) is not None]


def load_json(path) -> Config:
    with open(path) as f:
        values = json.load(f)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
    return Config(**values)
