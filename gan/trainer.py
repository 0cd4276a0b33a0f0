"""The GAN training loop with sparse networks: one ``Trainer`` per run directory.

Construction order (DESIGN.md §4): build G and D dense → their Adam optimizers → the DST engines
(which sparsify the networks in place, keeping the Parameter objects the optimizers hold) →
spectral norm on every D layer → the sparse EMA copy of G. Each iteration runs ``n_dis`` D steps
then one G step; engines are stepped after every optimizer step with the generator iteration, so
their schedules count generator iterations. Every ``br_every`` iterations the balance ratio gets a
sample: D(G_before(z)), D(G_after(z)) with the same z, and D(x) of the last real batch.

The D step, the G step and the EMA update are functions of their inputs (``_d_step``,
``_g_step``, ``_ema_step``) run through ``_step``: called directly, or with ``--cuda-graphs``
replayed from CUDA graphs (``gan.graphs``) while everything the host decides — engine steps
(masks, dense dW, DDST), the balance-ratio sample, learning rate and EMA decay — runs eagerly
between the replays, as in the eager loop.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time

import torch

import sparsekit
from sparsekit.dst import BalanceRatio, DDSTController, DynamicSparsity
from sparsekit.dst.presets import PRESETS, DDSTPreset, get_preset

from . import graphs, losses
from .config import Config
from .data import ImageData
from .distributed import SINGLE, Distributed
from .loader import InfiniteBatches
from .models import SN_TYPES, add_spectral_norm, build, weight_parameters
from .teacher import Teacher, distillation

#: Adam on the CPU runs torch's fused kernel (one call per step; the default runs ~15 ops per
#: Parameter). Its rounding differs from the other Adams' (tests comparing runs switch it off).
FUSED_CPU_ADAM = True


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
        if data.resolution != cfg.resolution:
            raise ValueError(f"the data are {data.resolution}×{data.resolution}, the run's "
                             f"--resolution is {cfg.resolution}")
        _set_precision(cfg)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        sparsekit.set_backend(cfg.backend)
        self.cfg, self.data, self.dist = cfg, data, dist
        self.device = torch.device(cfg.device)
        self.graphs = None
        if cfg.cuda_graphs:
            if dist.enabled:
                raise ValueError(graphs.NOT_DISTRIBUTED)
            self.graphs = graphs.make(self.device, self._graphed_addresses)
        self.n_dis = cfg.resolved_n_dis()
        torch.manual_seed(cfg.seed)
        G, D = build(cfg.model, cfg.width, resolution=cfg.resolution)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.opt_G = self._adam(weight_parameters(self.G), cfg.lr_g)
        self.opt_D = self._adam(self.D.parameters(), cfg.lr_d)
        self.engine_G = self.engine_D = self.controller = None
        self.preset = None
        # The balance ratio is sampled as a sparse method's preset says; a dense run samples it as
        # DDST does (scaled alike), so its windowed ratio and br_in_band compare with theirs.
        sampling = get_preset(cfg.method if cfg.method in PRESETS else "ddst")
        if not cfg.paper_exact:
            sampling = sampling.scaled(cfg.steps)
        br_every, br_window = sampling.br_every, sampling.br_window
        if cfg.method in PRESETS:  # a sparse-training method; the others train dense
            self.preset = sampling
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
        self.batches = InfiniteBatches(data, cfg.batch_size, cfg.seed, dist.rank, dist.world_size,
                                       pin_memory=self.device.type == "cuda",
                                       workers=cfg.resolved_workers(data, dist.world_size))
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)
        self.fixed_z = torch.randn(64, self.G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 2))
        self.iteration = 0
        self.train_seconds = 0.0

    def _adam(self, params, lr):
        """Adam; for graphs capturable (step counts on the device) with the learning rate a
        device tensor that ``_set_lr`` fills in place (a float would be baked into the graph).
        On the CPU the fused kernel (``FUSED_CPU_ADAM``): about 15 ms less of a 200 ms SNGAN
        iteration at batch 16."""
        betas = (self.cfg.beta1, self.cfg.beta2)
        if self.graphs is None:
            return torch.optim.Adam(params, lr=lr, betas=betas,
                                    fused=FUSED_CPU_ADAM if self.device.type == "cpu" else None)
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=self.device), betas=betas,
                                capturable=True, foreach=True)

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
        return self._to_device(self.dist.local_rows(torch.randn(n, self.G.z_dim, generator=self.noise)))

    def _real(self):
        return self._to_device(self.batches.next())

    def _to_device(self, host_tensor):
        """A host tensor on the run's device. To a GPU through pinned memory and asynchronously:
        a copy from pageable memory would wait for the device (a sync per D and G step)."""
        if self.device.type != "cuda":
            return host_tensor
        return host_tensor.pin_memory().to(self.device, non_blocking=True)

    def _autocast(self):
        """The forward passes' precision context: bf16 autocast for --precision bf16 (sparse ops
        follow their own rules: bf16 on CUDA, fp32 kernels on CPU), else nothing. Graphs run it
        without the cast-weight cache, which torch's CUDA-graph notes rule out under capture."""
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              cache_enabled=self.graphs is None)

    def _lr_scale(self, it):
        return 1.0 - (it - 1) / self.cfg.steps if self.cfg.lr_decay == "linear" else 1.0

    def _set_lr(self, scale):
        for opt, lr in ((self.opt_G, self.cfg.lr_g), (self.opt_D, self.cfg.lr_d)):
            for group in opt.param_groups:
                if self.graphs is None:
                    group["lr"] = lr * scale
                else:
                    group["lr"].fill_(lr * scale)

    def train_step(self, report: bool = True) -> dict | None:
        """One generator iteration (n_dis D steps + one G step); returns scalars to log, or None
        when not ``report``: reading the losses and densities waits for the device (about 20
        syncs), which the loop does on logged iterations only."""
        cfg = self.cfg
        self.iteration += 1
        it = self.iteration
        self._set_lr(self._lr_scale(it))
        start = time.perf_counter()
        for _ in range(self.n_dis):
            real = self._real()
            d_loss, = self._step("D", self._d_step, real, self._z(cfg.batch_size))
            self._engine_step(self.engine_D, it)
        z = self._z(cfg.batch_size)
        g_loss, fake_logits, teacher_term = self._step(
            "G", functools.partial(self._g_step, iteration=it), z)
        br = self._balance_sample(z, real, fake_logits) if it % self.br_every == 0 else None
        self._engine_step(self.engine_G, it)
        if self.ema is not None:
            # warm-up: decay min(ema, (1 + t) / (10 + t)), so that a short run's EMA is not
            # dominated by the initial weights (the papers' 0.999 applies once t ≳ 9000)
            self._step("EMA", self._ema_step, 1.0 - min(cfg.ema, (1.0 + it) / (10.0 + it)))
        self.train_seconds += time.perf_counter() - start
        if not report:
            return None
        row = {"iteration": it, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
               "br": br if br is not None else float("nan"),
               "teacher_term": teacher_term.item() if teacher_term is not None else float("nan"),
               "br_window": self.balance.value if len(self.balance) else float("nan")}
        row.update(self.densities())
        return row

    def _step(self, kind, fn, *inputs):
        """``fn(*inputs)``, the step ``kind`` ("D", "G" or "EMA"); with --cuda-graphs through the
        graph of ``_graph_key(kind)``."""
        if self.graphs is None:
            return fn(*inputs)
        return self.graphs.run(self._graph_key(kind), fn, *inputs)

    def _graph_key(self, kind):
        """``kind`` and the host state a capture of that step bakes in (gan.graphs): whether G's
        and D's layers compute the dense dW now (every sparse op takes its layer's flag, forward
        passes under no_grad too, so a D or G step bakes in both networks'), and for G the DGL
        stage."""
        if kind == "EMA":
            return (kind,)
        dense_dw = tuple(engine is not None and any(layer.layout.dense_dw for layer in engine.layers)
                         for engine in (self.engine_G, self.engine_D))
        if kind == "D":
            return (kind, *dense_dw)
        return (kind, *dense_dw, self.distill.stage(self.iteration) if self.distill is not None else 1)

    def _d_step(self, real, z):
        """One D step on a real batch and noise; returns (D's loss,)."""
        with self._autocast():
            with torch.no_grad():
                fake = self.G(z)
            real_logits, fake_logits = self.ddp_D(real), self.ddp_D(fake)
            d_loss = losses.d_loss(self.cfg.loss, real_logits.float(), fake_logits.float())
        self.opt_D.zero_grad(set_to_none=self.graphs is None)  # graphs: gradients stay put
        d_loss.backward()
        self.opt_D.step()
        return (d_loss.detach(),)

    def _g_step(self, z, iteration):
        """G's step on noise ``z``; returns (G's loss, D's logits on G(z), the teacher term or
        None). D is frozen: G's step needs D's dX only, not its (discarded) dW. ``iteration``
        only selects DGL's stage (which a graph's key holds)."""
        self.D.requires_grad_(False)
        teacher_term = None
        with self._autocast():
            fake = self.ddp_G(z)
            fake_logits = self.D(fake).float()
            g_loss = losses.g_loss(self.cfg.loss, fake_logits)
            if self.distill is not None:
                g_loss, teacher_term = self.distill.generator_loss(g_loss, fake, iteration)
        self.opt_G.zero_grad(set_to_none=self.graphs is None)
        g_loss.backward()
        self.D.requires_grad_(True)
        self.opt_G.step()
        return (g_loss.detach(), fake_logits.detach(),
                teacher_term.detach() if teacher_term is not None else None)

    def _balance_sample(self, z, real, fake_logits):
        """A balance-ratio sample; returns its ratio or None. As ADAPT: D(G_after(z)) right after
        G's optimizer step and before G's mask update, and D(x) from the current D (after its
        last step), on the last real batch. Reads values on the host: always eager."""
        with torch.no_grad(), self._autocast():
            after = self.D(self.G(z)).float().mean()
            real_now = self.D(real).float().mean()
        br = self.balance.add(*self.dist.mean(fake_logits.mean(), after, real_now))
        if br is not None and self.balance.full:
            self.br_counted += 1
            self.br_in_band += self.br_band[0] <= self.balance.value <= self.br_band[1]
        return br

    def _engine_step(self, engine, it):
        """``engine.step(it)`` after its network's optimizer step; with graphs, check after a
        mask change that no tensor the graphs use has moved (gan.graphs.StepGraphs.check)."""
        if engine is not None and engine.step(it) is not None and self.graphs is not None:
            self.graphs.check()

    @torch.no_grad()
    def _ema_step(self, weight):
        """ema += weight · (G − ema) over the parameters, G's buffers copied. ``weight`` = 1 −
        decay: a float, or under graphs a 0-d device tensor (the decay changes every iteration)."""
        ema_params = [p for p in self.ema.parameters()]
        params = [p.detach() for p in self.G.parameters()]
        # A tensor weight goes through the per-tensor-weights overload: the Scalar one would
        # read it on the host.
        torch._foreach_lerp_(ema_params, params,
                             weight if isinstance(weight, float) else [weight] * len(params))
        for be, b in zip(self.ema.buffers(), self.G.buffers()):
            be.copy_(b)
        return ()

    def _graphed_addresses(self) -> set:
        """Addresses of every lasting tensor the graphs read or write: parameters, gradients and
        buffers of the networks (G, D, EMA, a teacher's D), the optimizers' learning rates and
        state (gan.graphs.StepGraphs)."""
        modules = [self.G, self.D, self.ema]
        if self.distill is not None and self.distill.teacher is not None:
            modules.append(self.distill.teacher.D)
        tensors = []
        for m in filter(None, modules):
            tensors += [t for p in m.parameters() for t in (p, p.grad)] + list(m.buffers())
        for opt in (self.opt_G, self.opt_D):
            tensors += [group["lr"] for group in opt.param_groups]
            tensors += [t for state in opt.state.values() for t in state.values()]
        return {t.data_ptr() for t in tensors if isinstance(t, torch.Tensor)}

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
            "opt_G": _plain_adam_state(self.opt_G), "opt_D": _plain_adam_state(self.opt_D),
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
        for opt, key in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
            opt.load_state_dict(state[key])
            _own_adam_settings(opt)
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
        if self.graphs is not None:  # the optimizer state the graphs used was replaced
            self.graphs.reset()


def _plain_adam_state(opt) -> dict:
    """``opt.state_dict()`` as a plain Adam writes it — lr a float, step counts on the CPU, not
    capturable, not fused — so a checkpoint does not depend on --cuda-graphs or the device."""
    state = opt.state_dict()
    groups = [dict(g, lr=float(g["lr"]), capturable=False, foreach=None, fused=None)
              for g in state["param_groups"]]
    per_param = {k: dict(v, step=v["step"].to("cpu", torch.float32)) for k, v in state["state"].items()}
    return {"state": per_param, "param_groups": groups}


def _own_adam_settings(opt):
    """After ``opt.load_state_dict`` (whose param groups replace this optimizer's): this
    optimizer's own lr object, capturable, foreach and fused, and its step counts where it keeps
    them (on the parameter's device when capturable or fused, else on the CPU)."""
    for group in opt.param_groups:
        group.update({k: opt.defaults[k] for k in ("lr", "capturable", "foreach", "fused")})
        for p in group["params"]:
            state = opt.state.get(p)
            if state:
                on_device = group["capturable"] or group["fused"]
                state["step"] = state["step"].to(p.device if on_device else "cpu",
                                                 torch.float32)
