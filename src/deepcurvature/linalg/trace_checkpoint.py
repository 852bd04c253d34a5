"""Checkpoints of Hutchinson's trace estimator: the samples so far and the probe stream's state.

A checkpoint is a ``torch.save`` dictionary of tensors and plain values, written atomically
(temporary file beside it, then ``os.replace``: a crash never leaves a half-written file) after
every block of probes, and read back with ``torch.load(weights_only=True)`` (no code is run).
A resumed run draws the same probes as an uninterrupted one, so its estimate is bit-identical.
The checkpoint records the operator's fingerprint (see :mod:`.lanczos_state`: matrix kind, ``N``,
a checksum of the parameters...); a checkpoint of another operator is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.atomic import atomic_write
from ..io.errors import invalid_file, unreadable_file
from .lanczos_state import describe_mismatch

__all__ = ["load_trace_checkpoint", "save_trace_checkpoint"]

WHAT = "trace checkpoint"
KEYS = ("format", "P", "probes", "probe", "seed", "block_size", "done", "samples", "rng_state")


def save_trace_checkpoint(
    path: str | os.PathLike,
    *,
    P: int,
    probes: int,
    probe: str,
    seed: int,
    block_size: int,
    samples: np.ndarray,
    generator: torch.Generator,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Write the first ``len(samples)`` quadratic forms ``(done,)`` and the generator state."""
    state = {
        "fingerprint": fingerprint or {},
        "format": "deepcurvature-trace-1",
        "P": int(P),
        "probes": int(probes),
        "probe": probe,
        "seed": int(seed),
        "block_size": int(block_size),
        "done": len(samples),
        "samples": torch.as_tensor(np.asarray(samples, dtype=np.float64)),
        "rng_state": generator.get_state(),
    }
    with atomic_write(path) as fh:
        torch.save(state, fh)


def load_trace_checkpoint(
    path: str | os.PathLike,
    *,
    P: int,
    probes: int,
    probe: str,
    seed: int | None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The state saved at ``path`` (``None`` if there is no file), checked against this run.

    Raises:
        ValueError: the file is not a trace checkpoint, or belongs to another run (a different
            dimension, budget, probe kind or seed), naming the mismatch and the fix.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except OSError as exc:
        raise unreadable_file(path, WHAT, exc) from exc
    except Exception as exc:  # unpickling errors of a foreign or damaged file
        raise invalid_file(
            path, WHAT, f"cannot be loaded: {exc}", "delete it to start over"
        ) from exc
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise invalid_file(path, WHAT, "missing fields", "delete it to start over")
    if state["format"] != "deepcurvature-trace-1":
        raise invalid_file(path, WHAT, f"unknown format {state['format']!r}", "delete it")
    expected = {"P": P, "probes": probes, "probe": probe}
    if seed is not None:
        expected["seed"] = seed
    for key, value in expected.items():
        if state[key] != value:
            raise invalid_file(
                path,
                WHAT,
                f"it belongs to a run with {key}={state[key]!r}, this one has {key}={value!r}",
                "use the same arguments to resume, or another checkpoint path",
            )
    if fingerprint is not None:
        diffs = describe_mismatch(state.get("fingerprint") or {}, fingerprint)
        if diffs:
            raise invalid_file(
                path,
                WHAT,
                f"it was saved for another operator ({', '.join(diffs)})",
                "use the same operator to resume, or another checkpoint path",
            )
    samples = state["samples"]
    if samples.ndim != 1 or samples.shape[0] != state["done"] or state["done"] > probes:
        raise invalid_file(path, WHAT, "inconsistent sample count", "delete it to start over")
    return state
