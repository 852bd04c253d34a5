"""Figures of mini-batch curvature extremes against the batch size, and the learning rates.

:func:`plot_batch_extremes` draws, on a logarithmic batch-size axis, the ``lambda_max`` of every
mini-batch matrix (small dots), their mean with one standard deviation (error bars), the fitted
law ``a + c (1/B - 1/N)`` (a curve) and the full-data ``lambda_max`` (a dashed line); optionally
the same for ``lambda_min``. With ``kind="lr"`` it draws the predicted maximal SGD learning rate
``2 / lambda_max(B)`` (fitted and measured) with the linear-scaling reference ``propto B``, and
the relative Adam rate (square-root scaling) on a second axis. A new figure is created through
pyplot (``plt.show()`` displays it), ``ax=`` draws into given axes; Okabe-Ito colours.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis.batch_extremes import BatchExtremesResult
from .style import OKABE_ITO, matrix_label, new_figure

__all__ = ["plot_batch_extremes"]

KINDS = ("lambda", "lr")


def _curve_sizes(result: BatchExtremesResult) -> np.ndarray:
    lo, hi = float(result.batch_sizes[0]), float(result.batch_sizes[-1])
    return np.geomspace(lo, max(hi, lo * 1.01), 200)


def _plot_extremes(ax: Axes, result: BatchExtremesResult, show_min: bool) -> None:
    sizes = result.batch_sizes.astype(float)
    curve = _curve_sizes(result)
    rows = [("max", OKABE_ITO["vermillion"], "o")]
    if show_min:
        rows.append(("min", OKABE_ITO["blue"], "s"))
    for which, color, marker in rows:
        values = getattr(result, f"lambda_{which}")
        mean, std = getattr(result, f"lambda_{which}_mean"), getattr(result, f"lambda_{which}_std")
        full = getattr(result, f"full_lambda_{which}")
        a, c = getattr(result, f"fit_{which}")
        xs = np.repeat(sizes, values.shape[1])
        ax.scatter(xs, values.ravel(), s=8, color=color, alpha=0.3, linewidths=0)
        ax.errorbar(
            sizes,
            mean,
            yerr=std,
            fmt=marker,
            color=color,
            capsize=3,
            label=f"λ_{which} of the batch matrices (mean ± std)",
        )
        fitted = getattr(result, f"predicted_lambda_{which}")(curve)
        ax.plot(curve, fitted, "-", color=color, label=f"fit {a:.3g} + {c:.3g} (1/B − 1/N)")
        ax.axhline(full, color=color, ls="--", lw=1, label=f"full data λ_{which} = {full:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize="small")


def _plot_lr(ax: Axes, result: BatchExtremesResult) -> None:
    sizes = result.batch_sizes.astype(float)
    curve = _curve_sizes(result)
    sgd = OKABE_ITO["vermillion"]
    ax.plot(curve, result.sgd_lr(curve), "-", color=sgd, label="SGD: 2 / λ_max(B) (fit)")
    ax.plot(sizes, result.sgd_lr(measured=True), "o", color=sgd, label="SGD: 2 / mean λ_max(B)")
    lr0 = float(result.sgd_lr(sizes[:1])[0])
    ax.plot(
        curve, lr0 * curve / sizes[0], ":", color=OKABE_ITO["black"], label="linear scaling ∝ B"
    )
    if result.full_lambda_max > 0:
        ax.axhline(2.0 / result.full_lambda_max, color=sgd, ls="--", lw=1, label="2 / λ_max(full)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("maximal stable SGD learning rate")
    twin = ax.twinx()
    adam = OKABE_ITO["blue"]
    twin.plot(curve, result.adam_lr_relative(curve), "-.", color=adam, label="Adam (relative)")
    twin.plot(curve, np.sqrt(curve / sizes[0]), ":", color=adam, alpha=0.6, label="∝ √B")
    twin.set_yscale("log")
    twin.set_ylabel("Adam learning rate / its value at the smallest B", color=adam)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, fontsize="small", loc="upper left")


def plot_batch_extremes(
    result: BatchExtremesResult,
    *,
    kind: str = "lambda",
    show_min: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Plot a :class:`~deepcurvature.BatchExtremesResult` (module docstring).

    Args:
        result: the result of :func:`~deepcurvature.batch_hessian_extremes`.
        kind: ``"lambda"`` (extreme eigenvalues against ``B``) or ``"lr"`` (learning rates).
        show_min: also draw ``lambda_min`` (``kind="lambda"``).
        ax: draw into these axes (default: a new figure).
        title: the axes' title (default: the matrix and ``N``).

    Returns:
        The :class:`matplotlib.figure.Figure` holding the axes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if ax is None:
        fig = new_figure(7.0, 4.5)
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure(root=True)
    if kind == "lambda":
        _plot_extremes(ax, result, show_min)
    else:
        _plot_lr(ax, result)
    if title is None:
        matrix = result.config.get("matrix", "hessian")
        title = (
            f"{matrix_label(matrix)}: mini-batch extremes (N = {result.info.get('N')}, "
            f"{result.lambda_max.shape[1]} batches per size)"
        )
    ax.set_title(title)
    return fig  # type: ignore[return-value]
