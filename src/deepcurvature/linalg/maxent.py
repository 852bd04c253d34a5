r"""Maximum-entropy spectral densities from a few moments (MEMe, "Entropic Spectral Learning").

Among all densities on a support ``[a, b]`` whose first ``n`` moments are given, the one of
maximum entropy :math:`-\int p \log p` has the form

.. math:: p(x) = \frac{2}{b - a} \exp\Big(\sum_{k=0}^{n} \lambda_k P_k(t)\Big),
   \qquad t = \frac{2x - a - b}{b - a} \in [-1, 1],

with :math:`P_k` the Legendre polynomials. The multipliers minimise the convex dual

.. math:: L(\lambda) = \log \int_{-1}^{1} \exp\Big(\sum_{k=1}^{n}\lambda_k P_k(t)\Big)\,dt
   - \sum_{k=1}^{n} \lambda_k \mu_k, \qquad \mu_k = E[P_k(t)],

whose gradient is :math:`E_p[P_k] - \mu_k` and whose Hessian is the covariance
:math:`\mathrm{Cov}_p(P_j, P_k)`; :math:`\lambda_0 = -\log Z` normalises. Choices made here:

* the Legendre basis on ``[-1, 1]`` (the Hessian is the identity over ``2k + 1`` for the uniform
  density, instead of a Hilbert matrix for monomials), the integrals by Gauss-Legendre
  quadrature (``quadrature_points`` nodes, exact for polynomials of degree ``2N - 1``);
* Newton's method with an Armijo backtracking line search, solved by continuation: ``n = 1, 2,
  ...`` moments in turn, each warm-started from the previous multipliers. When a step fails the
  error names the ``n`` at which it stopped, so that ``n_moments = n - 1`` is the largest that
  worked;
* before each Newton solve the moments are checked against the truncated Hausdorff moment cone
  of ``[-1, 1]`` (the moment matrix :math:`E[P_i P_j]` and the localising matrices with
  :math:`1 - t^2`, or :math:`1 \pm t` for odd ``n``, must be positive definite). Outside the cone
  no distribution has these moments; on its boundary only a discrete one (a few atoms) does,
  and no density: both raise :class:`MaxEntError`.

Moments. From raw power moments :math:`m_k = E[x^k]` the Legendre moments are
:math:`\mu_k = \sum_j c_{kj} m_j` with :math:`c_{kj}` the power coefficients of
:math:`P_k(t(x))`; these alternate in sign and grow like :math:`(2/(b-a))^k` times binomials, so
round-off in the power moments is amplified (noticeably from ``n ~ 15`` when the support is far
from 0). A discrete density (Lanczos quadrature nodes ``theta_i`` and weights ``w_i``) gives
:math:`\mu_k = \sum_i w_i P_k(t(\theta_i))` directly, with no cancellation: this is what
:meth:`SpectralDensity.maxent` uses (:func:`maxent_from_quadrature`).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
from numpy.polynomial import legendre as npleg
from numpy.polynomial import polynomial as nppoly

from ..io.results import load_npz_json, save_npz_json

__all__ = [
    "MaxEntError",
    "MaxEntResult",
    "legendre_moments",
    "maxent_density",
    "maxent_from_quadrature",
    "power_to_legendre_moments",
]

#: The Newton solve stops when every Legendre moment matches its constraint to this.
DEFAULT_TOL = 1e-11
#: A Newton Hessian (covariance of the Legendre polynomials) with a larger condition number
#: means the moments are (numerically) those of a distribution without a density.
MAX_CONDITION = 1e12
#: Whitened moment-cone matrices with a smallest eigenvalue below this are on the boundary of
#: the cone: only a discrete distribution matches.
CONE_TOL = 1e-9


class MaxEntError(ValueError):
    """The moment problem admits no density or is too ill-conditioned to solve.

    Attributes:
        n: the number of moments at which the solve stopped.
        reason: what went wrong.
    """

    def __init__(self, n: int, reason: str) -> None:
        self.n, self.reason = int(n), reason
        fix = (
            f"use fewer moments (n_moments <= {n - 1} gave a density)"
            if n > 1
            else "check the moments and the support"
        )
        super().__init__(
            f"maximum-entropy density: the moment problem stopped at n = {n} moments: "
            f"{reason}; {fix}"
        )


@functools.lru_cache(maxsize=8)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gauss-Legendre nodes and weights on ``[-1, 1]`` (cached, read-only)."""
    t, w = scipy.special.roots_legendre(n)
    t.setflags(write=False)
    w.setflags(write=False)
    return t, w


# -- moments ------------------------------------------------------------------------------------
def _to_unit(x: np.ndarray, support: tuple[float, float]) -> np.ndarray:
    a, b = support
    return (2.0 * np.asarray(x, dtype=np.float64) - a - b) / (b - a)


def _check_support(support: Any) -> tuple[float, float]:
    try:
        a, b = (float(s) for s in support)
    except (TypeError, ValueError):
        raise ValueError(f"support must be a pair (a, b), got {support!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"support must be finite with a < b, got ({a}, {b})")
    return a, b


def power_to_legendre_moments(moments: np.ndarray, support: tuple[float, float]) -> np.ndarray:
    r"""Legendre moments :math:`E[P_k(t)]` from power moments :math:`E[x^k]`, ``k = 0..n``.

    Args:
        moments: ``(n + 1,)`` power moments ``m_0 = 1, m_1, ..., m_n`` of ``x``.
        support: ``(a, b)``; ``t = (2x - a - b) / (b - a)``.

    Returns:
        ``(n + 1,)`` Legendre moments (the first is ``m_0``).
    """
    a, b = _check_support(support)
    m = np.asarray(moments, dtype=np.float64).reshape(-1)
    n = m.size - 1
    affine = np.array([-(a + b) / (b - a), 2.0 / (b - a)])  # t as a polynomial in x
    out = np.empty(n + 1)
    for k in range(n + 1):
        in_t = npleg.leg2poly(np.eye(k + 1)[k])  # P_k as a power series in t
        in_x = np.zeros(1)
        for c in in_t[::-1]:  # Horner: P_k(t(x)) as a power series in x
            in_x = nppoly.polyadd(nppoly.polymul(in_x, affine), [c])
        out[k] = float(np.dot(in_x[: k + 1], m[: in_x[: k + 1].size]))
    return out


def legendre_moments(
    nodes: np.ndarray, weights: np.ndarray, n: int, support: tuple[float, float]
) -> np.ndarray:
    r"""Legendre moments :math:`\sum_i w_i P_k(t(\theta_i))`, ``k = 0..n``, of a discrete density.

    Args:
        nodes: ``(N,)`` points ``theta_i`` inside ``support``.
        weights: ``(N,)`` non-negative weights (normalised to sum 1 here).
        n: highest order.
        support: ``(a, b)``.

    Returns:
        ``(n + 1,)`` moments, the first 1.
    """
    support = _check_support(support)
    nodes = np.asarray(nodes, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    t = _to_unit(nodes, support)
    if np.any(np.abs(t) > 1.0 + 1e-12):
        raise ValueError(
            f"nodes [{nodes.min():.6g}, {nodes.max():.6g}] reach outside the support {support}"
        )
    return (w / w.sum()) @ npleg.legvander(np.clip(t, -1.0, 1.0), n)


# -- the moment cone ----------------------------------------------------------------------------
def _cone_matrices(mu: np.ndarray) -> list[tuple[str, np.ndarray]]:
    r"""Moment and localising matrices of the Legendre moments ``mu`` (``n + 1`` of them).

    :math:`M_{ij} = E[q(t) P_i(t) P_j(t)]` for a weight ``q`` (``1``, ``1 - t^2``, ``1 +- t``)
    with :math:`\deg(q P_i P_j) \le n`: writing :math:`r(t) = \sum_k \frac{2k+1}{2} \mu_k
    P_k(t)` (the polynomial with the same first ``n + 1`` Legendre moments),
    :math:`M_{ij} = \int q P_i P_j r\,dt`, exact by Gauss-Legendre with ``n + 2`` nodes (degree
    ``<= 2n``). Rows and columns are scaled by ``sqrt(2i + 1)`` (the uniform density gives ~I).
    """
    n = mu.size - 1
    s, v = _gauss_legendre(n + 2)
    r = npleg.legvander(s, n) @ ((np.arange(n + 1) + 0.5) * mu)

    def matrix(q: np.ndarray, size: int) -> np.ndarray:
        phi = npleg.legvander(s, size - 1) * np.sqrt(2.0 * np.arange(size) + 1.0)
        return phi.T @ ((v * q * r)[:, None] * phi)

    out = [("moment matrix E[P_i P_j]", matrix(np.ones_like(s), n // 2 + 1))]
    if n % 2 == 0 and n >= 2:
        out.append(("localising matrix E[(1 - t^2) P_i P_j]", matrix(1.0 - s * s, n // 2)))
    elif n % 2 == 1:
        size = (n - 1) // 2 + 1
        out.append(("localising matrix E[(1 + t) P_i P_j]", matrix(1.0 + s, size)))
        out.append(("localising matrix E[(1 - t) P_i P_j]", matrix(1.0 - s, size)))
    return out


def _check_cone(mu: np.ndarray) -> None:
    n = mu.size - 1
    for name, M in _cone_matrices(mu):
        low = float(np.linalg.eigvalsh(M).min())
        if low < -CONE_TOL:
            raise MaxEntError(
                n,
                f"the moments lie outside the moment cone of the support (the {name} has "
                f"eigenvalue {low:.3g} < 0): no distribution on the support has them",
            )
        if low < CONE_TOL:
            raise MaxEntError(
                n,
                f"the moments are on the boundary of the moment cone (the {name} is singular, "
                f"smallest eigenvalue {low:.3g}): only a discrete distribution (a few atoms) has "
                "them, not a density",
            )


# -- the Newton solve ---------------------------------------------------------------------------
def _dual(lam: np.ndarray, phi: np.ndarray, w: np.ndarray, mu: np.ndarray) -> tuple:
    """Dual value, probabilities on the grid, E_p[P_k] (k >= 1)."""
    f = phi[:, 1:] @ lam
    fmax = f.max()
    e = w * np.exp(f - fmax)
    Z = e.sum()
    p = e / Z
    value = math.log(Z) + fmax - float(lam @ mu[1:])
    return value, p, p @ phi[:, 1:]


def _newton(
    mu: np.ndarray,
    lam0: np.ndarray,
    phi: np.ndarray,
    w: np.ndarray,
    *,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int, float]:
    """Minimise the dual for the ``n`` moments ``mu[1:]``; returns (lambda, iterations, cond)."""
    n = mu.size - 1
    lam = lam0.copy()
    value, p, E = _dual(lam, phi, w, mu)
    cond = 1.0
    for it in range(1, max_iter + 1):
        g = E - mu[1:]
        centred = phi[:, 1:] - E
        H = centred.T @ (p[:, None] * centred)
        eig = np.linalg.eigvalsh(H)
        cond = float(eig[-1] / eig[0]) if eig[0] > 0 else math.inf
        if not cond < MAX_CONDITION:
            raise MaxEntError(
                n,
                f"the Hessian of the dual is singular (condition number {cond:.3g} > "
                f"{MAX_CONDITION:g}): the moments are (numerically) those of a distribution "
                "without a density",
            )
        step = -scipy.linalg.solve(H, g, assume_a="pos")
        slope = float(g @ step)
        t = 1.0
        slack = 16.0 * np.finfo(float).eps * max(1.0, abs(value))  # round-off of the dual
        for _ in range(60):
            trial = lam + t * step
            new_value, new_p, new_E = _dual(trial, phi, w, mu)
            if math.isfinite(new_value) and new_value <= value + 1e-4 * t * slope + slack:
                break
            t *= 0.5
        else:
            raise MaxEntError(n, "the line search found no descent direction (round-off)")
        lam, value, p, E = trial, new_value, new_p, new_E
        if np.max(np.abs(E - mu[1:])) <= tol:
            return lam, it, cond
    raise MaxEntError(
        n,
        f"Newton's method did not converge in {max_iter} iterations (moment error "
        f"{np.max(np.abs(E - mu[1:])):.3g}); the moments are nearly those of a distribution "
        "without a density",
    )


def _solve(
    mu: np.ndarray,
    quadrature_points: int,
    tol: float,
    max_iter: int,
    initial: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int], float]:
    """Multipliers ``lambda_0..lambda_n`` by continuation in ``n`` (or from ``initial``)."""
    n = mu.size - 1
    t, w = _gauss_legendre(quadrature_points)
    phi = npleg.legvander(t, n)
    iterations: list[int] = []
    cond = 1.0
    if initial is not None:
        try:  # warm start at the full order (e.g. leave-one-out refits)
            lam, it, cond = _newton(mu, initial[1:], phi, w, tol=tol, max_iter=max_iter)
            iterations = [it]
        except MaxEntError:
            initial = None
    if initial is None:
        lam = np.zeros(0)
        for k in range(1, n + 1):
            _check_cone(mu[: k + 1])
            start = np.concatenate([lam, [0.0]])
            lam, it, cond = _newton(
                mu[: k + 1], start, phi[:, : k + 1], w, tol=tol, max_iter=max_iter
            )
            iterations.append(it)
    f = phi[:, 1:] @ lam
    lam0 = -(math.log(np.sum(w * np.exp(f - f.max()))) + f.max())
    return np.concatenate([[lam0], lam]), iterations, cond


# -- the result ---------------------------------------------------------------------------------
@dataclass
class MaxEntResult:
    r"""A maximum-entropy density on ``support`` matching ``n_moments`` moments.

    :math:`p(x) = \frac{2}{b-a}\exp(\sum_{k=0}^n \lambda_k P_k(t(x)))` (module docstring).

    Attributes:
        support: ``(a, b)``.
        multipliers: ``(n + 1,)`` the Lagrange multipliers ``lambda_k`` (Legendre basis on t).
        constraints: ``(n + 1,)`` the Legendre moments ``E[P_k(t)]`` to match.
        achieved: ``(n + 1,)`` the Legendre moments of the result (by the quadrature).
        grid: ``(N,)`` the Gauss-Legendre nodes mapped to ``[a, b]``.
        density: ``(N,)`` ``p`` at ``grid``.
        grid_weights: ``(N,)`` the quadrature weights on ``[a, b]`` (sum ``b - a``).
        iterations: Newton iterations for each ``n`` of the continuation.
        condition: condition number of the final Newton Hessian.
        metadata: free-form JSON-serialisable information (source of the moments, ...).
    """

    support: tuple[float, float]
    multipliers: np.ndarray
    constraints: np.ndarray
    achieved: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    grid_weights: np.ndarray
    iterations: list[int] = field(default_factory=list)
    condition: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_moments(self) -> int:
        """The number ``n`` of matched moments (besides the mass)."""
        return int(self.multipliers.size - 1)

    @property
    def max_error(self) -> float:
        """``max_k |achieved_k - constraints_k|`` over the Legendre moments."""
        return float(np.max(np.abs(self.achieved - self.constraints)))

    @property
    def entropy(self) -> float:
        r"""Differential entropy :math:`-\int p \log p\,dx`."""
        p = self.density
        return float(-np.sum(self.grid_weights * p * np.log(np.where(p > 0, p, 1.0))))

    def pdf(self, x: float | np.ndarray) -> float | np.ndarray:
        """The density at ``x`` (0 outside the support), vectorised."""
        a, b = self.support
        xa = np.asarray(x, dtype=np.float64)
        t = _to_unit(xa, self.support)
        inside = np.abs(t) <= 1.0
        val = np.exp(npleg.legval(np.clip(t, -1.0, 1.0), self.multipliers)) * 2.0 / (b - a)
        out = np.where(inside, val, 0.0)
        return float(out) if out.ndim == 0 else out

    def cdf(self, x: float | np.ndarray) -> float | np.ndarray:
        """The mass at or below ``x``, by Gauss-Legendre quadrature on ``[a, x]``, vectorised."""
        a, _ = self.support
        xa = np.asarray(x, dtype=np.float64)
        flat = np.clip(xa.reshape(-1), a, self.support[1])
        s, ws = _gauss_legendre(self.grid.size)
        out = np.empty(flat.size)
        for start in range(0, flat.size, 256):
            u = flat[start : start + 256, None]
            half = (u - a) / 2.0
            pts = a + half * (s[None, :] + 1.0)
            out[start : start + 256] = (self.pdf(pts) * ws[None, :]).sum(axis=1) * half[:, 0]
        out = np.clip(out, 0.0, 1.0).reshape(xa.shape)
        return float(out) if out.ndim == 0 else out

    def moment(self, k: int) -> float:
        """The power moment ``E[x^k]`` of the result (by the quadrature)."""
        return float(np.sum(self.grid_weights * self.density * self.grid**k))

    def expectation(self, f: Any) -> float:
        """``E[f(x)]`` for a vectorised function ``f`` (by the quadrature)."""
        return float(np.sum(self.grid_weights * self.density * np.asarray(f(self.grid))))

    def summary(self) -> dict[str, Any]:
        """Support, number of moments, max moment error, iterations, condition, entropy, mean."""
        return {
            "support": list(self.support),
            "n_moments": self.n_moments,
            "max_error": self.max_error,
            "iterations": list(self.iterations),
            "total_iterations": int(sum(self.iterations)),
            "condition": self.condition,
            "entropy": self.entropy,
            "mean": self.moment(1),
            "variance": self.moment(2) - self.moment(1) ** 2,
            "quadrature_points": int(self.grid.size),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (arrays) and ``path.json`` (summary, metadata) atomically."""
        arrays = {
            "multipliers": self.multipliers,
            "constraints": self.constraints,
            "achieved": self.achieved,
            "grid": self.grid,
            "density": self.density,
            "grid_weights": self.grid_weights,
        }
        meta = {
            "kind": "MaxEntResult",
            "support": list(self.support),
            "iterations": list(self.iterations),
            "condition": self.condition,
            "summary": self.summary(),
            "metadata": self.metadata,
        }
        npz, _ = save_npz_json(path, arrays, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> MaxEntResult:
        """Read a result written by :meth:`save` (``.npz`` with or without the suffix)."""
        arrays, meta = load_npz_json(path)
        needed = ("multipliers", "constraints", "achieved", "grid", "density", "grid_weights")
        for key in needed:
            if key not in arrays:
                raise ValueError(f"{path} is not a MaxEnt result file: it has no '{key}' array")
        if meta.get("kind") not in (None, "MaxEntResult") or "support" not in meta:
            raise ValueError(f"{path} is not a MaxEnt result file (kind {meta.get('kind')!r})")
        return cls(
            support=tuple(float(s) for s in meta["support"]),
            iterations=[int(i) for i in meta.get("iterations", [])],
            condition=float(meta.get("condition", math.nan)),
            metadata=dict(meta.get("metadata") or {}),
            **{k: arrays[k] for k in needed},
        )

    def __repr__(self) -> str:
        a, b = self.support
        return (
            f"MaxEntResult(n_moments={self.n_moments}, support=[{a:.4g}, {b:.4g}], "
            f"max_error={self.max_error:.2g})"
        )


# -- public functions ---------------------------------------------------------------------------
def _fit(
    mu: np.ndarray,
    support: tuple[float, float],
    *,
    quadrature_points: int,
    tol: float,
    max_iter: int,
    metadata: dict[str, Any],
    initial: np.ndarray | None = None,
) -> MaxEntResult:
    if quadrature_points < 2 * mu.size:
        raise ValueError(
            f"quadrature_points={quadrature_points} is too few for {mu.size - 1} moments"
        )
    if not np.all(np.isfinite(mu)):
        raise ValueError("the moments must be finite")
    if abs(mu[0] - 1.0) > 1e-8:
        raise ValueError(f"the zeroth moment (the mass) must be 1, got {mu[0]!r}")
    mu = mu.copy()
    mu[0] = 1.0
    lam, iterations, cond = _solve(mu, quadrature_points, tol, max_iter, initial)
    a, b = support
    s, ws = _gauss_legendre(quadrature_points)
    phi = npleg.legvander(s, mu.size - 1)
    p_t = np.exp(phi @ lam)
    achieved = (ws * p_t) @ phi
    half = (b - a) / 2.0
    return MaxEntResult(
        support=(a, b),
        multipliers=lam,
        constraints=mu,
        achieved=achieved,
        grid=a + half * (s + 1.0),
        density=p_t / half,
        grid_weights=ws * half,
        iterations=iterations,
        condition=cond,
        metadata=metadata,
    )


def maxent_density(
    moments: np.ndarray,
    support: tuple[float, float],
    *,
    kind: str = "power",
    quadrature_points: int = 512,
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
) -> MaxEntResult:
    r"""The maximum-entropy density on ``support`` with the given moments.

    Args:
        moments: ``(n + 1,)`` moments ``k = 0..n`` (the first, the mass, must be 1): power
            moments :math:`E[x^k]` (``kind="power"``) or Legendre moments :math:`E[P_k(t)]` of
            the mapped variable ``t = (2x - a - b) / (b - a)`` (``kind="legendre"``, better
            conditioned: see the module docstring).
        support: ``(a, b)``, the interval carrying the density.
        kind: ``"power"`` or ``"legendre"``.
        quadrature_points: Gauss-Legendre nodes ``N`` for the integrals (and the result's grid).
        tol: the largest accepted error of a Legendre moment.
        max_iter: Newton iterations per number of moments.

    Returns:
        A :class:`MaxEntResult`.

    Raises:
        MaxEntError: the moments admit no density on the support, or the problem is too
            ill-conditioned; the message names the ``n`` at which it stopped.
        ValueError: bad arguments.
    """
    support = _check_support(support)
    m = np.asarray(moments, dtype=np.float64).reshape(-1)
    if m.size < 2:
        raise ValueError("maxent_density needs the mass and at least one moment (k = 0, 1)")
    if kind == "power":
        mu = power_to_legendre_moments(m, support)
    elif kind == "legendre":
        mu = m
    else:
        raise ValueError(f"kind must be 'power' or 'legendre', got {kind!r}")
    meta = {"moments": kind, "power_moments": m.tolist() if kind == "power" else None}
    return _fit(
        mu,
        support,
        quadrature_points=int(quadrature_points),
        tol=float(tol),
        max_iter=int(max_iter),
        metadata=meta,
    )


def maxent_from_quadrature(
    nodes: np.ndarray,
    weights: np.ndarray,
    n_moments: int,
    support: tuple[float, float],
    *,
    quadrature_points: int = 512,
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
    initial: np.ndarray | None = None,
) -> MaxEntResult:
    r"""The maximum-entropy density matching ``n_moments`` moments of a discrete density.

    The Legendre moments :math:`\sum_i w_i P_k(t(\theta_i))` come straight from the nodes and
    weights (no power moments, no cancellation).

    Args:
        nodes: ``(N,)`` nodes inside ``support`` (e.g. Ritz values).
        weights: ``(N,)`` weights (e.g. Lanczos quadrature weights), normalised here.
        n_moments: ``n``, the number of moments to match.
        support: ``(a, b)``.
        quadrature_points: Gauss-Legendre nodes ``N`` for the integrals (and the result's grid).
        tol: the largest accepted error of a Legendre moment.
        max_iter: Newton iterations per number of moments.
        initial: ``(n + 1,)`` multipliers to start Newton from (skips the continuation).

    Returns:
        A :class:`MaxEntResult`.
    """
    if isinstance(n_moments, bool) or not isinstance(n_moments, (int, np.integer)):
        raise ValueError(f"n_moments must be a positive integer, got {n_moments!r}")
    if n_moments < 1:
        raise ValueError(f"n_moments must be a positive integer, got {n_moments!r}")
    support = _check_support(support)
    mu = legendre_moments(nodes, weights, int(n_moments), support)
    return _fit(
        mu,
        support,
        quadrature_points=int(quadrature_points),
        tol=float(tol),
        max_iter=int(max_iter),
        metadata={"moments": "quadrature", "n_nodes": int(np.size(nodes))},
        initial=initial,
    )
