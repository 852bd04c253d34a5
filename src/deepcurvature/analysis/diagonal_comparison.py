"""A diagonal beside a Lanczos spectral density (paper section 6.3, Figures 5-7).

:func:`compare_diagonal` returns a :class:`DiagonalComparison`: the diagonal's histogram, its
moments against the density's (equal first moments, a far narrower spread: equation 10) and the
paper's overlay plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..linalg.density import SpectralDensity

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from .diagonals import DiagonalResult

__all__ = ["DiagonalComparison", "compare_diagonal"]


# ------------------------------------------------------------------------------------------------
# comparison with a spectral density


def _as_density(density: Any) -> SpectralDensity:
    if isinstance(density, SpectralDensity):
        return density
    inner = getattr(density, "density", None)
    if isinstance(inner, SpectralDensity):  # SpectrumResult
        return inner
    if callable(inner):  # LanczosResult
        return inner()
    raise TypeError(
        "density must be a SpectralDensity, a SpectrumResult or a LanczosResult, got "
        f"{type(density).__name__}"
    )


def _as_values(x: Any, what: str) -> np.ndarray:
    if isinstance(x, DiagonalResult) or hasattr(x, "std_error"):
        x = x.value
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be a non-empty array of finite numbers")
    return arr


@dataclass
class DiagonalComparison:
    """A diagonal beside the spectral density of the same matrix (paper section 6.3, Figure 7).

    Attributes:
        diagonal: ``(P,)`` the diagonal entries.
        density: the (Lanczos) spectral density.
        name: label of the diagonal.
        eigenvalues: exact eigenvalues when known (small cases), else ``None``.
        summary: the numbers compared (see :func:`compare_diagonal`).
        bins: number of histogram bins of :meth:`plot`.
    """

    diagonal: np.ndarray
    density: SpectralDensity
    name: str
    eigenvalues: np.ndarray | None
    summary: dict[str, float]
    bins: int = 60

    def plot(
        self,
        *,
        ax: Any = None,
        title: str | None = None,
        bins: int | None = None,
        log_weights: bool = False,
    ) -> Figure:
        """The diagonal's histogram (bar masses sum to 1) over the density's stems (Figure 5/7).

        Drawn by :func:`deepcurvature.plot_comparison`: everything in one unit (probability
        mass), common bins, exact eigenvalues as a second histogram when known, and a table of
        the range, mean and second moment of each. Colours: Okabe-Ito (colour-blind safe).

        Args:
            ax: draw into these axes (default: a new figure).
            title: axes title.
            bins: number of histogram bins over the plotted range (default ``self.bins``).
            log_weights: logarithmic mass axis, which keeps small stems (outliers) and sparse
                bins visible next to a spike at zero (typical of networks).

        Returns:
            The :class:`matplotlib.figure.Figure`.
        """
        from ..plotting.comparison import plot_comparison

        label = self.name if "diag" in self.name.lower() else f"{self.name} diagonal"
        return plot_comparison(
            self.density,
            exact_eigenvalues=self.eigenvalues,
            diagonal=self.diagonal,
            diagonal_label=label,
            bins=int(bins or self.bins),
            log_scale=log_weights,
            ax=ax,
            title=title or f"Diagonal ({self.name}) vs Lanczos spectral density",
        )

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"DiagonalComparison({self.name!r}: diagonal [{s['diag_min']:.4g}, "
            f"{s['diag_max']:.4g}] vs density [{s['density_min']:.4g}, {s['density_max']:.4g}])"
        )


def compare_diagonal(
    diag: Any,
    density: Any,
    *,
    bins: int = 60,
    zero_tol: float = 1e-3,
    eigenvalues: Any = None,
    name: str | None = None,
) -> DiagonalComparison:
    """Compare a diagonal with the spectral density of the same matrix (section 6.3).

    Summary (``diag_*`` of the diagonal entries, ``density_*`` of the density, ``eig_*`` of exact
    eigenvalues when given): ``min``/``max`` (the support), ``mean`` (both estimate ``tr(A)/P``:
    the diagonal's exactly, the density's first moment up to the probe error),
    ``second_moment`` (the diagonal's ``sum_i A_ii^2 / P`` is at most the spectrum's ``tr(A^2)/P =
    sum_ij A_ij^2 / P``, equation 10: the diagonal is too narrow), ``std``, ``negative`` (fraction
    of negative entries / negative mass) and ``mass_near_zero`` (``|x| <= zero_tol * scale``, the
    scale the largest magnitude of all values); ``support_ratio`` = diagonal range / density
    range and ``second_moment_ratio`` = diagonal / density second moment.

    Args:
        diag: a :class:`DiagonalResult`, a ``DiagonalEstimate``, a tensor or an array ``(P,)``.
        density: a :class:`SpectralDensity`, a ``SpectrumResult`` or a ``LanczosResult``.
        bins: histogram bins of the plot.
        zero_tol: relative tolerance of "near zero".
        eigenvalues: exact eigenvalues ``(P,)`` (small cases), added to the summary and plot.
        name: label of the diagonal (default its ``name``).

    Returns:
        A :class:`DiagonalComparison` (``.summary``, ``.plot()``).
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    label = name or getattr(diag, "name", None) or "diagonal"
    d = _as_values(diag, "the diagonal")
    dens = _as_density(density)
    ev = None if eigenvalues is None else _as_values(eigenvalues, "eigenvalues")
    scale = max(float(np.abs(d).max()), float(np.abs(dens.nodes).max()))
    if ev is not None:
        scale = max(scale, float(np.abs(ev).max()))
    tol = zero_tol * scale
    s: dict[str, float] = {
        "dim": float(d.size),
        "diag_min": float(d.min()),
        "diag_max": float(d.max()),
        "diag_mean": float(d.mean()),
        "diag_second_moment": float(np.mean(d * d)),
        "diag_std": float(d.std()),
        "diag_negative": float(np.mean(d < 0)),
        "diag_mass_near_zero": float(np.mean(np.abs(d) <= tol)),
        "density_min": dens.lambda_min,
        "density_max": dens.lambda_max,
        "density_mean": dens.moment(1),
        "density_second_moment": dens.moment(2),
        "density_std": math.sqrt(max(dens.moment(2) - dens.moment(1) ** 2, 0.0)),
        "density_negative": dens.negative_mass(),
        "density_mass_near_zero": float(dens.weights[np.abs(dens.nodes) <= tol].sum()),
    }
    span = s["density_max"] - s["density_min"]
    s["support_ratio"] = (s["diag_max"] - s["diag_min"]) / span if span > 0 else math.nan
    m2 = s["density_second_moment"]
    s["second_moment_ratio"] = s["diag_second_moment"] / m2 if m2 > 0 else math.nan
    if ev is not None:
        s.update(
            {
                "eig_min": float(ev.min()),
                "eig_max": float(ev.max()),
                "eig_mean": float(ev.mean()),
                "eig_second_moment": float(np.mean(ev * ev)),
                "eig_negative": float(np.mean(ev < 0)),
                "eig_mass_near_zero": float(np.mean(np.abs(ev) <= tol)),
            }
        )
    return DiagonalComparison(d, dens, str(label), ev, s, int(bins))
