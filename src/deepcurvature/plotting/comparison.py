"""The paper's Figure 5 (and 7): Lanczos density vs exact eigenvalues vs a diagonal approximation.

:func:`plot_comparison` draws, on one axis and in one unit (probability mass):

* the Lanczos spectral density as stems, whose weights sum to 1 (equation 25);
* a histogram of the exact eigenvalues, each with mass ``1/P``, so the bar masses sum to 1;
* a histogram of a diagonal approximation (the diagonal of the matrix, a Monte Carlo GGN
  diagonal, Adam's second moment...), each entry with mass ``1/P``, bar masses summing to 1;

with common bin edges, and a table of the range, mean and second moment of each. The mean of a
diagonal equals ``tr(H) / P`` like the first moment of the spectrum, but its spread does not match
the second moment ``tr(H^2) / P`` (equation 10): the table shows it at a glance.
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

from ..linalg.density import SpectralDensity
from .spectrum import COLORS, _as_array, _as_density, read_spectrum
from .style import OKABE_ITO, matrix_label

__all__ = ["plot_comparison"]

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
    exact = None if exact_eigenvalues is None else _as_array("exact_eigenvalues", exact_eigenvalues)
    diags = _diagonals(diagonal, diagonal_label)
    if exact is None and not diags:
        raise ValueError(
            "plot_comparison needs something to compare the density with: give "
            "exact_eigenvalues=..., diagonal=... or both (plot_spectrum draws a density alone)"
        )

    if ax is None:
        fig = Figure(figsize=(7.5, 4.8), layout="constrained")
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

    # -- vertical range, with room at the top for the legend and the table -----------------------
    all_masses = np.concatenate(masses)
    top = float(all_masses.max())
    n_lines = (1 + len(handles)) if legend else 0
    table_lines = (2 + (exact is not None) + len(diags)) if show_summary else 0
    height_in = max(0.85 * ax.get_position().height * fig.get_figheight(), 0.5)
    free = float(np.clip((0.17 * (n_lines + table_lines) + 0.3) / height_in, 0.2, 0.65))
    if log_scale:
        positive = all_masses[all_masses > 0]
        floor = float(positive.min()) / 2.0
        ax.set_yscale("log")
        bottom = floor / 1.5
        decades = np.log10(top / bottom) + 0.05
        ax.set_ylim(bottom, top * 10 ** (0.05 + decades * free / (1.0 - free)))
        # ticks only where masses can be (<= 1): the space above holds the legend and table
        lo_exp, hi_exp = math.ceil(np.log10(bottom)), math.floor(np.log10(max(top, 1.0)))
        step = max(1, math.ceil((hi_exp - lo_exp + 1) / 6))
        ax.set_yticks([10.0**e for e in range(hi_exp, lo_exp - 1, -step)])
        ax.yaxis.set_minor_locator(NullLocator())
        stems = ax.stem(
            nodes, np.maximum(weights, floor), bottom=floor, linefmt="-", markerfmt="o", basefmt=" "
        )
    else:
        stems = ax.stem(nodes, weights, linefmt="-", markerfmt="o", basefmt=" ")
        ax.set_ylim(0.0, 1.03 * top / (1.0 - free))
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
        title = "\n".join(textwrap.wrap(title, 70))
    ax.set_title(title)
    if legend:
        leg = ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)
        leg.set_zorder(5)
    if show_summary:
        uniform = [(lab, v, np.full(v.size, 1.0 / v.size)) for lab, v in diags]
        if len(diags) == 1 and diags[0][0] == "diagonal approximation":
            uniform[0] = ("diagonal", *uniform[0][1:])
        table = [("Lanczos", nodes, weights)]
        if exact is not None:
            table.append(("exact", exact, np.full(exact.size, 1.0 / exact.size)))
        box = AnchoredText(
            _summary_table(table + uniform),
            loc="upper left",
            prop={"size": "x-small", "family": "monospace"},
            frameon=True,
        )
        box.patch.set_alpha(0.9)
        box.patch.set_boxstyle("round,pad=0.3")
        box.set_zorder(5)
        ax.add_artist(box)
    return fig
