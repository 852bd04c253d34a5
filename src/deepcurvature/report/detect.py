"""What a result file holds, and the figure that shows it.

deepcurvature writes these kinds of results, told apart by their JSON metadata:

* ``"training"``: ``stats.json`` of a run (``"format": "deepcurvature-stats"``), or a run folder
  holding one;
* ``"spectrum"``: ``NAME.npz`` + ``NAME.json`` with ``"kind": "SpectrumResult"`` or
  ``"SpectralDensity"`` (or an ``.npz`` with ``nodes`` and ``weights`` arrays and no JSON);
* ``"landscape"``: ``NAME.npz`` + ``NAME.json`` with ``"kind": "LandscapeResult"``;
* ``"loss-stats"``: the JSON file of ``compute_loss_stats`` / ``deepcurvature stats``
  (``"format": "deepcurvature-loss-stats"``, one row per checkpoint);
* ``"checkpoint"``: ``checkpoint-EEEEE.pt``;
* the random-matrix analyses, ``NAME.npz`` + ``NAME.json`` with the ``"kind"`` of their result
  class (:data:`ANALYSIS_KINDS`): ``"maxent"`` (``MaxEntResult``), ``"outliers"``
  (``OutlierResult``), ``"local-statistics"`` (``LocalStatistics``) and ``"batch-extremes"``
  (``BatchExtremesResult``). A ``LogdetResult`` has no figure.

:func:`detect_result` names the kind of a path, :func:`plot_result` draws the matching figure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..io.errors import invalid_file
from ..io.results import RESULT_FILE, npz_names, read_npz
from ..io.results import read_json as _read_json

__all__ = [
    "ANALYSIS_KINDS",
    "LANDSCAPE_KINDS",
    "LOSS_STATS_FORMAT",
    "SPECTRUM_KINDS",
    "STATS_FORMAT",
    "check_spectrum_file",
    "detect_result",
    "plot_result",
    "read_json",
]

STATS_FORMAT = "deepcurvature-stats"
LOSS_STATS_FORMAT = "deepcurvature-loss-stats"  # suite.loss_stats (not imported here: torch)
SPECTRUM_KINDS = ("SpectrumResult", "SpectralDensity")
LANDSCAPE_KINDS = ("LandscapeResult",)
#: The ``"kind"`` of an analysis result file -> the kind :func:`detect_result` names.
ANALYSIS_KINDS = {
    "MaxEntResult": "maxent",
    "OutlierResult": "outliers",
    "LocalStatistics": "local-statistics",
    "BatchExtremesResult": "batch-extremes",
}
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")

_FIX_JSON = "give a file written by deepcurvature (it may have been cut short or edited)"
_EXPECTED = (
    "a spectrum (.npz/.json written by SpectrumResult.save or SpectralDensity.save), a "
    "training run's stats.json or its folder, a landscape file (LandscapeResult), loss "
    "statistics (loss_stats.json written by compute_loss_stats), or an "
    "analysis result (MaxEntResult, OutlierResult, LocalStatistics, BatchExtremesResult)"
)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; one-line ``ValueError`` naming the file when it is not valid JSON.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, unreadable, not UTF-8, or not valid JSON.
    """
    return _read_json(path, what=RESULT_FILE, fix=_FIX_JSON)


def check_spectrum_file(path: str | os.PathLike) -> None:
    """Read the density arrays of a spectrum file: a one-line ``ValueError`` if damaged."""
    arrays = read_npz(path, keys=("nodes", "weights", "probe_index"))
    if "nodes" not in arrays or "weights" not in arrays:
        raise invalid_file(path, RESULT_FILE, "no 'nodes' and 'weights' arrays", _FIX_JSON)


def _kind_of_json(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    if doc.get("format") == STATS_FORMAT:
        return "training"
    if doc.get("format") == LOSS_STATS_FORMAT:
        return "loss-stats"
    kind = doc.get("kind")
    if kind in SPECTRUM_KINDS:
        return "spectrum"
    if kind in LANDSCAPE_KINDS:
        return "landscape"
    if isinstance(kind, str) and kind in ANALYSIS_KINDS:
        return ANALYSIS_KINDS[kind]
    return None


def detect_result(path: str | os.PathLike) -> tuple[str, Path]:
    """Tell what a result file (or run folder) holds.

    Args:
        path: a run folder, ``stats.json``, a result's ``.npz`` or ``.json`` (or its name
            without suffix), or a checkpoint.

    Returns:
        ``(kind, file)``: kind is ``"training"``, ``"spectrum"``, ``"landscape"``,
        ``"loss-stats"``, ``"checkpoint"`` or one of the values of :data:`ANALYSIS_KINDS`;
        file is the file to read (``stats.json`` for a folder, the ``.npz`` of an npz + JSON
        result, the JSON file itself for training and loss statistics).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file is none of these kinds (the message says what was expected).
    """
    p = Path(path)
    if p.is_dir():
        stats = p / "stats.json"
        if stats.is_file():
            return "training", stats
        raise ValueError(
            f"{p} is a folder without stats.json: give a result file ({_EXPECTED}), or use "
            f"'deepcurvature report {p}' to summarise everything in a folder"
        )
    if not p.exists():
        npz = p.with_name(p.name + ".npz")
        if p.suffix == "" and npz.is_file():
            p = npz
        else:
            raise FileNotFoundError(f"no file or folder at {p}")
    if CHECKPOINT_NAME.match(p.name) or p.suffix == ".pt":
        return "checkpoint", p
    if p.suffix == ".json":
        doc = read_json(p)
        kind = _kind_of_json(doc)
        if kind in ("training", "loss-stats"):
            return kind, p
        npz = p.with_suffix(".npz")
        if kind is not None:
            if not npz.is_file():
                raise FileNotFoundError(
                    f"{p} describes a {doc.get('kind')} but its arrays file {npz.name} is missing"
                )
            return kind, npz
        what = f"'kind': {doc.get('kind')!r}" if isinstance(doc, dict) and "kind" in doc else None
        raise ValueError(
            f"cannot tell what {p} holds ({what or 'no format or kind entry'}): expected "
            f"{_EXPECTED}"
        )
    if p.suffix == ".npz":
        sidecar = p.with_suffix(".json")
        if sidecar.is_file():
            doc = read_json(sidecar)
            kind = _kind_of_json(doc)
            if kind is not None and kind not in ("training", "loss-stats"):
                return kind, p
            if isinstance(doc, dict) and "kind" in doc:
                raise ValueError(
                    f"{p} holds a {doc['kind']!r} result, which has no figure: expected {_EXPECTED}"
                )
        keys = npz_names(p)
        if "nodes" in keys and "weights" in keys:
            return "spectrum", p
        raise ValueError(
            f"cannot tell what {p} holds (arrays {sorted(keys)[:8]}): expected {_EXPECTED}"
        )
    raise ValueError(f"cannot tell what {p} holds from its name: expected {_EXPECTED}")


def landscape_plotter() -> Any:
    """``plot_loss_landscape`` when the landscape plotting module is installed, else ``None``."""
    try:
        from ..plotting.landscape import plot_loss_landscape
    except ImportError:
        return None
    return plot_loss_landscape


def _source_density(meta: dict[str, Any]) -> Any:
    """The density a result came from (``metadata["spectrum_file"]``), else ``None``.

    ``deepcurvature density`` records it; a file that moved or is damaged gives ``None``.
    """
    from ..plotting.spectrum import read_spectrum

    source = meta.get("spectrum_file") if isinstance(meta, dict) else None
    if not isinstance(source, str) or not Path(source).is_file():
        return None
    try:
        return read_spectrum(source)[0]
    except (OSError, ValueError):
        return None  # moved or damaged: the figure is drawn without the stems


def plot_analysis(kind: str, file: str | os.PathLike, **kwargs: Any) -> Figure:
    """Draw an analysis result file (a kind of :data:`ANALYSIS_KINDS`) with its plot function.

    ``MaxEntResult`` and ``OutlierResult`` files that record the spectrum they came from
    (``metadata["spectrum_file"]``) are drawn over its stems when that file is still there.
    """
    if kind == "maxent":
        from ..linalg.maxent import MaxEntResult
        from ..plotting.maxent import plot_maxent

        fit = MaxEntResult.load(file)
        return plot_maxent(fit, _source_density(fit.metadata), **kwargs)
    if kind == "outliers":
        from ..analysis.outliers import OutlierResult
        from ..plotting.outliers import plot_outliers

        found = OutlierResult.load(file)
        return plot_outliers(found, _source_density(found.metadata), **kwargs)
    if kind == "local-statistics":
        from ..analysis.local_statistics import LocalStatistics
        from ..plotting.local_statistics import plot_local_statistics

        return plot_local_statistics(LocalStatistics.load(file), **kwargs)
    if kind == "batch-extremes":
        from ..analysis.batch_extremes import BatchExtremesResult
        from ..plotting.batch_extremes import plot_batch_extremes

        return plot_batch_extremes(BatchExtremesResult.load(file), **kwargs)
    raise ValueError(f"{file}: {kind!r} is not an analysis result with a figure")


def plot_result(
    path: str | os.PathLike, *, mode: str = "lanczos", **kwargs: Any
) -> tuple[str, Figure]:
    """Draw the figure that matches a result file (see :func:`detect_result`).

    Args:
        path: the result file or run folder.
        mode: for spectra, a mode of ``plot_spectrum`` (``"lanczos"``, ``"smooth"``, ``"cdf"``).
        **kwargs: passed to the plotting function (``plot_spectrum``, ``plot_training``,
            ``plot_loss_landscape``, ``plot_loss_stats``, ``plot_maxent``, ``plot_outliers``,
            ``plot_local_statistics`` or ``plot_batch_extremes``).

    Returns:
        ``(kind, figure)``.

    Raises:
        ValueError: the file has no figure (a checkpoint, an unknown file), or the landscape
            plotting module is missing.
    """
    from ..plotting import plot_spectrum, plot_training

    kind, file = detect_result(path)
    if kind == "training":
        return kind, plot_training(file, **kwargs)
    if kind == "spectrum":
        check_spectrum_file(file)
        return kind, plot_spectrum(mode, path=file, **kwargs)
    if kind == "loss-stats":
        from ..plotting.loss_stats import plot_loss_stats

        return kind, plot_loss_stats(file, **kwargs)
    if kind == "landscape":
        plot = landscape_plotter()
        if plot is None:
            raise ValueError(
                f"{file} is a loss landscape, but this installation has no landscape plotting "
                f"(deepcurvature.plotting.landscape.plot_loss_landscape)"
            )
        return kind, plot(file, **kwargs)
    if kind in ANALYSIS_KINDS.values():
        return kind, plot_analysis(kind, file, **kwargs)
    raise ValueError(
        f"{file} is a checkpoint, which has no figure of its own: plot its run's stats.json, "
        f"or a spectrum computed from it"
    )
