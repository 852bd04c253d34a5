"""HTML building blocks of a report: escaping, cell formatting, tables, figures and the page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..io.errors import describe_error, escape_surrogates

#: Tables longer than this show their first rows only (and say so).
MAX_ROWS = 200
MAX_COLUMNS = 30

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1a1a1a; background: #ffffff; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #0072B2; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.6em; font-size: 1.1em; }
code, .path { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 0.92em; }
.meta { color: #555; margin-top: 0; }
nav ul { columns: 2; padding-left: 1.2em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #eef3f8; }
tr:nth-child(even) td { background: #f8f8f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { color: #555; font-size: 0.9em; }
.error { color: #8b0000; background: #fff0f0; border-left: 4px solid #D55E00;
         padding: 0.4em 0.8em; }
.note { color: #555; font-style: italic; }
details { margin: 0.4em 0 1em; }
.pair { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
.pair figure { flex: 1 1 520px; min-width: 0; }
.pair > div { flex: 0 1 auto; margin-top: 1em; }
caption { font-weight: 600; text-align: left; padding-bottom: 0.2em; }
summary { cursor: pointer; color: #0072B2; }
"""


def _esc(value: Any) -> str:
    r"""HTML-escaped text; undecodable bytes of file names shown as ``\xff``."""
    return html.escape(escape_surrogates(str(value)), quote=True)


# -- formatting -------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    """Short text for a table cell (numbers to 6 significant digits)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 300 else text[:297] + "..."
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _td(value: Any) -> str:
    """A table cell: the value's short text, numbers right-aligned."""
    cls = ' class="num"' if _is_num(value) else ""
    return f"<td{cls}>{_esc(_fmt(value))}</td>"


def _kv_table(mapping: Mapping[str, Any], caption: str | None = None, pairs: int = 1) -> str:
    """Key/value table with ``pairs`` key/value pairs per row (filled column by column)."""
    cells = []
    for key, value in mapping.items():
        cells.append(f"<th>{_esc(key)}</th>{_td(value)}")
    n_rows = max(1, math.ceil(len(cells) / pairs))
    rows = []
    for i in range(n_rows):
        row = cells[i::n_rows]
        if len(cells) > n_rows:
            row += ["<th></th><td></td>"] * (pairs - len(row))
        rows.append(f"<tr>{''.join(row)}</tr>")
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}{"".join(rows)}</table></div>'


def _rows_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A table with a row per record; few wide records are shown transposed (a column each)."""
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    if 0 < len(rows) <= 8 and len(columns) > 10:
        return _transposed_table(rows, list(columns))
    cols = list(columns)[:MAX_COLUMNS]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for r in list(rows)[:MAX_ROWS]:
        body.append(f"<tr>{''.join(_td(r.get(c)) for c in cols)}</tr>")
    notes = []
    if len(rows) > MAX_ROWS:
        notes.append(f"first {MAX_ROWS} of {len(rows)} rows")
    if len(columns) > MAX_COLUMNS:
        notes.append(f"first {MAX_COLUMNS} of {len(columns)} columns")
    note = f'<p class="note">{_esc("; ".join(notes))} shown</p>' if notes else ""
    table = f"<table><tr>{head}</tr>{''.join(body)}</table>"
    return f'<div class="scroll">{table}</div>{note}'


def _transposed_table(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> str:
    """One column per record, one row per field (the first field labels the columns)."""
    first, rest = columns[0], columns[1:]
    head = f"<th>{_esc(first)}</th>" + "".join(f"<th>{_esc(_fmt(r.get(first)))}</th>" for r in rows)
    body = []
    for c in rest[:MAX_ROWS]:
        body.append(f"<tr><th>{_esc(c)}</th>{''.join(_td(r.get(c)) for r in rows)}</tr>")
    note = (
        f'<p class="note">first {MAX_ROWS} of {len(rest)} fields shown</p>'
        if len(rest) > MAX_ROWS
        else ""
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>{note}'


def _flatten(obj: Any, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys (3 levels; deeper values and lists are shown as JSON)."""
    if isinstance(obj, Mapping) and obj and depth < 3:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
        return out
    return {prefix or "value": obj}


def _image(fig: Figure, alt: str, dpi: int) -> str:
    from ..plotting.style import close_figure

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        close_figure(fig)  # embedded in the page: nothing stays open in pyplot
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _figure(fig: Figure, alt: str, caption: str, dpi: int) -> str:
    return f"<figure>{_image(fig, alt, dpi)}<figcaption>{_esc(caption)}</figcaption></figure>"


class _Page:
    """Collects the HTML fragments, the table of contents and the problems of a report."""

    def __init__(self, root: Path, dpi: int) -> None:
        self.root = root
        self.dpi = dpi
        self.parts: list[str] = []
        self.toc: list[tuple[int, str, str]] = []
        self.problems: list[str] = []

    def rel(self, path: Path) -> str:
        """A path relative to the root, undecodable bytes escaped."""
        try:
            return escape_surrogates(str(path.relative_to(self.root)))
        except ValueError:
            return escape_surrogates(str(path))

    def folder(self, path: Path) -> str:
        """A folder's path relative to the root (the root's own name for the root)."""
        return self.rel(path) if path != self.root else escape_surrogates(self.root.resolve().name)

    def heading(self, level: int, text: str) -> None:
        anchor = f"s{len(self.toc) + 1}"
        self.toc.append((level, anchor, text))
        self.parts.append(f'<h{level} id="{anchor}">{_esc(text)}</h{level}>')

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def problem(self, what: str, exc: BaseException | str, path: Path) -> None:
        """Note that ``path`` could not be shown (in red, and as one warning), and why."""
        why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {describe_error(exc)}"
        msg = escape_surrogates(f"{what}: {why}")
        self.problems.append(self.rel(path))
        warnings.warn(msg, stacklevel=3)
        self.parts.append(f'<p class="error">{_esc(msg)}</p>')
