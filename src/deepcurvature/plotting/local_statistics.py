"""Figure of local spectral statistics: the histogram of spacing ratios against GOE and Poisson.

:func:`plot_local_statistics` draws the ratios of a
:class:`~deepcurvature.analysis.local_statistics.LocalStatistics` (or of a file written by its
``save``) as a density histogram on ``[0, 1]`` with the folded GOE surmise and the Poisson law,
their means as vertical lines, and ``<r~> ± standard error`` and the Kolmogorov-Smirnov distances
in the legend. A new figure is created through pyplot (``plt.show()`` displays it), ``ax=``
draws into given axes; Okabe-Ito colours, and the two laws also differ in line style.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis.local_statistics import (
    GOE_MEAN_RATIO,
    POISSON_MEAN_RATIO,
    LocalStatistics,
    goe_ratio_density,
    poisson_ratio_density,
)
from .style import OKABE_ITO, new_figure

__all__ = ["plot_local_statistics"]

COLORS = {
    "histogram": OKABE_ITO["sky_blue"],
    "goe": OKABE_ITO["vermillion"],
    "poisson": OKABE_ITO["blue"],
    "mean": OKABE_ITO["black"],
}


def plot_local_statistics(
    result: LocalStatistics | str | os.PathLike,
    *,
    ax: Axes | None = None,
    bins: int = 25,
    title: str | None = None,
    label: str = "spacing ratios",
    legend: bool = True,
) -> Figure:
    r"""Histogram of the spacing ratios :math:`\tilde r` with the GOE and Poisson densities.

    Args:
        result: a :class:`LocalStatistics` or the path of one saved with ``save``.
        ax: draw into these axes (default: a new 7 x 4.5 inch figure).
        bins: histogram bins on ``[0, 1]``.
        title: the title (default: the window's size and range).
        label: legend label of the histogram.
        legend: draw the legend (with the mean, its standard error and the KS distances).

    Returns:
        The figure.
    """
    if not isinstance(result, LocalStatistics):
        result = LocalStatistics.load(result)
    if ax is None:
        fig = new_figure(7.0, 4.5)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.hist(
        result.ratios,
        bins=np.linspace(0.0, 1.0, int(bins) + 1),
        density=True,
        color=COLORS["histogram"],
        edgecolor="white",
        linewidth=0.5,
        label=f"{label}: ⟨r̃⟩ = {result.mean:.4f} ± {result.stderr:.4f} (n = {result.ratios.size})",
    )
    x = np.linspace(0.0, 1.0, 401)
    ax.plot(
        x,
        goe_ratio_density(x),
        color=COLORS["goe"],
        linewidth=2.0,
        label=f"GOE surmise (large-N ⟨r̃⟩ = {GOE_MEAN_RATIO}); KS = {result.ks_goe:.3f}",
    )
    ax.plot(
        x,
        poisson_ratio_density(x),
        color=COLORS["poisson"],
        linewidth=2.0,
        linestyle="--",
        label=f"Poisson (⟨r̃⟩ = {POISSON_MEAN_RATIO:.4f}); KS = {result.ks_poisson:.3f}",
    )
    for value, color, style in (
        (GOE_MEAN_RATIO, COLORS["goe"], "-"),
        (POISSON_MEAN_RATIO, COLORS["poisson"], "--"),
    ):
        ax.axvline(value, color=color, linewidth=0.9, linestyle=style, alpha=0.7)
    ax.axvspan(
        result.mean - result.stderr,
        result.mean + result.stderr,
        color=COLORS["mean"],
        alpha=0.25,
        linewidth=0,
    )
    ax.axvline(result.mean, color=COLORS["mean"], linewidth=1.2, linestyle=":")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 2.6)  # both laws start at their maximum 2 (Poisson) or below it (GOE)
    ax.set_xlabel("spacing ratio r̃ = min(sᵢ, sᵢ₊₁) / max(sᵢ, sᵢ₊₁)")
    ax.set_ylabel("density")
    if title is None:
        lo, hi = result.eigenvalues[0], result.eigenvalues[-1]
        title = f"Spacing ratios of {result.eigenvalues.size} eigenvalues in [{lo:.3g}, {hi:.3g}]"
    ax.set_title(title)
    if legend:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
    return fig
