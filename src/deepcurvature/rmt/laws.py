r"""Limiting spectral laws of random-matrix ensembles, as functions of numpy arrays.

* the Wigner semicircle (Theorem 3, equation 7): on ``[-R, R]``,
  :math:`\sigma(x) = \frac{2}{\pi R^2}\sqrt{R^2 - x^2}`; ``R = 2`` for ``M / sqrt(P)``,
  ``R = 2 sqrt(P)`` for an unnormalised Wigner matrix (:func:`wigner_radius`);
* the Marcenko-Pastur law (Theorem 4, equations 8-9) of ``X X^T / T`` with ``q = P / T`` and
  entry variance ``sigma2``: an absolutely continuous part
  :math:`\frac{\sqrt{(\lambda_+ - x)(x - \lambda_-)}}{2\pi\sigma^2 q x}` on
  :math:`[\lambda_-, \lambda_+]`, :math:`\lambda_\pm = \sigma^2(1 \pm \sqrt q)^2`, of mass
  ``min(1, 1/q)``, plus an atom of mass ``1 - 1/q`` at zero when ``q > 1``.

The paper's equation 9 prints the denominator as ``lambda x 2 pi sigma^2``; the ``lambda`` there
is the ratio ``q`` (the density then integrates to 1 for ``q <= 1``), which is what we use.

Densities return ``float`` for scalar input and ``np.ndarray`` otherwise; CDFs are exact closed
forms (no numerical integration), so they can serve as references for Kolmogorov distances.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "kolmogorov_distance",
    "marchenko_pastur_atom",
    "marchenko_pastur_cdf",
    "marchenko_pastur_density",
    "marchenko_pastur_edges",
    "semicircle_cdf",
    "semicircle_density",
    "semicircle_edges",
    "wigner_radius",
]

ArrayLike = float | np.ndarray


def _out(values: np.ndarray, like: object) -> ArrayLike:
    return float(values) if np.ndim(like) == 0 else values


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


# -- Wigner semicircle --------------------------------------------------------------------------
def wigner_radius(P: int, *, normalize: bool = False) -> float:
    """Radius of the semicircle of a ``P x P`` Wigner matrix with unit-variance entries.

    ``2 sqrt(P)`` for the unnormalised matrix, ``2`` after dividing it by ``sqrt(P)``.
    """
    if isinstance(P, bool) or not isinstance(P, (int, np.integer)) or P < 1:
        raise ValueError(f"P must be a positive integer, got {P!r}")
    return 2.0 if normalize else 2.0 * math.sqrt(P)


def semicircle_edges(radius: float = 2.0) -> tuple[float, float]:
    """Support ``(-radius, radius)`` of the semicircle law."""
    radius = _check_positive("radius", radius)
    return -radius, radius


def semicircle_density(x: ArrayLike, radius: float = 2.0) -> ArrayLike:
    r"""Semicircle density :math:`\frac{2}{\pi R^2}\sqrt{R^2 - x^2}` on ``[-R, R]`` (equation 7).

    With ``radius=2`` this is :math:`\frac{1}{2\pi}\sqrt{4 - x^2}`, the limit of ``M / sqrt(P)``;
    ``radius = 2 sqrt(P)`` gives the density of the unnormalised Wigner matrix ``M``.

    Args:
        x: evaluation points, any shape.
        radius: ``R``, the edge of the support.

    Returns:
        The density at ``x`` (same shape; 0 outside the support); integrates to 1.
    """
    R = _check_positive("radius", radius)
    xa = np.asarray(x, dtype=np.float64)
    inside = np.clip(R * R - xa * xa, 0.0, None)
    return _out(2.0 / (math.pi * R * R) * np.sqrt(inside), x)


def semicircle_cdf(x: ArrayLike, radius: float = 2.0) -> ArrayLike:
    r"""Cumulative distribution of the semicircle law on ``[-R, R]``.

    :math:`F(x) = \frac12 + \frac{x\sqrt{R^2 - x^2}}{\pi R^2} + \frac{\arcsin(x / R)}{\pi}`.
    """
    R = _check_positive("radius", radius)
    xa = np.clip(np.asarray(x, dtype=np.float64), -R, R)
    F = 0.5 + xa * np.sqrt(np.clip(R * R - xa * xa, 0.0, None)) / (math.pi * R * R)
    F = F + np.arcsin(xa / R) / math.pi
    return _out(np.clip(F, 0.0, 1.0), x)


# -- Marcenko-Pastur ----------------------------------------------------------------------------
def marchenko_pastur_edges(q: float, sigma2: float = 1.0) -> tuple[float, float]:
    r"""Edges :math:`\lambda_\pm = \sigma^2 (1 \pm \sqrt q)^2` of the continuous part (eq. 9)."""
    q = _check_positive("q", q)
    sigma2 = _check_positive("sigma2", sigma2)
    s = math.sqrt(q)
    return sigma2 * (1.0 - s) ** 2, sigma2 * (1.0 + s) ** 2


def marchenko_pastur_atom(q: float) -> float:
    """Mass ``max(0, 1 - 1/q)`` of the eigenvalues at exactly zero (equation 8).

    For ``q = P / T > 1`` the matrix ``X X^T / T`` has rank ``T < P``: a fraction ``1 - T / P``
    of its eigenvalues vanish.
    """
    q = _check_positive("q", q)
    return max(0.0, 1.0 - 1.0 / q)


def marchenko_pastur_density(x: ArrayLike, q: float, sigma2: float = 1.0) -> ArrayLike:
    r"""Continuous part of the Marcenko-Pastur law (equations 8-9).

    :math:`\frac{\sqrt{(\lambda_+ - x)(x - \lambda_-)}}{2\pi\sigma^2 q x}` on
    :math:`[\lambda_-, \lambda_+]`. It integrates to ``min(1, 1/q)``: for ``q > 1`` the missing
    mass :func:`marchenko_pastur_atom` sits at zero and is not part of this density.

    Args:
        x: evaluation points, any shape.
        q: the ratio ``P / T``.
        sigma2: the variance of the entries of ``X``.

    Returns:
        The density at ``x`` (same shape; 0 outside the support).
    """
    lo, hi = marchenko_pastur_edges(q, sigma2)
    xa = np.asarray(x, dtype=np.float64)
    inside = (xa > lo) & (xa < hi) & (xa > 0)
    safe = np.where(inside, xa, 1.0)
    num = np.sqrt(np.clip((hi - safe) * (safe - lo), 0.0, None))
    dens = np.where(inside, num / (2.0 * math.pi * float(sigma2) * float(q) * safe), 0.0)
    return _out(dens, x)


def marchenko_pastur_cdf(x: ArrayLike, q: float, sigma2: float = 1.0) -> ArrayLike:
    r"""Cumulative distribution of the Marcenko-Pastur law, atom at zero included.

    Closed form: with :math:`x = m - r\cos\theta`, :math:`m = (\lambda_+ + \lambda_-)/2`,
    :math:`r = (\lambda_+ - \lambda_-)/2`, the continuous part is
    :math:`\frac{1}{2\pi\sigma^2 q}\big[r\sin\theta + m\theta - 2\sqrt{\lambda_+\lambda_-}
    \arctan\big(\sqrt{\lambda_+/\lambda_-}\tan(\theta/2)\big)\big]`.
    """
    lo, hi = marchenko_pastur_edges(q, sigma2)
    q, sigma2 = float(q), float(sigma2)
    xa = np.asarray(x, dtype=np.float64)
    m, r = (hi + lo) / 2.0, (hi - lo) / 2.0
    theta = np.arccos(np.clip((m - xa) / r, -1.0, 1.0))
    half = theta / 2.0
    angle = np.arctan2(math.sqrt(hi) * np.sin(half), math.sqrt(lo) * np.cos(half))
    cont = (r * np.sin(theta) + m * theta - 2.0 * math.sqrt(hi * lo) * angle) / (
        2.0 * math.pi * sigma2 * q
    )
    F = cont + np.where(xa >= 0.0, marchenko_pastur_atom(q), 0.0)
    return _out(np.clip(F, 0.0, 1.0), x)


# -- comparison with samples --------------------------------------------------------------------
def kolmogorov_distance(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    r"""Kolmogorov distance :math:`\sup_x |F_n(x) - F(x)|` between samples and a law.

    Exact for a right-continuous ``cdf`` with atoms: both sides of every jump of the empirical
    CDF are compared (the left limit of ``cdf`` is taken one float below the sample), so ties and
    atoms (the zeros of a rank-deficient matrix) are handled. Round exact zeros that came out as
    ``+-1e-15`` to 0 before comparing with a law that has an atom there.

    Args:
        samples: ``(n,)`` eigenvalues (any order).
        cdf: vectorised cumulative distribution function.

    Returns:
        The distance, in ``[0, 1]``.
    """
    s = np.asarray(samples, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("kolmogorov_distance needs a non-empty array of finite samples")
    values, counts = np.unique(s, return_counts=True)
    upper = np.cumsum(counts) / s.size  # F_n(u)
    lower = upper - counts / s.size  # F_n(u-)
    F = np.asarray(cdf(values), dtype=np.float64)
    F_left = np.asarray(cdf(np.nextafter(values, -np.inf)), dtype=np.float64)
    return float(max(np.abs(upper - F).max(), np.abs(lower - F_left).max()))
