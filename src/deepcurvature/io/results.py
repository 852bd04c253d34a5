"""Result files: arrays in ``NAME.npz`` and metadata in ``NAME.json``, both written atomically."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text

__all__ = ["json_default", "load_npz_json", "result_paths", "save_npz_json"]


def result_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(npz_path, json_path)`` for ``path`` given with or without ``.npz``/``.json``."""
    p = Path(path)
    if p.suffix in (".npz", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".npz"), p.with_name(p.name + ".json")


def json_default(obj: Any) -> Any:
    """JSON encoder fallback for numpy scalars/arrays, paths and torch dtypes."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def save_npz_json(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``arrays`` to ``path.npz`` and ``metadata`` to ``path.json`` atomically.

    The JSON file is written last, so its presence marks a complete result.

    Returns:
        The two paths written.
    """
    npz_path, json_path = result_paths(path)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(npz_path, buf.getvalue())
    text = json.dumps(metadata, indent=2, sort_keys=True, default=json_default, allow_nan=True)
    atomic_write_text(json_path, text + "\n")
    return npz_path, json_path


def load_npz_json(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load arrays and metadata written by :func:`save_npz_json` (no pickled objects allowed).

    Raises:
        FileNotFoundError: the ``.npz`` file does not exist (the message names it).
    """
    npz_path, json_path = result_paths(path)
    if not npz_path.exists():
        raise FileNotFoundError(f"no result file at {npz_path}")
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    metadata: dict[str, Any] = {}
    if json_path.exists():
        metadata = json.loads(json_path.read_text())
    return arrays, metadata
