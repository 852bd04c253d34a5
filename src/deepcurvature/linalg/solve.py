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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..progress import ProgressBar
from .lanczos import tridiagonal_eigh
from .operator import LinearOperator, as_operator, refuse_complex

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
#: The named functions of :func:`matrix_function` (``lam`` is the damping).
FUNCTIONS = {
    "inverse": "1 / (theta + lam)",
    "abs_inverse": "1 / (|theta| + lam)",
    "inverse_sqrt": "(theta + lam)^(-1/2)",
}


class _ColumnResult:
    """What the results of :func:`solve` and :func:`matrix_function` share."""

    column_converged: np.ndarray
    iterations: np.ndarray
    n_products: int
    n_matmat: int

    @property
    def converged(self) -> bool:
        """Whether every column converged."""
        return bool(self.column_converged.all())

    def _cost_lines(self, limit: str) -> list[str]:
        return [
            f"iterations per column: min {int(self.iterations.min())}, "
            f"max {int(self.iterations.max())} ({limit})",
            f"cost: {self.n_products} operator products in {self.n_matmat} matmat calls",
        ]


@dataclass
class SolveResult(_ColumnResult):
    """The solution of ``(A + damping I) x = b`` and what it cost.

    Attributes:
        x: the solution, same shape as ``b`` (``(P,)`` or ``(P, k)``), in the operator's dtype and
            device.
        residual_norms: ``(k,)`` float64 TRUE relative residuals ``||(A + lam I) x - b|| / ||b||``
            per column, from one final product (0 for a zero column of ``b``).
        residual_estimates: ``(k,)`` float64 the recurrence's estimates of the same at its end.
        iterations: ``(k,)`` steps (products) per column.
        n_products: operator columns applied, the final check included (``iterations.sum() + k``).
        n_matmat: ``op.matmat`` calls, the final check included (= passes over the data for a
            network operator).
        column_converged: ``(k,)`` whether each true relative residual is ``<= tol``.
        method: ``"cg"``, ``"minres"`` or ``"lanczos"``.
        damping: ``lam``.
        tol: the relative residual tolerance.
        max_steps: the largest number of steps a column could run.
    """

    x: torch.Tensor
    residual_norms: np.ndarray
    residual_estimates: np.ndarray
    iterations: np.ndarray
    n_products: int
    n_matmat: int
    column_converged: np.ndarray
    method: str
    damping: float
    tol: float
    max_steps: int

    def summary(self) -> str:
        """One line per fact: method, columns, residuals, iterations, cost."""
        k = self.iterations.size
        state = "converged" if self.converged else "NOT converged"
        return "\n".join(
            [
                f"solve (A + {self.damping:g} I) x = b by {self.method}: {state} "
                f"({int(self.column_converged.sum())}/{k} columns, tol {self.tol:.1e})",
                f"true relative residual: max {float(self.residual_norms.max()):.3e}",
                *self._cost_lines(f"max_steps {self.max_steps}; cost includes the final check"),
            ]
        )


@dataclass
class MatrixFunctionResult(_ColumnResult):
    """``f(A) b`` by Lanczos (:func:`matrix_function`) and what it cost.

    Attributes:
        x: ``f(A) b``, same shape as ``b``, in the operator's dtype and device.
        iterations: ``(k,)`` Lanczos steps per column.
        changes: ``(k,)`` float64 relative change ``||x_m - x_{m-1}|| / ||x_m||`` of each column's
            last step (0 after an invariant subspace, where the result is exact).
        invariant: ``(k,)`` whether a column's Krylov space became invariant (exact result).
        column_converged: ``(k,)`` invariant, or the change fell to ``<= tol``.
        n_products: operator columns applied.
        n_matmat: ``op.matmat`` calls (= passes over the data for a network operator).
        fn: the function's name (``"inverse"``, ...) or ``"callable"``.
        damping: ``lam``.
        tol: the change tolerance (``None``: ran ``steps`` steps).
        steps: the largest number of steps a column could run.
    """

    x: torch.Tensor
    iterations: np.ndarray
    changes: np.ndarray
    invariant: np.ndarray
    column_converged: np.ndarray
    n_products: int
    n_matmat: int
    fn: str
    damping: float
    tol: float | None
    steps: int

    def summary(self) -> str:
        """One line per fact: function, columns, last changes, iterations, cost."""
        k = self.iterations.size
        return "\n".join(
            [
                f"f(A) b with f = {FUNCTIONS.get(self.fn, self.fn)} (damping {self.damping:g}) "
                f"by Lanczos: {int(self.column_converged.sum())}/{k} columns converged",
                f"last relative change: max {float(self.changes.max()):.3e}",
                *self._cost_lines(f"steps {self.steps}"),
            ]
        )


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


def _product(op: LinearOperator, V: torch.Tensor, step: int) -> torch.Tensor:
    """``A V`` with a clear error when it is not finite."""
    out = op.matmat(V)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(
            f"the operator's product is not finite at step {step}: A v holds NaN or infinity; "
            "check the operator (model, loss, data) for NaN or infinity, e.g. "
            "torch.isfinite(op.matvec(v)).all()"
        )
    return out


def _active_steps(
    active: np.ndarray, max_steps: int, bar: ProgressBar, device: torch.device
) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """Steps ``1..max_steps`` while a column is active: ``(step, indices, indices as tensor)``.

    Every step applies the operator once to the active columns, so the number of ``matmat``
    calls is the largest number of iterations of a column.
    """
    for j in range(1, max_steps + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return
        yield j, idx, torch.as_tensor(idx, device=device)
        bar.advance()


def _dots(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Column-wise inner products ``(k,)`` accumulated in float64."""
    return (X.double() * Y.double()).sum(0)


def _col_norms(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(X, dim=0, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# the three methods; each returns (X, iterations, absolute residual estimates[, invariant])


def _cg(
    op: LinearOperator, B: torch.Tensor, lam: float, tol: float, steps: int, bar: ProgressBar
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Conjugate gradients per column; stops a column when ``||r|| <= tol ||b||``."""
    k = B.shape[1]
    X = torch.zeros_like(B)
    R = B.clone()
    D = R.clone()
    rho = _dots(R, R)
    target = tol * _col_norms(B)
    active = (rho.sqrt() > target).cpu().numpy()
    iters = np.zeros(k, dtype=np.int64)
    for j, idx, sel in _active_steps(active, steps, bar, B.device):
        Dj = D[:, sel]
        AD = _product(op, Dj, j) + lam * Dj
        curv = _dots(Dj, AD)
        curv_np = curv.cpu().numpy()
        if np.any(curv_np <= 0):
            col = int(idx[np.flatnonzero(curv_np <= 0)[0]])
            raise ValueError(
                f"A + λI is not positive definite along a direction found at step {j} "
                f"(column {col}: p^T (A + λI) p = {curv_np[curv_np <= 0][0]:.3e} with "
                f"λ = {lam:g}): use method='minres' or more damping"
            )
        step = rho[sel] / curv
        X[:, sel] += step.to(B.dtype) * Dj
        Rj = R[:, sel] - step.to(B.dtype) * AD
        R[:, sel] = Rj
        rho_new = _dots(Rj, Rj)
        D[:, sel] = Rj + (rho_new / rho[sel]).to(B.dtype) * Dj
        rho[sel] = rho_new
        iters[idx] += 1
        active[idx] = (rho_new.sqrt() > target[sel]).cpu().numpy()
    return X, iters, rho.sqrt().cpu().numpy()


def _minres(
    op: LinearOperator, B: torch.Tensor, lam: float, tol: float, steps: int, bar: ProgressBar
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """MINRES: Lanczos on ``A + lam I`` from ``b``; QR of T by Givens rotations, updated."""
    k = B.shape[1]
    f64 = dict(dtype=torch.float64, device=B.device)
    beta1 = _col_norms(B)
    V_prev = torch.zeros_like(B)
    V = B / torch.where(beta1 > 0, beta1, 1.0).to(B.dtype)
    W_prev, W_prev2 = torch.zeros_like(B), torch.zeros_like(B)
    X = torch.zeros_like(B)
    beta = torch.zeros(k, **f64)  # the off-diagonal coupling v_{j-1} and v_j
    c_prev, s_prev = torch.ones(k, **f64), torch.zeros(k, **f64)  # rotation j-1
    c_prev2, s_prev2 = torch.ones(k, **f64), torch.zeros(k, **f64)  # rotation j-2
    phibar = beta1.clone()  # |phibar| is the residual norm
    target = tol * beta1
    active = (phibar.abs() > target).cpu().numpy()
    iters = np.zeros(k, dtype=np.int64)
    for j, idx, sel in _active_steps(active, steps, bar, B.device):
        Vj = V[:, sel]
        AV = _product(op, Vj, j) + lam * Vj
        U = AV - beta[sel].to(B.dtype) * V_prev[:, sel]
        alpha = _dots(Vj, U)
        U = U - alpha.to(B.dtype) * Vj
        beta_next = _col_norms(U)
        # rotate the new column (0, beta_j, alpha_j, beta_{j+1}) of T by the last two rotations
        eps = s_prev2[sel] * beta[sel]
        dbar = c_prev2[sel] * beta[sel]
        delta = c_prev[sel] * dbar + s_prev[sel] * alpha
        gbar = -s_prev[sel] * dbar + c_prev[sel] * alpha
        gamma = torch.sqrt(gbar**2 + beta_next**2)
        if bool((gamma == 0).any()):
            raise ValueError(
                f"A + λI is singular on the Krylov space of b (MINRES met a zero pivot at step "
                f"{j}): b is not in its range; add damping"
            )
        c, s = gbar / gamma, beta_next / gamma
        tau = c * phibar[sel]
        phibar[sel] = -s * phibar[sel]
        Wj = (Vj - delta.to(B.dtype) * W_prev[:, sel] - eps.to(B.dtype) * W_prev2[:, sel]) / (
            gamma.to(B.dtype)
        )
        X[:, sel] += tau.to(B.dtype) * Wj
        W_prev2[:, sel], W_prev[:, sel] = W_prev[:, sel], Wj
        c_prev2[sel], s_prev2[sel] = c_prev[sel], s_prev[sel]
        c_prev[sel], s_prev[sel] = c, s
        V_prev[:, sel] = Vj
        V[:, sel] = U / torch.where(beta_next > 0, beta_next, 1.0).to(B.dtype)
        beta[sel] = beta_next
        iters[idx] += 1
        done = (phibar[sel].abs() <= target[sel]) | (beta_next == 0)
        active[idx] = ~done.cpu().numpy()
    return X, iters, phibar.abs().cpu().numpy()


def _lanczos_function(
    op: LinearOperator,
    B: torch.Tensor,
    f: Callable[[np.ndarray], np.ndarray],
    max_steps: int,
    stop: Callable[[float, np.ndarray, np.ndarray, float], tuple[bool, float]],
    bar: ProgressBar,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """``x = ||b|| Q f(T) e_1`` per column, Lanczos with full reorthogonalisation from ``b``.

    ``f`` maps float64 Ritz values to float64 values; ``y = ||b|| S f(theta) S^T e_1`` are the
    coefficients of ``x`` in the basis ``Q``. ``stop(beta, y, y_prev, ||b||)`` returns
    ``(done, estimate)`` for a column after each step. Returns
    ``(X, iters, estimates, invariant)``.
    """
    P, k = B.shape
    dev, dt = B.device, B.dtype
    nb = _col_norms(B).cpu().numpy()
    steps = min(max_steps, P)
    capacity = min(steps, 32)
    Q = torch.zeros((k, capacity, P), dtype=dt, device=dev)
    Q[:, 0] = (B / torch.as_tensor(np.where(nb > 0, nb, 1.0), dtype=dt, device=dev)).T
    alphas, betas = np.zeros((k, steps)), np.zeros((k, steps))
    coeffs: list[np.ndarray] = [np.zeros(0) for _ in range(k)]
    estimates = np.zeros(k)
    active = nb > 0
    invariant = np.zeros(k, dtype=bool)
    iters = np.zeros(k, dtype=np.int64)
    scale = np.zeros(k)
    tol_b = float(torch.finfo(dt).eps) ** (2.0 / 3.0)  # relative breakdown test, as lanczos
    for step, idx, sel in _active_steps(active, steps, bar, dev):
        j = step - 1
        basis = Q[sel, : j + 1]  # (a, j+1, P)
        Qj = basis[:, j]
        W = _product(op, Qj.T.contiguous(), step).T.contiguous()
        W3 = W.unsqueeze(2)
        alpha = torch.zeros(idx.size, dtype=torch.float64, device=dev)
        for _ in range(2):  # two classical Gram-Schmidt passes as matrix products
            h = torch.bmm(basis, W3)
            W3.baddbmm_(basis.transpose(1, 2), h, alpha=-1.0)
            alpha = alpha + h[:, j, 0].double()
        beta = torch.linalg.vector_norm(W, dim=1, dtype=torch.float64)
        ab = torch.stack([alpha, beta]).cpu().numpy()
        if j + 1 >= capacity and j + 1 < steps:  # grow the basis storage by doubling
            capacity = min(2 * capacity, steps)
            grown = torch.zeros((k, capacity, P), dtype=dt, device=dev)
            grown[:, : j + 1] = Q[:, : j + 1]
            Q = grown
        for pos, i in enumerate(idx):
            a_i, b_i = float(ab[0, pos]), float(ab[1, pos])
            alphas[i, j], betas[i, j] = a_i, b_i
            iters[i] += 1
            scale[i] = max(scale[i], abs(a_i), b_i, betas[i, j - 1] if j else 0.0)
            theta, S = tridiagonal_eigh(alphas[i, : j + 1], betas[i, :j])
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                y = nb[i] * (S @ (f(theta) * S[0, :]))
            broke = b_i <= tol_b * scale[i]
            done, estimates[i] = stop(b_i, y, coeffs[i], nb[i])
            coeffs[i] = y
            if broke:
                invariant[i], estimates[i] = True, 0.0
            if broke or done or j + 1 >= steps:
                active[i] = False
            else:
                Q[i, j + 1] = W[pos] / b_i
    X = torch.zeros_like(B)
    for i in range(k):
        if iters[i]:
            y = coeffs[i]
            if not np.all(np.isfinite(y)):
                raise ValueError(
                    f"f(T) is not finite for column {i} (a Ritz value hits a pole of f): "
                    "A + λI is singular or not definite on the Krylov space of b; add damping "
                    "(or use method='minres' for an indefinite solve)"
                )
            X[:, i] = Q[i, : y.size].T @ torch.as_tensor(y, dtype=dt, device=dev)
    return X, iters, estimates, invariant


def _inverse_stop(tol: float) -> Callable[..., tuple[bool, float]]:
    """FOM residual ``||(A + lam I) x_m - b|| = beta_m |e_m^T y_m|`` relative to ``||b||``."""

    def stop(beta: float, y: np.ndarray, y_prev: np.ndarray, nb: float) -> tuple[bool, float]:
        est = beta * abs(float(y[-1])) / nb
        return bool(np.isfinite(est) and est <= tol), est * nb

    return stop


def _change_stop(tol: float | None) -> Callable[..., tuple[bool, float]]:
    """Relative change of ``x_m`` (``Q`` orthonormal: the change of the coefficients)."""

    def stop(beta: float, y: np.ndarray, y_prev: np.ndarray, nb: float) -> tuple[bool, float]:
        diff = y.copy()
        diff[: y_prev.size] -= y_prev
        size = float(np.linalg.norm(y))
        change = float(np.linalg.norm(diff)) / size if size > 0 else math.inf
        return bool(tol is not None and np.isfinite(change) and change <= tol), change

    return stop


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
