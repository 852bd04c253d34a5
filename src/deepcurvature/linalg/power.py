"""Power iteration with Hotelling deflation: the classic baseline for the top eigenpairs.

Appendix B of the paper (Theorem 7): after ``m`` products the Rayleigh quotient of ``A^m v``
approaches ``lambda_1`` like ``(lambda_2 / lambda_1)^(2m)``, much more slowly than Lanczos on the
same Krylov subspace (Theorem 6, Table 1). It is provided to compare against :func:`~.eigsh.eigsh`
and because practitioners use it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..progress import ProgressBar
from .eigen_common import (
    EigshResult,
    check_finite,
    residual_threshold,
    start_vector,
    validate_common,
)
from .probes import draw_probes, resolve_seed

__all__ = ["power_iteration"]


def power_iteration(
    op: Any,
    k: int = 1,
    *,
    tol: float = 1e-8,
    max_iters: int = 1000,
    seed: int | None = None,
    start: torch.Tensor | None = None,
    verbose: bool = True,
) -> EigshResult:
    """The ``k`` largest-magnitude eigenpairs by power iteration with deflation.

    Pair ``i`` iterates ``v <- B v / ||B v||`` on the deflated operator
    ``B = A - sum_{j<i} theta_j u_j u_j^T`` (one product of ``A`` per iteration) with the
    Rayleigh quotient ``theta = v^T B v`` as estimate (equation 20), until
    ``||B v - theta v|| <= tol * max|theta|`` (the maximum over the pairs found so far; never
    below ``10 sqrt(P) eps ||A||``), the criterion of :func:`~.eigsh.eigsh`. Each start vector is
    orthogonalised against the pairs already found.

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes, ``(P, P)`` symmetric.
        k: number of eigenpairs, ``1 <= k <= P``.
        tol: relative residual tolerance.
        max_iters: maximum number of iterations (operator products) per eigenpair.
        seed: seed of the random start vectors (drawn on the CPU); fresh when ``None``.
        start: an explicit start vector ``(P,)`` for the first pair.
        verbose: show a progress bar over iterations.

    Returns:
        An :class:`~.eigsh.EigshResult` (values ascending, true residuals from one final product
        with the ``k`` vectors, ``n_matvec`` counting it, ``n_restarts = 0``). ``converged`` says
        whether every pair met the criterion within ``max_iters``; otherwise a warning is given.

    Raises:
        ValueError: bad ``k``, ``tol``, ``max_iters`` or ``start``.
        FloatingPointError: the operator returned a non-finite product (names the iteration).
    """
    op = validate_common(op, k, tol)
    k, tol = int(k), float(tol)
    if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
    P = op.shape[0]
    dtype, device = op.dtype, op.device
    eps = float(torch.finfo(dtype).eps)
    used_seed = resolve_seed(seed) if (start is None or seed is not None or k > 1) else None
    generator = torch.Generator().manual_seed(used_seed if used_seed is not None else 0)

    U = torch.zeros((P, k), dtype=dtype, device=device)
    thetas = np.zeros(k)
    ok = np.zeros(k, dtype=bool)
    anorm = 0.0
    n_matvec = 0
    with ProgressBar(k * int(max_iters), "power iteration", verbose=verbose) as bar:
        for i in range(k):
            if i == 0:
                v = start_vector(op, start, generator)
            else:
                v = draw_probes(P, 1, kind="gaussian", generator=generator)[0]
                v = v.to(dtype=dtype, device=device)
            Ui, ti = U[:, :i], torch.as_tensor(thetas[:i], dtype=dtype, device=device)
            if i > 0:
                v = v - Ui @ (Ui.T @ v)
            v = v / torch.linalg.vector_norm(v)
            theta = 0.0
            for it in range(int(max_iters)):
                w = op.matmat(v[:, None])[:, 0]
                n_matvec += 1
                check_finite(w, f"power iteration {it + 1} of eigenpair {i + 1}")
                if i > 0:
                    w = w - Ui @ (ti * (Ui.T @ v))  # Hotelling deflation
                theta = float(torch.dot(v.double(), w.double()))
                r = float(torch.linalg.vector_norm(w.double() - theta * v.double()))
                nrm = float(torch.linalg.vector_norm(w.double()))
                anorm = max(anorm, abs(theta))
                bar.advance()
                scale = np.append(thetas[:i], theta)
                if r <= residual_threshold(tol, scale, anorm, P, eps):
                    ok[i] = True
                    break
                if it + 1 < max_iters and nrm > 0.0:  # keep v paired with theta at the end
                    v = w / nrm
            if verbose:
                bar.set_info(f"pair {i + 1}: theta={theta:.6g}")
            U[:, i] = v
            thetas[i] = theta

    order = np.argsort(thetas, kind="stable")
    vals = thetas[order].copy()
    U = U[:, torch.as_tensor(order, device=device)]
    AU = op.matmat(U)
    n_matvec += k
    check_finite(AU, "final residual check")
    lam = torch.as_tensor(vals, dtype=torch.float64, device=device)
    res = torch.linalg.vector_norm(AU.double() - U.double() * lam, dim=0).cpu().numpy()
    converged = bool(ok.all())
    if not converged:
        warnings.warn(
            f"power iteration did not converge within max_iters={max_iters} for "
            f"{int((~ok).sum())} of {k} eigenpairs (max relative residual "
            f"{np.max(res) / max(np.max(np.abs(vals)), 1e-300):.2e}); the gap "
            "|lambda_2 / lambda_1| is probably close to 1: use dc.eigsh",
            stacklevel=2,
        )
    return EigshResult(
        values=vals,
        vectors=U,
        residual_norms=res,
        n_matvec=n_matvec,
        n_restarts=0,
        converged=converged,
        which="LM",
        tol=tol,
        seed=used_seed,
        method="power iteration",
    )
