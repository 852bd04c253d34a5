"""One-line reasons why a file could not be read, without other libraries' unsafe advice.

``torch.load`` and ``numpy.load`` explain a refused file with several lines of advice to load it
*unsafely* (``weights_only=False``, ``allow_pickle=True``, ``add_safe_globals``), which would run
code from a possibly hostile file. :func:`read_failure` turns any exception raised while reading a
file into one short line that keeps the diagnosis (truncated, not a zip archive, which Python
global a pickle names...) and drops that advice; :func:`invalid_file` and :func:`unreadable_file`
build the ``ValueError`` / ``FileNotFoundError`` raised by the loaders, each naming the file, what
is wrong and what to do.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

__all__ = [
    "ReadFailure",
    "describe_error",
    "escape_surrogates",
    "invalid_file",
    "one_line",
    "read_failure",
    "unreadable_file",
    "without_unsafe_advice",
]

#: Longest reason quoted from another library's message.
MAX_REASON = 200

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: Words of advice to load a file unsafely: a clause holding one is dropped.
_UNSAFE = re.compile(
    r"weights_only|allow_pickle|unsafe|WeightsUnpickler|safe_globals|pickle\.load|trust",
    re.IGNORECASE,
)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OBJECT_ARRAYS = re.compile(r"Object arrays cannot be loaded|pickled \(object\) data", re.I)
_CLAUSES = re.compile(r"(?<=[.;:])\s+|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")


class ReadFailure(NamedTuple):
    """Why a file could not be read: a one-line ``reason``; ``objects``: it holds pickles."""

    reason: str
    objects: bool


def one_line(text: str) -> str:
    """``text`` on one line: ANSI escapes removed, whitespace runs (newlines too) made one space."""
    return " ".join(_ANSI.sub("", text).split())


def escape_surrogates(text: str) -> str:
    r"""Show undecodable bytes of a file name (``surrogateescape``) as ``\xff``; never raises.

    Names read from a folder that are not valid UTF-8 hold lone surrogates, which cannot be
    written to a UTF-8 file or terminal; they are replaced by the escaped byte (``\udcff`` ->
    ``\xff``), other lone surrogates by ``\udxxx``.
    """

    def repl(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _SURROGATE.sub(repl, text)


def without_unsafe_advice(text: str) -> str:
    """The clauses of ``text`` before the first one that advises unsafe loading."""
    kept = []
    for clause in _CLAUSES.split(text):
        if _UNSAFE.search(clause):
            break
        kept.append(clause)
    return " ".join(kept).rstrip(" .:;,(")


def read_failure(exc: BaseException) -> ReadFailure:
    """One line saying why reading a file failed with ``exc`` (no advice to load it unsafely)."""
    text = _ANSI.sub("", str(exc))
    hit = _GLOBAL.search(text)
    if hit is not None:
        return ReadFailure(f"it holds pickled Python objects ({hit.group(1)})", True)
    if _OBJECT_ARRAYS.search(text):
        return ReadFailure("it holds pickled Python objects (arrays of objects)", True)
    if "WeightsUnpickler error:" in text:  # torch's restricted unpickler met something else
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n", 1)[0]
        reason = f"unreadable pickle data ({one_line(detail)})"
    else:
        reason = without_unsafe_advice(one_line(text).split(". ", 1)[0])
        if not isinstance(exc, ValueError | RuntimeError):
            name = type(exc).__name__
            reason = f"{name}: {reason}" if reason else name
    reason = without_unsafe_advice(reason) or type(exc).__name__
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3].rstrip() + "..."
    return ReadFailure(reason, False)


def describe_error(exc: BaseException) -> str:
    """``exc``'s message on one line without unsafe advice (pickled objects named as such)."""
    failure = read_failure(exc)
    if failure.objects:
        return failure.reason
    return without_unsafe_advice(one_line(str(exc))) or failure.reason


def invalid_file(path: str | os.PathLike, what: str, reason: str, fix: str) -> ValueError:
    """``ValueError("PATH is not a valid WHAT (REASON): FIX")`` on one line."""
    return ValueError(one_line(f"{path} is not a valid {what} ({reason}): {fix}"))


def unreadable_file(
    path: str | os.PathLike, what: str, exc: OSError
) -> ValueError | FileNotFoundError:
    """The error for an ``OSError`` met while opening ``path`` (a ``WHAT``), on one line.

    Returns ``FileNotFoundError`` for a missing file, else ``ValueError`` (a folder, no
    permission, an I/O error...), each naming the file and the fix.
    """
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"no {what} at {path}: check the path")
    if isinstance(exc, IsADirectoryError):
        return ValueError(f"{path} is a folder, not a {what}: give the file itself")
    if isinstance(exc, PermissionError):
        return ValueError(
            f"{path} cannot be read (permission denied): fix its permissions or give another {what}"
        )
    why = exc.strerror or read_failure(exc).reason
    return ValueError(one_line(f"{path} cannot be read ({why}): check the file and the disk"))
