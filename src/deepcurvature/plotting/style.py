"""Shared figure style: the Okabe-Ito colour-blind-safe palette, line styles and figure helpers.

The Okabe-Ito colours (Okabe and Ito, "Color Universal Design", 2008) stay distinguishable under
the common colour-vision deficiencies (protanopia, deuteranopia, tritanopia). Curves that must be
told apart also differ in line style or marker, so that the figures read in grey scale too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["OKABE_ITO", "PALETTE", "log_scale_fits", "matrix_label", "new_figure"]

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
    """A :class:`~matplotlib.figure.Figure` with the constrained layout (no pyplot state)."""
    return Figure(figsize=(width, height), layout="constrained")
