"""A restricted unpickler for the CIFAR "python version" files.

Those files are pickles (written by Python 2 with protocol 2) of dicts holding lists, strings and
one numpy ``uint8`` array. Unpickling runs code named by the file, so an ordinary ``pickle.load``
of a downloaded file can execute anything. :func:`safe_load_pickle` only resolves the handful of
globals such files need (numpy array reconstruction, dtypes without Python objects, and the latin-1
byte-string encoder used by protocol 2) and refuses everything else.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "safe_load_pickle"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle referenced a global outside the allowed set (it may try to run code)."""


def _numpy_multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _safe_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol 2 stores bytes as _codecs.encode(text, "latin1"); only text codecs are allowed.
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in (
        "latin1",
        "latin-1",
        "iso-8859-1",
        "utf-8",
        "utf8",
    ):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode(encoding, errors)


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise UnsafePickleError("refusing a numpy dtype holding Python objects")
    return dtype


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to reconstruct an array of type {subtype!r}")
    # ``dtype`` here is a placeholder (b"b"); the real dtype arrives through the checked
    # numpy.dtype global in the array's state.
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype)


def _safe_scalar(dtype: np.dtype, data: Any = None) -> Any:
    return _numpy_multiarray().scalar(_safe_dtype(dtype), data)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("_codecs", "encode"): _safe_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(
                f"{self._source} references the global {module}.{name}, which is not allowed: "
                f"a data file should only need {allowed}. The file is not a genuine CIFAR batch "
                "(or was tampered with); delete it and download the data set again."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source} uses persistent ids, which are not allowed")


def safe_load_pickle(
    source: str | os.PathLike | bytes | BinaryIO, *, encoding: str = "latin1"
) -> Any:
    """Unpickle a CIFAR-style file allowing only builtins and numpy array reconstruction.

    Args:
        source: a path, the raw bytes, or a binary file object.
        encoding: how Python 2 ``str`` objects are decoded ("latin1" keeps numpy data intact).

    Returns:
        The unpickled object (dicts, lists, strings, numbers, numpy arrays).

    Raises:
        UnsafePickleError: the pickle references any other global (e.g. ``os.system``).
    """
    if isinstance(source, (bytes, bytearray)):
        return _RestrictedUnpickler(
            io.BytesIO(source), source="pickle data", encoding=encoding
        ).load()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, source=str(path), encoding=encoding).load()
    return _RestrictedUnpickler(source, source="pickle stream", encoding=encoding).load()
