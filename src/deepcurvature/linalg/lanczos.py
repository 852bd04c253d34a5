"""The Lanczos algorithm with full reorthogonalisation and stochastic Lanczos quadrature.

Algorithm 1 of the paper, with these choices:

* every new vector is orthogonalised against the whole stored basis by two classical
  Gram-Schmidt passes written as (batched) matrix products, so orthogonality holds to round-off
  and the quadrature weights are meaningful;
* the scalars alpha and beta are accumulated in float64 whatever the operator's dtype, and the
  tridiagonal eigenproblem is solved in float64 by ``scipy.linalg.eigh_tridiagonal``;
* several probes run as independent recurrences whose products share one ``matmat`` per step;
* a probe whose beta falls below a relative tolerance has found an invariant subspace and stops.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

from ..progress import ProgressBar
from .density import SpectralDensity
from .operator import as_operator, lower_precision
from .probes import draw_probes, resolve_seed

__all__ = ["LanczosResult", "lanczos", "tridiagonal_eigh"]


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decompose a symmetric tridiagonal matrix in float64.

    ``T`` has diagonal ``alpha`` (m,) and off-diagonal ``beta`` (m-1,).

    Returns:
        ``(theta, S)``: Ritz values ``(m,)`` ascending and eigenvectors ``(m, m)`` (columns).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(alpha, beta)


@dataclass
class LanczosResult:
    """What :func:`lanczos` learned, per probe.

    Attributes:
        alphas: per probe, the diagonal of T, ``(m_l,)`` float64.
        betas: per probe, the off-diagonal of T, ``(m_l - 1,)`` float64.
        residual_norms: ``(n_probes,)`` the final beta_m (norm of the residual ``r`` in
            ``A Q = Q T + r e_m^T``); 0 when the probe broke down.
        ritz_values: per probe, eigenvalues of T ascending, ``(m_l,)``.
        weights: per probe, squared first components of T's eigenvectors, ``(m_l,)``, sum 1.
        ritz_vectors: per probe ``(P, m_l)`` tensors ``Q S`` when ``store_vectors`` was set.
        basis: per probe the Lanczos basis ``Q`` ``(P, m_l)`` when ``store_vectors`` was set.
        residuals: per probe the residual vector ``r`` ``(P,)`` when ``store_vectors`` was set.
        start_norms: ``(n_probes,)`` the norms of the start vectors.
        broke_down: ``(n_probes,)`` whether each probe stopped at an invariant subspace.
        dim: ``P``.
        steps: the number of steps per probe, after clamping to ``P`` (a probe that broke down
            ran fewer: :attr:`steps_done`).
        steps_requested: the number of steps asked for before clamping (``> steps`` when
            ``steps`` exceeded ``P``); ``None`` if unknown.
        precision: name of the floating dtype limiting the accuracy of the run (the lower of the
            operator's products and the basis), e.g. ``"float32"``: it sets the round-off
            tolerance of :meth:`SpectralDensity.negative_mass`.
        seed: the seed the probes were drawn with (``None`` for given start vectors).
        probe: ``"rademacher"``, ``"gaussian"`` or ``"given"``.
        step_times: wall-clock seconds of each step (all probes together).
        step_memory: peak memory in bytes after each step (see :func:`peak_memory`): on a CUDA
            device ``torch.cuda.max_memory_allocated``, else the host process's maximum resident
            set size; both are HIGH-WATER marks (since the process started or the last
            ``torch.cuda.reset_peak_memory_stats``), so they never decrease. Empty when not
            measurable (no ``resource`` module).
        memory_kind: ``"cuda_max_allocated"`` or ``"host_max_rss"`` (``None`` if unmeasured).
    """

    alphas: list[np.ndarray]
    betas: list[np.ndarray]
    residual_norms: np.ndarray
    ritz_values: list[np.ndarray]
    weights: list[np.ndarray]
    start_norms: np.ndarray
    broke_down: np.ndarray
    dim: int
    steps: int
    seed: int | None
    probe: str
    step_times: list[float] = field(default_factory=list)
    step_memory: list[int] = field(default_factory=list)
    memory_kind: str | None = None
    steps_requested: int | None = None
    precision: str | None = None
    ritz_vectors: list[torch.Tensor] | None = None
    basis: list[torch.Tensor] | None = None
    residuals: list[torch.Tensor] | None = None

    @property
    def n_probes(self) -> int:
        """Number of probes."""
        return len(self.alphas)

    @property
    def steps_done(self) -> list[int]:
        """Steps each probe ran (fewer than ``steps`` after a breakdown)."""
        return [int(a.size) for a in self.alphas]

    def tridiagonal(self, probe: int = 0) -> np.ndarray:
        """The dense ``(m_l, m_l)`` tridiagonal matrix T of one probe."""
        a, b = self.alphas[probe], self.betas[probe]
        return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)

    def density(self) -> SpectralDensity:
        """The discrete spectral density averaging the probes (equation 25)."""
        n = self.n_probes
        nodes = np.concatenate(self.ritz_values)
        weights = np.concatenate([w / n for w in self.weights])
        weights = weights / weights.sum()  # exact sum 1 against round-off
        index = np.concatenate([np.full(t.size, i) for i, t in enumerate(self.ritz_values)])
        meta: dict[str, Any] = {
            "method": "stochastic Lanczos quadrature",
            "steps": self.steps,
            "steps_requested": self.steps_requested,
            "steps_done": self.steps_done,
            "probes": n,
            "probe": self.probe,
            "seed": self.seed,
        }
        if self.precision is not None:
            meta["precision"] = self.precision
        return SpectralDensity(nodes, weights, dim=self.dim, probe_index=index, metadata=meta)


def _default_breakdown_tol(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) ** (2.0 / 3.0)


def peak_memory(device: torch.device) -> tuple[int | None, str | None]:
    """The peak memory of the computation so far, in bytes, and what it measures.

    ``torch.cuda.max_memory_allocated(device)`` on a CUDA device (``"cuda_max_allocated"``),
    else the host process's maximum resident set size from ``resource.getrusage``
    (``"host_max_rss"``; ``ru_maxrss`` is in KiB on Linux and bytes on macOS). Both are high-water
    marks. ``(None, None)`` where neither is available (e.g. ``resource`` on Windows).
    """
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None, None
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return (rss if sys.platform == "darwin" else rss * 1024), "host_max_rss"


def lanczos(
    op: Any,
    steps: int,
    *,
    probes: int = 1,
    seed: int | None = None,
    probe: str = "rademacher",
    start: torch.Tensor | None = None,
    store_vectors: bool = False,
    basis_dtype: torch.dtype | None = None,
    breakdown_tol: float | None = None,
    verbose: bool = True,
    description: str = "Lanczos",
) -> LanczosResult:
    """Run ``steps`` Lanczos steps with full reorthogonalisation from each of ``probes`` vectors.

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes; ``(P, P)`` symmetric.
        steps: Lanczos steps ``m`` per probe; clamped to ``P`` with a warning (the result
            records both: ``steps`` and ``steps_requested``).
        probes: number of independent random start vectors ``n_v`` (all share one ``matmat``
            per step).
        seed: seed of the random start vectors (drawn on the CPU; a fresh one when ``None``,
            recorded in the result).
        probe: ``"rademacher"`` or ``"gaussian"`` start vectors.
        start: explicit start vectors ``(P,)`` or ``(P, k)`` instead of random ones.
        store_vectors: keep the basis and return Ritz vectors ``(P, m)`` per probe.
        basis_dtype: dtype in which the basis is stored and reorthogonalised (default: the
            operator's); float32 halves the memory, float64 improves orthogonality.
        breakdown_tol: a probe stops when ``beta < breakdown_tol * ||T||`` (estimate);
            default ``eps ** (2/3)`` of the basis dtype.
        verbose: show a progress bar with the time per step.
        description: label of the progress bar.

    Returns:
        A :class:`LanczosResult`; ``result.density()`` is the spectral density of equation 25.

    Raises:
        ValueError: bad ``steps``/``probes``/``start``, a zero start vector, a dense matrix
            with NaN or infinite entries ("not finite", checked before symmetry) or a
            non-symmetric one.
        TypeError: a complex matrix or operator.
        FloatingPointError: the operator's product is not finite (NaN or infinity in ``A v``,
            seen in the scalars alpha and beta of that step): names the step and the probe.
    """
    op = as_operator(op)
    if op.symmetric is False:
        raise ValueError(
            "Lanczos needs a symmetric operator, but the matrix is not symmetric; "
            "symmetrise it with (A + A.T) / 2 if that is what you mean"
        )
    P = op.shape[0]
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps_requested = int(steps)
    if steps > P:
        warnings.warn(
            f"steps={steps} exceeds the dimension P={P}; running {P} steps instead",
            stacklevel=2,
        )
        steps = P
    steps = int(steps)
    bdtype = basis_dtype or op.dtype
    if not bdtype.is_floating_point:
        raise TypeError(f"basis_dtype must be a floating dtype, got {bdtype}")

    if start is not None:
        if not isinstance(start, torch.Tensor):
            start = torch.as_tensor(np.asarray(start))
        start = start.unsqueeze(1) if start.ndim == 1 else start
        if start.ndim != 2 or start.shape[0] != P:
            raise ValueError(
                f"start must have shape (P,) or (P, k) with P = {P}, got {tuple(start.shape)}"
            )
        V0 = start.T.to(dtype=torch.float64, device=op.device)
        probe_kind, used_seed = "given", None
    else:
        if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 1:
            raise ValueError(f"probes must be a positive integer, got {probes!r}")
        used_seed = resolve_seed(seed)
        V0 = draw_probes(P, int(probes), kind=probe, seed=used_seed, device=op.device)
        probe_kind = probe
    k = V0.shape[0]
    norms0 = torch.linalg.vector_norm(V0, dim=1)
    if not torch.all(torch.isfinite(norms0)):
        raise ValueError("the start vector contains NaN or infinity")
    if torch.any(norms0 == 0):
        raise ValueError("a start vector is zero: Lanczos needs a non-zero start vector")

    tol = _default_breakdown_tol(bdtype) if breakdown_tol is None else float(breakdown_tol)
    Q = torch.empty((k, steps, P), dtype=bdtype, device=op.device)
    Q[:, 0] = (V0 / norms0[:, None]).to(bdtype)
    del V0
    alphas = np.zeros((k, steps))
    betas = np.zeros((k, steps))
    done_steps = np.full(k, steps, dtype=np.int64)
    active = np.ones(k, dtype=bool)
    broke = np.zeros(k, dtype=bool)
    scale = np.zeros(k)  # running estimate of ||T||, for the relative breakdown test
    residual_vecs: torch.Tensor | None = None
    step_memory: list[int] = []
    memory_kind: str | None = None

    with ProgressBar(steps, description, verbose=verbose) as bar:
        for j in range(steps):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            all_active = idx.size == k
            Qj = Q[:, j] if all_active else Q[torch.as_tensor(idx, device=op.device), j]
            AV = op.matmat(Qj.T.to(op.dtype))  # (P, k_active): one shared product
            if all_active:
                W = AV.T.to(bdtype).contiguous()
            else:
                W = torch.zeros((k, P), dtype=bdtype, device=op.device)
                W[torch.as_tensor(idx, device=op.device)] = AV.T.to(bdtype)
            if bdtype != torch.float64:  # alpha_j = q_j^T A q_j accumulated in float64
                alpha = torch.einsum("kp,kp->k", Q[:, j].double(), W.double())
            basis = Q[:, : j + 1]
            W3 = W.unsqueeze(2)  # (k, P, 1) view of W
            for g in range(2):  # two classical Gram-Schmidt passes as matrix products
                h = torch.bmm(basis, W3)  # (k, j+1, 1) = Q^T w
                W3.baddbmm_(basis.transpose(1, 2), h, alpha=-1.0)  # w -= Q h
                if bdtype == torch.float64:  # float64 basis: alpha is the total projection
                    alpha = h[:, j, 0] if g == 0 else alpha + h[:, j, 0]
            beta = torch.linalg.vector_norm(W, dim=1, dtype=torch.float64)
            ab = torch.stack([alpha, beta]).cpu().numpy()  # one host sync per step
            for i in idx:
                a_i, b_i = ab[0, i], ab[1, i]
                if not (math.isfinite(a_i) and math.isfinite(b_i)):
                    raise FloatingPointError(
                        f"the operator's product is not finite at step {j + 1} (probe {i}: "
                        f"alpha={a_i}, beta={b_i}): A v holds NaN or infinity; check the "
                        "operator (model, loss, data) for NaN or infinity, e.g. "
                        "torch.isfinite(op.matvec(v)).all()"
                    )
                alphas[i, j], betas[i, j] = a_i, b_i
                scale[i] = max(scale[i], abs(a_i), b_i, betas[i, j - 1] if j else 0.0)
                if j < steps - 1 and b_i <= tol * scale[i]:
                    active[i], broke[i], done_steps[i] = False, True, j + 1
                    betas[i, j] = 0.0
            if j < steps - 1:
                inv = np.where(active, 1.0 / np.where(active, ab[1], 1.0), 0.0)
                scale_t = torch.as_tensor(inv, dtype=bdtype, device=op.device)[:, None]
                torch.mul(W, scale_t, out=Q[:, j + 1])
            elif store_vectors:
                residual_vecs = W.to(op.dtype)
            bar.advance()
            peak, memory_kind = peak_memory(op.device)  # one getrusage call: microseconds
            if peak is not None:
                step_memory.append(peak)
            if verbose:
                bar.set_info(f"alpha={ab[0, idx[0]]:.4g}")
        step_times = list(bar.step_times)

    res_alphas, res_betas, ritz_vals, wts, ritz_vecs, bases, resids = [], [], [], [], [], [], []
    final_betas = np.zeros(k)
    for i in range(k):
        m_i = int(done_steps[i])
        a = alphas[i, :m_i].copy()
        b = betas[i, : m_i - 1].copy()
        final_betas[i] = 0.0 if broke[i] else betas[i, m_i - 1]
        theta, S = tridiagonal_eigh(a, b)
        w = S[0, :] ** 2
        w = w / w.sum()
        res_alphas.append(a)
        res_betas.append(b)
        ritz_vals.append(theta)
        wts.append(w)
        if store_vectors:
            Qi = Q[i, :m_i].T.to(op.dtype)  # (P, m_i)
            bases.append(Qi)
            ritz_vecs.append(Qi @ torch.as_tensor(S, dtype=op.dtype, device=op.device))
            if broke[i] or residual_vecs is None:
                resids.append(torch.zeros(P, dtype=op.dtype, device=op.device))
            else:
                resids.append(residual_vecs[i])
    return LanczosResult(
        alphas=res_alphas,
        betas=res_betas,
        residual_norms=final_betas,
        ritz_values=ritz_vals,
        weights=wts,
        start_norms=norms0.cpu().numpy(),
        broke_down=broke,
        dim=P,
        steps=steps,
        steps_requested=steps_requested,
        precision=str(lower_precision(op.product_dtype, bdtype)).removeprefix("torch."),
        seed=used_seed,
        probe=probe_kind,
        step_times=step_times,
        step_memory=step_memory,
        memory_kind=memory_kind,
        ritz_vectors=ritz_vecs if store_vectors else None,
        basis=bases if store_vectors else None,
        residuals=resids if store_vectors else None,
    )
