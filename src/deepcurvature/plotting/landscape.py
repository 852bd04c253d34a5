"""Figures of loss landscapes (paper section 9, Figures 9-12).

:func:`plot_loss_landscape` draws a :class:`~deepcurvature.LandscapeResult` (or the file written by
``build_loss_landscape``):

* 1-D: the train and test loss (or accuracy) against ``t`` in two panels, one line per direction,
  labelled with its eigenvalue; the quadratic model ``L + t g.u + theta t^2 / 2`` of each direction
  as a dashed line of the same colour on the train-loss panel. The y-range is that of the measured
  values, so a quadratic model leaving it is clipped rather than squashing the curves.
* 2-D: filled contour plots of the train and test loss (or accuracy) over the plane with labelled
  contour lines, a colour bar and ``w*`` marked; the quadratic model as dashed contours at the
  same levels.

A new figure is created through pyplot (``plt.show()`` and notebooks display it; without a
display the backend is the non-interactive Agg and nothing blocks); ``ax=`` draws into given axes.
Colours are the Okabe-Ito palette (distinguishable under the common colour-vision deficiencies),
with line styles and markers cycling after eight directions; the 2-D colour map is viridis.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.landscape import LandscapeResult
from ..io.errors import invalid_file, read_failure
from ..io.results import RESULT_FILE, result_paths
from .style import PALETTE, PercentTickFormatter, new_figure

__all__ = ["LANDSCAPE_COLORS", "plot_loss_landscape"]

#: Okabe-Ito palette (``plotting.style.PALETTE``), in the order the directions use it.
LANDSCAPE_COLORS = PALETTE
_MARKERS = ("o", "s", "^", "D", "v", "P")
_STYLES = ("-", (0, (5, 1)), (0, (3, 1, 1, 1)))
_METRIC_NAMES = {"loss": "loss", "accuracy": "accuracy"}
_SPLITS = ("both", "train", "test")


_FIX = "compute it again with dc.build_loss_landscape or 'deepcurvature landscape'"
_PER_DIRECTION = ("eigenvalues", "ritz_indices", "norms", "slopes", "thetas")
_GRIDS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "quadratic")


def _as_result(obj: Any) -> LandscapeResult:
    if isinstance(obj, LandscapeResult):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        npz, _ = result_paths(obj)
        try:
            res = LandscapeResult.load(obj)
        except KeyError as exc:  # an array the file should hold
            raise invalid_file(npz, RESULT_FILE, f"no {exc.args[0]!r} array", _FIX) from None
        except (TypeError, IndexError, AttributeError) as exc:
            raise invalid_file(npz, RESULT_FILE, read_failure(exc).reason, _FIX) from None
        problem = _shape_problem(res)
        if problem:
            raise invalid_file(npz, RESULT_FILE, problem, _FIX)
        return res
    raise TypeError(
        "plot_loss_landscape needs a LandscapeResult or the path of a file written by "
        f"LandscapeResult.save / build_loss_landscape, got {type(obj).__name__}"
    )


def _shape_problem(res: LandscapeResult) -> str | None:
    """What is inconsistent in the shapes of a landscape read from a file (None: nothing)."""
    if res.ndim not in (1, 2):
        return f"ndim is {res.ndim}, not 1 or 2"
    D, n = len(res.labels), int(np.size(res.t))
    if np.ndim(res.t) != 1 or n < 2:
        return f"t has shape {np.shape(res.t)}, not (n,) with n >= 2"
    if len(res.kinds) != D or (res.ndim == 2 and D != 2):
        return f"{D} direction labels but {len(res.kinds)} kinds for a {res.ndim}-D landscape"
    for name in _PER_DIRECTION:
        if np.shape(getattr(res, name)) != (D,):
            return f"{name} has shape {np.shape(getattr(res, name))}, not ({D},)"
    grid = (D, n) if res.ndim == 1 else (n, n)
    for name in _GRIDS:
        value = getattr(res, name)
        if value is not None and np.shape(value) != grid:
            return f"{name} has shape {np.shape(value)}, not {grid}"
    return None


def _direction_label(res: LandscapeResult, d: int) -> str:
    ev = float(res.eigenvalues[d])
    if not np.isnan(ev):
        return f"λ = {ev:.4g} ({res.labels[d]})"
    rq = float(res.rayleigh_quotients[d]) if res.uhu.size else float("nan")
    extra = "" if np.isnan(rq) else f", uᵀHu/‖u‖² = {rq:.3g}"
    return f"{res.labels[d]}{extra}"


def _x_label(res: LandscapeResult, axis: int | None = None) -> str:
    kinds = set(res.kinds if axis is None else [res.kinds[axis]])
    if kinds <= {"eigen", "gaussian"}:
        unit = "distance ‖w − w*‖ along a unit direction"
    elif kinds == {"random"}:
        unit = "filter-normalised units"
    elif kinds == {"given"}:
        unit = "multiples of the given direction"
    else:
        unit = "units of each direction"
    if axis is None:
        return f"step t ({unit})"
    ev = float(res.eigenvalues[axis])
    name = res.labels[axis].split(" (")[0]
    if not np.isnan(ev):
        name = f"λ = {ev:.4g} ({name})"
    return f"t along {name}\n({unit})"


def _style(d: int) -> dict[str, Any]:
    n = len(LANDSCAPE_COLORS)
    return {
        "color": LANDSCAPE_COLORS[d % n],
        "marker": _MARKERS[(d // n) % len(_MARKERS)],
        "linestyle": _STYLES[(d // n) % len(_STYLES)],
    }


def _panels(res: LandscapeResult, metric: str, split: str) -> list[tuple[str, np.ndarray]]:
    out = []
    for part in ("train", "test") if split == "both" else (split,):
        values = res.metric(f"{part}_{metric}")
        if values is None:
            if split != "both" or part == "train":
                what = "test data" if metric == "loss" else "class-score outputs"
                raise ValueError(
                    f"this landscape has no {part} {metric}: it was computed without {what}"
                )
            continue
        out.append((part, np.asarray(values, dtype=np.float64)))
    return out


def _finite_range(*arrays: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


def _legend(fig: Figure, axes: list[Axes], handles: list[Any], ncol: int, own: bool) -> None:
    """The legend below the panels of a new figure, or in the first of the caller's axes."""
    if own:
        fig.legend(
            handles=handles, loc="outside lower center", ncol=ncol, fontsize="small",
            frameon=False,
        )  # fmt: skip
    else:
        axes[0].legend(handles=handles, fontsize="small", framealpha=0.9)


def _plot_1d(
    fig: Figure,
    axes: list[Axes],
    panels: list[tuple[str, np.ndarray]],
    res: LandscapeResult,
    metric: str,
    quadratic: bool,
    shown: list[int],
    own: bool,
) -> None:
    t = res.t
    handles: list[Any] = []
    has_quadratic = False
    for ax, (part, values) in zip(axes, panels, strict=True):
        scale = 100.0 if metric == "accuracy" else 1.0
        curves = [values[d] * scale for d in shown]
        for d, y in zip(shown, curves, strict=True):
            st = _style(d)
            (line,) = ax.plot(
                t,
                y,
                color=st["color"],
                linestyle=st["linestyle"],
                marker=st["marker"],
                markersize=3.5,
                linewidth=1.6,
                label=_direction_label(res, d),
            )
            if ax is axes[0]:
                handles.append(line)
        ax.set_ylim(*_finite_range(*curves))
        if quadratic and metric == "loss" and part == "train" and res.quadratic is not None:
            for d in shown:
                color = _style(d)["color"]
                ax.plot(t, res.quadratic[d], color=color, linestyle="--", linewidth=1.1)
            has_quadratic = True
        ax.axvline(0.0, color="#888888", linewidth=0.7, zorder=0)
        ax.set_xlim(float(t.min()), float(t.max()))
        ax.set_xlabel(_x_label(res))
        name = "training" if part == "train" else "test"
        if metric == "accuracy":
            ax.set_ylabel(f"{name} accuracy")
            ax.yaxis.set_major_formatter(PercentTickFormatter())  # decimals follow the ticks
        else:
            ax.set_ylabel(f"{name} loss")
        ax.set_title(f"{name.capitalize()} {metric}")
        ax.grid(True, linewidth=0.4, alpha=0.5)
    if has_quadratic:
        label = "quadratic model L + t g·u + θt²/2"
        handles.append(Line2D([], [], color="#444444", linestyle="--", linewidth=1.1, label=label))
    ncol = min(3 if len(panels) > 1 else 2, len(handles))
    _legend(fig, axes, handles, ncol, own)


def _levels(values: list[np.ndarray], levels: Any, log_levels: bool | None) -> np.ndarray:
    if not isinstance(levels, (int, np.integer)):
        return np.asarray(levels, dtype=np.float64)
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values])
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1e-6 * max(1.0, abs(lo))
    if log_levels is None:
        log_levels = lo > 0 and hi / lo > 20
    if log_levels:
        return np.geomspace(lo, hi, int(levels))
    return np.linspace(lo, hi, int(levels))


def _plot_2d(
    fig: Figure,
    axes: list[Axes],
    panels: list[tuple[str, np.ndarray]],
    res: LandscapeResult,
    metric: str,
    quadratic: bool,
    levels: Any,
    log_levels: bool | None,
    own: bool,
) -> None:
    from matplotlib.colors import BoundaryNorm

    t = res.t
    scale = 100.0 if metric == "accuracy" else 1.0
    star = {"marker": "*", "color": "#D55E00", "markersize": 13, "markeredgecolor": "black"}
    handles: list[Any] = [
        Line2D([], [], linestyle="none", label="w* (the trained weights)", **star)
    ]
    for ax, (part, values) in zip(axes, panels, strict=True):
        z = values * scale
        lv = _levels([z], levels, log_levels)
        extend = "neither" if isinstance(levels, (int, np.integer)) else "both"
        norm = BoundaryNorm(lv, 256, extend=extend)
        # z[i, j] is at (t_i along the first axis, t_j along the second): x is the first axis
        filled = ax.contourf(t, t, z.T, levels=lv, cmap="viridis", norm=norm, extend=extend)
        lines = ax.contour(t, t, z.T, levels=lv[::2], colors="white", linewidths=0.6)
        ax.clabel(lines, fmt=lambda v: f"{v:.3g}", fontsize="x-small", inline=True)
        ax.plot([0.0], [0.0], linestyle="none", **star)
        if quadratic and metric == "loss" and part == "train" and res.quadratic is not None:
            ax.contour(t, t, res.quadratic.T, levels=lv[::2], colors="black", linewidths=0.8,
                       linestyles="--")  # fmt: skip
            label = "quadratic model of the training loss (same levels)"
            handles.append(Line2D([], [], color="black", linestyle="--", label=label))
        name = "training" if part == "train" else "test"
        unit = " (%)" if metric == "accuracy" else ""
        bar = fig.colorbar(filled, ax=ax, shrink=0.9)
        bar.set_label(f"{name} {metric}{unit}")
        ax.set_xlabel(_x_label(res, 0))
        ax.set_ylabel(_x_label(res, 1))
        ax.set_title(f"{name.capitalize()} {metric}")
        ax.set_aspect("equal" if res.norms.size == 2 else "auto")
    _legend(fig, axes, handles, len(handles), own)


def plot_loss_landscape(
    result: LandscapeResult | str | os.PathLike,
    *,
    metric: str = "loss",
    split: str = "both",
    quadratic: bool = True,
    directions: Any = None,
    levels: Any = 15,
    log_levels: bool | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Any = None,
) -> Figure:
    """Plot a loss landscape: curves along directions (1-D) or contours over a plane (2-D).

    Args:
        result: a :class:`LandscapeResult` or the path of its file (``"...npz"``, as in the
            paper's ``plot_loss_landscape('result/.../losslandscape-00300.npz')``).
        metric: ``"loss"`` or ``"accuracy"`` (shown in percent).
        split: ``"both"`` (train and test panels), ``"train"`` or ``"test"``.
        quadratic: draw the quadratic model of the train loss (dashed). Never drawn for
            landscapes with recomputed batch-norm statistics: it models the loss with the
            model's own statistics, another function than the curves.
        directions: 1-D only: which directions to draw (indices or labels; default all).
        levels: 2-D only: number of contour levels or their values.
        log_levels: 2-D only: geometric levels (default: when the values span more than a
            factor 20).
        title: figure title (default: from the configuration).
        figsize: figure size in inches (a new figure only).
        ax: draw into these axes instead of a new figure: one :class:`~matplotlib.axes.Axes`
            per panel (a sequence), or a single one, which with ``split="both"`` gets the
            training panel. The legend goes into the first axes and a ``title`` given replaces
            its title; the figure holding the axes is returned.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    res = _as_result(result)
    if (res.config or {}).get("bn_recompute"):
        quadratic = False  # it models the loss with fixed statistics, not the curves drawn
    if metric not in _METRIC_NAMES:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    panels = _panels(res, metric, split)
    n_panels = len(panels)
    shown = _select(res, directions) if res.ndim == 1 else []
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) == 1:
            panels = panels[:1]
        if len(axes) != len(panels) or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(
                f"ax must be one matplotlib Axes or {len(panels)} of them (one per panel of "
                f"split={split!r}), got {len(axes)} objects"
            )
        fig = axes[0].get_figure()
    elif res.ndim == 2:
        fig = new_figure(*(figsize or (6.2 * n_panels, 5.4)))
    else:
        rows = -(-(len(shown) + 1) // (3 if n_panels > 1 else 2))
        width = 5.6 * n_panels if n_panels > 1 else 6.6
        fig = new_figure(*(figsize or (width, 4.2 + 0.25 * rows)))
    if ax is None:
        axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    if res.ndim == 2:
        _plot_2d(fig, axes, panels, res, metric, quadratic, levels, log_levels, ax is None)
    else:
        _plot_1d(fig, axes, panels, res, metric, quadratic, shown, ax is None)
    if ax is not None:
        if title:
            axes[0].set_title(title)
        return fig
    if title is None:
        title = _default_title(res, metric)
    if title:
        fig.suptitle(title)
    return fig


def _select(res: LandscapeResult, directions: Any) -> list[int]:
    D = len(res.labels)
    if directions is None:
        return list(range(D))
    items = [directions] if isinstance(directions, (str, int)) else list(directions)
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in res.labels:
                raise ValueError(f"no direction labelled {item!r}; the labels are {res.labels}")
            out.append(res.labels.index(item))
        else:
            i = int(item)
            if not -D <= i < D:
                raise ValueError(f"direction index {i} out of range: the landscape has {D}")
            out.append(i % D)
    if not out:
        raise ValueError("directions=[] selects nothing to plot")
    return out


def _default_title(res: LandscapeResult, metric: str) -> str:
    cfg = res.config or {}
    parts = []
    if cfg.get("model"):
        parts.append(str(cfg["model"]))
    if cfg.get("dataset"):
        parts.append(f"on {cfg['dataset']}")
    what = f"{metric.capitalize()} {'landscape' if res.ndim == 1 else 'surface'}"
    if cfg.get("bn_recompute"):
        what += " (BN statistics recomputed)"
    return f"{what}{': ' + ' '.join(parts) if parts else ''}"
