r"""Local spectral statistics: consecutive level-spacing ratios against GOE and Poisson.

For sorted eigenvalues :math:`\lambda_1 \le \dots \le \lambda_n` with spacings
:math:`s_i = \lambda_{i+1} - \lambda_i`, the spacing ratios (Oganesyan & Huse 2007; Atas, Bogomolny,
Giraud & Roux 2013) are

.. math:: \tilde r_i = \frac{\min(s_i, s_{i+1})}{\max(s_i, s_{i+1})} \in [0, 1],
   \qquad i = 1, \dots, n - 2.

They need no unfolding (the local density cancels in the ratio), so they compare a spectrum with
the universal laws directly:

* GOE (level repulsion; the Wigner-like surmise of Atas et al., folded to ``[0, 1]``):
  :math:`p(\tilde r) = 2 \cdot \frac{27}{8} \frac{\tilde r + \tilde r^2}{(1 + \tilde r +
  \tilde r^2)^{5/2}}`, whose mean is :math:`4 - 2\sqrt 3 \approx 0.5359`; the large-``n`` GOE
  mean is :math:`0.5307` (Atas et al., numerics). Distances and densities use the surmise (closed
  forms; it differs from the large-``n`` law by less than the sampling error of a few thousand
  ratios); the mean is compared with the large-``n`` value :data:`GOE_MEAN_RATIO`, which is what
  a large matrix gives.
* Poisson (independent levels): :math:`p(\tilde r) = 2 / (1 + \tilde r)^2`, mean
  :math:`2 \ln 2 - 1 \approx 0.3863`.

The window (:func:`select_window`): the eigenvalues inside ``window=(low, high)`` when given, then
the lowest and highest ``trim`` fraction of them are dropped (default 10 % at each end). This
removes the spectral edges, where the local statistics cross over to the Tracy-Widom (Airy)
regime, and a few outliers; a spectrum with many outliers or an atom (the exact zeros of a
rank-deficient matrix) needs ``window=`` to exclude them.

The ratios are correlated (neighbours share a spacing), so the standard error of the mean is a
batch-means estimate: the ratios, in spectral order, are cut into ``B = floor(sqrt(n))``
contiguous batches and the standard error is ``std(batch means, ddof=1) / sqrt(B)``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.results import load_npz_json, save_npz_json
from ..linalg.density import SpectralDensity
from ..linalg.eigsh import EigshResult, eigsh
from ..linalg.operator import LinearOperator, as_operator
from ..rmt.laws import kolmogorov_distance

__all__ = [
    "DEFAULT_TRIM",
    "GOE_MEAN_RATIO",
    "GOE_SURMISE_MEAN_RATIO",
    "MIN_WINDOW",
    "POISSON_MEAN_RATIO",
    "LocalStatistics",
    "goe_ratio_cdf",
    "goe_ratio_density",
    "local_statistics",
    "poisson_ratio_cdf",
    "poisson_ratio_density",
    "select_window",
    "spacing_ratios",
]

#: Large-``n`` GOE mean of the ratios (Atas et al. 2013, numerical value).
GOE_MEAN_RATIO = 0.5307
#: Mean of the folded GOE surmise, ``4 - 2 sqrt(3)``.
GOE_SURMISE_MEAN_RATIO = 4.0 - 2.0 * math.sqrt(3.0)
#: Mean of the ratios of independent levels, ``2 ln 2 - 1``.
POISSON_MEAN_RATIO = 2.0 * math.log(2.0) - 1.0
#: Fewest eigenvalues in the window (``MIN_WINDOW - 2`` ratios, ``>= 6`` batches of 8).
MIN_WINDOW = 50
#: Fraction of the windowed eigenvalues dropped at each end by default.
DEFAULT_TRIM = 0.1
#: Largest operator whose spectrum is computed densely when ``k`` is not given.
DENSE_MAX = 4000


# -- the two laws, folded to [0, 1] ------------------------------------------------------------
def goe_ratio_density(r: Any) -> np.ndarray:
    r"""Folded GOE surmise :math:`2 \cdot \frac{27}{8}(r + r^2)/(1 + r + r^2)^{5/2}` on [0, 1]."""
    x = np.asarray(r, dtype=np.float64)
    dens = 6.75 * (x + x * x) / (1.0 + x + x * x) ** 2.5
    return np.where((x >= 0) & (x <= 1), dens, 0.0)


def goe_ratio_cdf(r: Any) -> np.ndarray:
    r"""CDF of :func:`goe_ratio_density` on [0, 1], in closed form.

    :math:`F(r) = 1 + \frac{2r^3 + 3r^2 - 3r - 2}{2(1 + r + r^2)^{3/2}}` (exact antiderivative).
    """
    x = np.clip(np.asarray(r, dtype=np.float64), 0.0, 1.0)
    q = 1.0 + x + x * x
    return np.clip(1.0 + (2 * x**3 + 3 * x**2 - 3 * x - 2) / (2.0 * q**1.5), 0.0, 1.0)


def poisson_ratio_density(r: Any) -> np.ndarray:
    r"""Folded Poisson law :math:`2 / (1 + r)^2` on [0, 1]."""
    x = np.asarray(r, dtype=np.float64)
    return np.where((x >= 0) & (x <= 1), 2.0 / (1.0 + x) ** 2, 0.0)


def poisson_ratio_cdf(r: Any) -> np.ndarray:
    r"""CDF of :func:`poisson_ratio_density`: :math:`2r / (1 + r)` on [0, 1]."""
    x = np.clip(np.asarray(r, dtype=np.float64), 0.0, 1.0)
    return 2.0 * x / (1.0 + x)


# -- ratios and window -------------------------------------------------------------------------
def _as_values(eigenvalues: Any) -> np.ndarray:
    if isinstance(eigenvalues, torch.Tensor):
        eigenvalues = eigenvalues.detach().cpu().to(torch.float64).numpy()
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            f"eigenvalues must be a 1-D array, got shape {values.shape}; pass a (P, P) matrix "
            "or an operator to local_statistics to compute its eigenvalues"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("eigenvalues must be finite (found NaN or infinity)")
    return np.sort(values)


def spacing_ratios(eigenvalues: Any) -> np.ndarray:
    r"""Consecutive spacing ratios :math:`\min(s_i, s_{i+1}) / \max(s_i, s_{i+1})`.

    Args:
        eigenvalues: ``(n,)`` real eigenvalues, any order (sorted here), ``n >= 3``.

    Returns:
        ``(n - 2,)`` float64 ratios in ``[0, 1]``, in spectral order.

    Raises:
        ValueError: fewer than 3 eigenvalues, non-finite values, or three equal consecutive
            eigenvalues (two zero spacings: the ratio is undefined).
    """
    values = _as_values(eigenvalues)
    if values.size < 3:
        raise ValueError(
            f"spacing ratios need at least 3 eigenvalues (two spacings per ratio), got "
            f"{values.size}"
        )
    s = np.diff(values)
    lo, hi = np.minimum(s[:-1], s[1:]), np.maximum(s[:-1], s[1:])
    if np.any(hi == 0):
        n_bad = int(np.sum(hi == 0))
        raise ValueError(
            f"{n_bad} ratio(s) are 0/0: three or more eigenvalues are exactly equal (a degenerate "
            "eigenvalue, such as the exact zeros of a rank-deficient matrix); exclude them with "
            "window=(low, high)"
        )
    return lo / hi


def select_window(
    eigenvalues: Any, *, trim: float = DEFAULT_TRIM, window: tuple[Any, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The sorted eigenvalues kept for local statistics (the rule is in the module docstring).

    Args:
        eigenvalues: ``(n,)`` eigenvalues.
        trim: fraction in ``[0, 0.5)`` dropped at each end of the (windowed) eigenvalues.
        window: ``(low, high)``: keep ``low <= lambda <= high`` first (``None`` = unbounded).

    Returns:
        ``(kept, info)``: ``kept`` ascending; ``info`` with ``n_eigenvalues``, ``n_in_range``,
        ``n_trimmed`` (per end), ``n_window``, ``trim``, ``range`` and ``window``.

    Raises:
        ValueError: bad ``trim``/``window``, or fewer than :data:`MIN_WINDOW` eigenvalues kept
            (the message says how many are needed).
    """
    values = _as_values(eigenvalues)
    if isinstance(trim, bool) or not (isinstance(trim, (int, float)) and 0 <= trim < 0.5):
        raise ValueError(f"trim must be a fraction in [0, 0.5), got {trim!r}")
    lo, hi = (None, None) if window is None else window
    kept = values
    if lo is not None:
        kept = kept[kept >= float(lo)]
    if hi is not None:
        kept = kept[kept <= float(hi)]
    if lo is not None and hi is not None and float(lo) >= float(hi):
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}")
    n_in = kept.size
    cut = math.floor(trim * n_in)
    kept = kept[cut : n_in - cut]
    if kept.size < MIN_WINDOW:
        need = math.ceil(MIN_WINDOW / (1.0 - 2.0 * trim))
        where = "" if window is None else f" inside window={window!r}"
        raise ValueError(
            f"local statistics need at least {MIN_WINDOW} eigenvalues in the window "
            f"({MIN_WINDOW - 2} spacing ratios), got {kept.size} (of {values.size} given, "
            f"{n_in}{where}, dropping {trim:.0%} at each end): give at least {need} "
            f"eigenvalues{where} (more for a useful standard error, ideally hundreds)"
        )
    info = {
        "n_eigenvalues": int(values.size),
        "n_in_range": int(n_in),
        "n_trimmed": int(cut),
        "n_window": int(kept.size),
        "trim": float(trim),
        "window": None if window is None else [lo, hi],
        "range": [float(kept[0]), float(kept[-1])],
    }
    return kept, info


def batch_means_stderr(x: np.ndarray, n_batches: int | None = None) -> tuple[float, int]:
    """Standard error of ``mean(x)`` from ``B`` contiguous batch means (``floor(sqrt(n))``)."""
    n = x.size
    b = math.isqrt(n) if n_batches is None else int(n_batches)
    if b < 2 or b > n:
        raise ValueError(f"n_batches must be in [2, {n}] for {n} ratios, got {b}")
    means = np.array([chunk.mean() for chunk in np.array_split(x, b)])
    return float(means.std(ddof=1) / math.sqrt(b)), b


# -- the result --------------------------------------------------------------------------------
@dataclass
class LocalStatistics:
    """Spacing-ratio statistics of a window of eigenvalues.

    Attributes:
        eigenvalues: ``(n,)`` the window, ascending.
        ratios: ``(n - 2,)`` spacing ratios in spectral order.
        mean: ``<r~>``.
        stderr: batch-means standard error of ``mean``.
        n_batches: number of batches of the standard error.
        ks_goe: Kolmogorov-Smirnov distance of the ratios to the GOE surmise.
        ks_poisson: Kolmogorov-Smirnov distance to the Poisson law.
        window: how the window was chosen (:func:`select_window`'s ``info``).
        metadata: where the eigenvalues came from (source, ``k``, eigsh residuals...).
    """

    eigenvalues: np.ndarray
    ratios: np.ndarray
    mean: float
    stderr: float
    n_batches: int
    ks_goe: float
    ks_poisson: float
    window: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def closer_to(self) -> str:
        """``"GOE"`` or ``"Poisson"``: the law at the smaller Kolmogorov-Smirnov distance."""
        return "GOE" if self.ks_goe <= self.ks_poisson else "Poisson"

    def z_score(self, reference: float) -> float:
        """``(mean - reference) / stderr``: how many standard errors from a reference mean."""
        return (self.mean - reference) / self.stderr if self.stderr > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        """Mean ratio, standard error, the references, KS distances, the verdict and the window."""
        return {
            "n_eigenvalues": self.window.get("n_eigenvalues"),
            "n_window": int(self.eigenvalues.size),
            "n_ratios": int(self.ratios.size),
            "window_range": [float(self.eigenvalues[0]), float(self.eigenvalues[-1])],
            "trim": self.window.get("trim"),
            "mean_ratio": self.mean,
            "stderr": self.stderr,
            "stderr_method": f"batch means ({self.n_batches} contiguous batches)",
            "goe_mean": GOE_MEAN_RATIO,
            "goe_surmise_mean": GOE_SURMISE_MEAN_RATIO,
            "poisson_mean": POISSON_MEAN_RATIO,
            "z_goe": self.z_score(GOE_MEAN_RATIO),
            "z_poisson": self.z_score(POISSON_MEAN_RATIO),
            "ks_goe": self.ks_goe,
            "ks_poisson": self.ks_poisson,
            "closer_to": self.closer_to,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (window, ratios) and ``path.json`` atomically; the ``.npz`` path."""
        meta = {
            "kind": "LocalStatistics",
            "mean": self.mean,
            "stderr": self.stderr,
            "n_batches": self.n_batches,
            "ks_goe": self.ks_goe,
            "ks_poisson": self.ks_poisson,
            "window": self.window,
            "metadata": self.metadata,
            "summary": self.summary(),
        }
        npz, _ = save_npz_json(path, {"eigenvalues": self.eigenvalues, "ratios": self.ratios}, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> LocalStatistics:
        """Read a result written by :meth:`save` (with or without the ``.npz`` suffix)."""
        arrays, meta = load_npz_json(path)
        if meta.get("kind") != "LocalStatistics" or "ratios" not in arrays:
            raise ValueError(f"{path} is not a local-statistics file (LocalStatistics.save)")
        return cls(
            eigenvalues=arrays["eigenvalues"],
            ratios=arrays["ratios"],
            mean=float(meta["mean"]),
            stderr=float(meta["stderr"]),
            n_batches=int(meta["n_batches"]),
            ks_goe=float(meta["ks_goe"]),
            ks_poisson=float(meta["ks_poisson"]),
            window=meta.get("window", {}),
            metadata=meta.get("metadata", {}),
        )

    def __repr__(self) -> str:
        return (
            f"LocalStatistics(<r~>={self.mean:.4f} ± {self.stderr:.4f}, n_ratios="
            f"{self.ratios.size}, KS GOE={self.ks_goe:.3f}, Poisson={self.ks_poisson:.3f})"
        )


# -- the analysis ------------------------------------------------------------------------------
def _eigenvalues_of(
    source: Any, k: int | None, which: str, tol: float, seed: int | None, verbose: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Eigenvalues of an array, an EigshResult, a matrix or an operator, with provenance."""
    if isinstance(source, EigshResult):
        return _converged(source, tol=source.tol)
    if isinstance(source, SpectralDensity) or hasattr(source, "density"):
        raise TypeError(
            "local statistics need converged eigenvalues, not the Ritz values of a spectral "
            "density (they are quadrature nodes: Theorem 1); pass the operator with k=..., "
            "an eigsh result or an array of eigenvalues"
        )
    is_matrix = isinstance(source, (torch.Tensor, np.ndarray)) and np.ndim(source) == 2
    if not (isinstance(source, LinearOperator) or is_matrix):
        if k is not None:
            raise ValueError("k applies to an operator or a matrix, not to an array of eigenvalues")
        return _as_values(source), {"source": "eigenvalues"}
    op = as_operator(source)
    P = op.shape[0]
    if k is None:
        if P > DENSE_MAX:
            raise ValueError(
                f"the operator has P={P} > {DENSE_MAX}: its dense spectrum is too costly; pass "
                "k=... to compute k eigenvalues with eigsh (hundreds for useful statistics)"
            )
        dense = op.to_dense().detach().cpu().to(torch.float64)
        values = torch.linalg.eigvalsh((dense + dense.T) / 2).numpy()
        return np.sort(values), {"source": "dense", "P": P}
    res = eigsh(op, k, which=which, tol=tol, seed=seed, verbose=verbose)
    values, info = _converged(res, tol=tol)
    info["P"] = P
    return values, info


def _converged(res: EigshResult, *, tol: float) -> tuple[np.ndarray, dict[str, Any]]:
    info: dict[str, Any] = {
        "source": "eigsh",
        "k": int(res.values.size),
        "which": res.which,
        "tol": res.tol,
        "max_relative_residual": float(res.relative_residuals.max()),
    }
    if res.converged:
        return np.sort(res.values), info
    ok = res.relative_residuals <= tol
    warnings.warn(
        f"eigsh did not converge: only {int(ok.sum())} of {res.values.size} eigenvalues have a "
        f"relative residual <= {tol:g}; using those (raise max_steps or ncv for all)",
        RuntimeWarning,
        stacklevel=3,
    )
    info["n_converged"] = int(ok.sum())
    return np.sort(res.values[ok]), info


def local_statistics(
    source: Any,
    *,
    k: int | None = None,
    trim: float = DEFAULT_TRIM,
    window: tuple[Any, Any] | None = None,
    n_batches: int | None = None,
    which: str = "LA",
    tol: float = 1e-8,
    seed: int | None = 0,
    verbose: bool = False,
) -> LocalStatistics:
    r"""Spacing ratios of a window of eigenvalues, their mean and distances to GOE and Poisson.

    Args:
        source: ``(n,)`` eigenvalues (numpy or torch), an :class:`~deepcurvature.EigshResult`,
            a ``(P, P)`` symmetric matrix or any linear operator. A matrix or operator gives its
            dense spectrum (``P <=`` :data:`DENSE_MAX`, float64 ``eigvalsh``) or, with ``k``,
            its ``k`` eigenvalues from :func:`~deepcurvature.eigsh` (``which`` end; only pairs
            with relative residual ``<= tol``). A spectral density is refused: Ritz values are
            not eigenvalues.
        k: number of eigenvalues to compute with ``eigsh`` (operators only).
        trim: fraction dropped at each end of the window (module docstring).
        window: ``(low, high)`` eigenvalue range to keep before trimming.
        n_batches: batches of the standard error (default ``floor(sqrt(n_ratios))``).
        which: ``eigsh``'s end of the spectrum (``"LA"``, ``"SA"``, ``"LM"``, ``"BE"``).
        tol: ``eigsh``'s relative residual tolerance.
        seed: ``eigsh``'s seed.
        verbose: ``eigsh``'s progress bar.

    Returns:
        A :class:`LocalStatistics`.

    Raises:
        ValueError: fewer than :data:`MIN_WINDOW` eigenvalues in the window (says how many to
            give), bad ``trim``, ``window`` or ``k``, degenerate eigenvalues.
        TypeError: a spectral density.
    """
    values, provenance = _eigenvalues_of(source, k, which, tol, seed, verbose)
    kept, info = select_window(values, trim=trim, window=window)
    ratios = spacing_ratios(kept)
    stderr, b = batch_means_stderr(ratios, n_batches)
    return LocalStatistics(
        eigenvalues=kept,
        ratios=ratios,
        mean=float(ratios.mean()),
        stderr=stderr,
        n_batches=b,
        ks_goe=kolmogorov_distance(ratios, goe_ratio_cdf),
        ks_poisson=kolmogorov_distance(ratios, poisson_ratio_cdf),
        window=info,
        metadata=provenance,
    )
