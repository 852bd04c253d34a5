"""The smooth maximum-entropy density over the stem plot of the Lanczos density it was fitted to.

The MaxEnt density (a probability density, "mass per unit eigenvalue") goes on the left axis; the
Lanczos nodes and weights (masses) as stems on a linear axis on the right, ``ax.weight_axis``
(also ``fig.weight_axis``), since the two are in different units. An optional reference density
(a limiting law such as the semicircle) is drawn dashed on the left axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..linalg.density import SpectralDensity
from ..linalg.maxent import MaxEntResult
from .style import OKABE_ITO, new_figure

__all__ = ["plot_maxent"]

_COLORS = {
    "maxent": OKABE_ITO["blue"],
    "stem": OKABE_ITO["vermillion"],
    "reference": OKABE_ITO["black"],
}


def plot_maxent(
    result: MaxEntResult,
    density: SpectralDensity | None = None,
    *,
    ax: Axes | None = None,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    reference_label: str = "limiting density",
    title: str | None = None,
    points: int = 600,
    legend: bool = True,
) -> Figure:
    """Draw ``result.pdf`` on its support over the stems of ``density`` (if given).

    Args:
        result: a :class:`~deepcurvature.linalg.maxent.MaxEntResult`.
        density: the discrete :class:`SpectralDensity` the fit came from (stems, right axis).
        ax: draw into these axes (default: a new figure).
        reference: a vectorised density to compare with (dashed).
        reference_label: its legend label.
        title: the axes title (default: the number of moments and the moment error).
        points: evaluation points of the smooth curves.
        legend: draw a legend.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    if not isinstance(result, MaxEntResult):
        raise TypeError(f"plot_maxent needs a MaxEntResult, got {type(result).__name__}")
    if ax is None:
        fig = new_figure(7.0, 4.5)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    a, b = result.support
    x = np.linspace(a, b, int(points))
    handles: list[Any] = []
    (line,) = ax.plot(
        x,
        result.pdf(x),
        color=_COLORS["maxent"],
        lw=2.0,
        label=f"maximum-entropy density ({result.n_moments} moments)",
    )
    handles.append(line)
    if reference is not None:
        (ref,) = ax.plot(
            x,
            np.asarray(reference(x), dtype=np.float64),
            color=_COLORS["reference"],
            ls="--",
            lw=1.2,
            label=reference_label,
        )
        handles.append(ref)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_ylim(bottom=0.0)
    if density is not None:
        wax = ax.twinx()
        stems = wax.stem(density.nodes, density.weights, linefmt="-", markerfmt="o", basefmt=" ")
        stems.markerline.set_color(_COLORS["stem"])
        stems.markerline.set_markersize(3.0)
        stems.stemlines.set_color(_COLORS["stem"])
        stems.stemlines.set_alpha(0.5)
        stems.set_label("Lanczos (Ritz value, weight)")
        wax.set_ylabel("Lanczos weight", color=_COLORS["stem"])
        wax.set_ylim(bottom=0.0)
        handles.append(stems)
        ax.set_zorder(wax.get_zorder() + 1)  # the curves above the stems
        ax.patch.set_visible(False)
        ax.weight_axis = wax  # type: ignore[attr-defined]
        fig.weight_axis = wax  # type: ignore[attr-defined]
    if title is None:
        title = (
            f"Maximum-entropy spectral density: {result.n_moments} moments, "
            f"max moment error {result.max_error:.1e}"
        )
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.8)
    return fig
