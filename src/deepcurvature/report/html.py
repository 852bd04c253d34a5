r"""One self-contained HTML page summarising a run folder.

:func:`write_report` scans a folder recursively (see :func:`scan_run`) and writes one HTML file:
the configuration (from ``stats.json`` or the latest checkpoint), the training curves with a table
of the last epoch, every spectrum (stem plot, summary table, configuration), every loss landscape,
statistics files (JSON and CSV tables) and a list of the other files. Figures are embedded as
base64 PNG ``data:`` URIs and the style sheet is inline: the page needs no other file and loads
nothing from the network, so it can be mailed or archived. Every piece of text taken from the
files is escaped with :func:`html.escape`, and bytes of file names that are not UTF-8 are shown
escaped (``bad-\xff.txt``). A file that cannot be read is reported in the page with the reason
(and as one warning), and the rest of the report is still written.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .._version import __version__
from ..io import atomic_write_text
from ..io.errors import describe_error, escape_surrogates
from ..io.results import npz_names
from .detect import (
    CHECKPOINT_NAME,
    LANDSCAPE_KINDS,
    LOSS_STATS_FORMAT,
    SPECTRUM_KINDS,
    STATS_FORMAT,
    check_spectrum_file,
    read_json,
)

__all__ = ["RunContents", "render_report", "scan_run", "write_report"]

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


@dataclass
class RunContents:
    """The results found in a run folder (paths sorted, relative order as on disk).

    Attributes:
        root: the folder scanned.
        training: ``stats.json`` files of training runs.
        spectra: ``.npz`` files of spectra (``SpectrumResult`` / ``SpectralDensity``).
        landscapes: ``.npz`` files of loss landscapes (``LandscapeResult``).
        checkpoints: ``checkpoint-EEEEE.pt`` files.
        statistics: other JSON and CSV files (loss statistics and the like).
        other: every other file.
        unreadable: files among ``other`` that look like results but cannot be read, with the
            reason (a damaged ``.npz``).
    """

    root: Path
    training: list[Path] = field(default_factory=list)
    spectra: list[Path] = field(default_factory=list)
    landscapes: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    statistics: list[Path] = field(default_factory=list)
    other: list[Path] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """No result of any kind was found."""
        return not (
            self.training or self.spectra or self.landscapes or self.checkpoints or self.statistics
        )


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for name in sorted(filenames):
            if not name.startswith("."):  # hidden and atomic-write temporaries
                yield Path(dirpath) / name


def scan_run(run_dir: str | os.PathLike, *, exclude: Sequence[Path] = ()) -> RunContents:
    """Find every result in ``run_dir`` and its sub-folders.

    Args:
        run_dir: the folder.
        exclude: files to leave out (e.g. the report being written).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no run folder at {root}: give the folder of a training run")
    out = RunContents(root=root)
    skip = {Path(p).resolve() for p in exclude}
    files = [p for p in _walk(root) if p.resolve() not in skip]
    claimed: set[Path] = set()
    for p in files:
        if p.suffix != ".json":
            continue
        try:
            doc = read_json(p)
        except (ValueError, OSError):
            out.statistics.append(p)  # reported as unreadable when rendered
            continue
        kind = doc.get("kind") if isinstance(doc, dict) else None
        npz = p.with_suffix(".npz")
        if isinstance(doc, dict) and doc.get("format") == STATS_FORMAT:
            out.training.append(p)
        elif kind in SPECTRUM_KINDS and npz.is_file():
            out.spectra.append(npz)
            claimed.add(npz)
        elif kind in LANDSCAPE_KINDS and npz.is_file():
            out.landscapes.append(npz)
            claimed.add(npz)
        else:
            out.statistics.append(p)
            if npz.is_file():
                claimed.add(npz)  # arrays of a statistics result: shown with its JSON
        claimed.add(p)
    for p in files:
        if p in claimed:
            continue
        if CHECKPOINT_NAME.match(p.name):
            out.checkpoints.append(p)
        elif p.suffix == ".npz" and _is_bare_spectrum(p, out):
            out.spectra.append(p)
        elif p.suffix == ".csv":
            out.statistics.append(p)
        else:
            out.other.append(p)
    return out


def _is_bare_spectrum(path: Path, out: RunContents) -> bool:
    """An ``.npz`` with ``nodes`` and ``weights`` arrays; a damaged one is noted in ``out``."""
    try:
        names = npz_names(path)
    except (ValueError, OSError) as exc:
        out.unreadable[path] = describe_error(exc)
        return False
    return "nodes" in names and "weights" in names


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


def _kv_table(mapping: Mapping[str, Any], caption: str | None = None, pairs: int = 1) -> str:
    """Key/value table with ``pairs`` key/value pairs per row (filled column by column)."""
    cells = []
    for key, value in mapping.items():
        cls = ' class="num"' if _is_num(value) else ""
        cells.append(f"<th>{_esc(key)}</th><td{cls}>{_esc(_fmt(value))}</td>")
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
        cells = []
        for c in cols:
            v = r.get(c)
            cls = ' class="num"' if _is_num(v) else ""
            cells.append(f"<td{cls}>{_esc(_fmt(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
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
        cells = []
        for r in rows:
            v = r.get(c)
            cls = ' class="num"' if _is_num(v) else ""
            cells.append(f"<td{cls}>{_esc(_fmt(v))}</td>")
        body.append(f"<tr><th>{_esc(c)}</th>{''.join(cells)}</tr>")
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


# -- sections ---------------------------------------------------------------------------------
def _checkpoint_folders(paths: list[Path]) -> dict[Path, list[Path]]:
    folders: dict[Path, list[Path]] = {}
    for p in paths:
        folders.setdefault(p.parent, []).append(p)
    for ckpts in folders.values():
        ckpts.sort(key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))
    return folders


def _configuration_section(page: _Page, contents: RunContents) -> None:
    """The configuration of each run: from stats.json, else from its latest checkpoint."""
    from ..training.checkpoint import read_checkpoint

    done = set()
    for path in contents.training:
        try:
            doc = read_json(path)
        except Exception as exc:
            page.problem(f"could not read {page.rel(path)}", exc, path)
            continue
        done.add(path.parent)
        config = doc.get("config") or {}
        if config:
            caption = f"Run {page.folder(path.parent)} (from {path.name})"
            page.add(_kv_table(_flatten(config), caption, pairs=2))
    for folder, ckpts in _checkpoint_folders(contents.checkpoints).items():
        if folder in done:
            continue
        last = ckpts[-1]
        try:
            config = read_checkpoint(last, map_location="cpu").get("config") or {}
        except Exception as exc:
            page.problem(f"could not read {page.rel(last)}", exc, last)
            continue
        if config:
            caption = f"Run {page.folder(folder)} (from {last.name})"
            page.add(_kv_table(_flatten(config), caption, pairs=2))


_TRAINING_SUMMARY = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "test_top5_accuracy",
    "swa_test_loss",
    "swa_test_accuracy",
    "avg_test_loss",
    "avg_test_accuracy",
    "weight_l2",
    "weight_linf",
)


def _training_section(page: _Page, paths: list[Path]) -> None:
    from ..plotting import plot_training, read_training_stats

    for path in paths:
        page.heading(3, f"Training run {page.folder(path.parent)}")
        try:
            doc = read_training_stats(path)
            fig = plot_training(doc)
        except Exception as exc:
            page.problem(f"could not plot {page.rel(path)}", exc, path)
            continue
        page.add(
            _figure(
                fig,
                f"training curves from {page.rel(path)}",
                f"{page.rel(path)}: loss, accuracy, learning rate and weight norm per epoch.",
                page.dpi,
            )
        )
        rows = doc["rows"]
        last = rows[-1]
        summary: dict[str, Any] = {"epochs completed": last.get("epoch")}
        for key in _TRAINING_SUMMARY:
            if last.get(key) is not None:
                summary[f"{key} (last epoch)"] = last[key]
        tested = [r for r in rows if _is_num(r.get("test_accuracy"))]
        if tested:
            best = max(tested, key=lambda r: r["test_accuracy"])
            summary["best test_accuracy"] = best["test_accuracy"]
            summary["epoch of best test_accuracy"] = best["epoch"]
        times = [r["time"] for r in rows if _is_num(r.get("time"))]
        if times:
            summary["training time (s)"] = float(sum(times))
        page.add(_kv_table(summary, "Summary", pairs=2))
        page.add(
            "<details><summary>Every epoch</summary>"
            + _rows_table(rows, doc.get("columns"))
            + "</details>"
        )


_SPECTRUM_SUMMARY = (
    ("matrix", "matrix"),
    ("P", "P (parameters)"),
    ("N", "N (samples)"),
    ("steps", "Lanczos steps m"),
    ("probes", "probes"),
    ("lambda_max", "λ_max"),
    ("lambda_min", "λ_min"),
    ("negative_mass", "negative mass"),  # replaced by the rows of _negative_mass_rows
    ("mass_near_zero", "mass near zero"),
    ("mean", "mean tr(A)/P"),
    ("second_moment", "second moment tr(A²)/P"),
    ("trace_estimate", "trace estimate"),
    ("seconds", "time (s)"),
)


def _negative_mass_rows(computed: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """The negative-mass rows of a spectrum's summary table, with the tolerance they count below.

    The count and its tolerance come from one summary: the file's when it records the tolerance
    (``negative_mass_tol``), else the one computed now from the nodes (a file written before the
    tolerance was recorded holds the strict count under ``negative_mass``). A matrix that is PSD
    by construction (GGN, Fisher) says so; without tolerance keys, the plain value is shown.
    """

    def has_tolerance(summary: Mapping[str, Any]) -> bool:
        return any(summary.get(k) is not None for k in ("negative_mass_tol", "psd_by_construction"))

    if has_tolerance(stored):
        source = stored
    elif has_tolerance(computed) or stored.get("negative_mass") is None:
        source = computed
    else:
        source = stored
    mass, tol = source.get("negative_mass"), source.get("negative_mass_tol")
    rtol, strict = source.get("negative_mass_rtol"), source.get("negative_mass_strict")
    psd = stored.get("psd_by_construction", computed.get("psd_by_construction"))
    rows: dict[str, Any] = {}
    if psd:
        rows["negative mass"] = f"{_fmt(mass if mass is not None else 0)} (PSD by construction)"
    elif _is_num(tol):
        scale = f" = {_fmt(rtol)}·max|θ|" if _is_num(rtol) else ""
        rows[f"negative mass (below −{tol:.3g}{scale})"] = mass
    elif mass is not None:
        rows["negative mass"] = mass
    if _is_num(strict) and (psd or _is_num(tol)) and strict != mass:
        rows["negative mass (any θ < 0)"] = strict
    return rows


def _spectrum_section(page: _Page, paths: list[Path]) -> None:
    from ..plotting import plot_spectrum, read_spectrum

    for path in paths:
        page.heading(3, f"Spectrum {page.rel(path.with_suffix(''))}")
        try:
            check_spectrum_file(path)
            density, meta = read_spectrum(path)
            fig = plot_spectrum("lanczos", path=path)
        except Exception as exc:
            page.problem(f"could not plot {page.rel(path)}", exc, path)
            continue
        computed = dict(density.summary())
        stored = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
        summary = {**computed, **{k: v for k, v in stored.items() if v is not None}}
        shown: dict[str, Any] = {}
        for key, label in _SPECTRUM_SUMMARY:
            if key == "negative_mass":
                shown.update(_negative_mass_rows(computed, stored))
            elif key in summary:
                shown[label] = summary[key]
        order = np.sort(density.nodes)
        shown["largest Ritz values"] = [float(f"{x:.4g}") for x in order[::-1][:4]]
        shown["smallest Ritz values"] = [float(f"{x:.4g}") for x in order[:3]]
        caption = "Lanczos nodes (Ritz values) and weights on a log axis (equation 25)."
        page.add('<div class="pair">')
        page.add(_figure(fig, f"spectral density from {page.rel(path)}", caption, page.dpi))
        page.add(_kv_table(shown, "Summary"))
        page.add("</div>")
        config = meta.get("config") or density.metadata
        if config:
            page.add(
                "<details><summary>Configuration</summary>"
                + _kv_table(_flatten(config), pairs=2)
                + "</details>"
            )


def _landscape_section(page: _Page, paths: list[Path]) -> None:
    from .detect import landscape_plotter

    plot = landscape_plotter()
    for path in paths:
        page.heading(3, f"Landscape {page.rel(path.with_suffix(''))}")
        if plot is None:
            page.add(
                '<p class="note">The landscape plotting module '
                "(deepcurvature.plotting.landscape) is not installed: no figure.</p>"
            )
        else:
            for metric in ("loss", "accuracy"):
                try:
                    fig = plot(path, metric=metric)
                except Exception as exc:
                    if metric == "loss":
                        page.problem(f"could not plot {page.rel(path)}", exc, path)
                        break  # a damaged file: one note
                    # e.g. a regression landscape without accuracies
                    page.add(f'<p class="note">no accuracy figure: {_esc(exc)}</p>')
                    continue
                page.add(
                    _figure(
                        fig,
                        f"{metric} landscape from {page.rel(path)}",
                        f"{metric.capitalize()} at w* + t u along each direction u.",
                        page.dpi,
                    )
                )
        meta_path = path.with_suffix(".json")
        try:
            meta = read_json(meta_path)
        except Exception as exc:
            page.problem(f"could not read {page.rel(meta_path)}", exc, meta_path)
            continue
        config = meta.get("config") if isinstance(meta, dict) else None
        if config:
            page.add(
                "<details><summary>Configuration</summary>"
                + _kv_table(_flatten(config), pairs=2)
                + "</details>"
            )


def _npz_contents(path: Path) -> list[dict[str, Any]]:
    """Name, shape and dtype of each array of an ``.npz``, read from the headers only."""
    out = []
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            with zf.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:  # other header versions: read the array itself
                    arr = np.lib.format.read_array(fh, allow_pickle=False)
                    shape, dtype = arr.shape, arr.dtype
            out.append(
                {"array": name.removesuffix(".npy"), "shape": list(shape), "dtype": str(dtype)}
            )
    return out


def _read_csv(path: Path) -> list[dict[str, Any]]:
    def num(text: str | None) -> Any:
        if text is None:
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _statistics_section(page: _Page, paths: list[Path]) -> None:
    for path in paths:
        page.heading(3, page.rel(path))
        try:
            if path.suffix == ".csv":
                rows = _read_csv(path)
                page.add(_rows_table(rows) if rows else '<p class="note">empty table</p>')
                continue
            doc = read_json(path)
        except Exception as exc:
            page.problem(f"could not read {page.rel(path)}", exc, path)
            continue
        if isinstance(doc, dict) and doc.get("format") == LOSS_STATS_FORMAT:
            _loss_stats_figure(page, path)
        if isinstance(doc, dict) and isinstance(doc.get("rows"), list):
            rows = [r for r in doc["rows"] if isinstance(r, dict)]
            rest = {k: v for k, v in doc.items() if k not in ("rows", "columns")}
            nested = {k: v for k, v in rest.items() if isinstance(v, list) and len(v) > 0}
            rest = {k: v for k, v in rest.items() if k not in nested}
            if rest:
                page.add(_kv_table(_flatten(rest), pairs=2))
            if rows:
                page.add(_rows_table(rows, doc.get("columns")))
            for key, value in nested.items():
                text = json.dumps(value, indent=1, default=str)
                if len(text) > 20_000:
                    text = text[:20_000] + "\n... (truncated)"
                page.add(
                    f"<details><summary>{_esc(key)}</summary><pre>{_esc(text)}</pre></details>"
                )
        elif isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):
            page.add(_rows_table(doc))
        elif isinstance(doc, dict):
            items = list(_flatten(doc).items())
            page.add(_kv_table(dict(items[:MAX_ROWS]), pairs=2))
            if len(items) > MAX_ROWS:
                page.add(f'<p class="note">first {MAX_ROWS} of {len(items)} entries shown</p>')
        else:
            page.add(f"<pre>{_esc(_fmt(doc))}</pre>")
        npz = path.with_suffix(".npz")
        if npz.is_file():
            try:
                arrays = _npz_contents(npz)
            except Exception as exc:
                page.problem(f"could not read {page.rel(npz)}", exc, npz)
                continue
            page.add(
                f"<details><summary>Arrays in {_esc(npz.name)}</summary>"
                + _rows_table(arrays)
                + "</details>"
            )


def _loss_stats_figure(page: _Page, path: Path) -> None:
    """The per-layer gradient and curvature noise and the shrinkage over checkpoints."""
    from ..plotting.loss_stats import plot_loss_stats

    try:
        fig = plot_loss_stats(path)
    except Exception as exc:
        page.problem(f"could not plot {page.rel(path)}", exc, path)
        return
    caption = "gradient noise, curvature noise and shrinkage coefficient per layer"
    page.add(_figure(fig, f"loss statistics from {page.rel(path)}", caption, page.dpi))


def _size(path: Path, unit: int, digits: int) -> float | None:
    """The size of a file in ``unit`` bytes (None for a dangling link or a vanished file)."""
    try:
        return round(path.stat().st_size / unit, digits)
    except OSError:
        return None


def _checkpoint_section(page: _Page, paths: list[Path]) -> None:
    rows = [
        {
            "file": page.rel(p),
            "epoch": int(CHECKPOINT_NAME.match(p.name).group(1)),
            "size (MB)": _size(p, 2**20, 3),
        }
        for ckpts in _checkpoint_folders(paths).values()
        for p in ckpts
    ]
    page.add(_rows_table(rows))


def _other_section(page: _Page, paths: list[Path], unreadable: Mapping[Path, str]) -> None:
    for p, why in unreadable.items():
        page.problem(f"could not read {page.rel(p)}", why, p)
    rows = []
    for p in paths:
        row: dict[str, Any] = {"file": page.rel(p), "size (kB)": _size(p, 1024, 1)}
        if unreadable:
            row["note"] = "unreadable: " + unreadable[p] if p in unreadable else ""
        rows.append(row)
    page.add(_rows_table(rows))


# -- the page ---------------------------------------------------------------------------------
def render_report(
    run_dir: str | os.PathLike,
    *,
    title: str | None = None,
    dpi: int = 100,
    exclude: Sequence[Path] = (),
) -> str:
    """The HTML text of the report on ``run_dir`` (see :func:`write_report`).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
        ValueError: the folder holds no result of any kind, or ``dpi`` is not an integer >= 10.
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi must be an integer >= 10, got {dpi!r}")
    contents = scan_run(run_dir, exclude=exclude)
    root = contents.root
    if contents.is_empty():
        raise ValueError(
            f"no results found in {root}: expected stats.json, checkpoint-*.pt, spectrum or "
            f"landscape files (.npz + .json) or statistics files (.json, .csv), in the folder "
            f"or its sub-folders"
        )
    page = _Page(root, dpi)
    c = contents
    sections = (
        ("Configuration", c.training or c.checkpoints, lambda: _configuration_section(page, c)),
        ("Training", c.training, lambda: _training_section(page, c.training)),
        ("Spectra", c.spectra, lambda: _spectrum_section(page, c.spectra)),
        ("Loss landscapes", c.landscapes, lambda: _landscape_section(page, c.landscapes)),
        ("Statistics", c.statistics, lambda: _statistics_section(page, c.statistics)),
        ("Checkpoints", c.checkpoints, lambda: _checkpoint_section(page, c.checkpoints)),
        ("Other files", c.other, lambda: _other_section(page, c.other, c.unreadable)),
    )
    from ..plotting.style import closing_new_figures

    with closing_new_figures():  # also the figures of a section that failed half way
        for name, present, render in sections:
            if present:
                page.heading(2, name)
                render()

    title = title or f"deepcurvature report: {page.folder(root)}"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    counts = ", ".join(
        f"{len(paths)} {one if len(paths) == 1 else many}"
        for one, many, paths in (
            ("training run", "training runs", c.training),
            ("checkpoint", "checkpoints", c.checkpoints),
            ("spectrum", "spectra", c.spectra),
            ("landscape", "landscapes", c.landscapes),
            ("statistics file", "statistics files", c.statistics),
        )
        if paths
    )
    toc = "".join(
        f'<li><a href="#{a}">{_esc(text)}</a></li>' for level, a, text in page.toc if level == 2
    )
    failed = list(dict.fromkeys(page.problems))
    problems = (
        f'<p class="error">{len(failed)} file(s) could not be shown '
        f"({_esc(', '.join(failed[:10]))}{' ...' if len(failed) > 10 else ''}): see the red "
        "notes below.</p>\n"
        if failed
        else ""
    )
    head = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="deepcurvature {_esc(__version__)}">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
    )
    top = (
        f"<h1>{_esc(title)}</h1>\n"
        f'<p class="meta">Folder <span class="path">{_esc(root.resolve())}</span>: '
        f"{_esc(counts)}. Generated {_esc(stamp)} by deepcurvature {_esc(__version__)}.</p>\n"
        f"{problems}<nav><ul>{toc}</ul></nav>\n"
    )
    body = "\n".join(page.parts)
    return f"{head}<body>\n<main>\n{top}{body}\n</main>\n</body>\n</html>\n"


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write one self-contained HTML page summarising everything in ``run_dir``, atomically.

    Args:
        run_dir: the run folder (scanned recursively).
        out: the HTML file (default ``run_dir/report.html``); must end in ``.html``/``.htm``.
        title: page title (default: ``deepcurvature report: <folder name>``).
        dpi: resolution of the embedded PNG figures.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
        ValueError: nothing to report, or ``out`` does not end in ``.html``.
    """
    root = Path(run_dir)
    path = Path(out) if out is not None else root / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML page: end --out with .html (got {path.name!r})")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the HTML file to write")
    text = render_report(root, title=title, dpi=dpi, exclude=[path])
    atomic_write_text(path, text)
    return path
