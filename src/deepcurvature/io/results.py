"""Result files: arrays in ``NAME.npz`` and metadata in ``NAME.json``, both written atomically."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text
from .errors import invalid_file, read_failure, unreadable_file

__all__ = [
    "RESULT_FILE",
    "json_default",
    "load_npz_json",
    "npz_names",
    "read_json",
    "read_npz",
    "result_paths",
    "save_npz_json",
    "stored_path",
]

#: What a result file is called in messages.
RESULT_FILE = "deepcurvature result file"
_FIX = (
    "compute it again (an interrupted run or copy cuts a file short) or give a file written by "
    "deepcurvature"
)
_FIX_OBJECTS = (
    "deepcurvature never unpickles a result file, which holds only numeric arrays and JSON; "
    "give a file written by deepcurvature"
)


def result_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(npz_path, json_path)`` for ``path`` given with or without ``.npz``/``.json``."""
    p = Path(path)
    if p.suffix in (".npz", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".npz"), p.with_name(p.name + ".json")


def stored_path(path: str | os.PathLike | None) -> str | None:
    """A path as stored in a result file: absolute, so it resolves from any working folder."""
    return None if path is None else str(Path(path).expanduser().absolute())


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


@contextlib.contextmanager
def _open_npz(path: Path, what: str) -> Iterator[Any]:
    """``np.load(path, allow_pickle=False)``; any failure, then or in the block: one line."""
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(path.open("rb"))  # ours to close, whatever numpy does
            magic = fh.read(4)
            fh.seek(0)
        except OSError as exc:
            raise unreadable_file(path, what, exc) from None
        if not magic:
            raise invalid_file(path, what, "the file is empty", _FIX)
        if magic[:2] != b"PK":
            raise invalid_file(path, what, "not a zip archive of numpy arrays", _FIX)
        try:
            with np.load(fh, allow_pickle=False) as data:
                yield data
        except MemoryError:
            raise
        except Exception as exc:
            failure = read_failure(exc)
            fix = _FIX_OBJECTS if failure.objects else _FIX
            raise invalid_file(path, what, failure.reason, fix) from None


def npz_names(path: str | os.PathLike, *, what: str = RESULT_FILE) -> list[str]:
    """The names of the arrays in an ``.npz`` file (its zip directory only is read).

    Raises:
        FileNotFoundError, ValueError: as :func:`read_npz`.
    """
    with _open_npz(Path(path), what) as data:
        return list(data.files)


def read_npz(
    path: str | os.PathLike, keys: Sequence[str] | None = None, *, what: str = RESULT_FILE
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read without ever unpickling (``allow_pickle=False``).

    Args:
        path: the ``.npz`` file.
        keys: read only these arrays (those present); default all.
        what: what the file is, for messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: it is a folder, cannot be read, is empty,
            truncated or not a zip archive of numpy arrays, or holds pickled Python objects.
    """
    path = Path(path)
    with _open_npz(path, what) as data:
        names = data.files if keys is None else [k for k in keys if k in data.files]
        arrays = {k: data[k] for k in names}
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise invalid_file(path, what, f"its member {name!r} is not a numpy array", _FIX)
    return arrays


def read_json(path: str | os.PathLike, *, what: str = "JSON file", fix: str = _FIX) -> Any:
    """Parse a UTF-8 JSON file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: it is a folder, cannot be read, is not UTF-8
            text or not valid JSON (with the line and column).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise unreadable_file(path, what, exc) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise invalid_file(
            path, what, f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at {exc.start}", fix
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise invalid_file(path, what, reason, fix) from None
    except RecursionError:
        raise invalid_file(path, what, "not valid JSON: nested too deeply", fix) from None


def load_npz_json(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load arrays and metadata written by :func:`save_npz_json` (no pickled objects allowed).

    Raises:
        FileNotFoundError: the ``.npz`` file does not exist (the message names it).
        ValueError: either file is damaged or foreign: one line ``"PATH is not a valid
            deepcurvature result file (REASON): FIX"`` (see :func:`read_npz`, :func:`read_json`).
    """
    npz_path, json_path = result_paths(path)
    if not npz_path.exists():
        raise FileNotFoundError(f"no result file at {npz_path}")
    arrays = read_npz(npz_path)
    metadata: dict[str, Any] = {}
    if json_path.exists():
        metadata = read_json(json_path, what=RESULT_FILE)
        if not isinstance(metadata, dict):
            reason = f"its JSON is a {type(metadata).__name__}, not an object"
            raise invalid_file(json_path, RESULT_FILE, reason, _FIX)
    return arrays, metadata
