"""A restricted unpickler for the CIFAR "python version" files.

Those files are pickles (written by Python 2 with protocol 2) of dicts holding lists, strings and
one numpy ``uint8`` array. Unpickling runs code named by the file, so an ordinary ``pickle.load``
of a downloaded file can execute anything. :func:`safe_load_pickle` only resolves the handful of
globals such files need (numpy array reconstruction, dtypes without Python objects, and the latin-1
byte-string encoder used by protocol 2) and refuses everything else. It runs the pure-Python
unpickler so that the BUILD opcode (``obj.__setstate__(state)``) can be checked too: it is allowed
on numpy arrays and dtypes only, and a dtype's state (which can set any of its flags, "holds Python
objects" among them) is tried on a copy and checked before it is applied.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from ..io.errors import read_failure, unreadable_file

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


def _check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if it is a plain numpy dtype (no Python objects, fields or sub-arrays)."""
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"refusing {type(dtype).__name__} where a numpy dtype belongs")
    if dtype.hasobject:
        raise UnsafePickleError("refusing a numpy dtype holding Python objects")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"refusing the structured numpy dtype {dtype}")
    clean = np.dtype(dtype.str)
    if dtype.flags != clean.flags or dtype.itemsize != clean.itemsize or dtype != clean:
        raise UnsafePickleError(
            f"refusing a numpy dtype {dtype} whose pickled state changes its flags or size"
        )
    return dtype


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refusing a numpy dtype built from a {type(spec).__name__}")
    return _check_dtype(np.dtype(spec, align, copy))


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only :func:`_safe_reconstruct` accepts it."""


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NdarrayType:
        raise UnsafePickleError(f"refusing to reconstruct an array of type {subtype!r}")
    # ``dtype`` here is a placeholder (b"b"); the real dtype arrives through the checked
    # numpy.dtype global in the array's state.
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype)


def _safe_scalar(dtype: np.dtype, data: Any = None) -> Any:
    return _numpy_multiarray().scalar(_check_dtype(dtype), data)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("_codecs", "encode"): _safe_encode,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
}


def _build_dtype(dtype: np.dtype, state: Any) -> None:
    """Apply a pickled dtype state, checking it on a fresh copy first.

    The state can set any flag of the dtype (``hasobject`` among them), and arrays made earlier
    in the same pickle may already use this dtype object: the state is tried on a copy and
    checked before the dtype itself is touched, and the result is checked again.
    """
    probe = np.dtype(dtype.str, copy=True)
    probe.__setstate__(state)
    _check_dtype(probe)
    dtype.__setstate__(state)
    _check_dtype(dtype)


def _build_array(array: np.ndarray, state: Any) -> None:
    if not isinstance(state, tuple) or not any(isinstance(x, np.dtype) for x in state):
        raise UnsafePickleError("refusing an array state without its numpy dtype")
    for item in state:
        if isinstance(item, np.dtype):
            _check_dtype(item)
    array.__setstate__(state)
    _check_dtype(array.dtype)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its BUILD opcode can be checked) with a closed set of globals.

    BUILD (``obj.__setstate__(state)``) is allowed on numpy dtypes and arrays only, and checked.
    """

    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)

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

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _build_array(inst, state)
        elif isinstance(inst, np.dtype):
            _build_dtype(inst, state)
        else:
            raise UnsafePickleError(
                f"refusing to set the state of a {type(inst).__name__} (only numpy dtypes and "
                "arrays have one in a data file)"
            )

    dispatch[pickle.BUILD[0]] = load_build


def _load(file: BinaryIO, source: str, encoding: str) -> Any:
    try:
        return _RestrictedUnpickler(file, source=source, encoding=encoding).load()
    except UnsafePickleError as exc:
        if str(exc).startswith(source):
            raise
        raise UnsafePickleError(
            f"{source}: {exc}. The file is not a genuine CIFAR batch (or was tampered with); "
            "delete it and download the data set again."
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        reason = (
            "the data ends too early"
            if isinstance(exc, EOFError) or "truncated" in str(exc)
            else read_failure(exc).reason
        )
        raise ValueError(
            f"{source} is not a valid pickle file ({reason}): it is truncated or corrupt; delete "
            "it and download the data set again"
        ) from None


def safe_load_pickle(
    source: str | os.PathLike | bytes | BinaryIO, *, encoding: str = "latin1"
) -> Any:
    """Unpickle a CIFAR-style file allowing only builtins and numpy array reconstruction.

    Numpy dtypes must be plain (no Python objects, fields or sub-arrays), also after their
    pickled state (which can set any flag) is applied: it is checked on a copy first.

    Args:
        source: a path, the raw bytes, or a binary file object.
        encoding: how Python 2 ``str`` objects are decoded ("latin1" keeps numpy data intact).

    Returns:
        The unpickled object (dicts, lists, strings, numbers, numpy arrays).

    Raises:
        UnsafePickleError: the pickle references any other global (e.g. ``os.system``), or a
            numpy dtype that is not plain, or sets the state of any other object.
        ValueError: the data is not a valid pickle (truncated or corrupt); one line naming it.
        FileNotFoundError: no such file.
    """
    if isinstance(source, (bytes, bytearray)):
        return _load(io.BytesIO(source), "pickle data", encoding)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            raw = path.read_bytes()  # lengths in the data then never allocate beyond the file
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise unreadable_file(path, "data file", exc) from None
        return _load(io.BytesIO(raw), str(path), encoding)
    return _load(source, "pickle stream", encoding)
