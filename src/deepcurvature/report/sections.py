"""The sections of a report: configuration, training, spectra, landscapes, statistics, files."""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .detect import CHECKPOINT_NAME, LOSS_STATS_FORMAT, check_spectrum_file, read_json
from .page import MAX_ROWS, _esc, _figure, _flatten, _fmt, _is_num, _kv_table, _Page, _rows_table
from .scan import RunContents


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
