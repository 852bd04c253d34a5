"""Training curves from a run's ``stats.json``: loss, accuracy, learning rate and weight norm.

:func:`plot_training` reads the per-epoch table written by :func:`deepcurvature.train_network`
(``{"format": "deepcurvature-stats", "version", "config", "columns", "rows"}``, see
:mod:`deepcurvature.training.stats`) and draws one panel per quantity against the epoch: train and
test curves, test top-5 accuracy and the SWA / iterate-averaged (Gadam) test curves when the
columns are there. The learning rate has its own panel, on a log axis when it spans a decade or
more. Curves differ in colour (Okabe-Ito), line style and marker, so they read without colour.

Several runs (a list, or a ``{label: run}`` mapping) are overlaid on one axes, one curve per run
of one ``metric`` (default: the training error ``1 - train_accuracy``), the comparison of the
paper's Figure 1. ``x="time"`` puts the cumulative training time (the ``time`` column, seconds)
on the horizontal axis instead of the epoch.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io.results import read_json
from .style import OKABE_ITO, PALETTE, log_scale_fits, new_figure

__all__ = ["plot_training", "read_training_stats"]

_LOSS_NAMES = {
    "CrossEntropyLoss": "cross-entropy",
    "MSELoss": "mean squared error",
    "NLLLoss": "negative log-likelihood",
    "BCEWithLogitsLoss": "binary cross-entropy",
}

STATS_FORMAT = "deepcurvature-stats"
_FIX = "give the stats.json written by train_network (deepcurvature train)"

# (column, legend label, colour, line style, marker)
_LOSS = (
    ("train_loss", "train", OKABE_ITO["blue"], "-", "o"),
    ("test_loss", "test", OKABE_ITO["vermillion"], "--", "s"),
    ("swa_test_loss", "SWA test", OKABE_ITO["bluish_green"], "-.", "^"),
    ("avg_test_loss", "averaged (Gadam) test", OKABE_ITO["reddish_purple"], ":", "D"),
)
_ACCURACY = (
    ("train_accuracy", "train", OKABE_ITO["blue"], "-", "o"),
    ("test_accuracy", "test", OKABE_ITO["vermillion"], "--", "s"),
    ("test_top5_accuracy", "test top-5", OKABE_ITO["orange"], ":", "s"),
    ("swa_test_accuracy", "SWA test", OKABE_ITO["bluish_green"], "-.", "^"),
    ("swa_test_top5_accuracy", "SWA test top-5", OKABE_ITO["bluish_green"], ":", "^"),
    ("avg_test_accuracy", "averaged (Gadam) test", OKABE_ITO["reddish_purple"], "-.", "D"),
    ("avg_test_top5_accuracy", "averaged test top-5", OKABE_ITO["reddish_purple"], ":", "D"),
)
_LR = (("lr", "learning rate", OKABE_ITO["black"], "-", "o"),)
_NORM = (("weight_l2", "‖w‖₂", OKABE_ITO["blue"], "-", "o"),)

X_AXES = ("epoch", "time")
_X = "__x"  # the horizontal coordinate of a row (its epoch or cumulative training time)
_X_LABELS = {"epoch": "epoch", "time": "training time (s, cumulative)"}
# metric -> (accuracy column it is one minus, axis label); other metrics are plain columns
_ERRORS = {
    "train_error": ("train_accuracy", "training error (%)"),
    "test_error": ("test_accuracy", "test error (%)"),
}
_STATS_KEYS = ("format", "rows", "columns", "config")  # a dict with one of these is one run
_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _epoch_rows(rows: list[Any], where: str) -> list[dict[str, Any]]:
    """The rows that are objects with a numeric ``epoch``; one warning names the others."""
    usable = [isinstance(r, dict) and _is_number(r.get("epoch")) for r in rows]
    good = [r for r, ok in zip(rows, usable, strict=True) if ok]
    bad = [i for i, ok in enumerate(usable) if not ok]
    if not good:
        raise ValueError(
            f"{where}: no row has a numeric 'epoch' entry: expected the rows written by "
            "train_network ({'epoch': 1, 'train_loss': ...})"
        )
    if bad:
        shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        warnings.warn(
            f"{where}: skipped {len(bad)} of {len(rows)} rows without a numeric 'epoch' entry "
            f"(rows {shown}, counting from 0)",
            stacklevel=3,
        )
    return good


def read_training_stats(source: Any) -> dict[str, Any]:
    """Read the statistics of a training run.

    Rows that are not objects with a numeric ``epoch`` (null, missing, a string) are skipped
    with one warning.

    Args:
        source: a run folder holding ``stats.json``, the path of a ``stats.json`` file, an
            already loaded document (a dict with ``rows``), or a ``TrainResult``.

    Returns:
        ``{"config": {...}, "columns": [...], "rows": [{...}, ...]}`` with at least one row.

    Raises:
        FileNotFoundError: no such file, or a folder without ``stats.json``.
        ValueError: one line naming the file: it is not a ``stats.json`` written by
            ``train_network`` (not JSON, not an object with ``rows``), or has no usable rows.
    """
    where = "the statistics"
    if hasattr(source, "stats") and hasattr(source, "config") and not isinstance(source, dict):
        doc: Any = {"config": dict(source.config), "rows": list(source.stats)}
    elif isinstance(source, dict):
        doc = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            if not (path / "stats.json").is_file():
                raise FileNotFoundError(
                    f"no stats.json in {path}: give a run folder written by train_network "
                    f"(deepcurvature train) or the path of its stats.json"
                )
            path = path / "stats.json"
        elif not path.is_file():
            raise FileNotFoundError(f"no statistics file at {path}")
        where = str(path)
        doc = read_json(path, what="stats.json file", fix=_FIX)
    else:
        raise TypeError(
            f"plot_training needs a run folder, a stats.json path, a dict or a TrainResult, got "
            f"{type(source).__name__}"
        )
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or (doc.get("format", STATS_FORMAT) != STATS_FORMAT):
        got = "an object without a list of rows" if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"{where} is not a training statistics file (it holds {got}): expected the JSON "
            f"object {{'format': '{STATS_FORMAT}', 'config', 'columns', 'rows'}} written by "
            "train_network"
        )
    if not rows:
        raise ValueError(f"{where} has no epochs yet: train for at least one epoch")
    rows = _epoch_rows(rows, where)
    columns = doc.get("columns")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        columns = sorted({str(k) for r in rows for k in r})
    config = doc.get("config")
    return {
        "config": dict(config) if isinstance(config, dict) else {},
        "columns": columns,
        "rows": rows,
    }


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if _is_number(v):
            xs.append(r.get(_X, r["epoch"]))
            ys.append(float(v) * scale)
    return xs, ys


def _with_x(rows: list[dict[str, Any]], x: str, where: str) -> list[dict[str, Any]]:
    """Copies of ``rows`` (sorted by epoch) with their horizontal coordinate under ``_X``.

    ``x="time"``: the cumulative training time, the running sum of the ``time`` column.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    rows = sorted(rows, key=lambda r: r["epoch"])
    out, elapsed = [], 0.0
    for r in rows:
        if x == "time":
            t = r.get("time")
            if not _is_number(t):
                raise ValueError(
                    f"{where}: epoch {r['epoch']} has no training 'time': x='time' needs the "
                    "per-epoch times written by train_network; use x='epoch'"
                )
            elapsed += float(t)
        out.append({**r, _X: elapsed if x == "time" else r["epoch"]})
    return out


def _draw(
    ax: Axes, rows: list[dict[str, Any]], specs: tuple, scale: float = 1.0
) -> list[list[float]]:
    """Draw each present column; return the y values drawn."""
    drawn = []
    for key, label, color, style, marker in specs:
        xs, ys = _series(rows, key, scale)
        if not xs:
            continue
        ax.plot(
            xs,
            ys,
            color=color,
            linestyle=style,
            marker=marker if len(xs) <= 40 else None,
            markersize=4,
            linewidth=1.5,
            label=label,
        )
        drawn.append(ys)
    return drawn


def _title(config: dict[str, Any]) -> str:
    parts = []
    model, data = config.get("model"), config.get("dataset")
    if model and data:
        parts.append(f"{model} on {data}")
    opt = config.get("optimizer")
    if opt:
        kw = config.get("optimizer_kwargs") or {}
        shown = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()
        )
        parts.append(f"{opt} ({shown})" if shown else str(opt))
    sched = config.get("schedule")
    name = sched.get("name") if isinstance(sched, dict) else sched
    if isinstance(name, str):
        parts.append(f"{name} schedule")
    if config.get("swa"):
        parts.append("SWA")
    head = "Training: " + ", ".join(parts) if parts else "Training curves"
    return "\n".join(textwrap.wrap(head, 110))


def _run_label(config: dict[str, Any], index: int) -> str:
    """``"Adam (lr=0.001)"`` from a run's config; ``"run i"`` without an optimiser."""
    opt = config.get("optimizer")
    if not opt:
        return f"run {index + 1}"
    kw = config.get("optimizer_kwargs") or {}
    lr = kw.get("lr")
    return f"{opt} (lr={lr:g})" if _is_number(lr) else str(opt)


def _metric_rows(rows: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], str]:
    """Rows with the metric under its own key (errors derived from accuracies)."""
    if metric in _ERRORS:
        column = _ERRORS[metric][0]
        return [
            {**r, metric: 1.0 - r[column]} if _is_number(r.get(column)) else r for r in rows
        ], metric
    return rows, metric


def _plot_runs(
    sources: list[Any],
    labels: list[str] | None,
    *,
    x: str,
    metric: str,
    ax: Axes | None,
    title: str | None,
    log_y: bool | None,
) -> Figure:
    """One curve of ``metric`` per run against ``x`` on one axes (the Figure 1 comparison)."""
    if not sources:
        raise ValueError("plot_training needs at least one run")
    if labels is not None and len(labels) != len(sources):
        raise ValueError(f"{len(labels)} labels for {len(sources)} runs: give one label per run")
    if ax is None:
        fig = new_figure(6.4, 4.4)
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure(root=True)
    percent = metric in _ERRORS or metric.endswith("accuracy")
    scale = 100.0 if percent else 1.0
    values: list[float] = []
    for i, source in enumerate(sources):
        doc = read_training_stats(source)
        where = f"run {labels[i] if labels else i + 1}"
        rows, key = _metric_rows(_with_x(doc["rows"], x, where), metric)
        xs, ys = _series(rows, key, scale)
        if not xs:
            raise ValueError(
                f"{where} has no numeric {metric!r} values: use one of its columns "
                f"{doc['columns']} or 'train_error' / 'test_error'"
            )
        ax.plot(
            xs,
            ys,
            color=PALETTE[i % len(PALETTE)],
            linestyle=_STYLES[(i // len(PALETTE)) % len(_STYLES)],
            marker=_MARKERS[i % len(_MARKERS)] if len(xs) <= 40 else None,
            markersize=4,
            linewidth=1.5,
            label=labels[i] if labels else _run_label(doc["config"], i),
        )
        values += ys
    if log_scale_fits(values) if log_y is None else log_y:
        ax.set_yscale("log")
    ylabel = _ERRORS[metric][1] if metric in _ERRORS else metric.replace("_", " ")
    if percent and metric not in _ERRORS:
        ylabel += " (%)"
    ax.set_ylabel(ylabel + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_xlabel(_X_LABELS[x])
    if x == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", framealpha=0.9)
    if title is not None:
        ax.set_title(title)
    return fig


def plot_training(
    run_dir_or_stats_path: Any,
    *,
    title: str | None = None,
    log_loss: bool | None = None,
    show_weight_norm: bool = True,
    x: str = "epoch",
    metric: str | None = None,
    labels: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Loss, accuracy, learning rate (and weight norm) against the epoch, from ``stats.json``.

    Panels: loss (train, test, SWA / averaged test); accuracy in percent (train, test, test top-5,
    SWA / averaged); the learning rate at the start of each epoch (log axis when it spans a
    decade or more); the L2 norm of the weights. Panels without data are left out. Test values
    of epochs without evaluation (``eval_freq``) are skipped. With SWA, a dotted line marks the
    epoch averaging starts.

    Args:
        run_dir_or_stats_path: a run folder, a ``stats.json`` path, its loaded dict, or a
            ``TrainResult`` (see :func:`read_training_stats`); or several of them, as a list or
            a ``{label: source}`` mapping.
        title: figure title (default: model, data set, optimiser and schedule from the config).
        log_loss: log axis for the loss; default: when the loss values span a decade or more.
        show_weight_norm: add the weight-norm panel when ``weight_l2`` is recorded.
        x: the horizontal axis: ``"epoch"`` or ``"time"`` (cumulative training time in
            seconds, the running sum of the ``time`` column; evaluation time not included).
        metric: comparison mode: draw only this quantity, one curve per run, on one axes:
            ``"train_error"`` (the default there: ``1 - train_accuracy``, in percent),
            ``"test_error"`` or any numeric column (``"train_loss"``...).
        labels: comparison mode: one legend label per run (default: the optimiser and its
            learning rate from each run's config, or the mapping's keys).
        ax: comparison mode: draw into this axes (default: a new figure).

    Several runs (a list or tuple of sources, or a ``{label: source}`` mapping: a dict without
    the keys of a ``stats.json`` document), or ``metric`` or ``ax`` given, select the comparison
    mode; ``title`` is then the axes' title and ``log_loss`` the choice of a log axis for the
    metric.

    Returns:
        The :class:`matplotlib.figure.Figure` (one axes per panel, in the order above; in the
        comparison mode the figure holding the one axes).

    Raises:
        ValueError: an unknown ``x``; ``x="time"`` for a run without per-epoch times; a metric
            a run does not have; a number of labels that does not match the runs.
    """
    src = run_dir_or_stats_path
    runs_map = isinstance(src, Mapping) and not any(k in src for k in _STATS_KEYS)
    if isinstance(src, (list, tuple)) or runs_map or metric is not None or ax is not None:
        if runs_map:
            labels = list(src) if labels is None else labels
            sources = list(src.values())
        else:
            sources = list(src) if isinstance(src, (list, tuple)) else [src]
        return _plot_runs(
            sources,
            None if labels is None else [str(label) for label in labels],
            x=x,
            metric=metric or "train_error",
            ax=ax,
            title=title,
            log_y=log_loss,
        )
    doc = read_training_stats(src)
    config = doc["config"]
    rows = _with_x(doc["rows"], x, "the statistics")
    present = {k for r in rows for k, v in r.items() if _is_number(v)}

    panels: list[tuple[str, tuple, float]] = []
    if present & {s[0] for s in _LOSS}:
        panels.append(("loss", _LOSS, 1.0))
    if present & {s[0] for s in _ACCURACY}:
        panels.append(("accuracy", _ACCURACY, 100.0))
    if "lr" in present:
        panels.append(("lr", _LR, 1.0))
    if show_weight_norm and "weight_l2" in present:
        panels.append(("norm", _NORM, 1.0))
    if not panels:
        raise ValueError(
            "the statistics have no loss, accuracy or learning-rate columns to plot: expected "
            "the columns written by train_network (train_loss, test_loss, lr, ...)"
        )
    n = len(panels)
    ncols = 2 if n == 4 else n
    nrows = 2 if n == 4 else 1
    fig = new_figure((5.0 if ncols < 3 else 4.6) * ncols, 3.6 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()

    loss_name = config.get("loss")
    loss_name = _LOSS_NAMES.get(loss_name, loss_name) if isinstance(loss_name, str) else None
    swa_start = config.get("swa_start") if config.get("swa") else None
    if not _is_number(swa_start):
        swa_start = None
    # the SWA line at the start epoch's coordinate (with x="time": the time when it is reached)
    swa_x = None
    if swa_start is not None:
        swa_x = next((r[_X] for r in rows if r["epoch"] == swa_start), None)
        swa_x = swa_start if x == "epoch" else swa_x
    for ax, (kind, specs, scale) in zip(axes, panels, strict=True):
        drawn = _draw(ax, rows, specs, scale)
        values = [v for ys in drawn for v in ys]
        if kind == "loss":
            use_log = log_scale_fits(values) if log_loss is None else log_loss
            if use_log:
                ax.set_yscale("log")
            ylabel = f"loss ({loss_name})" if loss_name else "loss"
            ax.set_ylabel(ylabel + (" (log scale)" if use_log else ""))
            ax.set_title("Loss")
        elif kind == "accuracy":
            ax.set_ylabel("accuracy (%)")
            lo = min(values)
            ax.set_ylim(max(0.0, lo - 5.0), min(100.0, max(values) + 5.0) + 1.0)
            ax.set_title("Accuracy")
        elif kind == "lr":
            if log_scale_fits(values):
                ax.set_yscale("log")
                ax.set_ylabel("learning rate (log scale)")
            else:
                ax.set_ylabel("learning rate")
                top = max(values)
                ax.set_ylim(0.0, 1.1 * top if top > 0 else 1.0)
            ax.set_title("Learning rate (start of epoch)")
        else:
            ax.set_ylabel("weight norm ‖w‖₂")
            ax.set_title("Weight L2 norm")
        ax.set_xlabel(_X_LABELS[x])
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if swa_x is not None:
            ax.axvline(
                swa_x,
                color=OKABE_ITO["bluish_green"],
                linestyle=":",
                linewidth=1.2,
                label=f"SWA from epoch {swa_start}",
            )
        if kind != "norm" and (kind != "lr" or swa_x is not None):
            ax.legend(fontsize="small", framealpha=0.9)
    xs = np.array([r[_X] for r in rows], dtype=float)
    pad = 0.03 * (xs.max() - xs.min()) or (0.3 if x == "epoch" else 0.05 * max(xs.max(), 1.0))
    for panel in axes[:n]:
        panel.set_xlim(xs.min() - pad, xs.max() + pad)
    fig.suptitle(_title(config) if title is None else title)
    return fig
