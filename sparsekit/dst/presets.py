"""Method presets: the papers' settings for each network, looked up by name.

Periods are the papers' for 100k-iteration runs (``PAPER_ITERATIONS``); :meth:`MethodPreset.scaled`
shrinks them for shorter runs. Densities of ``static``/``set``/``rigl``/``stu-gan``/``sdst`` are
this project's defaults (G 0.2, D 0.5) — a run chooses its own; ``ddst`` and ``ddst-strict`` start
where ADAPT does (0.1 and 0.3). ``lottery`` keeps G's convs under a static engine at density 1
(the dense first round); ``imp_prune`` then shrinks it round by round.

    preset = get_preset("stu-gan")
    engine_G = DynamicSparsity.from_preset(G, opt_G, preset, "G", block=(16, 16), stop_at=steps)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..checks import choice, positive_int

PAPER_ITERATIONS = 100_000
PERIOD_FLOOR = 10


@dataclass(frozen=True)
class NetworkPreset:
    """One network's engine settings (the keyword arguments of ``DynamicSparsity``)."""

    method: str = "static"
    density: float = 0.5
    distribution: str = "erk"
    layer_types: tuple = ("conv", "linear")
    update_every: int = 500
    prune_fraction: float = 0.5
    schedule: str = "cosine"
    selection: str = "per-layer"
    grow: str = "gradient"
    reset_optimizer_state: bool = False

    def engine_kwargs(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DDSTPreset:
    """DDST controller settings (the keyword arguments of ``DDSTController``)."""

    lower: float = 0.45
    upper: float = 0.55
    step: float = 0.05
    min_density: float = 0.05
    max_density: float = 1.0
    adjust_every: int = 1000
    cap: float | None = None

    def controller_kwargs(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IMPPreset:
    """Iterative magnitude pruning (GAN-LTH)."""

    rounds: int = 10
    rate: float = 0.2
    scope: str = "global"
    rewind_step: int = 0
    prune_d: bool = False  # IMP-G; True for IMP-GD


@dataclass(frozen=True)
class MethodPreset:
    """A method: G's and D's engines (None: that network stays dense), DDST, balance ratio, IMP."""

    name: str
    g: NetworkPreset | None
    d: NetworkPreset | None
    ddst: DDSTPreset | None = None
    imp: IMPPreset | None = None
    br_every: int = 10
    br_window: int = 100

    def scaled(self, steps: int, floor: int = PERIOD_FLOOR) -> "MethodPreset":
        """Every period (ΔT, DDST adjust period, BR period and window) × steps/100k, at least
        ``floor``.

        The DDST adjust period is also kept at least as long as the span the balance-ratio
        window covers (``br_every × br_window`` iterations), as in the papers (1000 = 10 × 100):
        the floors alone would let the controller act ten times on one nearly unchanged window
        and overshoot D's density by ten steps.
        """
        positive_int(steps, "steps")

        def scale(period):
            return max(floor, round(period * steps / PAPER_ITERATIONS))

        br_every, br_window = scale(self.br_every), scale(self.br_window)
        net = lambda p: None if p is None else replace(p, update_every=scale(p.update_every))  # noqa: E731
        ddst = None if self.ddst is None else replace(
            self.ddst, adjust_every=max(scale(self.ddst.adjust_every), br_every * br_window))
        return replace(self, g=net(self.g), d=net(self.d), ddst=ddst, br_every=br_every,
                       br_window=br_window)


_G, _D = 0.2, 0.5
_static = NetworkPreset(method="static", grow="random")
# ADAPT's G: ERK, global magnitude prune + global gradient regrow every 500, p0 0.5 cosine.
_adapt_g = NetworkPreset(method="rigl", selection="global", grow="gradient")

PRESETS: dict[str, MethodPreset] = {p.name: p for p in (
    MethodPreset("static", g=replace(_static, density=_G), d=replace(_static, density=_D)),
    MethodPreset("set", g=NetworkPreset(method="set", density=_G, grow="random", reset_optimizer_state=True),
                 d=NetworkPreset(method="set", density=_D, grow="random", reset_optimizer_state=True)),
    MethodPreset("rigl", g=NetworkPreset(method="rigl", density=_G, reset_optimizer_state=True),
                 d=NetworkPreset(method="rigl", density=_D, reset_optimizer_state=True)),
    # STU-GAN: convs only, ERK, per-layer magnitude prune, G regrows by gradient; D fixed.
    MethodPreset("stu-gan", g=NetworkPreset(method="rigl", density=_G, layer_types=("conv",)),
                 d=replace(_static, density=_D, layer_types=("conv",))),
    MethodPreset("sdst", g=replace(_adapt_g, density=_G), d=replace(_static, density=_D)),
    MethodPreset("ddst", g=replace(_adapt_g, density=0.1),
                 d=replace(_static, density=0.1, selection="global", grow="gradient"),
                 ddst=DDSTPreset()),
    MethodPreset("ddst-strict", g=replace(_adapt_g, density=0.3),
                 d=replace(_static, density=0.3, selection="global", grow="gradient"),
                 ddst=DDSTPreset(adjust_every=2000, cap=0.5)),
    MethodPreset("lottery", g=replace(_static, density=1.0, layer_types=("conv",)), d=None,
                 imp=IMPPreset()),
)}


def get_preset(name: str) -> MethodPreset:
    """The preset called ``name`` (one of ``PRESETS``)."""
    return PRESETS[choice(name, "method", sorted(PRESETS))]
