"""A checkpoint of the Lanczos recurrence, so that a long run can stop and continue bit for bit.

:func:`lanczos` with ``checkpoint="state.pt"`` writes, every ``checkpoint_every`` steps and
atomically (a temporary file in the same folder, then ``os.replace``), everything the recurrence
needs to continue: the tridiagonal coefficients, the breakdown bookkeeping, the start norms, the
step times and memory, and the basis (in the file for a memory or host basis; for a disk basis the
memory-mapped file's path, size and a digest of its used part). It also records what the run was
computed on, the *fingerprint*, so that a state is never continued on another matrix:

* every operator: its class, ``P``, ``dtype`` and product dtype;
* a curvature operator (``dc.hessian``...): its ``metadata`` (matrix kind, parameters, loss,
  batch-norm mode, weight decay; the device is left out), the number of samples ``N`` and a
  digest of the model parameters (``parameters_vector()``, read once: no data pass);
* a dense matrix: a digest of its entries (one read of the matrix); a scipy sparse matrix: of its
  stored entries and indices; a shifted operator: the shift, the scale and the inner operator's;
* any other operator (a callable, a scipy ``LinearOperator``): only class, shape and dtype, since
  nothing cheaper than a product identifies it: the caller must continue it on the same function.

The file holds tensors, numbers, strings, lists and dicts only and is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

from ..io.atomic import atomic_write
from .operator import DenseOperator, ScipyOperator, ShiftedOperator

__all__ = [
    "STATE_KIND",
    "Recurrence",
    "check_checkpoint_every",
    "check_state",
    "describe_mismatch",
    "load_state",
    "operator_fingerprint",
    "save_state",
    "tensor_digest",
]

STATE_KIND = "deepcurvature.lanczos_state"
STATE_FORMAT = 1


def tensor_digest(t: torch.Tensor) -> str:
    """A digest of a tensor's bytes (any dtype, any device: copied to the host once)."""
    flat = t.detach().reshape(-1).contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(str(t.dtype).encode())
    h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def _array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(str(a.dtype).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def operator_fingerprint(op: Any) -> dict[str, Any]:
    """What identifies ``op`` without a product (module docstring); JSON-like values only."""
    fp: dict[str, Any] = {
        "class": type(op).__name__,
        "P": int(op.shape[0]),
        "dtype": str(op.dtype).removeprefix("torch."),
        "product_dtype": str(op.product_dtype).removeprefix("torch."),
    }
    meta = getattr(op, "metadata", None)
    meta = meta() if callable(meta) else meta
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k != "device"}
        fp["metadata"] = json.loads(json.dumps(meta, default=str))
    if hasattr(op, "num_samples"):
        try:
            fp["N"] = int(op.num_samples)
        except Exception:  # an operator that cannot count its data: not part of the identity
            fp["N"] = None
    params = getattr(op, "parameters_vector", None)
    if callable(params):
        fp["parameters"] = tensor_digest(params())
    elif isinstance(op, DenseOperator):
        fp["matrix"] = tensor_digest(op.matrix)
    elif isinstance(op, ScipyOperator) and scipy.sparse.issparse(op.matrix):
        csr = scipy.sparse.csr_matrix(op.matrix)
        fp["matrix"] = _array_digest(csr.data, csr.indices, csr.indptr)
    elif isinstance(op, ShiftedOperator):
        fp["scale"], fp["shift"] = op.scale, op.shift
        fp["inner"] = operator_fingerprint(op.op)
    return fp


_NAMES = {
    "parameters": "the model parameters",
    "N": "the number of samples N",
    "P": "the dimension P",
    "dtype": "the operator dtype",
    "product_dtype": "the product dtype",
    "class": "the operator class",
    "matrix": "the matrix entries",
    "scale": "the scale",
    "shift": "the shift",
    "curvature": "the matrix kind",
}


def describe_mismatch(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The differences between two fingerprints (or run settings), in words."""
    out: list[str] = []
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_mismatch(a, b, prefix)
            continue
        name = prefix + _NAMES.get(key, key)
        if key in ("parameters", "matrix"):
            out.append(f"{name} differ")
        else:
            out.append(f"{name} ({_short(a)} saved, {_short(b)} now)")
    return out


def _short(x: Any) -> str:
    text = str(x)
    return text if len(text) <= 60 else text[:57] + "..."


def check_checkpoint_every(value: Any) -> int:
    """``checkpoint_every`` of a resumable run: a positive integer, else one ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {value!r}")
    return int(value)


def save_state(path: str | os.PathLike, state: dict[str, Any], kind: str = STATE_KIND) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then ``os.replace``).

    ``kind`` names what the state continues (a Lanczos run; :mod:`.eigsh_state` for eigsh).
    """
    state = {"kind": kind, "format": STATE_FORMAT, **state}
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)


def load_state(
    path: str | os.PathLike, kind: str = STATE_KIND, what: str = "Lanczos state"
) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (``weights_only=True``, tensors memory-mapped).

    Raises:
        ValueError: the file is not a state of ``kind`` (a model checkpoint, garbage...).
    """
    path = Path(path)
    a = "an" if what[:1] in "aeiou" else "a"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not {a} {what} file ({type(exc).__name__}): pass another "
            "checkpoint path (it is left untouched)"
        ) from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise ValueError(
            f"{path} is not {a} {what} file: pass another checkpoint path (it is left untouched)"
        )
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{path} is a {what} of format {state.get('format')}, this version reads "
            f"format {STATE_FORMAT}: delete it to start afresh"
        )
    return state


_RUN_NAMES = {
    "steps": "steps",
    "probes": "probes",
    "probe": "probe kind",
    "seed": "seed",
    "start": "the start vectors",
    "basis_dtype": "basis_dtype",
    "breakdown_tol": "breakdown_tol",
    "basis_in": "basis storage ('file' is basis='disk')",
    "basis_chunk": "basis_chunk",
}


def check_state(
    state: dict[str, Any],
    path: Path,
    fingerprint: dict[str, Any],
    settings: dict[str, Any],
    what: str = "Lanczos state",
) -> None:
    """Refuse, in one line naming what differs and the fix, a state saved for another run."""
    diffs = describe_mismatch(state.get("fingerprint") or {}, fingerprint)
    saved_run = state.get("run") or {}
    for key in sorted(set(saved_run) | set(settings)):
        a, b = saved_run.get(key), settings.get(key)
        if a != b:
            name = _RUN_NAMES.get(key, key)
            diffs.append(f"{name} differ" if key == "start" else f"{name} ({a} saved, {b} now)")
    if diffs:
        raise ValueError(
            f"the {what} {path} was saved for another run: {', '.join(diffs)}; delete "
            f"{path} to start afresh, or pass the original arguments"
        )
    info = state.get("basis_file")
    if info is not None and not Path(info["path"]).is_file():
        raise ValueError(
            f"the Lanczos state {path} keeps its basis in {info['path']}, which is missing: "
            f"delete {path} to start afresh"
        )


@dataclass
class Recurrence:
    """The bookkeeping of :func:`lanczos` between steps, for ``k`` probes and ``m`` steps.

    Attributes:
        alphas, betas: ``(k, m)`` float64 coefficients (columns ``< done`` are final).
        scale: ``(k,)`` running estimate of ``||T||`` (relative breakdown test).
        active, broke: ``(k,)`` probes still running / stopped at an invariant subspace.
        done_steps: ``(k,)`` steps per probe (``m`` unless it broke down).
        norms0: ``(k,)`` norms of the start vectors.
        done: steps completed.
        step_times, step_memory, memory_kind: as in :class:`LanczosResult`.
        residuals: ``(k, P)`` the last ``w`` (``store_vectors`` only).
        saved: whether this call wrote a state.
    """

    alphas: np.ndarray
    betas: np.ndarray
    scale: np.ndarray
    active: np.ndarray
    broke: np.ndarray
    done_steps: np.ndarray
    norms0: torch.Tensor | None = None
    done: int = 0
    step_times: list[float] = field(default_factory=list)
    step_memory: list[int] = field(default_factory=list)
    memory_kind: str | None = None
    residuals: torch.Tensor | None = None
    saved: bool = False

    @classmethod
    def fresh(cls, k: int, steps: int) -> Recurrence:
        """The state before the first step."""
        return cls(
            alphas=np.zeros((k, steps)),
            betas=np.zeros((k, steps)),
            scale=np.zeros(k),
            active=np.ones(k, dtype=bool),
            broke=np.zeros(k, dtype=bool),
            done_steps=np.full(k, steps, dtype=np.int64),
        )

    @classmethod
    def restore(cls, state: dict[str, Any], dim: int) -> Recurrence:
        """The recurrence of a loaded state (the basis is restored by :meth:`restore_basis`)."""

        def arr(name: str) -> np.ndarray:
            return state[name].numpy().copy()

        return cls(
            alphas=arr("alphas"),
            betas=arr("betas"),
            scale=arr("scale"),
            active=arr("active"),
            broke=arr("broke"),
            done_steps=arr("done_steps"),
            norms0=state["start_norms"].clone(),
            done=int(state["done"]),
            step_times=[float(t) for t in state["step_times"]],
            step_memory=[int(b) for b in state["step_memory"]],
            memory_kind=state.get("memory_kind"),
        )

    def restore_basis(self, basis: Any, state: dict[str, Any]) -> None:
        """Fill ``basis`` with the state's ``done + 1`` vectors (checked)."""
        n = self.done + 1
        info = state.get("basis_file")
        if info is not None:
            if int(info["vectors"]) != n:
                raise ValueError("the Lanczos state's basis file record is inconsistent")
            basis.restore_file(n, info["digest"])
        else:
            basis.restore(state.get("basis_vectors"), n)

    def state_dict(
        self,
        basis: Any,
        done: int,
        step_times: list[float],
        fingerprint: dict[str, Any] | None,
        settings: dict[str, Any],
    ) -> dict[str, Any]:
        """What :func:`save_state` writes after ``done`` steps (basis: ``done + 1`` vectors)."""
        n = done + 1
        basis.flush()
        file_info = None
        if basis.kind == "disk":
            file_info = {
                "path": str(Path(basis.path).resolve()),
                "bytes": int(basis.nbytes),
                "digest": basis.digest(),
                "vectors": n,
            }
        assert self.norms0 is not None
        return {
            "fingerprint": fingerprint,
            "run": settings,
            "done": int(done),
            "alphas": torch.from_numpy(self.alphas),
            "betas": torch.from_numpy(self.betas),
            "scale": torch.from_numpy(self.scale),
            "active": torch.from_numpy(self.active),
            "broke": torch.from_numpy(self.broke),
            "done_steps": torch.from_numpy(self.done_steps),
            "start_norms": self.norms0.detach().cpu(),
            "step_times": [float(t) for t in step_times],
            "step_memory": [int(b) for b in self.step_memory],
            "memory_kind": self.memory_kind,
            "basis_vectors": basis.used_vectors(n),
            "basis_file": file_info,
        }
