"""Checkpoints of :func:`~.eigsh.eigsh`: continue a long thick-restart Lanczos solve bit for bit.

``eigsh(op, k, checkpoint="eig.pt", checkpoint_every=10)`` writes, every ``checkpoint_every``
operator applications and atomically, the whole state of the Krylov-Schur loop at the top of an
iteration: the basis ``Q`` ``(ncv + 1, P)`` (the size of the Krylov basis: ``ncv`` vectors, the
same memory as the solve itself), the projected matrix ``H`` ``(ncv, ncv)``, the arrowhead
coupling, the residual norm ``beta``, the counters, the generator of the fresh vectors after an
invariant subspace, and the last confirmed Ritz pairs. A run that finds the file continues from
it, after checking the operator's fingerprint (see :mod:`.lanczos_state`: matrix kind, ``N``,
a digest of the parameters, ...) and the settings (``k``, ``which``, ``tol``, ``ncv``,
``max_steps``, ``accuracy``, ``verify``, ``seed``, the start vector, the warm start); the
continued run applies the same products in the same order, so its result is bitwise identical to
an uninterrupted one. The file is read with ``torch.load(weights_only=True)`` and removed when
the solve ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["EIGSH_STATE_KIND", "EIGSH_WHAT", "KrylovSchurLoop", "eigsh_settings"]

EIGSH_STATE_KIND = "deepcurvature.eigsh_state"
EIGSH_WHAT = "eigsh state"


def eigsh_settings(
    k: int,
    which: str,
    tol: float,
    ncv: int,
    max_steps: int,
    accuracy: str,
    verify: bool,
    seed: int | None,
    start: str | None,
    warm_start: str | None,
) -> dict[str, Any]:
    """The arguments a continued solve must share with the saved one (plain values)."""
    return {
        "k": int(k),
        "which": which,
        "tol": float(tol),
        "ncv": int(ncv),
        "max_steps": int(max_steps),
        "accuracy": accuracy,
        "verify": bool(verify),
        "seed": seed,
        "start": start,
        "warm_start": warm_start,
    }


@dataclass
class KrylovSchurLoop:
    """The variables of the thick-restart loop at the top of an iteration.

    Attributes:
        Q: ``(ncv + 1, P)`` basis vectors as rows (the first ``j + 1`` are current).
        H: ``(ncv, ncv)`` float64 projected matrix.
        j: number of basis vectors whose column of ``H`` is complete.
        nkeep: Ritz vectors kept at the last restart.
        coupling: ``(nkeep,)`` the arrowhead ``H[nkeep, :nkeep]``.
        beta: norm of the residual ``f = beta Q[j]``.
        anorm: running estimate of ``||A||_2``.
        broke_in_cycle: an invariant subspace was met since the last restart.
        n_matvec: operator columns applied.
        n_restarts: restarts so far.
        fresh_check: ``U``, ``vals``, ``res`` belong to the current basis.
        U: ``(P, k)`` the last confirmed Ritz vectors (``None`` before any check).
        vals: ``(k,)`` their values.
        res: ``(k,)`` their residuals.
        warm_matvec: columns of the warm-start operator applied before the loop.
    """

    Q: torch.Tensor
    H: np.ndarray
    j: int
    nkeep: int
    coupling: np.ndarray
    beta: float
    anorm: float
    broke_in_cycle: bool
    n_matvec: int
    n_restarts: int
    fresh_check: bool
    U: torch.Tensor | None
    vals: np.ndarray
    res: np.ndarray
    warm_matvec: int = 0

    def to_state(self, generator: torch.Generator) -> dict[str, Any]:
        """The loop as tensors and plain values (for :func:`~.lanczos_state.save_state`)."""
        return {
            "Q": self.Q,  # the whole storage: rows past j are overwritten before they are read
            "H": torch.from_numpy(np.ascontiguousarray(self.H)),
            "j": int(self.j),
            "nkeep": int(self.nkeep),
            "coupling": torch.from_numpy(np.asarray(self.coupling, dtype=np.float64).copy()),
            "beta": float(self.beta),
            "anorm": float(self.anorm),
            "broke_in_cycle": bool(self.broke_in_cycle),
            "n_matvec": int(self.n_matvec),
            "n_restarts": int(self.n_restarts),
            "fresh_check": bool(self.fresh_check),
            "U": self.U if self.fresh_check else None,
            "vals": torch.from_numpy(np.asarray(self.vals, dtype=np.float64).copy()),
            "res": torch.from_numpy(np.asarray(self.res, dtype=np.float64).copy()),
            "warm_matvec": int(self.warm_matvec),
            "rng_state": generator.get_state(),
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> KrylovSchurLoop:
        """The loop of a saved state (copied out of the memory-mapped file); sets ``generator``."""
        generator.set_state(state["rng_state"])
        U = state.get("U")
        return cls(
            Q=state["Q"].to(device=device, dtype=dtype, copy=True),
            H=state["H"].numpy().copy(),
            j=int(state["j"]),
            nkeep=int(state["nkeep"]),
            coupling=state["coupling"].numpy().copy(),
            beta=float(state["beta"]),
            anorm=float(state["anorm"]),
            broke_in_cycle=bool(state["broke_in_cycle"]),
            n_matvec=int(state["n_matvec"]),
            n_restarts=int(state["n_restarts"]),
            fresh_check=bool(state["fresh_check"]),
            U=None if U is None else U.to(device=device, dtype=dtype, copy=True),
            vals=state["vals"].numpy().copy(),
            res=state["res"].numpy().copy(),
            warm_matvec=int(state["warm_matvec"]),
        )
