"""The paper's Figure 5 (and 7): Lanczos density vs exact eigenvalues vs a diagonal approximation.

:func:`plot_comparison` draws, on one axis and in one unit (probability mass):

* the Lanczos spectral density as stems, whose weights sum to 1 (equation 25);
* a histogram of the exact eigenvalues, each with mass ``1/P``, so the bar masses sum to 1;
* a histogram of a diagonal approximation (the diagonal of the matrix, a Monte Carlo GGN
  diagonal, Adam's second moment...), each entry with mass ``1/P``, bar masses summing to 1;

with common bin edges, and a table of the range, mean and second moment of each. The mean of a
diagonal equals ``tr(H) / P`` like the first moment of the spectrum, but its spread does not match
the second moment ``tr(H^2) / P`` (equation 10): the table shows it at a glance.

The legend and the table are measured (as Agg draws them) against the axes as the figure's layout
engine places it: side by side at the top when both fit, else one box (the table above the
legend entries) in the upper right corner, else that box below the x label. The y-limits keep
the data below the boxes, and are refitted at each draw (a panel filled later can shrink the
axes).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText
from matplotlib.ticker import NullLocator
from matplotlib.transforms import ScaledTranslation

from ..linalg.density import SpectralDensity
from .spectrum import COLORS, _as_array, _as_density, read_spectrum
from .style import (
    OKABE_ITO,
    artist_size_inches,
    below_xaxis_inches,
    keep_data_below,
    laid_out_axes_size,
    matrix_label,
    new_figure,
)

__all__ = ["PLACEMENTS", "plot_comparison"]

#: Placements of the legend and the summary table (``plot_comparison(placement=...)``).
PLACEMENTS = ("auto", "side", "stacked", "below")
#: Horizontal room (inches) the boxes need besides their own width: pads and a gap.
_BOX_MARGIN_IN = 0.2
#: And some more: panels filled later (tick and axis labels) can narrow the axes a little.
_SLACK_IN = 0.3

#: Fill and edge colours of the diagonal histograms, in order (Okabe-Ito).
_DIAGONAL_COLORS = (
    (OKABE_ITO["yellow"], OKABE_ITO["orange"]),
    (OKABE_ITO["reddish_purple"], OKABE_ITO["reddish_purple"]),
    (OKABE_ITO["bluish_green"], OKABE_ITO["bluish_green"]),
    (OKABE_ITO["blue"], OKABE_ITO["blue"]),
)
_HATCHES = ("", "//", "\\\\", "xx")


def _diagonals(diagonal: Any, label: str) -> list[tuple[str, np.ndarray]]:
    """Normalise ``diagonal`` to a list of ``(label, values)``."""
    if diagonal is None:
        return []
    if isinstance(diagonal, Mapping):
        items = list(diagonal.items())
        if not items:
            raise ValueError("diagonal is an empty mapping: give at least one {label: values}")
    else:
        name = getattr(diagonal, "name", None)
        items = [(label if name is None or label != "diagonal approximation" else name, diagonal)]
    out = []
    for lab, values in items:
        values = getattr(values, "value", values)  # a diagonal result object with .value
        out.append((str(lab), _as_array(f"diagonal {lab!r}", values)))
    return out


def _summary_table(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """Monospace table: name, range, mean and second moment of each weighted sample."""
    cells = [("", "range", "mean", "2nd moment")]
    for name, x, w in rows:
        short = name if len(name) <= 14 else name[:13] + "…"
        mean, second = float(np.sum(w * x)), float(np.sum(w * x**2))
        cells.append((short, f"[{x.min():.3g}, {x.max():.3g}]", f"{mean:.3g}", f"{second:.3g}"))
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for c in cells:
        lines.append(
            f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]:>{widths[3]}}"
        )
    return "\n".join(lines)


_LEGEND = {"fontsize": "small", "framealpha": 0.9}
_TABLE_FONT = {"size": "x-small", "family": "monospace"}


def _table_box(text: str, loc: str) -> AnchoredText:
    box = AnchoredText(text, loc=loc, prop=_TABLE_FONT, frameon=True)
    box.patch.set_alpha(0.9)
    box.patch.set_boxstyle("round,pad=0.3")
    box.set_zorder(5)
    return box


def _place_boxes(
    ax: Axes, handles: list[Any] | None, table: str | None, placement: str
) -> list[Any]:
    """Draw the legend (``handles``) and the summary ``table`` where they fit.

    Returns:
        The boxes drawn in the upper part of the axes (none when below the axes).
    """
    width_in, _ = laid_out_axes_size(ax)
    if handles is None and table is None:
        return []
    leg = box = None
    sizes = []
    if handles is not None:
        leg = ax.legend(handles=handles, loc="upper right", **_LEGEND)
        leg.set_zorder(5)
        sizes.append(artist_size_inches(leg))
    if table is not None:
        box = _table_box(table, "upper left")
        ax.add_artist(box)
        sizes.append(artist_size_inches(box))
    if placement == "auto":
        placement = "below"
        room = width_in - _SLACK_IN
        if sum(w for w, _ in sizes) + _BOX_MARGIN_IN * len(sizes) <= room:
            placement = "side"
        elif len(sizes) == 2 and max(w for w, _ in sizes) + _BOX_MARGIN_IN <= room:
            placement = "stacked"
    if placement == "side" or (placement == "stacked" and len(sizes) == 1):
        return [b for b in (leg, box) if b is not None]
    # one box: the table as the legend's title, in the corner or under the x label
    if leg is not None:
        leg.remove()
    if box is not None:
        box.remove()
    kwargs: dict[str, Any] = {"loc": "upper right"}
    if placement == "below":
        fig = ax.get_figure(root=True)
        drop = ScaledTranslation(0.0, -(below_xaxis_inches(ax) + 0.05), fig.dpi_scale_trans)
        kwargs = {
            "loc": "upper center",
            "bbox_to_anchor": (0.5, 0.0),
            "bbox_transform": ax.transAxes + drop,
            "borderaxespad": 0.0,
        }
    labels = [h.get_label() for h in handles or []]
    for attempt in range(2):
        leg = ax.legend(
            handles=handles or [],
            labels=labels,
            title=table,
            title_fontproperties=_TABLE_FONT,
            alignment="left",
            **kwargs,
            **_LEGEND,
        )
        leg.set_zorder(5)
        if attempt or artist_size_inches(leg)[0] + _BOX_MARGIN_IN <= width_in:
            break
        # wider than the axes: the labels on two lines ("X (P=500):" / "bar masses sum to 1")
        leg.remove()
        labels = [lab.replace(": ", ":\n", 1) for lab in labels]
    return [] if placement == "below" else [leg]


def plot_comparison(
    density: SpectralDensity | str | os.PathLike | Any,
    *,
    exact_eigenvalues: Any = None,
    diagonal: Any = None,
    bins: int = 50,
    log_scale: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
    density_label: str | None = None,
    diagonal_label: str = "diagonal approximation",
    show_summary: bool = True,
    legend: bool = True,
    placement: str = "auto",
) -> Figure:
    r"""Lanczos density, exact eigenvalues and a diagonal approximation on one axis (Figure 5).

    Every element is a probability mass: the stems are the density's weights (summing to 1), the
    bars are histograms whose bar masses sum to 1 (each of the ``P`` values has mass ``1/P``),
    with the same bin edges for all histograms. The y-axis label and the legend say so.

    Args:
        density: a :class:`SpectralDensity`, ``LanczosResult``, ``SpectrumResult`` or the path
            of a spectrum file (see :func:`read_spectrum`).
        exact_eigenvalues: ``(P,)`` exact eigenvalues (from a dense ``eigh``), or ``None``.
        diagonal: ``(P,)`` diagonal approximation (array, tensor, or an object with ``.value``
            and ``.name``), or a mapping ``{label: (P,) values}`` for several, or ``None``.
        bins: number of common histogram bins over the plotted range.
        log_scale: logarithmic mass axis (small masses and outliers visible); bars and stems
            then start from a floor below the smallest mass drawn.
        ax: draw into this axes (its figure is returned); default: a new figure.
        title: axes title (default: the matrix and Lanczos settings from the metadata).
        density_label: legend label of the stems (default: Lanczos with ``m`` and probes).
        diagonal_label: legend label of a single diagonal (default: its ``.name`` if it has one).
        show_summary: a table of range, mean and second moment of each distribution.
        legend: draw a legend.
        placement: where the legend and the table go (:data:`PLACEMENTS`): ``"side"`` the
            table in the upper left corner and the legend in the upper right one; ``"stacked"``
            one box in the upper right corner, the table above the legend entries;
            ``"below"`` that box under the axes, below the x label. ``"auto"`` (default)
            measures the boxes and the laid-out axes and takes the first that fits: side by
            side, stacked, below. In the last two the table is the legend's title
            (``ax.get_legend().get_title().get_text()``).

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    file_meta = None
    if isinstance(density, (str, os.PathLike)):
        density, file_meta = read_spectrum(density)
    elif isinstance(getattr(density, "density", None), SpectralDensity):  # a SpectrumResult
        file_meta = {"config": getattr(density, "config", {}), "info": getattr(density, "info", {})}
    density = _as_density(density)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    exact = None if exact_eigenvalues is None else _as_array("exact_eigenvalues", exact_eigenvalues)
    diags = _diagonals(diagonal, diagonal_label)
    if exact is None and not diags:
        raise ValueError(
            "plot_comparison needs something to compare the density with: give "
            "exact_eigenvalues=..., diagonal=... or both (plot_spectrum draws a density alone)"
        )

    if ax is None:
        fig = new_figure(7.5, 4.8)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    nodes, weights = density.nodes, density.weights

    # -- common range and bins ------------------------------------------------------------------
    samples = [nodes] + ([exact] if exact is not None else []) + [d for _, d in diags]
    lo = min(float(s.min()) for s in samples)
    hi = max(float(s.max()) for s in samples)
    span = hi - lo if hi > lo else max(1.0, abs(hi))
    lo, hi = lo - 0.04 * span, hi + 0.04 * span
    edges = np.linspace(lo, hi, int(bins) + 1)

    handles: list[Any] = []
    masses = [weights]
    if exact is not None:
        *_, bars = ax.hist(
            exact,
            bins=edges,
            weights=np.full(exact.size, 1.0 / exact.size),
            color=COLORS["histogram"],
            alpha=0.6,
            edgecolor="white",
            linewidth=0.3,
            log=log_scale,
        )
        bars.set_label(f"exact eigenvalues (P={exact.size:,}): bar masses sum to 1")
        handles.append(bars)
        masses.append(np.histogram(exact, bins=edges)[0] / exact.size)
    for k, (lab, values) in enumerate(diags):
        fill, edge = _DIAGONAL_COLORS[k % len(_DIAGONAL_COLORS)]
        *_, bars = ax.hist(
            values,
            bins=edges,
            weights=np.full(values.size, 1.0 / values.size),
            facecolor=fill,
            edgecolor=edge,
            alpha=0.55 if k == 0 else 0.35,
            linewidth=0.8,
            hatch=_HATCHES[k % len(_HATCHES)],
            log=log_scale,
        )
        bars.set_label(f"{lab} (P={values.size:,}): bar masses sum to 1")
        handles.append(bars)
        masses.append(np.histogram(values, bins=edges)[0] / values.size)

    all_masses = np.concatenate(masses)
    top = float(all_masses.max())
    floor = float(all_masses[all_masses > 0].min()) / 2.0  # log scale: where bars and stems start
    if log_scale:
        stems = ax.stem(
            nodes, np.maximum(weights, floor), bottom=floor, linefmt="-", markerfmt="o", basefmt=" "
        )
    else:
        stems = ax.stem(nodes, weights, linefmt="-", markerfmt="o", basefmt=" ")
    stems.markerline.set_color(COLORS["stem"])
    stems.markerline.set_markersize(4.5)
    stems.markerline.set_zorder(4)
    stems.stemlines.set_color(COLORS["stem"])
    stems.stemlines.set_linewidth(1.3)
    stems.stemlines.set_zorder(3)
    if density_label is None:
        meta = density.metadata or {}
        density_label = "Lanczos"
        if "steps" in meta:
            n_p = meta.get("probes", 1)
            density_label += f" m={meta['steps']}, {n_p} probe{'s' * (n_p != 1)}"
        density_label += ": weights sum to 1"
    stems.set_label(density_label)
    handles.insert(0, stems)

    ax.set_xlim(lo, hi)
    ax.set_xlabel("eigenvalue λ")
    scale = " (log scale)" if log_scale else ""
    ax.set_ylabel(f"probability mass{scale}\n(bars: per bin, stems: per Ritz value)")
    if title is None:
        name = matrix_label((file_meta or {}).get("config", {}).get("matrix"))
        name = name or matrix_label((density.metadata or {}).get("matrix"))
        others = (["exact eigenvalues"] if exact is not None else []) + [lab for lab, _ in diags]
        title = "Lanczos density vs " + " vs ".join(others)
        if name and name != "operator":
            title = f"{name}: {title}"
        # wrapped to the axes (a "large" title: about 10 characters per inch)
        chars = max(30, min(70, int(10 * laid_out_axes_size(ax)[0])))
        title = "\n".join(textwrap.wrap(title, chars))
    ax.set_title(title)

    # -- legend and table: side by side, stacked in one box, or below the axes ------------------
    table_text = None
    if show_summary:
        uniform = [(lab, v, np.full(v.size, 1.0 / v.size)) for lab, v in diags]
        if len(diags) == 1 and diags[0][0] == "diagonal approximation":
            uniform[0] = ("diagonal", *uniform[0][1:])
        table = [("Lanczos", nodes, weights)]
        if exact is not None:
            table.append(("exact", exact, np.full(exact.size, 1.0 / exact.size)))
        table_text = _summary_table(table + uniform)
    boxes = _place_boxes(ax, handles if legend else None, table_text, placement)

    # -- vertical range, with room at the top for the boxes drawn inside the axes ----------------
    if log_scale:
        bottom = floor / 1.5
        ax.set_yscale("log")
        decades = np.log10(top / bottom) + 0.05

        def limits(free: float) -> tuple[float, float]:
            return bottom, top * 10 ** (0.05 + decades * free / (1.0 - free))

        # ticks only where masses can be (<= 1): the space above holds the legend and table
        lo_exp, hi_exp = math.ceil(np.log10(bottom)), math.floor(np.log10(max(top, 1.0)))
        step = max(1, math.ceil((hi_exp - lo_exp + 1) / 6))
        ax.set_yticks([10.0**e for e in range(hi_exp, lo_exp - 1, -step)])
        ax.yaxis.set_minor_locator(NullLocator())
        keep_data_below(ax, boxes, limits)
    else:
        keep_data_below(ax, boxes, lambda free: (0.0, 1.03 * top / (1.0 - free)))
    return fig
