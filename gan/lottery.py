"""``--method lottery``: GAN lottery tickets by iterative magnitude pruning (GAN-LTH, PAPERS.md).

Round 0 trains G with every conv mask full (the dense round). Each later round k prunes
``--prune-rate`` of G's remaining conv weights by global block magnitude (the IMP preset's scope),
rewinds the survivors to their values at ``--rewind-step`` t and retrains with fresh optimizers:
with t = 0, from the initialisation θ₀ with D reset to its initial weights (a fresh run with the
same seed has them); with t > 0 (late rewinding, GAN-LTH's option), G's survivors *and* D take
their round-0 values at iteration t and training resumes from iteration t (learning-rate schedule
and iteration count as at t). Round k writes a
full run directory ``OUT/round_k/`` (rounds ≥ 1 with the ``ticket.pt`` they trained); ``OUT/lottery.json`` summarises the
rounds (G's density 0.8^k at rate 0.2).
"""

from __future__ import annotations

import json
import os

from sparsekit.dst import Ticket, imp_prune, snapshot
from sparsekit.dst.presets import get_preset

from .data import load as load_data
from .distributed import SINGLE
from .loop import run


def run_lottery(cfg, out, data=None, teacher=None, dist=SINGLE):
    data = data if data is not None else load_data(cfg.data, cfg.resolution)
    rounds, ticket, rewind = [], None, {}

    scope = get_preset("lottery").imp.scope

    def capture(trainer):
        if trainer.iteration == cfg.rewind_step:
            rewind["weights"] = snapshot(trainer.G)
            rewind["D"] = snapshot(trainer.D)

    def install(trainer):
        if ticket is None:
            if cfg.rewind_step == 0:
                rewind["weights"] = snapshot(trainer.G)
            return
        ticket.apply_(trainer.engine_G, rewind=True)  # keeps the engine's budget in step
        if cfg.rewind_step > 0:  # late rewinding: D too, and resume from iteration t
            trainer.D.load_state_dict(rewind["D"])
            trainer.iteration = cfg.rewind_step
        if trainer.ema is not None:
            trainer.ema.load_state_dict(trainer.G.state_dict())

    for k in range(cfg.rounds + 1):
        summary, trainer = run(cfg, os.path.join(out, f"round_{k}"), setup=install,
                               on_step=capture if k == 0 else None, data=data, teacher=teacher,
                               dist=dist)
        rounds.append({"round": k, "density_G": summary["densities"]["G"], "metrics": summary["metrics"],
                       "sec_per_iter": summary["sec_per_iter"]})
        if k == cfg.rounds:
            break
        imp_prune(trainer.engine_G, rate=cfg.prune_rate, scope=scope)
        ticket = Ticket.from_model(trainer.G, rewind["weights"], round=k + 1, rewind_step=cfg.rewind_step)
        if dist.is_main:  # every rank holds the same ticket: pruned from the same weights
            os.makedirs(os.path.join(out, f"round_{k + 1}"), exist_ok=True)
            ticket.save(os.path.join(out, f"round_{k + 1}", "ticket.pt"))
    summary = {"method": "lottery", "seed": cfg.seed, "steps_per_round": cfg.steps, "rounds": rounds}
    if dist.is_main:
        with open(os.path.join(out, "lottery.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
