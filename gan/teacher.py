"""DGL-GAN (PAPERS.md): a student GAN guided by a frozen teacher discriminator.

``--teacher CKPT`` takes the discriminator D_t of a ``gan.train`` checkpoint, rebuilt with its
masks and spectral norm (u, v as saved), frozen: no gradient to its weights, eval mode (its power
iteration never runs, so its buffers never change), in no optimizer. The student trains as usual
for the first N = ``--stage1-steps`` generator iterations (stage 1); from iteration N + 1 on
(stage 2) G's loss on the same fake batch G(z) gains λ = ``--teacher-weight`` times a teacher
term, on D_t's raw logits ``[B]``:

    L_G = L_G^loss(D_s(G(z))) + λ · T(D_t(G(z)))
    T = −mean D_t(G(z))                 'logit' (PAPERS.md: −λ·E[D_t(G_s(z))], the default)
    T = L_G^loss(D_t(G(z)))             'g-loss' (the run's --loss on D_t; equal for hinge)

The student D, its loss and the balance ratio see only the student's D. A checkpoint records the
stage, N and the SHA-256 of the teacher file; resuming refuses a different teacher file.
``summary.json`` gains the student/teacher parameter and forward-FLOP ratios of G and D.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import torch
from torch import nn

import sparsekit
from sparsekit.dst.metrics import OutputPositions

from . import checkpoint, losses
from .config import Config
from .data import ImageData
from .models import add_spectral_norm, build

_BITMAP = ".layout.bitmap"


class TeacherError(ValueError):
    """A teacher file that cannot guide this run (named in the message, with ``--teacher``)."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rebuild_network(cfg: Config, which: str, state_dict: dict) -> nn.Module:
    """Network ``which`` ("G" or "D") of the run ``cfg`` holding ``state_dict`` (a checkpoint's):
    the layers that were sparse (those with a saved ``layout.bitmap``) sparse again with
    ``cfg``'s block, spectral norm on D, weights, masks and buffers loaded (strictly; a mismatch
    raises RuntimeError). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        G, D = build(cfg.model, cfg.width, resolution=cfg.resolution)
    net = G if which == "G" else D
    sparse = [k[:-len(_BITMAP)] for k in state_dict if k.endswith(_BITMAP)]
    if sparse:
        sparsekit.sparsify(net, density={name: 1.0 for name in sparse}, block=cfg.block_shape())
    if which == "D":
        add_spectral_norm(net)
    net.load_state_dict(state_dict)
    return net


@torch.no_grad()
def network_cost(model: nn.Module, example: torch.Tensor) -> dict:
    """``{"params", "macs"}`` of ``model``: its parameters with a sparse layer's weight counted by
    its kept elements, and the forward multiply-accumulates per sample of its conv/linear layers
    (kept weights × output positions, measured by one eval-mode forward of ``example``, a batch
    of one; no running statistic or power iteration moves)."""
    kept = {id(sparsekit.nn.weight_parameter(m)): int(m.layout.kept_numel())
            for _, m in sparsekit.sparse_layers(model)}
    params = sum(kept.get(id(p), p.numel()) for p in model.parameters())
    positions = OutputPositions(model)
    was_training = model.training
    model.eval()
    model(example)
    model.train(was_training)
    macs = 0
    for name, module in positions.modules.items():
        weight = sparsekit.nn.weight_parameter(module)
        macs += kept.get(id(weight), weight.numel()) * positions.positions[name]
    return {"params": params, "macs": macs}


def _costs(G: nn.Module, D: nn.Module, resolution: int) -> dict:
    device = next(G.parameters()).device
    return {"G": network_cost(G, torch.zeros(1, G.z_dim, device=device)),
            "D": network_cost(D, torch.zeros(1, 3, resolution, resolution, device=device))}


@dataclasses.dataclass
class Teacher:
    """A frozen teacher discriminator ``D`` (images ``[B, 3, R, R]`` → logits ``[B]``), the
    file it came from, and the parameters/MACs of the teacher run's G and D."""

    D: nn.Module
    path: str
    sha256: str
    cost: dict

    @classmethod
    def load(cls, path: str, cfg: Config, data: ImageData) -> "Teacher":
        """Load and check the teacher of the run ``cfg`` (on ``data``) from ``path``; raises
        TeacherError naming the file and what is wrong. Never runs code from the file."""
        where = f"--teacher {path!r}"
        if not os.path.isfile(path):
            raise TeacherError(f"{where}: no such file (expected a gan.train checkpoint.pt)")
        sha256 = file_sha256(path)
        try:
            state = checkpoint.load(path)
        except checkpoint.CheckpointError as e:
            raise TeacherError(f"{where}: {e}") from None
        known = {f.name for f in dataclasses.fields(Config)}
        try:
            tcfg = Config(**{k: v for k, v in state["config"].items() if k in known})
            G, D = (rebuild_network(tcfg, which, state[which]) for which in ("G", "D"))
        except (TypeError, ValueError, RuntimeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise TeacherError(f"{where}: its networks do not rebuild from its own configuration "
                               f"(not a gan.train checkpoint of this version?): "
                               f"{type(e).__name__}: {first}") from None
        teacher_kind, student_kind = (spec.partition(":")[0] for spec in (tcfg.data, cfg.data))
        if teacher_kind != student_kind:
            raise TeacherError(f"{where}: its discriminator was trained on --data {tcfg.data!r}, "
                               f"this run trains on {cfg.data!r}")
        if tcfg.resolution != cfg.resolution:
            raise TeacherError(f"{where}: its discriminator was trained at --resolution "
                               f"{tcfg.resolution}, this run trains at {cfg.resolution}")
        probe = data.gather(range(2))
        try:
            with torch.no_grad():
                logits = D.eval()(probe)
        except RuntimeError as e:
            raise TeacherError(f"{where}: its discriminator cannot read this run's images "
                               f"{tuple(probe.shape[1:])}: {e}") from None
        if tuple(logits.shape) != (len(probe),):
            raise TeacherError(f"{where}: its discriminator gives logits of shape "
                               f"{tuple(logits.shape)} for {len(probe)} images, expected "
                               f"({len(probe)},)")
        D.requires_grad_(False)
        return cls(D, path, sha256, _costs(G, D, tcfg.resolution))


def check_resume(state: dict, teacher: Teacher | None):
    """Refuse to resume checkpoint ``state`` with another teacher (or with / without one)."""
    recorded = state.get("teacher")
    if recorded is None and teacher is None:
        return
    if recorded is None or teacher is None:
        raise TeacherError("--resume: the checkpoint was trained " +
                           ("without a teacher, the configuration names one" if recorded is None
                            else "with a teacher, the configuration names none"))
    if recorded["sha256"] != teacher.sha256:
        raise TeacherError(f"--resume: --teacher {teacher.path!r} is not the teacher file this run "
                           f"was trained with (SHA-256 {teacher.sha256[:12]}…, the checkpoint "
                           f"recorded {recorded['sha256'][:12]}…)")


def preflight(cfg: Config, data: ImageData, out: str, state: dict | None) -> Teacher | None:
    """``gan.train``'s up-front teacher checks: load it, refuse a teacher file the run would
    overwrite (OUT/checkpoint.pt) and, resuming (``state``), a different teacher."""
    teacher = Teacher.load(cfg.teacher, cfg, data) if cfg.teacher else None
    own = os.path.join(out, "checkpoint.pt")
    if teacher is not None and os.path.exists(own) and os.path.samefile(teacher.path, own):
        raise TeacherError(f"--teacher {teacher.path!r} is this run's own checkpoint, which "
                           "training overwrites; copy it elsewhere first")
    if state is not None:
        check_resume(state, teacher)
    return teacher


class Distillation:
    """The teacher term of one run: its schedule (stage 1 for iterations 1..N), weight and state.

    ``teacher`` None builds a run that never reaches the term (``gan.restore``, for sampling);
    calling it then raises.
    """

    def __init__(self, cfg: Config, teacher: Teacher | None, device: torch.device):
        self.teacher = teacher
        if teacher is not None:
            teacher.D.to(device)
        self.weight, self.kind, self.loss = cfg.teacher_weight, cfg.teacher_term, cfg.loss
        self.resolution = cfg.resolution
        self.stage1_steps = cfg.resolved_stage1_steps()

    def stage(self, iteration: int) -> int:
        """1 or 2: the stage generator iteration ``iteration`` (1-based) trains in."""
        return 1 if iteration <= self.stage1_steps else 2

    def generator_loss(self, g_loss: torch.Tensor, fake: torch.Tensor, iteration: int):
        """``(loss to backpropagate, teacher term or None)`` for G's step at ``iteration`` on the
        fake batch ``fake`` ``[B, 3, R, R]``; ``g_loss`` is G's loss on the student D."""
        if self.stage(iteration) == 1:
            return g_loss, None
        if self.teacher is None:
            raise RuntimeError("this trainer was built without its teacher (sampling only); it "
                               "cannot train stage 2")
        logits = self.teacher.D(fake).float()
        term = -logits.mean() if self.kind == "logit" else losses.g_loss(self.loss, logits)
        return g_loss + self.weight * term, term

    def state_dict(self, iteration: int) -> dict:
        return {"sha256": self.teacher.sha256 if self.teacher is not None else None,
                "stage1_steps": self.stage1_steps, "stage": self.stage(iteration)}

    def load_state_dict(self, state: dict | None):
        """Take N from the checkpoint (a resume with another --steps keeps the switch where it
        was) after checking that the checkpoint used this teacher file."""
        if self.teacher is not None:
            check_resume({"teacher": state}, self.teacher)
        elif state is None:
            raise TeacherError("the checkpoint was trained without a teacher, the configuration "
                               "names one")
        self.stage1_steps = state["stage1_steps"]

    def summary(self, G: nn.Module, D: nn.Module) -> dict:
        """summary.json's ``distillation``: the teacher, the term, and student/teacher ratios of
        parameters and forward FLOPs per image (kept weights × output positions: theoretical, as
        the papers count sparse FLOPs) of G and D."""
        student = _costs(G, D, self.resolution)
        teacher = self.teacher.cost

        def ratio(key):
            return {net: student[net][key] / teacher[net][key] for net in ("G", "D")}

        return {"teacher": self.teacher.path, "teacher_sha256": self.teacher.sha256,
                "teacher_weight": self.weight, "teacher_term": self.kind,
                "stage1_steps": self.stage1_steps,
                "param_ratio": ratio("params"), "flop_ratio": ratio("macs"),
                "params": {"student": {n: c["params"] for n, c in student.items()},
                           "teacher": {n: c["params"] for n, c in teacher.items()}},
                "macs_per_image": {"student": {n: c["macs"] for n, c in student.items()},
                                   "teacher": {n: c["macs"] for n, c in teacher.items()}}}


def distillation(cfg: Config, data: ImageData, device: torch.device,
                 teacher: Teacher | None = None, load_teacher: bool = True) -> Distillation | None:
    """The run's Distillation (None without ``--teacher``), with ``teacher`` or, when None and
    ``load_teacher``, the teacher loaded from ``cfg.teacher``."""
    if not cfg.teacher:
        return None
    if teacher is None and load_teacher:
        teacher = Teacher.load(cfg.teacher, cfg, data)
    return Distillation(cfg, teacher, device)
