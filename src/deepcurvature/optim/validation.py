"""Checks of optimiser hyper-parameters: finite numbers, with the obvious signs.

Every number among the arguments (``lr``, ``momentum``, ``betas``...) must be finite; ``lr``,
``damping`` and ``kl_clip`` must be positive; ``weight_decay``, ``momentum``, ``dampening`` and
``eps`` non-negative. A NaN would otherwise pass the usual ``lr <= 0`` tests (every comparison
with NaN is false) and surface much later, e.g. as a run folder whose ``stats.json`` cannot be
written because JSON has no NaN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["check_hyperparameters"]

POSITIVE = ("lr", "damping", "kl_clip")
NON_NEGATIVE = ("weight_decay", "momentum", "dampening", "eps")


def _as_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (or a one-element tensor), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value)
    return None


def check_hyperparameters(owner: str, values: Mapping[str, Any]) -> None:
    """Refuse non-finite numbers and wrong signs among an optimiser's arguments.

    Args:
        owner: the optimiser, for the message (e.g. ``"optimizer 'SGD'"``).
        values: its keyword arguments; numbers, and lists/tuples of numbers (``betas``), are
            checked, anything else is left to the optimiser.

    Raises:
        ValueError: one line naming the argument, its value and the fix.
    """
    for name, value in values.items():
        number = _as_number(value)
        if number is None:
            if isinstance(value, (list, tuple)):
                items = [_as_number(v) for v in value]
                if any(v is not None and not math.isfinite(v) for v in items):
                    raise ValueError(
                        f"{owner}: {name}={value!r} holds a non-finite number: give finite values"
                    )
            continue
        if not math.isfinite(number):
            raise ValueError(
                f"{owner}: {name}={value!r} is not a finite number: give a finite {name}"
            )
        if name in POSITIVE and number <= 0:
            raise ValueError(f"{owner}: {name} must be positive, got {value!r}")
        if name in NON_NEGATIVE and number < 0:
            raise ValueError(f"{owner}: {name} must be non-negative, got {value!r}")
