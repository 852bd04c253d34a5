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
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..progress import ProgressBar
from .eigen_common import (
    ACCURACY,
    WHICH,
    EigshResult,
    check_finite,
    random_orthogonal,
    residual_threshold,
    select_wanted,
    start_vector,
    threshold,
    validate_common,
    value_error_bounds,
)
from .eigsh_state import EIGSH_STATE_KIND, EIGSH_WHAT, KrylovSchurLoop, eigsh_settings
from .lanczos_state import (
    check_checkpoint_every,
    check_state,
    load_state,
    operator_fingerprint,
    save_state,
    tensor_digest,
)
from .operator import LinearOperator
from .probes import resolve_seed
from .warm_start import WARM_TOL, resolve_warm_operator

__all__ = ["WHICH", "EigshResult", "eigsh", "value_error_bounds"]


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
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
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
            ``"value"``: stop when the estimated error ``min(r, r^2 / gap)`` of every wanted
            eigenvalue (:func:`value_error_bounds`) is at most ``tol * |theta_i|``, i.e. ``tol``
            is the relative accuracy of each eigenvalue (never below ``4 eps ||A||``), reached
            with far fewer products (the eigenvectors are then accurate to about
            ``sqrt(tol * gap / |theta|)``).
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
        checkpoint: a state file (see :mod:`.eigsh_state`), written atomically every
            ``checkpoint_every`` operator applications; when it exists, the solve continues from
            it with bitwise identical results, after checking that it was saved for the same
            operator and arguments (``seed=None`` then takes the saved seed); removed when the
            solve ends (kept when it is interrupted). Not used by the dense path (``ncv >= P``).
        checkpoint_every: operator applications between two checkpoints.

    Returns:
        An :class:`EigshResult`: values ascending, vectors ``(P, k)``, residuals, counts.
        Not converging within ``max_steps`` warns and returns the current estimates with
        ``converged=False``.

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``ncv``, ``max_steps``, ``start`` or
            ``warm_start`` (or both of the last two), a non-symmetric dense matrix, or a
            ``checkpoint`` saved for another operator or other arguments (naming what differs).
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
    if warm_start is not None and start is not None:
        raise ValueError("pass either start (a vector) or warm_start (an operator), not both")
    ckpt = Path(checkpoint) if checkpoint is not None and ncv < P else None
    if ckpt is not None:
        check_checkpoint_every(checkpoint_every)
    state = load_state(ckpt, EIGSH_STATE_KIND, EIGSH_WHAT) if ckpt and ckpt.exists() else None
    if state is not None and seed is None and start is None:
        seed = state["run"].get("seed")  # continue the recorded solve
    used_seed = resolve_seed(seed) if (start is None or seed is not None) else None
    gen_seed = used_seed if used_seed is not None else 0
    settings: dict[str, Any] = {}
    if ckpt is not None:
        settings = eigsh_settings(
            k,
            which,
            tol,
            ncv,
            max_steps,
            accuracy,
            bool(verify),
            used_seed,
            None
            if start is None
            else tensor_digest(
                start if isinstance(start, torch.Tensor) else torch.as_tensor(np.asarray(start))
            ),
            None
            if warm_start is None
            else (warm_start if isinstance(warm_start, str) else type(warm_start).__name__),
        )
        fingerprint = operator_fingerprint(op)
        if state is not None:
            check_state(state, ckpt, fingerprint, settings, EIGSH_WHAT)
    if ncv >= P:
        return _dense_path(op, k, which, tol, used_seed, verbose)
    generator = torch.Generator().manual_seed(gen_seed)
    save = None
    saved = state is not None  # a state on disk refers to this solve
    if ckpt is not None:

        def save(loop: KrylovSchurLoop) -> None:
            nonlocal saved
            payload = {"fingerprint": fingerprint, "run": settings, **loop.to_state(generator)}
            save_state(ckpt, payload, EIGSH_STATE_KIND)
            saved = True

    loop = None
    if state is not None:
        loop = KrylovSchurLoop.from_state(state, op.dtype, op.device, generator)
        del state  # release the memory-mapped file
    else:
        sub = None if warm_start is None else resolve_warm_operator(op, warm_start)
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
        loop = _fresh_loop(op, ncv, k, start_vector(op, start, generator), warm_matvec)
    every = int(checkpoint_every) if ckpt is not None else 0
    result = _thick_restart(
        op,
        k,
        which,
        tol,
        max_steps,
        ncv,
        loop,
        generator,
        used_seed,
        verbose,
        accuracy,
        bool(verify),
        every,
        save,
    )
    if ckpt is not None and saved:
        ckpt.unlink(missing_ok=True)  # ours: written or continued by this call
    return result


def _fresh_loop(
    op: LinearOperator, ncv: int, k: int, v0: torch.Tensor, warm_matvec: int
) -> KrylovSchurLoop:
    """The loop before the first step: ``Q[0] = v0`` (normalised), nothing else yet."""
    Q = torch.zeros((ncv + 1, op.shape[0]), dtype=op.dtype, device=op.device)
    Q[0] = v0
    return KrylovSchurLoop(
        Q=Q,
        H=np.zeros((ncv, ncv)),
        j=0,
        nkeep=0,
        coupling=np.zeros(0),
        beta=0.0,
        anorm=0.0,
        broke_in_cycle=False,
        n_matvec=0,
        n_restarts=0,
        fresh_check=False,
        U=None,
        vals=np.zeros(k),
        res=np.full(k, np.inf),
        warm_matvec=warm_matvec,
    )


def _thick_restart(
    op: LinearOperator,
    k: int,
    which: str,
    tol: float,
    max_steps: int,
    ncv: int,
    loop: KrylovSchurLoop,
    generator: torch.Generator,
    seed: int | None,
    verbose: bool,
    accuracy: str = "residual",
    verify: bool = True,
    every: int = 0,
    save: Any = None,
) -> EigshResult:
    """The Krylov-Schur iteration from ``loop`` (fresh or saved); ``save(loop)`` every ``every``."""
    P = op.shape[0]
    dtype, device = op.dtype, op.device
    check_cost = k if verify else 0
    eps = float(torch.finfo(dtype).eps)
    Q, H, j, nkeep, coupling = loop.Q, loop.H, loop.j, loop.nkeep, loop.coupling
    beta, anorm, broke_in_cycle = loop.beta, loop.anorm, loop.broke_in_cycle
    n_matvec, n_restarts, fresh_check = loop.n_matvec, loop.n_restarts, loop.fresh_check
    U, vals, res = loop.U, loop.vals, loop.res
    converged = False
    breakdown = 10.0 * math.sqrt(P) * eps
    last_save = n_matvec

    with ProgressBar(max_steps - n_matvec, "eigsh", verbose=verbose) as bar:
        while True:
            if every and n_matvec - last_save >= every:  # ---- checkpoint (top of the loop) ----
                save(
                    KrylovSchurLoop(
                        Q,
                        H,
                        j,
                        nkeep,
                        coupling,
                        beta,
                        anorm,
                        broke_in_cycle,
                        n_matvec,
                        n_restarts,
                        fresh_check,
                        U,
                        vals,
                        res,
                        loop.warm_matvec,
                    )
                )
                last_save = n_matvec
            if j == ncv:  # ---- thick restart ------------------------------------------------
                theta, S = np.linalg.eigh(H)
                keep = select_wanted(theta, nkeep_n := n_keep(k, ncv), which)
                Sk = torch.as_tensor(S[:, keep], dtype=dtype, device=device)
                Q[:nkeep_n] = Sk.T @ Q[:ncv]
                coupling = beta * S[ncv - 1, keep]
                if beta == 0.0:
                    Q[nkeep_n] = random_orthogonal(Q[:nkeep_n], generator, dtype, device)
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
                    Q[j] = random_orthogonal(Q[:j], generator, dtype, device)
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
        warm_matvec=loop.warm_matvec,
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
