"""Seeded random probe vectors, generated on the CPU so results do not depend on the device."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["draw_probes", "resolve_seed"]

PROBE_KINDS = ("rademacher", "gaussian")


def resolve_seed(seed: int | None) -> int:
    """Return ``seed``, or a fresh random seed (recorded by callers so any run can be repeated)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}")
    return int(seed)


def draw_probes(
    dim: int,
    count: int,
    *,
    kind: str = "rademacher",
    seed: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``count`` probe vectors of length ``dim``: shape ``(count, dim)``.

    Rademacher entries are +-1 with equal probability, Gaussian entries standard normal; both
    have zero mean and unit variance, as stochastic trace estimation (equation 23) needs.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}: use one of {PROBE_KINDS}")
    if generator is None:
        generator = torch.Generator().manual_seed(resolve_seed(seed))
    if kind == "rademacher":
        z = torch.randint(0, 2, (count, dim), generator=generator, dtype=torch.int8)
        out = z.to(torch.float64).mul_(2).sub_(1)
    else:
        out = torch.randn((count, dim), generator=generator, dtype=torch.float64)
    return out.to(dtype=dtype, device=device)
