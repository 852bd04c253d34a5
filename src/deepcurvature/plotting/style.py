"""Shared figure style: the Okabe-Ito colour-blind-safe palette, line styles and figure helpers.

The Okabe-Ito colours (Okabe and Ito, "Color Universal Design", 2008) stay distinguishable under
the common colour-vision deficiencies (protanopia, deuteranopia, tritanopia). Curves that must be
told apart also differ in line style or marker, so that the figures read in grey scale too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter

from .._open_figures import closing_new_figures

__all__ = [
    "OKABE_ITO",
    "PALETTE",
    "PercentTickFormatter",
    "artist_size_inches",
    "below_xaxis_inches",
    "close_figure",
    "closing_new_figures",
    "free_fraction",
    "keep_data_below",
    "laid_out_axes_size",
    "log_scale_fits",
    "matrix_label",
    "new_figure",
    "percent_decimals",
]

#: The eight Okabe-Ito colours by name.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: Colours in the order used for a sequence of curves (yellow last: weak on white).
PALETTE: tuple[str, ...] = (
    OKABE_ITO["blue"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["bluish_green"],
    OKABE_ITO["reddish_purple"],
    OKABE_ITO["orange"],
    OKABE_ITO["sky_blue"],
    OKABE_ITO["black"],
    OKABE_ITO["yellow"],
)

_MATRIX_NAMES = {
    "hessian": "Hessian",
    "ggn": "generalised Gauss-Newton",
    "gauss_newton": "generalised Gauss-Newton",
    "fisher": "empirical Fisher",
    "fisher_empirical": "empirical Fisher",
    "empirical_fisher": "empirical Fisher",
    "fisher_mc": "Monte Carlo Fisher",
    "mc_fisher": "Monte Carlo Fisher",
}


def matrix_label(name: object) -> str | None:
    """Readable name of a curvature matrix key (``"ggn"`` -> ``"generalised Gauss-Newton"``).

    Returns ``None`` for a missing name; an unknown name is returned unchanged.
    """
    if name is None:
        return None
    key = str(name).lower().replace("-", "_").removesuffix("_lanczos")
    return _MATRIX_NAMES.get(key, str(name))


def log_scale_fits(values: Sequence[float] | np.ndarray, decades: float = 1.0) -> bool:
    """Whether ``values`` are all positive and span at least ``decades`` powers of ten."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2 or np.any(arr <= 0):
        return False
    return math.log10(arr.max() / arr.min()) >= decades


def new_figure(width: float, height: float) -> Figure:
    """A new figure with the constrained layout, created through :mod:`matplotlib.pyplot`.

    Made by ``plt.figure`` (as matplotlib users expect) so that ``plt.show()`` and notebooks
    display it; the backend is whatever matplotlib chose (no backend is forced: without a
    display it is the non-interactive Agg, and nothing blocks). Code that only saves a figure
    closes it afterwards (``save_figure(..., close=True)``, ``plt.close(fig)``).
    """
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), layout="constrained")


def close_figure(fig: Figure) -> None:
    """Close ``fig`` in pyplot (a no-op for a figure pyplot does not manage)."""
    import matplotlib.pyplot as plt

    plt.close(fig)


def laid_out_axes_size(ax: Axes) -> tuple[float, float]:
    """``(width, height)`` of ``ax`` in inches, as the figure's layout engine places it now.

    With a layout engine (``layout="constrained"``...), the figure is laid out first (a draw
    without output) so that the size is the one the axes will have, not the figure's default
    subplot parameters (which are about an inch narrower). Artists added later (colour bars,
    more subplots) can still shrink the axes.
    """
    fig = ax.get_figure(root=True)
    if fig.get_layout_engine() is not None:
        fig.draw_without_rendering()
    pos = ax.get_position()
    return pos.width * fig.get_figwidth(), pos.height * fig.get_figheight()


def _renderer(fig: Figure) -> RendererAgg:
    """A renderer measuring text as the Agg backend draws it (no canvas is touched)."""
    return RendererAgg(1, 1, fig.dpi)


def artist_size_inches(artist: Artist) -> tuple[float, float]:
    """``(width, height)`` in inches of a legend, an anchored box or a text, as drawn."""
    fig = artist.get_figure(root=True)
    bbox = artist.get_window_extent(_renderer(fig))
    return bbox.width / fig.dpi, bbox.height / fig.dpi


def below_xaxis_inches(ax: Axes) -> float:
    """Distance in inches from the bottom of ``ax`` to the bottom of its tick labels and label."""
    fig = ax.get_figure(root=True)
    bbox = ax.xaxis.get_tightbbox(_renderer(fig))
    if bbox is None:
        return 0.0
    return max(0.0, (ax.bbox.y0 - bbox.y0) / fig.dpi)


class _Headroom(Artist):
    """Draws nothing: before the other artists of its axes, sets the y-limits from the boxes.

    See :func:`keep_data_below`.
    """

    def __init__(
        self,
        ax: Axes,
        boxes: Sequence[Artist],
        limits: Callable[[float], tuple[float, float]],
        pad_in: float,
    ) -> None:
        super().__init__()
        self._target, self._boxes, self._limits, self._pad_in = ax, list(boxes), limits, pad_in
        self.set_zorder(-1e9)  # first of the axes' artists: the others see the new limits
        self.set_in_layout(False)
        self.free = free_fraction(0.0, 1.0)
        self._set = ax.get_ylim()

    def fit(self, box_in: float, height_in: float) -> None:
        """Set the limits for boxes ``box_in`` inches tall in an axes ``height_in`` tall."""
        self.free = free_fraction(box_in + self._pad_in, height_in)
        self._target.set_ylim(*self._limits(self.free))
        self._set = self._target.get_ylim()

    def draw(self, renderer: Any) -> None:
        """Refit to the axes as laid out, unless the limits were set by hand since."""
        if not self.get_visible() or self._target.get_ylim() != self._set:
            return
        boxes = [b for b in self._boxes if b.get_visible() and b.axes is self._target]
        if not boxes:
            return
        box_in = max(b.get_window_extent(renderer).height for b in boxes) / renderer.dpi
        height_in = self._target.bbox.height / renderer.dpi
        if abs(free_fraction(box_in + self._pad_in, height_in) - self.free) > 2e-3:
            self.fit(box_in, height_in)  # once settled, nothing changes: no redraw is asked


def free_fraction(box_in: float, height_in: float) -> float:
    """Fraction of an axes ``height_in`` tall to leave above the data for boxes ``box_in`` tall."""
    return float(np.clip(box_in / max(height_in, 0.5), 0.05, 0.7))


def keep_data_below(
    ax: Axes,
    boxes: Sequence[Artist],
    limits: Callable[[float], tuple[float, float]],
    *,
    pad_in: float = 0.1,
) -> float:
    """Keep the data of ``ax`` below ``boxes`` (legend, text boxes in its upper part).

    ``limits(free)`` gives the y-limits leaving the fraction ``free`` of the height above the
    data. They are set now, from the boxes' sizes and the axes' laid-out size, and again at
    each draw from the sizes as drawn (panels filled later, a legend put under a neighbour,
    can shrink the axes) unless the limits were changed by hand in between.

    Returns:
        The fraction ``free`` used now.
    """
    keeper = _Headroom(ax, boxes, limits, pad_in)
    _, height_in = laid_out_axes_size(ax)
    keeper.fit(max((artist_size_inches(b)[1] for b in boxes), default=0.0), height_in)
    ax.add_artist(keeper)
    return keeper.free


class PercentTickFormatter(Formatter):
    """Tick labels in percent with as many decimals as the tick spacing needs.

    The values are already in percent (``22.5`` is written ``22.5%``). Ticks 0.5 apart get
    one decimal, 2.5 apart one, 5 apart none: labels never repeat (``"22%"`` for both 22.0 and
    22.5) and carry no useless zeros (``"95.0%"``).
    """

    def __init__(self, max_decimals: int = 6) -> None:
        self.max_decimals = int(max_decimals)
        self.decimals = 0

    def set_locs(self, locs: Sequence[float]) -> None:
        """Choose the decimals for the ticks ``locs`` (called by the axis before formatting)."""
        super().set_locs(locs)
        self.decimals = percent_decimals(locs, self.max_decimals)

    def __call__(self, x: float, pos: int | None = None) -> str:
        """The label of the tick at ``x`` (in percent)."""
        return f"{x:.{self.decimals}f}%"

    def format_data_short(self, value: float) -> str:
        """The cursor's value (interactive backends): two decimals more than the ticks."""
        return f"{value:.{self.decimals + 2}f}%"


def percent_decimals(locs: Sequence[float] | np.ndarray, max_decimals: int = 6) -> int:
    """Fewest decimals that write every tick of ``locs`` exactly (to 1/1000 of their spacing)."""
    arr = np.sort(np.asarray(locs, dtype=np.float64))
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        return 0
    steps = np.diff(arr)
    steps = steps[steps > 0]
    if steps.size == 0:
        return 0
    tol = 1e-3 * float(steps.min())
    for d in range(max_decimals + 1):
        if np.all(np.abs(arr - np.round(arr, d)) <= tol):
            return d
    return max_decimals
