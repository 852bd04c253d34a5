"""The paper's stem plot of a discrete spectral density, and atomic figure files.

:func:`plot_spectrum` draws the nodes and weights of a :class:`~deepcurvature.SpectralDensity`
(equation 25) as stems, by default on a logarithmic weight axis so that Ritz values with tiny
weight (outliers, the ends of the spectrum) stay visible. It also takes the paper's call
``plot_spectrum("lanczos", path="spectrum.npz")`` (Appendix D): a mode and a file written by
``SpectrumResult.save`` or ``SpectralDensity.save``, whose metadata names the matrix in the title.
Optional overlays, all in the same unit ("mass per bin", so that they compare with each other
and, on a linear axis, with the stems):

* a histogram of exact eigenvalues whose bar masses sum to 1;
* a reference density (a limiting law such as the semicircle) times the bin width, and atoms;
* a Gaussian-kernel smoothed density, labelled as biasing the moments (Theorem 5).

With the (default) logarithmic weight axis these go on a linear mass axis on the right,
``ax.mass_axis`` (also ``fig.mass_axis``). An atom (half of the eigenvalues at zero for
Marcenko-Pastur with ``q > 1``, the zero eigenvalues of a Hessian) would flatten the rest of the
histogram: when at most three bars hold over :data:`MASS_CLIP_RATIO` times the mass of all the
others, the axis is limited to the rest and those bars are cut at its top, their masses written
there. ``mass_scale="log"`` shows everything without clipping, ``mass_ylim`` sets the limits.

A new figure is created through pyplot (``plotting.style.new_figure``: ``plt.show()`` and
notebooks display it; without a display matplotlib's backend is the non-interactive Agg and nothing
blocks); ``ax=`` draws into given axes instead. Colours are the Okabe-Ito palette, which
stays distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText
from matplotlib.ticker import NullLocator

from ..linalg.density import SpectralDensity
from .figure_file import save_figure
from .mass_axis import (
    _CUT_ABOVE_BULK,
    MASS_CLIP_RATIO,
    _bulk_top,
    _check_mass_options,
    _clip_to_cut,
    _log_mass_limits,
    _mark_clipped,
)
from .spectrum_file import read_spectrum
from .spectrum_text import (
    _default_title,
    _summary_text,
    negative_mass_text,  # noqa: F401  (re-exported: public here)
)
from .style import OKABE_ITO, new_figure

__all__ = [
    "COLORS",
    "MASS_CLIP_RATIO",
    "SPECTRUM_MODES",
    "plot_spectrum",
    "read_spectrum",
    "save_figure",
]

#: Okabe-Ito colour-blind-safe palette.
COLORS: dict[str, str] = {
    "stem": "#D55E00",  # vermillion: Lanczos nodes
    "histogram": "#56B4E9",  # sky blue: exact eigenvalues
    "reference": "#000000",  # black: limiting law
    "smooth": "#009E73",  # bluish green: kernel-smoothed density
    "atom": "#CC79A7",  # reddish purple: atoms of the reference law
    "extra": "#0072B2",  # blue: anything else (diagonal approximations...)
}


#: Modes of ``plot_spectrum(mode, path=...)``: the stem plot, stems with a kernel-smoothed
#: curve, and the cumulative spectral mass (a step function).
SPECTRUM_MODES = ("lanczos", "smooth", "cdf")


def _as_density(density: Any) -> SpectralDensity:
    if isinstance(density, SpectralDensity):
        return density
    if isinstance(getattr(density, "density", None), SpectralDensity):  # a SpectrumResult
        return density.density
    if callable(getattr(density, "density", None)):  # a LanczosResult
        return density.density()
    raise TypeError(
        f"plot_spectrum needs a SpectralDensity (or a LanczosResult), got {type(density).__name__}"
    )


def _as_array(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty array of finite numbers")
    return arr


def _axes_size_inches(ax: Axes) -> tuple[float, float]:
    """Approximate size of the axes in inches (before any layout engine shrinks it)."""
    pos = ax.get_position()
    fig = ax.figure
    return pos.width * fig.get_figwidth(), max(0.85 * pos.height * fig.get_figheight(), 0.5)


def plot_spectrum(
    density: SpectralDensity | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    exact_eigenvalues: Any = None,
    smooth_sigma: float | None = None,
    bins: int = 60,
    log_weights: bool = True,
    ax: Axes | None = None,
    title: str | None = None,
    show_summary: bool = True,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    reference_label: str = "limiting density",
    reference_atoms: Iterable[tuple[float, float]] | None = None,
    label: str = "Lanczos (Ritz value, weight)",
    legend: bool = True,
    rug: Any = None,
    rug_label: str = "marked eigenvalues",
    mass_ylim: tuple[float, float] | None = None,
    mass_scale: str = "linear",
    clip_mass: bool = True,
) -> Figure:
    r"""Stem plot of a discrete spectral density :math:`\sum_i w_i \delta(\lambda - \theta_i)`.

    Called as in the paper (Appendix D), ``plot_spectrum("lanczos", path="spectrum.npz")``, it
    reads a file written by ``SpectrumResult.save`` / ``SpectralDensity.save`` (see
    :func:`read_spectrum`) and names the matrix, model, data set and sizes in the title. Modes
    (:data:`SPECTRUM_MODES`): ``"lanczos"`` the stem plot; ``"smooth"`` the stems with the
    Gaussian-kernel smoothed density (``smooth_sigma`` defaults to 1/50 of the spectrum's
    range; for the eye only, Theorem 5); ``"cdf"`` the cumulative spectral mass
    :math:`F(\lambda) = \sum_{\theta_i \le \lambda} w_i` as a step function, with the
    negative mass marked at 0 (the overlay options do not apply to it).

    Args:
        density: a :class:`SpectralDensity` (or a ``LanczosResult``, whose ``density()`` is used,
            or a ``SpectrumResult``): ``n`` nodes and weights summing to 1 (equation 25); or a
            mode from :data:`SPECTRUM_MODES` together with ``path``; or a spectrum file's path
            (mode ``"lanczos"``).
        path: the spectrum file (``.npz``, ``.json`` or the name without suffix) when
            ``density`` is a mode.
        exact_eigenvalues: ``(P,)`` exact eigenvalues, drawn as a histogram whose bar masses sum
            to 1 (each eigenvalue has mass ``1/P``, like the stems' weights).
        smooth_sigma: if given, overlay ``density.smooth(smooth_sigma)``; kernel smoothing biases
            every moment of order >= 2 (Theorem 5): for drawing only.
        bins: number of histogram bins over the plotted range (also the unit of "mass per bin"
            for the reference and smoothed curves).
        log_weights: logarithmic weight axis (the paper's plots); the histogram and curves then
            go on a second, linear y-axis on the right. Weights below ``1e-8`` of the largest are
            drawn at the bottom of the axis.
        ax: draw into this axes (its figure is returned); default: a new figure.
        title: axes title (default: the method, steps and probes from ``density.metadata``).
        show_summary: a box with lambda_max, lambda_min, the negative mass and the number of
            nodes. The negative mass counts below the round-off threshold and names it
            (:func:`negative_mass_text`); a GGN or Fisher says "PSD by construction" instead.
        reference: a vectorised density ``x -> p(x)`` (e.g. a limiting law), drawn as
            ``p(x) * bin width`` so it compares with the histogram.
        reference_label: legend label of ``reference``.
        reference_atoms: ``(location, mass)`` pairs of point masses of the reference law (the
            zero eigenvalues of Marcenko-Pastur with ``q > 1``), drawn as diamonds.
        label: legend label of the stems.
        legend: draw a legend.
        rug: values to mark with ticks along the bottom of the axes (e.g. known outliers, or
            eigenvalues from ``eigsh``), to see which ones have a Ritz value on them.
        rug_label: legend label of ``rug``.
        mass_ylim: ``(low, high)`` limits of the mass axis (the histogram's and curves'),
            instead of the automatic ones.
        mass_scale: ``"linear"`` (default) or ``"log"`` mass axis (needs ``log_weights``):
            on a log axis an atom and the bulk are both visible without clipping.
        clip_mass: on a linear mass axis without ``mass_ylim``, when at most three bars or
            atoms hold more than :data:`MASS_CLIP_RATIO` times the mass of every other bar
            and of the reference curve (an atom at zero: Marcenko-Pastur with ``q > 1``, the
            zero eigenvalues of a Hessian), limit the axis to the rest, cut those bars at its
            top and write their masses next to it (``"↑ mass 0.5"``; an atom of the law clipped
            with them is drawn at the cut and its mass written as ``"(law: 0.5)"``). With
            ``log_weights=False`` the stems share the mass axis and it is never clipped.

    Returns:
        The :class:`matplotlib.figure.Figure` holding the plot. The axes holding the mass
        (the histogram and curves: the right-hand twin axis with ``log_weights``, else the
        stems' axis; ``None`` without any) is the attribute ``mass_axis`` of the stems' axes
        and of the figure (``fig.mass_axis``: that of the last ``plot_spectrum`` into it).
    """
    mode, file_meta = "lanczos", None
    if isinstance(density, (str, os.PathLike)):
        if isinstance(density, str) and density.lower() in SPECTRUM_MODES:
            mode = density.lower()
            if path is None:
                raise ValueError(
                    f"plot_spectrum({density!r}) needs the spectrum file: "
                    f"plot_spectrum({density!r}, path='.../spectrum.npz')"
                )
        elif path is not None:
            raise ValueError(
                f"unknown plot_spectrum mode {str(density)!r}: use one of "
                f"{', '.join(SPECTRUM_MODES)} with path=, or pass the file alone"
            )
        else:
            path = density
        density, file_meta = read_spectrum(path)
    elif path is not None:
        raise ValueError("give either a density or path= (with a mode such as 'lanczos'), not both")
    elif isinstance(getattr(density, "density", None), SpectralDensity):  # a SpectrumResult
        file_meta = {"config": getattr(density, "config", {}), "info": getattr(density, "info", {})}
    psd = getattr(density, "psd_by_construction", None)  # a SpectrumResult: from its config
    density = _as_density(density)
    if title is None:
        title = _default_title(density, file_meta)
        if mode == "cdf":
            title = title.replace("spectral density", "cumulative spectral mass", 1)
            title = title.replace("Spectral density", "Cumulative spectral mass", 1)
    if mode == "cdf":
        return _plot_cdf(density, ax=ax, title=title, label=label, legend=legend, psd=psd)
    if mode == "smooth" and smooth_sigma is None:
        span = density.lambda_max - density.lambda_min
        smooth_sigma = span / 50.0 if span > 0 else max(abs(density.lambda_max), 1.0) / 50.0
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if smooth_sigma is not None and not smooth_sigma > 0:
        raise ValueError(
            f"smooth_sigma must be positive (or None for no smoothing), got {smooth_sigma}"
        )
    exact = None if exact_eigenvalues is None else _as_array("exact_eigenvalues", exact_eigenvalues)
    atoms = [] if reference_atoms is None else [(float(a), float(m)) for a, m in reference_atoms]
    marks = None if rug is None else _as_array("rug", rug)
    mass_ylim = _check_mass_options(mass_ylim, mass_scale, log_weights)

    if ax is None:
        fig = new_figure(7.0, 4.5)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    nodes, weights = density.nodes, density.weights

    # -- the plotted range: nodes and exact eigenvalues, padded ---------------------------------
    lo, hi = float(nodes.min()), float(nodes.max())
    for extra in (exact, marks):
        if extra is not None:
            lo, hi = min(lo, float(extra.min())), max(hi, float(extra.max()))
    if smooth_sigma is not None:
        lo, hi = lo - 3 * smooth_sigma, hi + 3 * smooth_sigma
    span = hi - lo if hi > lo else max(1.0, abs(hi))
    lo, hi = lo - 0.04 * span, hi + 0.04 * span
    edges = np.linspace(lo, hi, int(bins) + 1)
    width = float(edges[1] - edges[0])

    # -- masses: bars, atoms, the reference curve; is the axis clipped to the bulk? -------------
    has_mass = exact is not None or reference is not None or smooth_sigma is not None or atoms
    grid = np.linspace(lo, hi, 1200)
    ref_values = None
    if reference is not None:
        ref_values = np.asarray(reference(grid), dtype=np.float64) * width
    bar_masses = np.zeros(0)
    if exact is not None:
        bar_masses = np.histogram(exact, bins=edges)[0] / exact.size
    bulk = None
    if has_mass and log_weights and clip_mass and mass_scale == "linear" and mass_ylim is None:
        finite_ref = ref_values[np.isfinite(ref_values)] if ref_values is not None else []
        ref_top = float(np.max(finite_ref)) if len(finite_ref) else 0.0
        bulk = _bulk_top(np.concatenate([bar_masses, [m for _, m in atoms]]), ref_top)

    if mass_ylim is not None and not has_mass:
        raise ValueError(
            "mass_ylim limits the axis of exact_eigenvalues, reference, reference_atoms or "
            "smooth_sigma: give one of them, or set the stems' axis with ax.set_ylim"
        )

    # -- room at the top for the legend and the summary box ---------------------------------
    n_entries = 1 + (exact is not None) + (reference is not None) + bool(atoms)
    n_entries += (smooth_sigma is not None) + (marks is not None)
    summary = _summary_text(density, psd)
    width_in, height_in = _axes_size_inches(ax)
    side_by_side = width_in >= 5.2  # else the summary goes into the legend box, below its title
    n_lines = (n_entries if legend else 0) + (len(summary.splitlines()) if show_summary else 0)
    if side_by_side and legend and show_summary:
        n_lines = max(n_entries, len(summary.splitlines()))
    n_lines += bulk is not None  # the masses of the clipped bars, above the cut
    # fraction of the axes height left empty above the data: ~0.16 inch per text line
    free = 0.05 if n_lines == 0 else float(np.clip((0.16 * n_lines + 0.25) / height_in, 0.15, 0.6))

    # -- overlays in "mass per bin" -------------------------------------------------------------
    handles: list[Any] = []
    mass_ax = None
    bars = None
    if has_mass:
        mass_ax = ax.twinx() if log_weights else ax
        if mass_scale == "log":
            mass_ax.set_yscale("log")
        if exact is not None:
            *_, bars = mass_ax.hist(
                exact,
                bins=edges,
                weights=np.full(exact.size, 1.0 / exact.size),
                color=COLORS["histogram"],
                alpha=0.55,
                edgecolor="white",
                linewidth=0.3,
            )
            bars.set_label(f"exact eigenvalues (P={exact.size})")
            handles.append(bars)
        if ref_values is not None:
            (line,) = mass_ax.plot(
                grid,
                ref_values,
                color=COLORS["reference"],
                linewidth=1.4,
                label=reference_label,
            )
            handles.append(line)
        cut = None if bulk is None else _CUT_ABOVE_BULK * bulk
        for k, (loc, mass) in enumerate(atoms):
            (pt,) = mass_ax.plot(
                [loc],
                [mass if cut is None else min(mass, cut)],  # a clipped atom: at the cut
                linestyle="none",
                marker="D",
                markersize=7,
                color=COLORS["atom"],
                label="atom of the law" if k == 0 else None,
            )
            if k == 0:
                handles.append(pt)
        if smooth_sigma is not None:
            g, d = density.smooth(float(smooth_sigma), grid)
            (sm,) = mass_ax.plot(
                g,
                d * width,
                color=COLORS["smooth"],
                linestyle="--",
                linewidth=1.4,
                label=f"kernel-smoothed, σ={smooth_sigma:.3g} (biases moments, Thm 5)",
            )
            handles.append(sm)
            if cut is not None:
                _clip_to_cut(mass_ax, sm, cut)
        if log_weights:
            log_note = ", log scale" if mass_scale == "log" else ""
            mass_ax.set_ylabel(f"mass per bin (bin width {width:.3g}{log_note})")
        if mass_scale == "log":
            _log_mass_limits(mass_ax, exact, bar_masses, atoms, ref_values, free)
        elif cut is not None:
            _mark_clipped(mass_ax, bars, bar_masses, atoms, cut, (lo, hi))
            mass_ax.set_ylim(0.0, cut / (1.0 - free))
        else:
            mass_ax.set_ylim(bottom=0.0)
            data_top = mass_ax.get_ylim()[1]
            mass_ax.set_ylim(0.0, data_top / (1.0 - free))

    # -- stems ----------------------------------------------------------------------------------
    wmax = float(weights.max())
    if log_weights:
        floor = max(float(weights[weights > 0].min()) if np.any(weights > 0) else wmax, wmax * 1e-8)
        floor = floor / 2.0
        ax.set_yscale("log")
        stems = ax.stem(
            nodes,
            np.maximum(weights, floor),
            bottom=floor,
            linefmt="-",
            markerfmt="o",
            basefmt=" ",
            label=label,
        )
        bottom = floor / 1.5
        decades = np.log10(wmax / bottom) + 0.05
        ax.set_ylim(bottom, wmax * 10 ** (0.05 + decades * free / (1.0 - free)))
        # ticks only where weights can be (<= 1): the space above holds the legend
        lo_exp, hi_exp = math.ceil(np.log10(bottom)), math.floor(np.log10(max(wmax, 1.0)))
        step = max(1, math.ceil((hi_exp - lo_exp + 1) / 6))
        ax.set_yticks([10.0**e for e in range(hi_exp, lo_exp - 1, -step)])
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylabel("weight (log scale)")
    else:
        stems = ax.stem(nodes, weights, linefmt="-", markerfmt="o", basefmt=" ", label=label)
        data_top = max(wmax, mass_ax.get_ylim()[1] * (1.0 - free) if mass_ax is ax else 0.0)
        ax.set_ylim(0.0, 1.03 * data_top / (1.0 - free))
        ax.set_ylabel("weight" + (" / mass per bin" if has_mass else ""))
    stems.markerline.set_color(COLORS["stem"])
    stems.markerline.set_markersize(4.5)
    stems.stemlines.set_color(COLORS["stem"])
    stems.stemlines.set_linewidth(1.2)
    handles.insert(0, stems)
    if marks is not None:
        (rug_line,) = ax.plot(
            marks,
            np.full(marks.size, ax.get_ylim()[0]),
            linestyle="none",
            marker="|",
            markersize=14,
            markeredgewidth=1.2,
            color=COLORS["extra"],
            clip_on=False,
            label=rug_label,
        )
        handles.insert(1, rug_line)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("eigenvalue λ")
    if mass_ax is not None and mass_ax is not ax:
        ax.set_zorder(mass_ax.get_zorder() + 1)  # stems in front of the histogram
        ax.patch.set_visible(False)

    ax.set_title(title)
    if legend:
        merged = show_summary and not side_by_side
        leg = ax.legend(
            handles=handles,
            loc="upper right",
            fontsize="small",
            framealpha=0.9,
            title=summary if merged else None,
            title_fontsize="small",
            alignment="left",
        )
        show_summary = show_summary and not merged
        leg.set_zorder(5)
    if show_summary:
        box = AnchoredText(summary, loc="upper left", prop={"size": "small"}, frameon=True)
        box.patch.set_alpha(0.9)
        box.patch.set_boxstyle("round,pad=0.3")
        ax.add_artist(box)
    if mass_ylim is not None:
        mass_ax.set_ylim(*mass_ylim)
    ax.mass_axis = mass_ax
    fig.mass_axis = mass_ax
    return fig


def _plot_cdf(
    density: SpectralDensity,
    *,
    ax: Axes | None,
    title: str,
    label: str,
    legend: bool,
    psd: bool | None = None,
) -> Figure:
    """Cumulative spectral mass as a step function, with the negative mass marked at 0.

    The mark is at the round-off threshold ``-tol``: ``F(-tol⁻)`` is the mass counted as
    negative, labelled with the tolerance; for a PSD-by-construction matrix ``F(0⁻)``, labelled
    as round-off.
    """
    if ax is None:
        fig = new_figure(7.0, 4.5)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    order = np.argsort(density.nodes, kind="stable")
    nodes, cum = density.nodes[order], np.cumsum(density.weights[order])
    lo, hi = float(nodes[0]), float(nodes[-1])
    span = hi - lo if hi > lo else max(1.0, abs(hi))
    lo, hi = lo - 0.04 * span, hi + 0.04 * span
    x = np.concatenate([[lo], nodes, [hi]])
    y = np.concatenate([[0.0], cum, [cum[-1]]])
    ax.step(
        x,
        y,
        where="post",
        color=COLORS["stem"],
        linewidth=1.6,
        label=label.replace("(Ritz value, weight)", "cumulative mass"),
    )
    ax.plot(nodes, cum, linestyle="none", marker="o", markersize=3.5, color=COLORS["stem"])
    s = density.negative_mass_summary(psd)
    if lo < 0.0 < hi:
        ax.axvline(0.0, color=OKABE_ITO["black"], linewidth=0.8, linestyle=":")
        if s["psd_by_construction"]:
            x, y = 0.0, s["negative_mass_strict"]
            text = f"F(0⁻) = {y:.3g}: round-off, negative mass 0 (PSD by construction)"
        else:
            x, y = -s["negative_mass_tol"], s["negative_mass"]
            text = f"negative mass F(−{s['negative_mass_tol']:.2g}⁻) = {y:.3g}"
        (mark,) = ax.plot(
            [x], [y], linestyle="none", marker="D", markersize=6, color=COLORS["extra"], label=text
        )
        mark.set_zorder(5)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.02, 1.1)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("cumulative spectral mass F(λ)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    if legend:
        ax.legend(loc="upper left", fontsize="small", framealpha=0.9)
    return fig
