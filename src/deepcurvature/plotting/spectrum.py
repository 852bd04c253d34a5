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

import io
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Bbox, TransformedBbox, blended_transform_factory

from ..io import atomic_write_bytes
from ..io.results import npz_names, read_json, read_npz, result_paths
from ..linalg.density import SpectralDensity, density_metadata_from_file
from .style import OKABE_ITO, close_figure, matrix_label, new_figure

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

_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}

#: The linear mass axis is clipped to the bulk when its largest bars (or atoms) hold more than
#: this many times the mass of the largest remaining bar and of the reference curve.
MASS_CLIP_RATIO = 5.0
#: At most this many bars and atoms are clipped: more is not "an atom", the axis stays whole.
_MAX_CLIPPED = 3
#: The cut is this factor above the bulk: the clipped bars stick out of the bulk visibly.
_CUT_ABOVE_BULK = 1.25

#: Modes of ``plot_spectrum(mode, path=...)``: the stem plot, stems with a kernel-smoothed
#: curve, and the cumulative spectral mass (a step function).
SPECTRUM_MODES = ("lanczos", "smooth", "cdf")


def read_spectrum(path: str | os.PathLike) -> tuple[SpectralDensity, dict[str, Any]]:
    """Read a spectrum file written by ``SpectrumResult.save`` or ``SpectralDensity.save``.

    Args:
        path: ``NAME.npz``, ``NAME.json`` or ``NAME`` (the pair ``NAME.npz`` + ``NAME.json``).

    Returns:
        ``(density, metadata)``: the :class:`SpectralDensity` (its ``metadata`` holds the
        Lanczos settings and the matrix) and the whole JSON metadata (``kind``, ``config``,
        ``info``, ``summary``...; ``{}`` without a JSON file).

    Raises:
        FileNotFoundError: there is no ``NAME.npz``.
        ValueError: the file holds no ``nodes``/``weights`` arrays (it is not a spectrum).
    """
    npz, sidecar = result_paths(path)
    if not npz.is_file():
        raise FileNotFoundError(f"no result file at {npz}")
    meta: dict[str, Any] = {}
    if sidecar.is_file():
        meta = read_json(sidecar, what="result file")
        if not isinstance(meta, dict):
            raise ValueError(f"{sidecar} is not a valid result file: its JSON is not an object")
    # read only the density's arrays: the file may also hold (P, m) eigenvectors
    names = npz_names(npz)
    arrays = read_npz(npz, ("nodes", "weights", "probe_index"))
    missing = [k for k in ("nodes", "weights") if k not in arrays]
    if missing:
        kind = meta.get("kind")
        what = f"a {kind} file" if kind else f"arrays {sorted(names)}"
        raise ValueError(
            f"{npz} is not a spectrum file: it holds {what}, without the 'nodes' and 'weights' "
            f"arrays of a SpectrumResult or SpectralDensity"
        )
    density = SpectralDensity(
        arrays["nodes"],
        arrays["weights"],
        dim=meta.get("dim"),
        probe_index=arrays.get("probe_index"),
        metadata=density_metadata_from_file(meta),
    )
    return density, meta


def _count(n: object) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _default_title(density: SpectralDensity, file_meta: dict[str, Any] | None) -> str:
    """One or two lines: which matrix, of which model and data, with which Lanczos settings."""
    meta = density.metadata or {}
    config = (file_meta or {}).get("config") or {}
    info = (file_meta or {}).get("info") or {}
    name = matrix_label(config.get("matrix", meta.get("matrix")))
    head = f"{name} spectral density" if name and name != "operator" else "Spectral density"
    if config.get("model") and config.get("dataset"):
        head += f" of {config['model']} on {config['dataset']}"
    details = []
    steps = config.get("steps", meta.get("steps"))
    if steps is not None:
        n_p = config.get("probes", meta.get("probes", 1))
        details.append(f"Lanczos m={steps}, {n_p} probe{'s' * (n_p != 1)}")
    if file_meta is None:
        return ", ".join([head, *details])
    sizes = [f"{k} = {_count(info[k])}" for k in ("P", "N") if info.get(k) is not None]
    if not sizes and density.dim is not None:
        sizes = [f"P = {_count(density.dim)}"]
    details.extend(sizes)
    return head + ("\n" + ", ".join(details) if details else "")


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


def _bulk_top(masses: np.ndarray, floor: float) -> float | None:
    """Top of the bulk when at most :data:`_MAX_CLIPPED` values dominate ``masses``, else None.

    ``floor`` is a height the bulk reaches anyway (the reference curve): never clipped.
    """
    v = np.sort(masses[np.isfinite(masses) & (masses > 0)])[::-1]
    for k in range(1, min(_MAX_CLIPPED, v.size) + 1):
        rest = max(float(v[k]) if k < v.size else 0.0, floor)
        if rest > 0 and v[k - 1] > MASS_CLIP_RATIO * rest:
            return rest
    return None


def _clip_to_cut(mass_ax: Axes, artist: Any, cut: float) -> None:
    """Clip ``artist`` of ``mass_ax`` (a linear axis from 0) at the height ``cut``."""
    trans = blended_transform_factory(mass_ax.transAxes, mass_ax.transData)
    artist.set_clip_box(TransformedBbox(Bbox([[0.0, 0.0], [1.0, cut]]), trans))


def _mark_clipped(
    mass_ax: Axes,
    bars: Any,
    bar_masses: np.ndarray,
    atoms: list[tuple[float, float]],
    cut: float,
    xlim: tuple[float, float],
) -> list[tuple[float, str]]:
    """Cut the bars above ``cut``, write their masses next to the cut; ``[(x, text)]`` written."""
    groups: list[list[float]] = []  # [x0, x1, bar masses...] of runs of adjacent clipped bins
    if bars is not None:
        last = -2
        for i, (patch, mass) in enumerate(zip(bars.patches, bar_masses, strict=True)):
            if mass <= cut:
                continue
            _clip_to_cut(mass_ax, patch, cut)
            x0, x1 = patch.get_x(), patch.get_x() + patch.get_width()
            if i == last + 1:
                groups[-1][1] = x1
                groups[-1].append(float(mass))
            else:
                groups.append([x0, x1, float(mass)])
            last = i
    notes = [[g[0], g[1], "mass " + ", ".join(f"{m:.3g}" for m in g[2:])] for g in groups]
    for loc, mass in atoms:
        if mass <= cut:
            continue
        where = next((k for k, g in enumerate(groups) if g[0] <= loc <= g[1]), None)
        if where is None:
            notes.append([loc, loc, f"atom {mass:.3g}"])
        else:
            notes[where][2] += f" (law: {mass:.3g})"
    written = []
    lo, hi = xlim
    for x0, x1, text in notes:
        # beside the bar, not over it (a stem may stand on it); on its left near the right edge
        right = (x1 - lo) / (hi - lo) < 0.75
        x = x1 if right else x0
        label = mass_ax.annotate(
            f"↑ {text}",
            xy=(x, cut),
            xytext=(3 if right else -3, 1),
            textcoords="offset points",
            ha="left" if right else "right",
            va="bottom",
            fontsize="small",
            color=OKABE_ITO["blue"],
            annotation_clip=False,
        )
        label.set_gid("clipped mass")
        written.append((float(x), f"↑ {text}"))
    return written


def _check_mass_options(
    mass_ylim: Any, mass_scale: str, log_weights: bool
) -> tuple[float, float] | None:
    if mass_scale not in ("linear", "log"):
        raise ValueError(f"mass_scale must be 'linear' or 'log', got {mass_scale!r}")
    if mass_scale == "log" and not log_weights:
        raise ValueError(
            "mass_scale='log' needs the mass on its own axis: keep log_weights=True (the stems "
            "then use the left axis, the histogram and curves a logarithmic right axis)"
        )
    if mass_ylim is None:
        return None
    try:
        lo, hi = (float(v) for v in mass_ylim)
    except (TypeError, ValueError):
        raise ValueError(f"mass_ylim must be a pair (low, high), got {mass_ylim!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"mass_ylim must be finite with low < high, got {mass_ylim!r}")
    if mass_scale == "log" and lo <= 0:
        raise ValueError(f"a logarithmic mass axis needs mass_ylim[0] > 0, got {lo}")
    return lo, hi


def negative_mass_text(density: SpectralDensity, psd: bool | None = None) -> str:
    """One line on the negative mass, saying below which tolerance it counts.

    ``"negative mass = 0.3 (θ < −3e-06)"``, with the strict count when round-off negatives were
    left out (``"; 0.31 with any θ < 0"``), or ``"negative mass = 0 (PSD by construction)"``
    for a GGN or Fisher (``psd``, default ``density.psd_by_construction``), whose negative Ritz
    values are round-off.
    """
    s = density.negative_mass_summary(psd)
    if s["psd_by_construction"]:
        return "negative mass = 0 (PSD by construction)"
    text = f"negative mass = {s['negative_mass']:.3g} (θ < −{s['negative_mass_tol']:.2g})"
    if s["negative_mass_strict"] != s["negative_mass"]:
        text += f"; {s['negative_mass_strict']:.3g} with any θ < 0"
    return text


def _summary_text(density: SpectralDensity, psd: bool | None = None) -> str:
    n_probes = len(np.unique(density.probe_index))
    lines = [
        f"λ_max = {density.lambda_max:.4g}",
        f"λ_min = {density.lambda_min:.4g}",
        negative_mass_text(density, psd),
        f"nodes = {density.nodes.size} ({n_probes} probe{'s' if n_probes != 1 else ''})",
    ]
    return "\n".join(lines)


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


def _log_mass_limits(
    mass_ax: Axes,
    exact: np.ndarray | None,
    bar_masses: np.ndarray,
    atoms: list[tuple[float, float]],
    ref_values: np.ndarray | None,
    free: float,
) -> None:
    """Limits of a logarithmic mass axis: from below the smallest bar to above the largest."""
    values = [bar_masses, np.array([m for _, m in atoms])]
    if ref_values is not None:
        values.append(ref_values[np.isfinite(ref_values)])
    data = np.concatenate(values)
    data = data[data > 0]
    if data.size == 0:
        return
    top = float(data.max())
    # one eigenvalue's bar is 1/P: the smallest non-empty bar; else three decades or the atoms
    if exact is not None:
        bottom = 0.5 / exact.size
    else:
        bottom = min([top * 1e-3] + [m / 2.0 for _, m in atoms if m > 0])
    # ticks only where masses can be (<= 1): the space above holds the legend
    lo_exp, hi_exp = math.ceil(np.log10(bottom)), math.floor(np.log10(top))
    hi_exp = min(hi_exp + 1, 0) if top > 10.0**hi_exp else hi_exp
    step = max(1, math.ceil((hi_exp - lo_exp + 1) / 6))
    mass_ax.set_yticks([10.0**e for e in range(hi_exp, lo_exp - 1, -step)])
    mass_ax.yaxis.set_minor_locator(NullLocator())
    decades = np.log10(top / bottom) + 0.05
    mass_ax.set_ylim(bottom, top * 10 ** (0.05 + decades * free / (1.0 - free)))


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


def save_figure(
    fig: Figure, path: str | os.PathLike, *, dpi: int = 150, close: bool = False
) -> Path:
    """Write ``fig`` to ``path`` atomically; the format (PNG, PDF or SVG) comes from the suffix.

    With ``close=True`` the figure is closed in pyplot afterwards (``plt.close(fig)``), so code
    that only writes files (the command line, reports) does not keep figures open; the default
    keeps it open for ``plt.show()``.

    Returns:
        The path written.

    Raises:
        ValueError: the suffix is not ``.png``, ``.pdf`` or ``.svg``.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the figure format from {path.name!r}: end the file name with "
            f"one of {', '.join(_FORMATS)}"
        )
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi)
    finally:
        if close:
            close_figure(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
