"""Figure of loss statistics over checkpoints: gradient noise, curvature noise and shrinkage.

:func:`plot_loss_stats` reads the file written by :func:`deepcurvature.compute_loss_stats` (or
``deepcurvature stats``): ``{"format": "deepcurvature-loss-stats", "config", "columns", "rows",
"layers"}``, one row per checkpoint (see :mod:`deepcurvature.suite.loss_stats`), and draws, against
the epoch of each checkpoint, one panel per quantity:

* the mini-batch gradient noise ``grad_var = E_b ||g_b - g||^2``;
* the curvature noise ``curv_var = E_b ||H_b v - H v||^2`` along the probe vectors;
* the shrinkage coefficient ``curv_shrinkage = rho`` (between 0: exact batch curvature, and 1:
  all noise), with its standard error over the probes.

The whole model is the black line, each layer (when the file has per-layer values) a line of the
Okabe-Ito palette with its own marker. The noise panels use a log axis when the values span a
decade or more. Nothing is computed here: the values are those of the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io.results import read_json
from .style import OKABE_ITO, PALETTE, log_scale_fits, new_figure

__all__ = ["LOSS_STATS_QUANTITIES", "plot_loss_stats"]

_FORMAT = "deepcurvature-loss-stats"  # suite.loss_stats.LOSS_STATS_FORMAT (not imported: torch)
#: The quantities :func:`plot_loss_stats` draws, with their panel titles.
LOSS_STATS_QUANTITIES = {
    "grad_var": "Gradient noise E‖g_b − g‖²",
    "curv_var": "Curvature noise E‖H_b v − H v‖²",
    "curv_shrinkage": "Shrinkage coefficient ρ",
}
_MARKERS = ("o", "s", "^", "D", "v", "P")
_MATRICES = {"hessian": "Hessian", "ggn": "Gauss-Newton"}


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _read(source: Any) -> dict[str, Any]:
    """The loss-statistics document of a path, or the dict of ``read_loss_stats`` itself."""
    if isinstance(source, Mapping):
        doc = dict(source)
        where = "the document"
    elif isinstance(source, (str, os.PathLike)):
        doc = read_json(source, what="loss statistics file")
        where = str(source)
    else:
        raise TypeError(
            "plot_loss_stats needs the path of a file written by compute_loss_stats (or "
            "'deepcurvature stats'), or the dict read_loss_stats returns; got "
            f"{type(source).__name__}"
        )
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(
            f"{where} is not a loss statistics file written by compute_loss_stats (no "
            f"'format': {_FORMAT!r})"
        )
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{where} holds no rows of loss statistics: nothing to plot")
    layers = doc.get("layers") or []
    if not isinstance(layers, list) or (layers and len(layers) != len(rows)):
        raise ValueError(f"{where}: {len(layers)} per-layer entries for {len(rows)} rows")
    return doc


def _x(rows: list[dict[str, Any]]) -> tuple[np.ndarray, str]:
    epochs = [r.get("epoch") for r in rows]
    if all(isinstance(e, int) and not isinstance(e, bool) for e in epochs):
        return np.asarray(epochs, dtype=np.float64), "epoch"
    return np.arange(len(rows), dtype=np.float64), "checkpoint (in the order of the file)"


def _default_title(doc: dict[str, Any]) -> str:
    config = doc.get("config") or {}
    matrix = config.get("curvature_matrix") or (doc["rows"][0].get("matrix"))
    parts = [str(config[k]) for k in ("model", "dataset") if config.get(k)]
    bits = [f"Loss statistics ({_MATRICES.get(str(matrix), matrix)})" if matrix else ""]
    if parts:
        bits.append(" on ".join(parts))
    batch, probes = config.get("batch_size"), config.get("probes")
    if batch:
        bits.append(f"batch size {batch}")
    if probes:
        bits.append(f"{probes} probes")
    return ", ".join(b for b in bits if b) or "Loss statistics"


def _draw(
    ax: Axes, key: str, x: np.ndarray, doc: dict[str, Any], log: bool | None, xlabel: str
) -> list[float]:
    rows, layers = doc["rows"], doc.get("layers") or []
    y = np.asarray([_number(r.get(key)) for r in rows])
    se = np.asarray([_number(r.get(f"{key}_se")) for r in rows])
    values = list(y[np.isfinite(y)])
    black = OKABE_ITO["black"]
    if key == "curv_shrinkage" and np.isfinite(se).any():
        ax.errorbar(x, y, yerr=np.where(np.isfinite(se), se, 0.0), color=black, marker="o",
                    linewidth=2.0, capsize=3, label="whole model")  # fmt: skip
    else:
        ax.plot(x, y, color=black, marker="o", linewidth=2.0, label="whole model")
    names = list(dict.fromkeys(name for lay in layers for name in lay))
    for i, name in enumerate(names):
        ly = np.asarray([_number((lay.get(name) or {}).get(key)) for lay in layers])
        if not np.isfinite(ly).any():
            continue
        values.extend(ly[np.isfinite(ly)])
        ax.plot(x, ly, color=PALETTE[(i + 1) % len(PALETTE)], marker=_MARKERS[i % len(_MARKERS)],
                markersize=4, linewidth=1.2, label=name)  # fmt: skip
    if key == "curv_shrinkage":
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("ρ (0: exact, 1: all noise)")
    else:
        use_log = log_scale_fits(values) if log is None else log
        if use_log and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(key + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(LOSS_STATS_QUANTITIES[key])
    ax.grid(True, alpha=0.3)
    return values


def plot_loss_stats(
    source: Any,
    *,
    quantities: Sequence[str] | None = None,
    log: bool | None = None,
    title: str | None = None,
    legend: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Gradient noise, curvature noise and shrinkage coefficient over checkpoints, per layer.

    Args:
        source: the path of a file written by :func:`deepcurvature.compute_loss_stats`
            (``deepcurvature stats`` writes ``loss_stats.json``), or the dict
            ``read_loss_stats`` returns.
        quantities: the panels, keys of :data:`LOSS_STATS_QUANTITIES` (default all three:
            ``"grad_var"``, ``"curv_var"``, ``"curv_shrinkage"``).
        log: log axis for the noise panels (default: when the values span a decade or more).
        title: figure title (default: the matrix, model, data set, batch size and probes); with
            ``ax`` given, a title given replaces the first axes' title.
        legend: draw the legend (whole model and layers) in the first panel.
        ax: draw into these axes instead of a new figure: one per quantity, or a single one,
            which gets the first quantity. The figure holding them is returned.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Raises:
        ValueError: not a loss statistics file, no rows, an unknown quantity, or a number of
            axes that does not match the quantities.
    """
    doc = _read(source)
    keys = list(LOSS_STATS_QUANTITIES) if quantities is None else list(quantities)
    unknown = [k for k in keys if k not in LOSS_STATS_QUANTITIES]
    if unknown or not keys:
        raise ValueError(
            f"quantities must be among {list(LOSS_STATS_QUANTITIES)}, got {list(keys)}"
        )
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) == 1:
            keys = keys[:1]
        if len(axes) != len(keys) or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(
                f"ax must be one matplotlib Axes or {len(keys)} of them (one per quantity "
                f"{keys}), got {len(axes)} objects"
            )
        fig = axes[0].get_figure()
    else:
        fig = new_figure(4.6 * len(keys), 4.2)
        axes = list(fig.subplots(1, len(keys), squeeze=False)[0])
    x, xlabel = _x(doc["rows"])
    for a, key in zip(axes, keys, strict=True):
        _draw(a, key, x, doc, log, xlabel)
    if legend:
        axes[0].legend(fontsize="small", framealpha=0.9)
    if ax is not None:
        if title:
            axes[0].set_title(title)
        return fig
    title = _default_title(doc) if title is None else title
    if title:
        fig.suptitle(title)
    return fig
