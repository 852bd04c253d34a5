"""Figure of the outliers of a spectrum: the bulk, its edge and the separated outliers.

:func:`plot_outliers` draws the spectrum (a histogram of eigenvalues on a logarithmic count
axis, or the stems of a spectral density), shades the bulk between its edges and marks each
outlier with a diamond and its value. A new figure is created through pyplot (``plt.show()``
displays it), ``ax=`` draws into given axes; Okabe-Ito colours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis.outliers import OutlierResult
from ..linalg.density import SpectralDensity
from .style import OKABE_ITO, new_figure

__all__ = ["plot_outliers"]

COLORS = {
    "spectrum": OKABE_ITO["sky_blue"],
    "stem": OKABE_ITO["vermillion"],
    "bulk": OKABE_ITO["bluish_green"],
    "outlier": OKABE_ITO["reddish_purple"],
}


def _spectrum(spectrum: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if spectrum is None:
        return np.array([]), None
    attr = getattr(spectrum, "density", None)
    if not isinstance(spectrum, SpectralDensity) and attr is not None:
        spectrum = attr() if callable(attr) else attr
    if isinstance(spectrum, SpectralDensity):
        return spectrum.nodes, spectrum.weights
    values = getattr(spectrum, "values", spectrum)  # an EigshResult
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1), None


def plot_outliers(
    result: OutlierResult,
    spectrum: Any = None,
    *,
    ax: Axes | None = None,
    bins: int = 80,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """The spectrum with the bulk shaded and the outliers marked.

    Args:
        result: what :func:`~deepcurvature.outliers` returned.
        spectrum: what it was computed from (eigenvalues, an ``EigshResult`` or a spectral
            density); without it only the bulk and the outliers are drawn.
        ax: draw into these axes (default: a new 7 x 4.5 inch figure).
        bins: histogram bins (eigenvalues only).
        title: the title (default: the rule and the count).
        legend: draw the legend.

    Returns:
        The figure.
    """
    if ax is None:
        fig = new_figure(7.0, 4.5)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    values, weights = _spectrum(spectrum)
    if values.size and weights is None:
        ax.hist(values, bins=bins, color=COLORS["spectrum"], label="eigenvalues", log=True)
        ax.set_ylabel("count")
    elif values.size:
        stems = ax.stem(values, weights, basefmt=" ", label="Lanczos (Ritz value, weight)")
        stems.markerline.set_color(COLORS["stem"])
        stems.markerline.set_markersize(4)
        stems.stemlines.set_color(COLORS["stem"])
        ax.set_yscale("log")
        ax.set_ylabel("weight")
    ax.axvspan(
        result.lower_edge,
        result.upper_edge,
        color=COLORS["bulk"],
        alpha=0.15,
        label=f"bulk [{result.lower_edge:.3g}, {result.upper_edge:.3g}]",
    )
    ax.axvline(result.edge, color=COLORS["bulk"], linewidth=1.2, linestyle="--")
    if result.count:
        y = ax.get_ylim()[1] if values.size else 1.0
        ax.plot(
            result.values,
            np.full(result.count, y),
            linestyle="none",
            marker="D",
            markersize=7,
            color=COLORS["outlier"],
            clip_on=False,
            label=f"{result.count} outliers",
        )
        for x in result.values[-12:]:
            ax.annotate(
                f"{x:.3g}",
                xy=(x, y),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize="x-small",
                color=COLORS["outlier"],
                rotation=90,
                annotation_clip=False,
            )
    else:
        ax.plot([], [], linestyle="none", marker="D", color=COLORS["outlier"], label="0 outliers")
    ax.set_xlabel("eigenvalue λ")
    ax.set_title(title if title is not None else f"Outliers by the {result.method!r} rule")
    if legend:
        ax.legend(loc="center right", fontsize="small", framealpha=0.9)
    return fig
