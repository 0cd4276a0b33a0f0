"""The GAN training loop with sparse networks: one ``Trainer`` per run directory.

Construction order (DESIGN.md §4): build G and D dense → their Adam optimizers → the DST engines
(which sparsify the networks in place, keeping the Parameter objects the optimizers hold) →
spectral norm on every D layer → the sparse EMA copy of G. Each iteration runs ``n_dis`` D steps
then one G step; engines are stepped after every optimizer step with the generator iteration, so
their schedules count generator iterations. Every ``br_every`` iterations the balance ratio gets a
sample: D(G_before(z)), D(G_after(z)) with the same z, and D(x) of the last real batch.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch

import sparsekit
from sparsekit.dst import BalanceRatio, DDSTController, DynamicSparsity
from sparsekit.dst.presets import PRESETS, DDSTPreset, get_preset

from . import losses
from .config import Config
from .data import ImageData
from .distributed import SINGLE, Distributed
from .loader import InfiniteBatches
from .models import SN_TYPES, add_spectral_norm, build, weight_parameters
from .teacher import Teacher, distillation


def _set_precision(cfg: Config):
    """fp32 (IEEE), tf32 (TF32 matmul/conv on CUDA, the Triton layers too) or bf16 (autocast
    around the forward passes: fp32 master weights and Adam state, no loss scaling — bf16 has
    fp32's exponent range)."""
    tf32 = cfg.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if cfg.device == "cuda":  # the sparse layers too (DESIGN §3); the cuda backend stays IEEE
        try:
            sparsekit.backends.load("triton").allow_tf32 = tf32
        except sparsekit.backends.BackendUnavailable:
            pass


class Trainer:
    """Owns the models, optimizers, engines, EMA, data stream and noise of one run.

    ``teacher``: the run's DGL-GAN teacher already loaded (gan.train's preflight), else it is
    loaded from ``cfg.teacher``; ``load_teacher=False`` skips that for a trainer that only samples
    (gan.restore).
    """

    def __init__(self, cfg: Config, data: ImageData, teacher: Teacher | None = None,
                 load_teacher: bool = True, dist: Distributed = SINGLE):
        cfg.validate()
        _set_precision(cfg)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        sparsekit.set_backend(cfg.backend)
        self.cfg, self.data, self.dist = cfg, data, dist
        self.device = torch.device(cfg.device)
        self.n_dis = cfg.resolved_n_dis()
        torch.manual_seed(cfg.seed)
        G, D = build(cfg.model, cfg.width, resolution=cfg.resolution)
        self.G, self.D = G.to(self.device), D.to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_G = torch.optim.Adam(weight_parameters(self.G), lr=cfg.lr_g, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.engine_G = self.engine_D = self.controller = None
        self.preset = None
        br_every, br_window = 10, 100
        if cfg.method in PRESETS:  # a sparse-training method; the others train dense
            self.preset = get_preset(cfg.method)
            if not cfg.paper_exact:
                self.preset = self.preset.scaled(cfg.steps)
            br_every, br_window = self.preset.br_every, self.preset.br_window
            self.engine_G = self._engine(self.G, self.opt_G, "G", cfg.g_density)
            self.engine_D = self._engine(self.D, self.opt_D, "D", cfg.d_density)
            if self.preset.ddst is not None and self.engine_D is not None:
                self.controller = DDSTController(self.engine_D, **self.preset.ddst.controller_kwargs(),
                                                 window=br_window)
        add_spectral_norm(self.D)
        self.ema = None
        if cfg.ema > 0:
            self.ema = copy.deepcopy(self.G).eval()
            self.ema.requires_grad_(False)
            if self.engine_G is not None:
                self.engine_G.track_ema(self.ema)
        self.balance = self.controller.balance if self.controller is not None else BalanceRatio(br_window)
        self.br_every = br_every
        # How often the windowed balance ratio sits inside DDST's band, for every method (the
        # DDST preset's band where the run has none), counted at each sample once the window is
        # full: what DDST's controller is meant to raise.
        ddst = self.preset.ddst if self.preset is not None and self.preset.ddst is not None else DDSTPreset()
        self.br_band = (ddst.lower, ddst.upper)
        self.br_in_band = self.br_counted = 0
        self.distill = distillation(cfg, data, self.device, teacher, load_teacher)
        # The forward passes whose gradients are averaged over ranks (the modules themselves in
        # one process); G's step runs D itself, whose weights need no gradient there.
        self.ddp_G, self.ddp_D = dist.wrap(self.G), dist.wrap(self.D)
        if data.resolution != cfg.resolution:
            raise ValueError(f"the data are {data.resolution}×{data.resolution}, the run's "
                             f"--resolution is {cfg.resolution}")
        self.batches = InfiniteBatches(data, cfg.batch_size, cfg.seed, dist.rank, dist.world_size,
                                       pin_memory=self.device.type == "cuda",
                                       workers=cfg.resolved_workers(data, dist.world_size))
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)
        self.fixed_z = torch.randn(64, self.G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 2))
        self.iteration = 0
        self.train_seconds = 0.0

    def _engine(self, model, optimizer, network, density):
        overrides = dict(block=self.cfg.block_shape(), stop_at=self.cfg.steps, seed=self.cfg.seed + (network == "D"))
        if density is not None:
            overrides["density"] = density
        for name in ("distribution", "update_every", "prune_fraction"):
            if getattr(self.cfg, name) is not None:
                overrides[name] = getattr(self.cfg, name)
        if self.cfg.sparse_layers is not None:
            overrides["layer_types"] = {"convs": ("conv",), "all": ("conv", "linear")}[
                self.cfg.sparse_layers]
        return DynamicSparsity.from_preset(model, optimizer, self.preset, network, **overrides)

    # ------------------------------------------------------------------ one iteration
    def _z(self, n):
        return self.dist.local_rows(torch.randn(n, self.G.z_dim, generator=self.noise)).to(self.device)

    def _real(self):
        return self.batches.next().to(self.device)

    def _autocast(self):
        """The forward passes' precision context: bf16 autocast for --precision bf16 (sparse ops
        follow their own rules: bf16 on CUDA, fp32 kernels on CPU), else nothing."""
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _lr_scale(self, it):
        return 1.0 - (it - 1) / self.cfg.steps if self.cfg.lr_decay == "linear" else 1.0

    def train_step(self) -> dict:
        """One generator iteration (n_dis D steps + one G step); returns scalars to log."""
        cfg = self.cfg
        self.iteration += 1
        it = self.iteration
        for opt, lr in ((self.opt_G, cfg.lr_g), (self.opt_D, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * self._lr_scale(it)
        start = time.perf_counter()
        for _ in range(self.n_dis):
            real = self._real()
            with self._autocast():
                with torch.no_grad():
                    fake = self.G(self._z(cfg.batch_size))
                real_logits, fake_logits = self.ddp_D(real), self.ddp_D(fake)
                d_loss = losses.d_loss(cfg.loss, real_logits.float(), fake_logits.float())
            self.opt_D.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_D.step()
            if self.engine_D is not None:
                self.engine_D.step(it)
        z = self._z(cfg.batch_size)
        self.D.requires_grad_(False)  # G's step needs D's dX only: skip D's (discarded) dW
        teacher_term = None
        with self._autocast():
            fake = self.ddp_G(z)
            fake_logits = self.D(fake).float()
            g_loss = losses.g_loss(cfg.loss, fake_logits)
            if self.distill is not None:
                g_loss, teacher_term = self.distill.generator_loss(g_loss, fake, it)
        self.opt_G.zero_grad(set_to_none=True)
        g_loss.backward()
        self.D.requires_grad_(True)
        self.opt_G.step()
        br = None
        if it % self.br_every == 0:
            # As ADAPT: D(G_after(z)) right after G's optimizer step and before G's mask update,
            # and D(x) from the current D (after its last step), on the last real batch.
            with torch.no_grad(), self._autocast():
                after = self.D(self.G(z)).float().mean()
                real_now = self.D(real).float().mean()
            br = self.balance.add(*self.dist.mean(fake_logits.detach().float().mean(), after, real_now))
            if br is not None and self.balance.full:
                self.br_counted += 1
                self.br_in_band += self.br_band[0] <= self.balance.value <= self.br_band[1]
        if self.engine_G is not None:
            self.engine_G.step(it)
        self._update_ema()
        self.train_seconds += time.perf_counter() - start
        row = {"iteration": it, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
               "br": br if br is not None else float("nan"),
               "teacher_term": teacher_term.item() if teacher_term is not None else float("nan"),
               "br_window": self.balance.value if len(self.balance) else float("nan")}
        row.update(self.densities())
        return row

    @torch.no_grad()
    def _update_ema(self):
        """EMA step with warm-up: decay min(ema, (1 + t) / (10 + t)), so that a short run's EMA
        is not dominated by the initial weights (the papers' 0.999 applies once t ≳ 9000)."""
        if self.ema is None:
            return
        t = self.iteration
        decay = min(self.cfg.ema, (1.0 + t) / (10.0 + t))
        ema_params = [p for p in self.ema.parameters()]
        params = [p.detach() for p in self.G.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for be, b in zip(self.ema.buffers(), self.G.buffers()):
            be.copy_(b)

    def densities(self) -> dict:
        """Kept fraction of the weights each engine manages (1.0 without an engine)."""
        def d(engine):
            return float(engine.kept()) / engine.total_numel if engine is not None else 1.0
        return {"density_G": d(self.engine_G), "density_D": d(self.engine_D)}

    def densities_all(self) -> dict:
        """Kept fraction over *all* conv/linear weights of G and D (managed or not): what a
        comparison at equal budgets must hold equal."""
        def d(model, engine):
            layers = [m for m in model.modules() if isinstance(m, SN_TYPES)]
            total = sum(sparsekit.nn.weight_parameter(m).numel() for m in layers)
            managed = engine.total_numel if engine is not None else 0
            kept = float(engine.kept()) if engine is not None else 0.0
            return (kept + total - managed) / total
        return {"G": d(self.G, self.engine_G), "D": d(self.D, self.engine_D)}

    def exploration(self) -> dict:
        """G's exploration rate (share of weights ever active) and the mask change of its last
        update (grown / kept); NaN without a G engine. Read at logging time only."""
        if self.engine_G is None:
            return {"exploration_G": float("nan"), "mask_change_G": float("nan")}
        return {"exploration_G": self.engine_G.exploration_rate(),
                "mask_change_G": float(self.engine_G.last_update.get("mask_change", 0.0))}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n=None, z=None, batch=250) -> torch.Tensor:
        """Images [n, 3, R, R] in [-1, 1] from the EMA generator (G itself without EMA)."""
        net = self.ema if self.ema is not None else self.G
        was_training = net.training
        net.eval()
        if z is None:
            z = torch.randn(n, self.G.z_dim, generator=torch.Generator().manual_seed(self.cfg.seed + 3))
        out = torch.cat([net(z[i:i + batch].to(self.device)).float().cpu() for i in range(0, len(z), batch)])
        net.train(was_training)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {
            "iteration": self.iteration, "train_seconds": self.train_seconds,
            "config": self.cfg.__dict__.copy(),
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "engine_G": self.engine_G.state_dict() if self.engine_G is not None else None,
            "engine_D": self.engine_D.state_dict() if self.engine_D is not None else None,
            "balance": self.balance.state_dict(),
            "br_band_counts": [self.br_in_band, self.br_counted],
            "teacher": self.distill.state_dict(self.iteration) if self.distill is not None else None,
            "batches": self.batches.state_dict(),
            "rng": {"noise": self.noise.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        return state

    def load_state_dict(self, state: dict):
        """Restore a checkpoint (validated by gan.checkpoint.load) into this freshly built run."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        for engine, key in ((self.engine_G, "engine_G"), (self.engine_D, "engine_D")):
            if engine is not None:
                engine.load_state_dict(state[key])
        if self.distill is not None:
            self.distill.load_state_dict(state.get("teacher"))
        if self.controller is None:  # with DDST the balance window is the controller's state
            self.balance.load_state_dict(state["balance"])
        self.br_in_band, self.br_counted = state.get("br_band_counts", (0, 0))  # older checkpoints
        self.batches.load_state_dict(state["batches"])
        self.noise.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.iteration = state["iteration"]
        self.train_seconds = state["train_seconds"]
