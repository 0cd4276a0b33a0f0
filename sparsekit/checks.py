"""Argument checks shared by the layout, the layers and the DST engine: each raises ValueError
naming the argument and what was expected."""

from __future__ import annotations


def number_in(value, name: str, low: float, high: float, *, low_open=False, high_open=False) -> float:
    """``value`` as a float in the interval from ``low`` to ``high`` (open ends as asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def choice(value, name: str, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def density(value, name: str = "density", *, allow_zero: bool = True) -> float:
    """A fraction of a weight's elements kept: a number in [0, 1] (in (0, 1] without
    ``allow_zero``)."""
    return number_in(value, name, 0.0, 1.0, low_open=not allow_zero)
