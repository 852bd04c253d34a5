"""Damped linear systems ``(A + lam I) x = b`` and matrix functions ``f(A) b`` on any operator.

Three Krylov methods, each running the ``k`` columns of ``b`` as independent recurrences whose
products share ONE ``op.matmat`` per step (one pass over the data for a network operator); a
column that has converged stops updating and leaves the shared product:

* ``"cg"``: conjugate gradients, for a positive definite ``A + lam I`` (a GGN or Fisher plus
  damping); a direction with ``p^T (A + lam I) p <= 0`` stops it with a ``ValueError``;
* ``"minres"``: the minimum-residual method (Paige and Saunders 1975) for symmetric indefinite
  systems (the Hessian): Lanczos plus Givens rotations, the residual norm non-increasing;
* ``"lanczos"``: ``x = Q f(T) Q^T b`` with ``Q, T`` from Lanczos started at ``b`` with full
  reorthogonalisation (two classical Gram-Schmidt passes) and ``f(theta) = 1 / (theta + lam)``;
  :func:`matrix_function` is the same route for other ``f``: ``1 / (|theta| + lam)`` (saddle-free
  Newton steps), ``(theta + lam)^(-1/2)`` or any function of the Ritz values.

Scalars are float64 whatever the operator's dtype; every solve ends with one product that gives the
TRUE relative residuals ``||(A + lam I) x - b|| / ||b||`` (not the recurrence's estimates).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..progress import ProgressBar
from .krylov import (
    _cg,
    _change_stop,
    _col_norms,
    _inverse_stop,
    _lanczos_function,
    _minres,
    _product,
)
from .operator import LinearOperator, as_operator, refuse_complex
from .solve_result import FUNCTIONS, MatrixFunctionResult, SolveResult

__all__ = [
    "FUNCTIONS",
    "METHODS",
    "MatrixFunctionResult",
    "SolveResult",
    "matrix_function",
    "solve",
]

#: The methods of :func:`solve`.
METHODS = ("cg", "minres", "lanczos")


# ------------------------------------------------------------------------------------------------
# argument checks


def _check_rhs(b: Any, op: LinearOperator) -> tuple[torch.Tensor, bool]:
    """``b`` as a ``(P, k)`` tensor in the operator's dtype and device; whether it was 1-D."""
    if isinstance(b, np.ndarray):
        if np.iscomplexobj(b):
            raise refuse_complex(f"b (a {b.dtype} array)")
        b = torch.as_tensor(b)
    if not isinstance(b, torch.Tensor):
        raise TypeError(
            f"b must be a torch.Tensor or numpy array of shape (P,) or (P, k), got "
            f"{type(b).__name__}; convert with torch.as_tensor(b, dtype=torch.float64)"
        )
    if b.is_complex():
        raise refuse_complex(f"b (a {b.dtype} tensor)")
    if not b.dtype.is_floating_point:
        raise TypeError(
            f"b must be a floating tensor, got {b.dtype}; convert it explicitly, e.g. "
            f"b.to({op.dtype})"
        )
    P = op.shape[0]
    if b.ndim not in (1, 2) or b.shape[0] != P or (b.ndim == 2 and b.shape[1] < 1):
        raise ValueError(
            f"b must have shape (P,) or (P, k) with P = {P} (the operator's size) and k >= 1, "
            f"got shape {tuple(b.shape)}"
        )
    vector = b.ndim == 1
    B = b.detach().to(dtype=op.dtype, device=op.device)
    B = B.unsqueeze(1) if vector else B
    if not bool(torch.isfinite(B).all()):
        bad = int((~torch.isfinite(B)).sum())
        raise ValueError(
            f"b is not finite: {bad} of its entries are NaN or infinite (after conversion to "
            f"{op.dtype}); find where they come from, or replace them (torch.nan_to_num)"
        )
    return B.clone(), vector


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_tol(tol: Any) -> float:
    value = _check_real(tol, "tol")
    if value <= 0:
        raise ValueError(f"tol must be positive (a relative tolerance, e.g. 1e-8), got {tol!r}")
    return value


def _check_steps(steps: Any, name: str, default: int) -> int:
    if steps is None:
        return default
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(
            f"{name} must be a positive integer (or None for {default}), got {steps!r}"
        )
    return int(steps)


def _check_operator(op: Any) -> LinearOperator:
    op = as_operator(op)
    if op.symmetric is False:
        raise ValueError(
            "these Krylov methods need a symmetric operator, but the matrix is not symmetric; "
            "symmetrise it with (A + A.T) / 2 if that is what you mean"
        )
    return op


# ------------------------------------------------------------------------------------------------
# the public functions


def solve(
    op: Any,
    b: Any,
    *,
    damping: float = 0.0,
    method: str = "cg",
    tol: float = 1e-6,
    max_steps: int | None = None,
    verbose: bool = True,
) -> SolveResult:
    """Solve ``(A + damping I) x = b`` for ``b`` of shape ``(P,)`` or ``(P, k)``.

    The ``k`` columns run as independent recurrences sharing one ``op.matmat`` per step; a column
    stops when its residual estimate is ``<= tol ||b||``. The result's residuals are the TRUE ones,
    from one final product.

    Args:
        op: a :class:`LinearOperator` (a Hessian, GGN or Fisher operator) or anything
            :func:`as_operator` takes (dense torch/numpy matrix, scipy matrix, callable with
            ``shape``); ``(P, P)`` symmetric.
        b: right-hand sides ``(P,)`` or ``(P, k)``, a floating torch tensor or numpy array; it is
            converted to the operator's dtype and device. Integer, boolean and complex ``b`` are
            refused (convert explicitly).
        damping: ``lam >= 0`` for ``"cg"``; any finite real for the others.
        method: ``"cg"`` (``A + lam I`` positive definite), ``"minres"`` (symmetric indefinite)
            or ``"lanczos"`` (``x = Q (T + lam I)^{-1} Q^T b``, full reorthogonalisation).
        tol: relative residual tolerance, ``> 0``.
        max_steps: most steps per column (default ``P`` for ``"lanczos"``, which never runs more,
            and ``10 P`` for the others).
        verbose: show a progress bar.

    Returns:
        A :class:`SolveResult` (``x`` has the shape of ``b``); a warning says when a column did
        not converge.

    Raises:
        ValueError: an unknown method, bad ``tol``/``max_steps``/``damping``, ``b`` of the wrong
            shape or not finite, a non-symmetric matrix, or (``"cg"``) ``A + lam I`` not positive
            definite along a search direction (naming the step: use ``"minres"`` or more damping).
        TypeError: ``b`` is not a floating tensor/array, or is complex.
        FloatingPointError: the operator's product is not finite.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    op = _check_operator(op)
    damping = _check_real(damping, "damping")
    if method == "cg" and damping < 0:
        raise ValueError(
            f"damping must be >= 0 for method='cg' (A + λI must be positive definite), got "
            f"{damping!r}; use method='minres' for an indefinite system"
        )
    tol = _check_tol(tol)
    P = op.shape[0]
    max_steps = _check_steps(max_steps, "max_steps", P if method == "lanczos" else 10 * P)
    if method == "lanczos":
        max_steps = min(max_steps, P)  # the Krylov space is invariant after P steps
    B, vector = _check_rhs(b, op)
    k = B.shape[1]
    with ProgressBar(max_steps, f"solve ({method})", verbose=verbose) as bar:
        if method == "cg":
            X, iters, est = _cg(op, B, damping, tol, max_steps, bar)
        elif method == "minres":
            X, iters, est = _minres(op, B, damping, tol, max_steps, bar)
        else:
            inverse = _named_function("inverse", damping, float(torch.finfo(op.dtype).eps))
            X, iters, est, _ = _lanczos_function(op, B, inverse, max_steps, _inverse_stop(tol), bar)
    nb = _col_norms(B)
    R = _product(op, X, int(iters.max()) + 1) + damping * X - B  # the one final check
    rel = (_col_norms(R) / torch.where(nb > 0, nb, 1.0)).cpu().numpy()
    nb_np = nb.cpu().numpy()
    est_rel = np.where(nb_np > 0, est / np.where(nb_np > 0, nb_np, 1.0), 0.0)
    converged = rel <= tol
    if not converged.all():
        bad = np.flatnonzero(~converged)
        warnings.warn(
            f"solve by {method} did not converge for {bad.size} of {k} columns (largest true "
            f"relative residual {rel.max():.3e} > tol {tol:.1e} after {int(iters.max())} steps); "
            "raise max_steps, add damping, or loosen tol to the operator's precision",
            RuntimeWarning,
            stacklevel=2,
        )
    return SolveResult(
        x=X.squeeze(1) if vector else X,
        residual_norms=rel.astype(np.float64),
        residual_estimates=est_rel.astype(np.float64),
        iterations=iters,
        n_products=int(iters.sum()) + k,
        n_matmat=int(iters.max()) + 1,
        column_converged=converged,
        method=method,
        damping=damping,
        tol=tol,
        max_steps=max_steps,
    )


def _reciprocal(d: np.ndarray, theta: np.ndarray, damping: float, eps: float) -> np.ndarray:
    """``1 / d``, infinite where ``|d|`` is round-off of ``max(|theta|, |damping|)`` (a pole)."""
    scale = max(float(np.max(np.abs(theta))), abs(damping))
    pole = np.abs(d) <= 1e3 * eps * scale
    with np.errstate(divide="ignore"):
        return np.where(pole, np.inf, 1.0 / np.where(pole, 1.0, d))


def _named_function(fn: str, damping: float, eps: float) -> Callable[[np.ndarray], np.ndarray]:
    """The named ``f`` of :data:`FUNCTIONS`; ``eps`` is the operator's rounding unit."""
    if fn == "inverse":
        return lambda t: _reciprocal(t + damping, t, damping, eps)
    if fn == "abs_inverse":
        if damping < 0:
            raise ValueError(
                f"damping must be >= 0 for fn='abs_inverse' (1 / (|θ| + λ)), got {damping!r}"
            )
        return lambda t: _reciprocal(np.abs(t) + damping, t, damping, eps)
    if fn == "inverse_sqrt":

        def inverse_sqrt(t: np.ndarray) -> np.ndarray:
            shifted = t + damping
            if np.any(shifted <= 0):
                raise ValueError(
                    f"fn='inverse_sqrt' needs A + λI positive definite, but T + λI has the "
                    f"eigenvalue {shifted.min():.3e} <= 0 (λ = {damping:g}); add damping, or "
                    "use fn='abs_inverse'"
                )
            return np.sqrt(_reciprocal(shifted, t, damping, eps))

        return inverse_sqrt
    raise ValueError(f"fn must be one of {tuple(FUNCTIONS)} or a callable, got {fn!r}")


def matrix_function(
    op: Any,
    b: Any,
    fn: str | Callable[[np.ndarray], np.ndarray] = "inverse",
    *,
    damping: float = 0.0,
    steps: int | None = None,
    tol: float | None = 1e-10,
    verbose: bool = True,
) -> MatrixFunctionResult:
    """``f(A) b ≈ ||b|| Q f(T) e_1`` by Lanczos from ``b`` with full reorthogonalisation.

    ``Q`` ``(P, m)`` and the tridiagonal ``T`` ``(m, m)`` come from ``m`` Lanczos steps started at
    each column of ``b`` (the columns share one ``op.matmat`` per step); ``f(T)`` is formed from
    the eigendecomposition of ``T`` in float64 (``eigh_tridiagonal``). Exact once the Krylov space
    is invariant (at the latest after ``P`` steps).

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes; symmetric.
        b: ``(P,)`` or ``(P, k)`` floating tensor or array (converted to the operator's dtype).
        fn: ``"inverse"`` ``1/(θ+λ)``, ``"abs_inverse"`` ``1/(|θ|+λ)`` (saddle-free Newton),
            ``"inverse_sqrt"`` ``(θ+λ)^(-1/2)`` (needs ``A + λI`` positive definite), or a
            callable mapping a float64 array of Ritz values of ``A`` to ``f`` of them (fold any
            damping into it: ``damping`` must then be 0).
        damping: ``λ`` of the named functions.
        steps: most Lanczos steps per column (default and cap: ``P``).
        tol: a column stops when its relative change ``||x_m - x_{m-1}|| / ||x_m||`` is
            ``<= tol`` (an estimate of the error); ``None`` runs all ``steps`` steps.
        verbose: show a progress bar.

    Returns:
        A :class:`MatrixFunctionResult` (``x`` has the shape of ``b``).

    Raises:
        ValueError: an unknown ``fn``, damping with a callable, bad ``steps``/``tol``/``b``,
            ``f(T)`` not finite (a Ritz value at a pole of ``f``), or ``inverse_sqrt`` of a
            matrix that is not positive definite.
        TypeError: ``b`` is not a floating tensor/array, or is complex.
        FloatingPointError: the operator's product is not finite.
    """
    op = _check_operator(op)
    damping = _check_real(damping, "damping")
    if callable(fn):
        if damping != 0:
            raise ValueError(
                "damping must be 0 with a callable fn (it receives the Ritz values of A): fold "
                "the damping into the function, e.g. lambda t: 1 / (t + lam)"
            )
        f, name = fn, "callable"
    else:
        f, name = _named_function(fn, damping, float(torch.finfo(op.dtype).eps)), fn
    tol = None if tol is None else _check_tol(tol)
    P = op.shape[0]
    steps = min(_check_steps(steps, "steps", P), P)
    B, vector = _check_rhs(b, op)

    def f_checked(theta: np.ndarray) -> np.ndarray:
        out = np.asarray(f(theta), dtype=np.float64)
        if out.shape != theta.shape:
            raise ValueError(
                f"fn must map the Ritz values (shape {theta.shape}) to an array of the same "
                f"shape, got shape {out.shape}"
            )
        return out

    with ProgressBar(steps, f"matrix function ({name})", verbose=verbose) as bar:
        X, iters, changes, invariant = _lanczos_function(
            op, B, f_checked, steps, _change_stop(tol), bar
        )
    changes = np.where(invariant | (iters == 0), 0.0, changes)
    converged = invariant | (iters == 0) | (tol is not None and changes <= (tol or 0.0))
    return MatrixFunctionResult(
        x=X.squeeze(1) if vector else X,
        iterations=iters,
        changes=changes,
        invariant=invariant,
        column_converged=np.asarray(converged, dtype=bool),
        n_products=int(iters.sum()),
        n_matmat=int(iters.max()),
        fn=name,
        damping=damping,
        tol=tol,
        steps=steps,
    )
