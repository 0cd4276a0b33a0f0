"""``--method alphagan-search``: AlphaGAN's differentiable search of G's architecture (PAPERS.md).

Bi-level and first-order, on the supernet ``--model alphagan`` (``gan.models.alphagan``) against
the SNGAN D:

- Weight steps: the trainer's own iteration — ``n_dis`` D steps and one G step of the GAN loss
  (hinge), Adam (``--lr-g``/``--lr-d``, β (0, 0.9)) on the weights; α is not a weight.
- An architecture round after every ``--search-inner`` D steps (``search_inner / n_dis``
  generator iterations):

  1. worst cases — D' = a copy of D improved by ``--search-worst`` Adam steps against G (fixed),
     G' = a copy of G improved by as many steps against D (fixed; G's α frozen in the copy);
     fresh Adam with the weight steps' learning rates and betas every round, as the authors;
  2. ``--search-outer`` Adam steps of α (``--lr-arch`` 3e-4, β (0.5, 0.999), weight decay 1e-3)
     descending the duality gap ``DG = V(G, D') − V(G', D)``, where ``V(G, D) = −L_D(D(x),
     D(G(z)))`` is the value D maximises (hinge: ``−E[relu(1 − D(x))] − E[relu(1 + D(G(z)))]``).
     First order: weights are constants, so only ``V(G, D')`` carries a gradient to α.

  A round changes only α and α's Adam: G's and D's buffers (BN running statistics, spectral
  norm's power-iteration vectors), which its forward passes would move, are restored after it.

The run directory gets, besides the trainer's files, ``search.csv`` (one row per round: the mean
DG, V(G, D') and V(G', D) over its α steps, and the entropy of softmax(α) of every edge, in nats)
and ``genotype.json`` (argmax of α per edge, ``none`` excluded, with the final softmax(α) and
entropies), rewritten at every checkpoint and at the end. Train the found network with
``--model alphagan:OUT/genotype.json`` and any ``--method``. Noise and real batches come from the
trainer's checkpointed streams, so ``--resume`` continues a search exactly.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import time

import torch
import torch.nn.functional as F

from . import losses
from .distributed import SINGLE
from .loop import run
from .models import genotype as genotypes
from .models import weight_parameters
from .trainer import Trainer

ARCH_BETAS = (0.5, 0.999)     # α's Adam, PAPERS.md
ARCH_WEIGHT_DECAY = 1e-3


@contextlib.contextmanager
def preserved_buffers(*modules):
    """Restore every buffer of ``modules`` on exit (forward passes in train mode move BN
    statistics and spectral norm's vectors)."""
    saved = [[b.detach().clone() for b in m.buffers()] for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in zip(modules, saved):
                for b, v in zip(m.buffers(), values):
                    b.copy_(v)


class SearchTrainer(Trainer):
    """The trainer of a supernet run, plus α's Adam and the architecture rounds."""

    def __init__(self, cfg, data, teacher=None, dist=SINGLE):
        # teacher: always None (Config refuses one); dist: one process (gan.train refuses more)
        super().__init__(cfg, data, teacher=teacher, dist=dist)
        self.alphas = self.G.arch_parameters()  # a supernet's: Config.validate saw to it
        self.opt_arch = torch.optim.Adam(self.alphas, lr=cfg.lr_arch, betas=ARCH_BETAS,
                                         weight_decay=ARCH_WEIGHT_DECAY)
        self.round_every = cfg.search_inner // self.n_dis
        self.round_stats = None  # the last iteration's round: {dg, v_g_dworst, v_gworst_d}
        self._alpha_grad(False)

    def _alpha_grad(self, enabled):
        for a in self.alphas:
            a.requires_grad_(enabled)

    def train_step(self, report: bool = True) -> dict | None:
        row = super().train_step(report)
        self.round_stats = None
        if self.iteration % self.round_every == 0:
            start = time.perf_counter()
            self.round_stats = self.architecture_round()
            self.train_seconds += time.perf_counter() - start
        return row

    def _value(self, D, real, fake):
        """V(G, D) on one batch: minus D's loss."""
        return -losses.d_loss(self.cfg.loss, D(real).float(), D(fake).float())

    def worst_cases(self):
        """``(G', D')``: copies of G and D each improved by ``search_worst`` Adam steps against
        the other network held fixed. Both are returned frozen."""
        cfg, n = self.cfg, self.cfg.batch_size
        betas = (cfg.beta1, cfg.beta2)
        D_w, G_w = copy.deepcopy(self.D), copy.deepcopy(self.G)
        for a in G_w.arch_parameters():
            a.requires_grad_(False)
        opt_d = torch.optim.Adam(D_w.parameters(), lr=cfg.lr_d, betas=betas)
        opt_g = torch.optim.Adam(weight_parameters(G_w), lr=cfg.lr_g, betas=betas)
        for _ in range(cfg.search_worst):
            real = self._real()
            with self._autocast():
                with torch.no_grad():
                    fake = self.G(self._z(n))
                loss = -self._value(D_w, real, fake)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        self.D.requires_grad_(False)
        try:
            for _ in range(cfg.search_worst):
                with self._autocast():
                    loss = losses.g_loss(cfg.loss, self.D(G_w(self._z(n))).float())
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
        finally:
            self.D.requires_grad_(True)
        return G_w.requires_grad_(False), D_w.requires_grad_(False)

    def architecture_round(self) -> dict:
        """Worst cases, then ``search_outer`` α steps on the duality gap; returns the means of
        DG, V(G, D') and V(G', D) over the α steps."""
        cfg, n = self.cfg, self.cfg.batch_size
        sums = torch.zeros(3)
        with preserved_buffers(self.G, self.D):
            G_w, D_w = self.worst_cases()
            self._alpha_grad(True)
            try:
                for _ in range(cfg.search_outer):
                    real = self._real()
                    with self._autocast():
                        v_minmax = self._value(D_w, real, self.G(self._z(n)))       # α's term
                        with torch.no_grad():
                            v_maxmin = self._value(self.D, real, G_w(self._z(n)))
                    dg = v_minmax - v_maxmin
                    grads = torch.autograd.grad(dg, self.alphas)  # weights get no gradient
                    for a, g in zip(self.alphas, grads):
                        a.grad = g
                    self.opt_arch.step()
                    sums += torch.stack([dg.detach(), v_minmax.detach(), v_maxmin]).cpu()
            finally:
                self._alpha_grad(False)
        dg, v_minmax, v_maxmin = (sums / cfg.search_outer).tolist()
        return {"dg": dg, "v_g_dworst": v_minmax, "v_gworst_d": v_maxmin}

    def alpha_table(self) -> dict:
        """``{edge: {op: softmax(α)}}`` of the mixed edges."""
        return {name: dict(zip(e.names, F.softmax(e.alpha.detach(), 0).tolist()))
                for name, e in self.G.edges() if e.alpha is not None}

    def state_dict(self) -> dict:
        return dict(super().state_dict(), opt_arch=self.opt_arch.state_dict())

    def load_state_dict(self, state: dict):
        if "opt_arch" not in state:
            raise ValueError("the checkpoint has no 'opt_arch': it is not an alphagan-search run's")
        super().load_state_dict(state)
        self.opt_arch.load_state_dict(state["opt_arch"])


class SearchLog:
    """``search.csv``: one row per architecture round."""

    def __init__(self, path, edges, resume):
        self.fields = ["iteration", "round", "dg", "v_g_dworst", "v_gworst_d", "entropy_mean"] + \
                      [f"entropy/{e}" for e in edges]
        self.file = open(path, "a" if resume else "w", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=self.fields)
        if not resume:
            self.csv.writeheader()

    def row(self, trainer):
        entropies = trainer.G.entropies()
        self.csv.writerow({"iteration": trainer.iteration,
                           "round": trainer.iteration // trainer.round_every,
                           **trainer.round_stats,
                           "entropy_mean": sum(entropies.values()) / len(entropies),
                           **{f"entropy/{e}": h for e, h in entropies.items()}})
        self.file.flush()

    def close(self):
        self.file.close()


def write_genotype(trainer, path):
    """The current discrete architecture, with softmax(α) and the entropies as notes."""
    genotypes.save(trainer.G.genotype(), path, searched_by="gan.train --method alphagan-search",
                   model=trainer.cfg.model, iteration=trainer.iteration,
                   alphas=trainer.alpha_table(), entropies=trainer.G.entropies())


def run_search(cfg, out, resume=False, data=None, state=None):
    """Run (or continue) a search in ``out``; returns the run's summary with ``genotype`` (the
    path of genotype.json) and ``search`` (the last round's DG and mean α entropy)."""
    os.makedirs(out, exist_ok=True)
    genotype_path = os.path.join(out, "genotype.json")
    ckpt_every = cfg.period(cfg.ckpt_every, 4)
    holder = {}

    def setup(trainer):
        holder["log"] = SearchLog(os.path.join(out, "search.csv"), trainer.G.entropies(), resume)

    def on_step(trainer):
        if trainer.round_stats is not None:
            holder["log"].row(trainer)
            holder["last"] = dict(trainer.round_stats)
        if trainer.iteration % ckpt_every == 0 or trainer.iteration == cfg.steps:
            write_genotype(trainer, genotype_path)

    try:
        summary, trainer = run(cfg, out, resume, setup=setup, on_step=on_step, data=data,
                               state=state, trainer_cls=SearchTrainer)
    finally:
        if "log" in holder:
            holder["log"].close()
    entropies = trainer.G.entropies()
    summary["genotype"] = genotype_path
    summary["search"] = {"rounds": trainer.iteration // trainer.round_every,
                         "entropy_mean": sum(entropies.values()) / len(entropies),
                         **{f"last_{k}": v for k, v in holder.get("last", {}).items()}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
