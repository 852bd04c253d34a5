"""What the eigensolvers (:mod:`.eigsh`, :mod:`.power`) share.

The result type :class:`EigshResult`, the choice of the wanted Ritz values, the stopping
thresholds and the eigenvalue error bounds ``min(r, r^2 / gap)``, the argument checks and the
start vectors.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .operator import LinearOperator, as_operator
from .probes import draw_probes

__all__ = [
    "ACCURACY",
    "WHICH",
    "EigshResult",
    "check_finite",
    "random_orthogonal",
    "residual_threshold",
    "select_wanted",
    "start_vector",
    "threshold",
    "validate_common",
    "value_error_bounds",
]

WHICH = ("LA", "SA", "LM", "BE")
ACCURACY = ("residual", "value")


@dataclass
class EigshResult:
    """Eigenpairs of a symmetric operator, with their true residuals.

    Attributes:
        values: ``(k,)`` float64 eigenvalue estimates, ascending (scipy's order).
        vectors: ``(P, k)`` orthonormal eigenvector estimates, in the operator's dtype and device;
            column ``i`` belongs to ``values[i]``.
        residual_norms: ``(k,)`` float64 true residuals ``||A u_i - theta_i u_i||``, computed with
            one final product of the operator with ``vectors`` (with ``verify=False``: the
            Lanczos estimates ``|beta * s_{m,i}|``, no product).
        n_matvec: number of operator columns applied, the final check (if any) included.
        n_restarts: number of restarts (0 for the exact path and for power iteration).
        converged: whether every pair met the residual criterion.
        which: which eigenvalues were asked for (``"LA"``, ``"SA"``, ``"LM"`` or ``"BE"``).
        tol: the relative residual tolerance.
        seed: the seed of the random vectors (``None`` when a start vector was given without a
            seed; fresh vectors after an invariant subspace then use seed 0).
        method: ``"thick-restart Lanczos"``, ``"dense"`` or ``"power iteration"``.
        warm_matvec: columns of the cheaper operator applied for a warm start (``warm_start=``;
            each costs a fraction of an operator column, e.g. one batch instead of the data set).
    """

    values: np.ndarray
    vectors: torch.Tensor
    residual_norms: np.ndarray
    n_matvec: int
    n_restarts: int
    converged: bool
    which: str
    tol: float
    seed: int | None
    method: str
    warm_matvec: int = 0

    @property
    def relative_residuals(self) -> np.ndarray:
        """``(k,)`` residual norms divided by ``max_i |values_i|`` (the convergence criterion)."""
        scale = float(np.max(np.abs(self.values))) if self.values.size else 0.0
        return self.residual_norms / scale if scale > 0 else self.residual_norms.copy()


def select_wanted(theta: np.ndarray, count: int, which: str) -> np.ndarray:
    """Indices of the ``count`` most wanted values of ``theta`` (most wanted first).

    ``"BE"`` takes ``(count + 1) // 2`` from the top and ``count // 2`` from the bottom, like
    ARPACK, interleaved top, bottom, top, ...
    """
    theta = np.asarray(theta, dtype=np.float64)
    count = min(int(count), theta.size)
    if which == "LA":
        return np.argsort(-theta, kind="stable")[:count]
    if which == "SA":
        return np.argsort(theta, kind="stable")[:count]
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:count]
    hi = np.argsort(-theta, kind="stable")[: (count + 1) // 2]
    lo = np.argsort(theta, kind="stable")[: count // 2]
    out = np.empty(hi.size + lo.size, dtype=np.int64)
    out[0::2], out[1::2] = hi, lo
    return out


def residual_threshold(tol: float, wanted: np.ndarray, anorm: float, P: int, eps: float) -> float:
    """The residual bound ``max(tol * max|theta_wanted|, 10 sqrt(P) eps ||A||)``.

    The second term is the accuracy attainable in the working precision; it only matters when the
    wanted eigenvalues are (close to) zero or ``tol`` is below the precision of the operator.
    """
    scale = float(np.max(np.abs(wanted))) if np.size(wanted) else 0.0
    return max(tol * scale, 10.0 * math.sqrt(P) * eps * anorm)


def threshold(
    tol: float, wanted: np.ndarray, anorm: float, P: int, eps: float, accuracy: str
) -> float | np.ndarray:
    """The bound the residuals (``"residual"``) or eigenvalue errors (``"value"``) must meet.

    ``"residual"``: :func:`residual_threshold` (one number for every wanted pair); ``"value"``:
    one bound per wanted value, ``max(tol * |theta_i|, 4 eps ||A||)``: ``tol`` is the relative
    accuracy of each eigenvalue, down to the accuracy of a Rayleigh quotient in the working
    precision.
    """
    if accuracy == "residual":
        return residual_threshold(tol, wanted, anorm, P, eps)
    return np.maximum(tol * np.abs(np.asarray(wanted, dtype=np.float64)), 4.0 * eps * anorm)


def value_error_bounds(
    theta: np.ndarray, want: np.ndarray, res: np.ndarray, floor: float = 0.0
) -> np.ndarray:
    """Estimated eigenvalue errors ``min(r_i, r_i^2 / gap_i)`` of the wanted Ritz values.

    ``|lambda - theta_i| <= r_i`` always holds for the eigenvalue nearest ``theta_i``; the
    Kato-Temple bound ``r_i^2 / gap_i`` holds when ``gap_i`` is the distance from ``theta_i`` to the
    rest of the spectrum, estimated here by the distance to the nearest other Ritz value (the
    usual practice of ARPACK-style solvers, an estimate rather than a guarantee).

    Args:
        theta: ``(m,)`` all Ritz values of the current basis.
        want: ``(k,)`` indices of the wanted ones in ``theta``.
        res: ``(k,)`` their residual norms (estimates or true), in the order of ``want``.
        floor: the attainable residual (:func:`residual_threshold` with ``tol = 0``); a pair
            whose residual is at or below it cannot improve and gets the estimate 0.

    Returns:
        ``(k,)`` float64 error estimates, in the order of ``want``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    res = np.asarray(res, dtype=np.float64)
    if theta.size < 2:
        return np.where(res <= floor, 0.0, res)
    out = np.empty(len(want))
    for n, i in enumerate(want):
        gap = float(np.min(np.abs(np.delete(theta, i) - theta[i])))
        out[n] = min(res[n], res[n] ** 2 / gap) if gap > 0 else res[n]
    out[res <= floor] = 0.0
    return out


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``FloatingPointError`` naming ``what`` if ``x`` has NaN or infinity."""
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"the operator returned a non-finite product ({what}); check the operator "
            "(model, loss, data) for NaN or infinity"
        )


def validate_common(op: Any, k: int, tol: float) -> LinearOperator:
    """Shared argument checks of :func:`eigsh` and :func:`~.power.power_iteration`."""
    op = as_operator(op)
    if op.symmetric is False:
        raise ValueError(
            "eigenpairs need a symmetric operator, but the matrix is not symmetric; "
            "symmetrise it with (A + A.T) / 2 if that is what you mean"
        )
    P = op.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (number of eigenpairs), got {k!r}")
    if k > P:
        raise ValueError(f"k={k} eigenpairs asked for, but the operator has only P={P}; use k <= P")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if not math.isfinite(tol):
        raise ValueError(f"tol must be finite, got {tol!r}")
    return op


def start_vector(op: LinearOperator, start: Any, generator: torch.Generator) -> torch.Tensor:
    """The normalised start vector ``(P,)``: ``start``, or a Gaussian draw when ``None``."""
    P = op.shape[0]
    if start is None:
        v = draw_probes(P, 1, kind="gaussian", generator=generator)[0]
    else:
        v = start if isinstance(start, torch.Tensor) else torch.as_tensor(np.asarray(start))
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.ndim != 1 or v.shape[0] != P:
            raise ValueError(f"start must have shape (P,) with P = {P}, got {tuple(v.shape)}")
        v = v.to(torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise ValueError("the start vector contains NaN or infinity")
    nrm = torch.linalg.vector_norm(v)
    if nrm == 0:
        raise ValueError("the start vector is zero: pass a non-zero start vector")
    return (v / nrm).to(dtype=op.dtype, device=op.device)


def random_orthogonal(
    basis: torch.Tensor, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A random unit vector orthogonal to the rows of ``basis`` (j, P)."""
    P = basis.shape[1]
    for _ in range(10):
        v = draw_probes(P, 1, kind="gaussian", generator=generator)[0].to(
            dtype=dtype, device=device
        )
        for _ in range(2):
            v = v - basis.T @ (basis @ v)
        nrm = torch.linalg.vector_norm(v)
        if nrm > 1e-3:  # a Gaussian vector keeps ~sqrt(P - j) of its norm; this never fails twice
            return v / nrm
    raise RuntimeError("could not draw a vector orthogonal to the basis")  # pragma: no cover
