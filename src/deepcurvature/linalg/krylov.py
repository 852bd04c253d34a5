"""Column-wise Krylov recurrences sharing one product per step: CG, MINRES and Lanczos ``f(T)``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..progress import ProgressBar
from .lanczos import tridiagonal_eigh
from .operator import LinearOperator


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
