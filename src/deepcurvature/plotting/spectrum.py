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

Figures are built with :class:`matplotlib.figure.Figure` directly: no pyplot state, nothing
opens a window or blocks, it works without a display. Colours are the Okabe-Ito palette, which
stays distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import io
import json
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

from ..io import atomic_write_bytes
from ..io.results import result_paths
from ..linalg.density import SpectralDensity
from .style import OKABE_ITO, matrix_label

__all__ = ["COLORS", "SPECTRUM_MODES", "plot_spectrum", "read_spectrum", "save_figure"]

#: Okabe-Ito colour-blind-safe palette.
COLORS: dict[str, str] = {
    "stem": "#D55E00",  # vermillion: Lanczos nodes
    "histogram": "#56B4E9",  # sky blue: exact eigenvalues
    "reference": "#000000",  # black: limiting law
    "smooth": "#009E73",  # bluish green: kernel-smoothed density
    "atom": "#CC79A7",  # reddish purple: atoms of the reference law
    "extra": "#0072B2",  # blue: anything else (diagonal approximations...)
}

#: Nodes with ``|theta| <= ZERO_TOL * max|theta|`` count as zero in the summary box.
ZERO_TOL = 1e-3

_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}

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
        try:
            meta = json.loads(sidecar.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{sidecar} is not valid JSON ({exc})") from None
    # read only the density's arrays: the file may also hold (P, m) eigenvectors
    with np.load(npz, allow_pickle=False) as data:
        names = list(data.files)
        arrays = {k: data[k] for k in ("nodes", "weights", "probe_index") if k in names}
    missing = [k for k in ("nodes", "weights") if k not in arrays]
    if missing:
        kind = meta.get("kind")
        what = f"a {kind} file" if kind else f"arrays {sorted(names)}"
        raise ValueError(
            f"{npz} is not a spectrum file: it holds {what}, without the 'nodes' and 'weights' "
            f"arrays of a SpectrumResult or SpectralDensity"
        )
    inner = meta.get("density_metadata", meta.get("metadata")) or {}
    density = SpectralDensity(
        arrays["nodes"],
        arrays["weights"],
        dim=meta.get("dim"),
        probe_index=arrays.get("probe_index"),
        metadata=dict(inner),
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


def _summary_text(density: SpectralDensity) -> str:
    n_probes = len(np.unique(density.probe_index))
    tol = ZERO_TOL * float(np.abs(density.nodes).max())
    neg, neg_far = density.negative_mass(), density.negative_mass(tol)
    negative = f"negative mass = {neg:.3g}"
    if neg_far != neg:  # some negative nodes are numerically zero: say how much is not
        negative += f" ({neg_far:.3g} below {-tol:.3g})"
    lines = [
        f"λ_max = {density.lambda_max:.4g}",
        f"λ_min = {density.lambda_min:.4g}",
        negative,
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
        show_summary: a box with lambda_max, lambda_min, negative mass and the number of nodes.
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

    Returns:
        The :class:`matplotlib.figure.Figure` holding the plot.
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
    density = _as_density(density)
    if title is None:
        title = _default_title(density, file_meta)
        if mode == "cdf":
            title = title.replace("spectral density", "cumulative spectral mass", 1)
            title = title.replace("Spectral density", "Cumulative spectral mass", 1)
    if mode == "cdf":
        return _plot_cdf(density, ax=ax, title=title, label=label, legend=legend)
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

    if ax is None:
        fig = Figure(figsize=(7.0, 4.5), layout="constrained")
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

    # -- room at the top for the legend and the summary box ---------------------------------
    has_mass = exact is not None or reference is not None or smooth_sigma is not None or atoms
    n_entries = 1 + (exact is not None) + (reference is not None) + bool(atoms)
    n_entries += (smooth_sigma is not None) + (marks is not None)
    width_in, height_in = _axes_size_inches(ax)
    side_by_side = width_in >= 5.2  # else the summary goes into the legend box, below its title
    n_lines = (n_entries if legend else 0) + (
        len(_summary_text(density).splitlines()) if show_summary else 0
    )
    if side_by_side and legend and show_summary:
        n_lines = max(n_entries, len(_summary_text(density).splitlines()))
    # fraction of the axes height left empty above the data: ~0.16 inch per text line
    free = 0.05 if n_lines == 0 else float(np.clip((0.16 * n_lines + 0.25) / height_in, 0.15, 0.6))

    # -- overlays in "mass per bin" -------------------------------------------------------------
    handles: list[Any] = []
    mass_ax = None
    if has_mass:
        mass_ax = ax.twinx() if log_weights else ax
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
        grid = np.linspace(lo, hi, 1200)
        if reference is not None:
            (line,) = mass_ax.plot(
                grid,
                np.asarray(reference(grid), dtype=np.float64) * width,
                color=COLORS["reference"],
                linewidth=1.4,
                label=reference_label,
            )
            handles.append(line)
        for k, (loc, mass) in enumerate(atoms):
            (pt,) = mass_ax.plot(
                [loc],
                [mass],
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
        mass_ax.set_ylim(bottom=0.0)
        if log_weights:
            mass_ax.set_ylabel(f"mass per bin (bin width {width:.3g})")
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
            title=_summary_text(density) if merged else None,
            title_fontsize="small",
            alignment="left",
        )
        show_summary = show_summary and not merged
        leg.set_zorder(5)
    if show_summary:
        box = AnchoredText(
            _summary_text(density), loc="upper left", prop={"size": "small"}, frameon=True
        )
        box.patch.set_alpha(0.9)
        box.patch.set_boxstyle("round,pad=0.3")
        ax.add_artist(box)
    return fig


def _plot_cdf(
    density: SpectralDensity, *, ax: Axes | None, title: str, label: str, legend: bool
) -> Figure:
    """Cumulative spectral mass as a step function, with the negative mass marked at 0."""
    if ax is None:
        fig = Figure(figsize=(7.0, 4.5), layout="constrained")
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
    neg = density.negative_mass()
    if lo < 0.0 < hi:
        ax.axvline(0.0, color=OKABE_ITO["black"], linewidth=0.8, linestyle=":")
        (mark,) = ax.plot(
            [0.0],
            [neg],
            linestyle="none",
            marker="D",
            markersize=6,
            color=COLORS["extra"],
            label=f"negative mass F(0⁻) = {neg:.3g}",
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


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically; the format (PNG, PDF or SVG) comes from the suffix.

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
    fig.savefig(buf, format=fmt, dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path
