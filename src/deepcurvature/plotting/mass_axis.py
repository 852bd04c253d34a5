"""The mass-per-bin axis of a spectrum plot: its options, limits and the clipping of atoms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Bbox, TransformedBbox, blended_transform_factory

from .style import OKABE_ITO

#: The linear mass axis is clipped to the bulk when its largest bars (or atoms) hold more than
#: this many times the mass of the largest remaining bar and of the reference curve.
MASS_CLIP_RATIO = 5.0
#: At most this many bars and atoms are clipped: more is not "an atom", the axis stays whole.
_MAX_CLIPPED = 3
#: The cut is this factor above the bulk: the clipped bars stick out of the bulk visibly.
_CUT_ABOVE_BULK = 1.25


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
