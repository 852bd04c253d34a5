"""Writing a figure to a PNG, PDF or SVG file atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from ..io import atomic_write_bytes
from .style import close_figure

_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


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
