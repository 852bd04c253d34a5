"""Learning-rate schedules: the factor that multiplies the initial learning rate ``alpha_0``.

A schedule is called with ``t`` and knows its horizon ``T`` (``total``); it returns the factor
``alpha_t / alpha_0``. :func:`train_network` uses the *epoch index at the start of the epoch*:
epoch ``e = 0, 1, ..., T - 1`` trains with ``alpha_0 * schedule(e)`` where ``T = epochs``.
The same objects work per iteration: pass the global iteration index as ``t`` and the total
number of iterations as ``total`` (``schedule_unit="iteration"`` in :func:`train_network`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_schedule",
    "get_schedule",
    "linear_schedule",
    "list_schedules",
    "step_schedule",
]


def linear_schedule(t: float, total: float, r: float = 0.01) -> float:
    """Equation 11 of the paper: flat, linear decay between t/T = 0.5 and 0.9, flat again.

    ``alpha_t / alpha_0 = 1`` if ``t/T <= 0.5``; ``1 - (1 - r)(t/T - 0.5) / 0.4`` if
    ``0.5 < t/T <= 0.9``; ``r`` otherwise.
    """
    u = t / total
    if u <= 0.5:
        return 1.0
    if u <= 0.9:
        return 1.0 - (1.0 - r) * (u - 0.5) / 0.4
    return float(r)


def constant_schedule(t: float, total: float) -> float:
    """The constant factor 1."""
    return 1.0


def step_schedule(
    t: float, total: float, milestones: Sequence[float] | None = None, gamma: float = 0.1
) -> float:
    """``gamma ** k`` where ``k`` is the number of milestones ``<= t``.

    ``milestones`` are values of ``t`` (epochs, or iterations when used per iteration); the
    default is ``(T / 2, 3 T / 4)``.
    """
    if milestones is None:
        milestones = (0.5 * total, 0.75 * total)
    k = sum(1 for m in milestones if t >= m)
    return float(gamma**k)


def cosine_schedule(t: float, total: float, r: float = 0.0) -> float:
    """Cosine annealing from 1 at ``t = 0`` to ``r`` at ``t = T``.

    ``alpha_t / alpha_0 = r + (1 - r)(1 + cos(pi t / T)) / 2``.
    """
    u = min(max(t / total, 0.0), 1.0)
    return float(r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * u)))


_SCHEDULES: dict[str, tuple[Callable[..., float], tuple[str, ...]]] = {
    "linear": (linear_schedule, ("r",)),
    "constant": (constant_schedule, ()),
    "step": (step_schedule, ("milestones", "gamma")),
    "cosine": (cosine_schedule, ("r",)),
}


def list_schedules() -> list[str]:
    """Names accepted by :func:`get_schedule`."""
    return sorted(_SCHEDULES)


@dataclass
class Schedule:
    """A named schedule with its horizon: ``schedule(t)`` is the learning-rate factor at ``t``.

    Attributes:
        name: ``"linear"``, ``"constant"``, ``"step"``, ``"cosine"`` or ``"custom"``.
        total: the horizon ``T`` (epochs or iterations).
        kwargs: the schedule's parameters (``r``; ``milestones``, ``gamma``).
        fn: the function ``fn(t, total, **kwargs)``.
    """

    name: str
    total: float
    kwargs: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., float] | None = None

    def __call__(self, t: float) -> float:
        """The factor ``alpha_t / alpha_0`` at ``t``."""
        return float(self.fn(t, self.total, **self.kwargs))

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (name and parameters)."""
        kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.kwargs.items()}
        return {"name": self.name, "total": self.total, "kwargs": kw}


def get_schedule(
    name: str | Callable[[float, float], float], total: float, **kwargs: Any
) -> Schedule:
    """Build a schedule by name (case-insensitive) or wrap a function ``f(t, total) -> factor``.

    Args:
        name: one of :func:`list_schedules` or a callable.
        total: the horizon ``T > 0``.
        **kwargs: the schedule's parameters, e.g. ``r=0.01`` for ``"linear"``.

    Raises:
        ValueError: unknown name, bad horizon or unknown parameter (the message lists the
            valid ones).
    """
    if not (isinstance(total, (int, float)) and total > 0):
        raise ValueError(f"the schedule horizon must be a positive number, got {total!r}")
    if callable(name):
        return Schedule("custom", total, dict(kwargs), lambda t, T, **kw: name(t, T, **kw))
    key = str(name).lower()
    if key not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: use one of {list_schedules()}")
    fn, allowed = _SCHEDULES[key]
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise ValueError(
            f"schedule {key!r} does not take {bad}: its parameters are {list(allowed) or 'none'}"
        )
    if "r" in kwargs and not 0 <= kwargs["r"] <= 1:
        raise ValueError(f"the final learning-rate ratio r must be in [0, 1], got {kwargs['r']}")
    if "milestones" in kwargs and kwargs["milestones"] is not None:
        kwargs["milestones"] = tuple(float(m) for m in kwargs["milestones"])
    return Schedule(key, total, dict(kwargs), fn)
