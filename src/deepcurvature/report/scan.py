"""Scanning a run folder: which of its files are training runs, spectra, landscapes and the rest."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io.errors import describe_error
from ..io.results import npz_names
from .detect import CHECKPOINT_NAME, LANDSCAPE_KINDS, SPECTRUM_KINDS, STATS_FORMAT, read_json


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
