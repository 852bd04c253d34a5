"""Extremal eigenpairs of a symmetric operator by thick-restart Lanczos (Krylov-Schur).

Section 4 of the paper (Theorems 1 and 2): the Ritz values of a plain m-step Lanczos run from a
random vector are Gauss quadrature nodes spread over the whole spectrum, not the top m
eigenvalues. Eigenpairs need a method that converges to them and reports their residuals. This
module implements the symmetric Krylov-Schur method (thick-restart Lanczos, Wu & Simon 2000;
Stewart 2001):

* a Krylov decomposition ``A V_m = V_m H_m + f e_m^T`` with orthonormal ``V_m`` (P, m) and a
  symmetric ``H_m`` that is tridiagonal except for an arrowhead coupling the kept Ritz vectors
  to the first new Lanczos vector;
* every new vector is orthogonalised against the whole basis by two classical Gram-Schmidt
  passes written as matrix products;
* the small projected eigenproblem is solved in float64 by a symmetric solver;
* at a restart the ``k + (ncv - k) // 2`` most wanted Ritz vectors are kept, ``H`` becomes
  ``diag(theta)`` plus the arrowhead ``beta * s_m`` (last components of the kept eigenvectors of
  ``H``) and the expansion continues from ``f``;
* convergence is read from the free Lanczos residual estimates ``|beta * s_{m,i}|``: on the
  residuals themselves (``accuracy="residual"``) or on the eigenvalue error estimate
  ``min(r, r^2 / gap)`` (``accuracy="value"``, far fewer steps for the same eigenvalue
  accuracy), confirmed with one product of the Ritz vectors unless ``verify=False``;
* an invariant subspace (``beta ~ 0``) is continued from a fresh random vector orthogonal to the
  basis; when ``ncv >= P`` the problem is solved exactly from the dense matrix.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..progress import ProgressBar
from .operator import LinearOperator, as_operator
from .probes import draw_probes, resolve_seed
from .warm_start import WARM_TOL, resolve_warm_operator

__all__ = ["WHICH", "EigshResult", "eigsh"]

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
) -> float:
    """The bound the residuals (``"residual"``) or eigenvalue errors (``"value"``) must meet.

    ``"residual"``: :func:`residual_threshold`; ``"value"``: ``max(tol * max|theta_wanted|,
    4 eps ||A||)``, the accuracy of a Rayleigh quotient in the working precision.
    """
    if accuracy == "residual":
        return residual_threshold(tol, wanted, anorm, P, eps)
    scale = float(np.max(np.abs(wanted))) if np.size(wanted) else 0.0
    return max(tol * scale, 4.0 * eps * anorm)


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


def _start_vector(op: LinearOperator, start: Any, generator: torch.Generator) -> torch.Tensor:
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


def _random_orthogonal(
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


def _dense_path(
    op: LinearOperator, k: int, which: str, tol: float, seed: int | None, verbose: bool
) -> EigshResult:
    P = op.shape[0]
    with ProgressBar(1, "eigsh (dense)", verbose=verbose) as bar:
        A = op.to_dense().to(torch.float64)
        check_finite(A, "building the dense matrix for the exact path")
        A = (A + A.T) / 2
        evals, evecs = torch.linalg.eigh(A.cpu())
        theta = evals.numpy()
        idx = select_wanted(theta, k, which)
        idx = idx[np.argsort(theta[idx], kind="stable")]
        U = evecs[:, torch.as_tensor(idx)].to(dtype=op.dtype, device=op.device)
        R = op.matmat(U)
        check_finite(R, "final residual check")
        vals = theta[idx]
        res = (
            torch.linalg.vector_norm(
                R.double() - U.double() * torch.as_tensor(vals, device=op.device), dim=0
            )
            .cpu()
            .numpy()
        )
        bar.advance()
    eps = float(torch.finfo(op.dtype).eps)
    anorm = float(np.max(np.abs(theta)))
    thresh = residual_threshold(tol, vals, anorm, P, eps)
    return EigshResult(
        values=vals,
        vectors=U,
        residual_norms=res,
        n_matvec=P + k,
        n_restarts=0,
        converged=bool(np.all(res <= thresh)),
        which=which,
        tol=float(tol),
        seed=seed,
        method="dense",
    )


def n_keep(k: int, ncv: int) -> int:
    """Number of Ritz vectors kept at a restart: ``k + (ncv - k) // 2`` (at most ``ncv - 1``)."""
    return min(ncv - 1, k + (ncv - k) // 2)


def eigsh(
    op: Any,
    k: int,
    *,
    which: str = "LA",
    tol: float = 1e-8,
    max_steps: int | None = None,
    ncv: int | None = None,
    seed: int | None = None,
    start: torch.Tensor | None = None,
    accuracy: str = "residual",
    verify: bool = True,
    verbose: bool = True,
    warm_start: Any = None,
) -> EigshResult:
    """The ``k`` extremal eigenpairs of a symmetric operator by thick-restart Lanczos.

    Converged when every wanted Ritz pair has ``||A u - theta u|| <= tol * max|theta|`` (the
    maximum over the wanted pairs; never below ``10 sqrt(P) eps ||A||``, the attainable accuracy),
    checked on the Lanczos residual estimates after every step and confirmed with the true
    residuals (one product with the ``k`` Ritz vectors).

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes, ``(P, P)`` symmetric.
        k: number of eigenpairs, ``1 <= k <= P``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest
            magnitude, ``"BE"`` both ends (``(k + 1) // 2`` largest and ``k // 2`` smallest).
        tol: relative residual tolerance.
        max_steps: bound on the total number of operator applications (columns), the final
            check included; at least ``2k``; default ``100 * ncv`` (the exact path below always
            takes ``P + k``).
        ncv: size of the Krylov basis, ``k < ncv``; default ``min(P, max(2k + 1, 20))``. When
            ``ncv >= P`` the eigenproblem is solved exactly from the dense matrix (P products).
        seed: seed of the random start vector and of the fresh vectors drawn after an invariant
            subspace (drawn on the CPU); a fresh seed when ``None``, recorded in the result.
        start: an explicit start vector ``(P,)`` instead of a random one (a warm start, e.g. the
            eigenvector of a cheaper operator such as the Hessian of a subset of the data).
        accuracy: ``"residual"`` (default): stop when the residuals meet ``tol``;
            ``"value"``: stop when the estimated eigenvalue errors
            ``min(r, r^2 / gap)`` (:func:`value_error_bounds`) meet ``tol``, i.e. ``tol`` is the
            relative accuracy of the eigenvalues, reached with far fewer products (the
            eigenvectors are then accurate to about ``sqrt(tol * gap / |theta|)``).
        verify: confirm convergence with the true residuals (``k`` more operator columns, the
            default). With ``False`` the Lanczos residual estimates ``|beta * s_{m,i}|`` (free;
            exact in exact arithmetic, and reliable with full reorthogonalisation) are
            reported as ``residual_norms`` and no product is spent on the check.
        verbose: show a progress bar over operator applications.
        warm_start: start from the sum of the ``k`` wanted Ritz vectors of a cheaper operator,
            solved first to eigenvalue accuracy ``1e-2`` (see :mod:`.warm_start`): ``"batch"``
            (the curvature operator on its first batch; ignored when the data is one batch) or a
            :class:`LinearOperator` of the same shape. It pays off for the top one or two
            eigenvalues of an operator over many batches (6 instead of 11 full products for the
            top eigenvalue to 1e-6 in ``benchmarks/peers.py``). The convergence test and the
            result are those of ``op`` alone; the cheap columns are counted in ``warm_matvec``.

    Returns:
        An :class:`EigshResult`: values ascending, vectors ``(P, k)``, residuals, counts.
        Not converging within ``max_steps`` warns and returns the current estimates with
        ``converged=False``.

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``ncv``, ``max_steps``, ``start`` or
            ``warm_start`` (or both of the last two), or a non-symmetric dense matrix.
        FloatingPointError: the operator returned a non-finite product (names the product).
    """
    op = validate_common(op, k, tol)
    k = int(k)
    tol = float(tol)
    if which not in WHICH:
        raise ValueError(f"unknown which={which!r}: use one of {WHICH}")
    if accuracy not in ACCURACY:
        raise ValueError(f"unknown accuracy={accuracy!r}: use one of {ACCURACY}")
    P = op.shape[0]
    if ncv is None:
        ncv = min(P, max(2 * k + 1, 20))
    elif isinstance(ncv, bool) or not isinstance(ncv, (int, np.integer)) or ncv <= k:
        raise ValueError(f"ncv must be an integer larger than k={k}, got {ncv!r}")
    ncv = min(int(ncv), P)
    if max_steps is None:
        max_steps = 100 * ncv
    elif (
        isinstance(max_steps, bool)
        or not isinstance(max_steps, (int, np.integer))
        or max_steps < 2 * k
    ):
        raise ValueError(
            f"max_steps must be an integer of at least 2k = {2 * k} (operator applications: "
            f"k Lanczos steps and the final residual check of k products), got {max_steps!r}"
        )
    max_steps = int(max_steps)
    used_seed = resolve_seed(seed) if (start is None or seed is not None) else None
    gen_seed = used_seed if used_seed is not None else 0
    sub = None
    if warm_start is not None:
        if start is not None:
            raise ValueError("pass either start (a vector) or warm_start (an operator), not both")
        sub = resolve_warm_operator(op, warm_start)
    if ncv >= P:
        return _dense_path(op, k, which, tol, used_seed, verbose)
    generator = torch.Generator().manual_seed(gen_seed)
    warm_matvec = 0
    if sub is not None:
        rough = eigsh(
            sub,
            k,
            which=which,
            tol=WARM_TOL,
            ncv=ncv,
            seed=gen_seed,
            accuracy="value",
            verify=False,
            verbose=False,
        )
        start, warm_matvec = rough.vectors.sum(dim=1), rough.n_matvec
    v0 = _start_vector(op, start, generator)
    result = _thick_restart(
        op, k, which, tol, max_steps, ncv, v0, generator, used_seed, verbose, accuracy, bool(verify)
    )
    result.warm_matvec = warm_matvec
    return result


def _thick_restart(
    op: LinearOperator,
    k: int,
    which: str,
    tol: float,
    max_steps: int,
    ncv: int,
    v0: torch.Tensor,
    generator: torch.Generator,
    seed: int | None,
    verbose: bool,
    accuracy: str = "residual",
    verify: bool = True,
) -> EigshResult:
    P = op.shape[0]
    dtype, device = op.dtype, op.device
    check_cost = k if verify else 0
    eps = float(torch.finfo(dtype).eps)
    Q = torch.zeros((ncv + 1, P), dtype=dtype, device=device)  # basis vectors as rows
    Q[0] = v0
    H = np.zeros((ncv, ncv))
    j = 0  # number of basis vectors whose column of H is complete
    nkeep = 0
    coupling = np.zeros(0)  # arrowhead: H[nkeep, :nkeep]
    beta = 0.0  # norm of the residual f = beta * Q[j]
    anorm = 0.0  # running estimate of ||A||_2
    broke_in_cycle = False  # an invariant subspace was met since the last restart
    n_matvec = 0
    n_restarts = 0
    converged = False
    fresh_check = False  # U, vals, res belong to the current basis
    U: torch.Tensor | None = None
    vals = np.zeros(k)
    res = np.full(k, np.inf)
    breakdown = 10.0 * math.sqrt(P) * eps

    with ProgressBar(max_steps, "eigsh", verbose=verbose) as bar:
        while True:
            if j == ncv:  # ---- thick restart ------------------------------------------------
                theta, S = np.linalg.eigh(H)
                keep = select_wanted(theta, nkeep_n := n_keep(k, ncv), which)
                Sk = torch.as_tensor(S[:, keep], dtype=dtype, device=device)
                Q[:nkeep_n] = Sk.T @ Q[:ncv]
                coupling = beta * S[ncv - 1, keep]
                if beta == 0.0:
                    Q[nkeep_n] = _random_orthogonal(Q[:nkeep_n], generator, dtype, device)
                else:
                    Q[nkeep_n] = Q[ncv]
                H = np.zeros((ncv, ncv))
                H[np.arange(nkeep_n), np.arange(nkeep_n)] = theta[keep]
                j = nkeep = nkeep_n
                broke_in_cycle = False
                n_restarts += 1
            if n_matvec + 1 + check_cost > max_steps:
                break
            # ---- one Lanczos step: w = A q_j, orthogonalised against Q[:j+1] ----------------
            w = op.matmat(Q[j : j + 1].T)[:, 0]
            n_matvec += 1
            check_finite(w, f"operator application {n_matvec}, restart {n_restarts}")
            basis = Q[: j + 1]
            h = basis @ w
            w = w - basis.T @ h
            h2 = basis @ w  # second classical Gram-Schmidt pass
            w = w - basis.T @ h2
            alpha = float((h[j] + h2[j]).double())
            H[j, j] = alpha
            if j == nkeep and nkeep > 0:
                H[j, :nkeep] = H[:nkeep, j] = coupling
            elif j > 0:
                H[j, j - 1] = H[j - 1, j] = beta
            beta = float(torch.linalg.vector_norm(w.double()))
            if not math.isfinite(beta) or not math.isfinite(alpha):
                raise FloatingPointError(
                    f"non-finite Lanczos coefficients at operator application {n_matvec} "
                    f"(alpha={alpha}, beta={beta}); check the operator for NaN or infinity"
                )
            anorm = max(anorm, abs(alpha), beta)
            j += 1
            if beta <= breakdown * anorm:  # invariant subspace: continue from a random vector
                beta = 0.0
                broke_in_cycle = True
                if j < ncv:
                    Q[j] = _random_orthogonal(Q[:j], generator, dtype, device)
            else:
                Q[j] = w / beta
            fresh_check = False
            bar.advance()
            # ---- convergence check on the residual estimates |beta * s_{j,i}| ----------------
            if j < k or (broke_in_cycle and j < ncv):
                continue
            theta, S = np.linalg.eigh(H[:j, :j])
            anorm = max(anorm, float(np.max(np.abs(theta))))
            want = select_wanted(theta, k, which)
            est = np.abs(beta * S[j - 1, want])
            floor = residual_threshold(0.0, theta[want], anorm, P, eps)
            crit = value_error_bounds(theta, want, est, floor) if accuracy == "value" else est
            thresh = threshold(tol, theta[want], anorm, P, eps, accuracy)
            if verbose:
                bar.set_info(f"restart {n_restarts}, max est. {accuracy} error {crit.max():.2e}")
            if np.all(crit <= thresh) and not verify:
                U, vals, res = _ritz_pairs(op, Q, theta, S, j, want, residuals=est)
                converged = fresh_check = True
                break
            if np.all(crit <= thresh) and n_matvec + k <= max_steps:
                U, vals, res = _ritz_pairs(op, Q, theta, S, j, want)
                n_matvec += k
                fresh_check = True
                thresh = threshold(tol, vals, anorm, P, eps, accuracy)
                if accuracy == "value":
                    order = want[np.argsort(theta[want], kind="stable")]
                    crit = value_error_bounds(theta, order, res, floor)
                else:
                    crit = res
                if np.all(crit <= thresh):
                    converged = True
                    break

    if not converged:
        if not fresh_check:  # estimates of the current basis, with one more product
            if j < k:  # pragma: no cover - max_steps >= 2k guarantees k steps
                raise ValueError(
                    f"max_steps={max_steps} is too small to build {k} Ritz vectors; "
                    "increase max_steps"
                )
            theta, S = np.linalg.eigh(H[:j, :j])
            want = select_wanted(theta, k, which)
            if verify:
                U, vals, res = _ritz_pairs(op, Q, theta, S, j, want)
                n_matvec += k
            else:
                est = np.abs(beta * S[j - 1, want])
                U, vals, res = _ritz_pairs(op, Q, theta, S, j, want, residuals=est)
        warnings.warn(
            f"eigsh did not converge within max_steps={max_steps} operator applications "
            f"({n_restarts} restarts): max relative residual "
            f"{np.max(res) / max(np.max(np.abs(vals)), 1e-300):.2e} > tol={tol:g}; "
            "increase max_steps or ncv, or loosen tol",
            stacklevel=3,
        )
    return EigshResult(
        values=vals,
        vectors=U,
        residual_norms=res,
        n_matvec=n_matvec,
        n_restarts=n_restarts,
        converged=converged,
        which=which,
        tol=tol,
        seed=seed,
        method="thick-restart Lanczos",
    )


def _ritz_pairs(
    op: LinearOperator,
    Q: torch.Tensor,
    theta: np.ndarray,
    S: np.ndarray,
    size: int,
    want: np.ndarray,
    residuals: np.ndarray | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Ritz vectors ``Q^T S`` of the wanted pairs (ascending) and their true residuals.

    The basis ``Q`` is stored as rows ``(m + 1, P)``; ``S`` holds eigenvectors of ``H`` (columns).
    With ``residuals`` (``(k,)`` estimates in the order of ``want``) no product is applied and
    those are returned, reordered, instead of the true residuals.
    """
    order = np.argsort(theta[want], kind="stable")
    idx = want[order]
    Sw = torch.as_tensor(S[:, idx], dtype=op.dtype, device=op.device)
    U = Q[:size].T @ Sw
    if residuals is not None:
        return U, theta[idx].copy(), np.asarray(residuals, dtype=np.float64)[order]
    AU = op.matmat(U)
    check_finite(AU, "final residual check")
    vals = theta[idx].copy()
    lam = torch.as_tensor(vals, dtype=torch.float64, device=op.device)
    res = torch.linalg.vector_norm(AU.double() - U.double() * lam, dim=0).cpu().numpy()
    return U, vals, res
