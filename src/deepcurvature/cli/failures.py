"""How the command line reports a failure: one line naming the problem and the fix.

Every exception a user can cause (bad options, bad or hostile files, full or read-only disks,
diverged training, interrupts) becomes one line on stderr and a non-zero exit status:

* 2: bad input (options, files, paths, models, data sets): :class:`CommandError`,
  ``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``, ``FileExistsError``,
  ``NotADirectoryError``, ``IsADirectoryError``;
* 1: the run failed (file-system errors, diverged training, non-finite curvature, out of memory,
  an error inside torch) and anything unexpected (reported as an internal error);
* 130 / 143: interrupted by SIGINT / SIGTERM (this process's partial files are removed).

``--debug`` (or ``DEEPCURVATURE_DEBUG=1``) prints the traceback as well.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import warnings
from types import FrameType
from typing import Any

from .errors import CommandError

__all__ = [
    "Terminated",
    "cli_wording",
    "exit_status",
    "failure_line",
    "install_signal_handlers",
    "install_warning_format",
    "interruption",
]

#: Library messages name API arguments; the command line says which option sets them. Names in
#: ``_OPTIONS`` are replaced where a message uses them as arguments (``name=`` or ``name must``).
_OPTIONS_ALL = {
    "overwrite": "--overwrite",
    "resume": "--resume",
    "device": "--device",
    "batch_size": "--batch-size",
    "num_subsamples": "--subsample",
    "subsample": "--subsample",
    "subsample_seed": "--subsample-seed",
    "params": "--params",
    "checkpoint_path": "--checkpoint",
    "model_kwargs": "--model-kwargs",
    "download": "--download",
    "data_path": "--data-path",
}
_OPTIONS = {
    "train": {
        "epochs": "--epochs",
        "eval_freq": "--eval-freq",
        "save_freq": "--save-freq",
        "swa_start": "--swa-start",
        "swa_lr": "--swa-lr",
        "swa_c_epochs": "--swa-c-epochs",
        "lr": "--lr",
        "momentum": "--momentum",
        "weight_decay": "--weight-decay",
        "optimizer": "--optimizer",
        "optimizer_kwargs": "--optimizer-kwargs",
        "schedule_kwargs": "--schedule-kwargs",
        "data_kwargs": "--data-kwargs",
        "num_workers": "--num-workers",
        "seed": "--seed",
    },
    "spectrum": {
        "lanczos_iters": "--steps",
        "steps": "--steps",
        "probes": "--probes",
        "epochs": "--train-epochs",
        "save_eigvec": "--save-eigvec",
        "basis": "--basis",
        "basis_dir": "--basis-dir",
        "lanczos_state_path": "--save-state-every",
        "lanczos_state_every": "--save-state-every",
    },
    "stats": {"probes": "--probes", "num_batches": "--num-batches", "epochs": "--train-epochs"},
    "landscape": {"n_points": "--n-points", "dist": "--dist", "spectrum_path": "--spectrum"},
    "demo": {"steps": "--steps", "sizes": "--sizes", "seed": "--seed"},
    "plot": {"dpi": "--dpi"},
    "report": {"dpi": "--dpi"},
    "batch-lr": {"batches_per_size": "--batches-per-size", "epochs": "--train-epochs"},
    "local-stats": {"window": "--window", "trim": "--trim"},
    "density": {"n_moments": "--moments", "dpi": "--dpi"},
}


def cli_wording(command: str, text: str) -> str:
    """Replace API argument names in ``text`` by the options of ``command`` that set them."""
    text = re.sub(r"\bresume=<checkpoint>", "--resume CHECKPOINT", text)
    if command == "spectrum":  # the operator's cache values are --cache's choices
        for value, choice in (("'forward'", "forward"), ("True", "data"), ("False", "none")):
            text = text.replace(f"cache={value}", f"--cache {choice}")
    names = {**_OPTIONS_ALL, **_OPTIONS.get(command, {})}
    names.setdefault("swa", "--swa")
    for flag_name in ("overwrite", "save_eigvec", "download", "swa"):
        if flag_name in names:
            text = re.sub(rf"(?<![-\w.]){flag_name}=True\b", names[flag_name], text)
    for name, flag in sorted(names.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"(?<![-\w.]){name}=(?!=)", f"{flag} ", text)
        text = re.sub(rf"(?<![-\w.]){name}(?= must| [<>]=? )", flag, text)
        if "_" in name:  # a snake_case name is an argument wherever it appears
            text = re.sub(rf"(?<![-\w.'\"]){name}\b", flag, text)  # not in a quoted list
    return text


#: Words of other libraries' advice to load a file unsafely, which must never reach a user of a
#: garbage or hostile file: a message is cut before the clause that holds one.
_UNSAFE_ADVICE = re.compile(r"weights_only|allow_pickle|unsafe|WeightsUnpickler", re.IGNORECASE)
_CLAUSE_END = re.compile(r"(\. |: |; |\n)")


def _without_unsafe_advice(text: str) -> str:
    hit = _UNSAFE_ADVICE.search(text)
    if hit is None:
        return text
    ends = [m.start() for m in _CLAUSE_END.finditer(text, 0, hit.start())]
    kept = text[: ends[-1]] if ends else text[: hit.start()]
    return kept.rstrip(" .:;(,") or "the file is not valid"


_ERRNO_FIX = {
    errno.EACCES: "choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "choose a folder you can write to (or fix its permissions)",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.ENOSPC: "the disk is full: free some space or choose an output folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another output folder",
    errno.EFBIG: "the file is larger than this system allows: choose another output folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: give a file",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ENOENT: "check the path",
    errno.EEXIST: "choose another path",
}


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


#: the SIGTERM this process received (set by its handler), if any
_received: list[Terminated] = []


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    exc = Terminated()
    _received.append(exc)
    raise exc


def interruption(exc: BaseException) -> KeyboardInterrupt | Terminated | None:
    """The interrupt (Ctrl-C, SIGTERM) behind ``exc``, or ``None`` for a failure of its own.

    An interrupt can surface as another exception: raised while a ``with`` block's clean-up or a
    library's error handling runs, it becomes the ``__context__`` of what they raise, or is
    rethrown by C++ code as a ``RuntimeError``. The chain is searched, then the SIGTERM that
    this process's handler saw (:func:`install_signal_handlers`).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt | Terminated):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return _received[-1] if _received else None


def install_signal_handlers() -> None:
    """SIGTERM unwinds like SIGINT, so that a run cleans up its partial files."""
    _received.clear()
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # pragma: no cover - not the main thread (e.g. embedded use)
        pass


def install_warning_format(command: str) -> None:
    """Print warnings as one ``deepcurvature COMMAND: warning: ...`` line each."""

    def show(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        text = cli_wording(command, " ".join(str(message).split()))
        print(f"deepcurvature {command}: warning: {text}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    names = [n for n in (exc.filename, exc.filename2) if n]
    where = f"{names[0]}: " if names else ""
    fix = _ERRNO_FIX.get(exc.errno or -1)
    if isinstance(exc, FileExistsError | FileNotFoundError) and not exc.strerror:
        return str(exc)  # our own messages, which name the file and the fix
    text = f"{where}{what}"
    if fix and exc.errno is not None and what == os.strerror(exc.errno):  # the system's words
        text += f" ({fix})"
    return text


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, MemoryError):
        return (
            f"out of memory{': ' + str(exc) if str(exc) else ''} (lower --probes, --steps or "
            "--batch-size, or use --params to select fewer parameters)"
        )
    if isinstance(exc, OSError):
        return _os_message(exc)
    text = str(exc)
    if isinstance(exc, RuntimeError) and "out of memory" in text.lower():
        return "out of memory (lower --batch-size, --probes or --steps): " + text.split("\n")[0]
    if not text:
        return type(exc).__name__
    return text


def failure_line(command: str, exc: BaseException) -> str:
    """The one line printed for ``exc``: problem and fix, in the command line's words."""
    stop = interruption(exc)
    if stop is not None:
        how = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        note = getattr(stop, "cli_note", None)  # what a resumable run kept, and how to resume
        if note:
            return f"deepcurvature {command}: interrupted ({how}); {note}"
        return f"deepcurvature {command}: interrupted ({how}); partial files of this run removed"
    text = _message(exc)
    text = _without_unsafe_advice(text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    text = "; ".join(line for line in lines if line) or type(exc).__name__
    text = cli_wording(command, text)
    expected = (CommandError, ValueError, TypeError, KeyError, OSError, ArithmeticError)
    if not isinstance(exc, (*expected, MemoryError, RuntimeError)):
        text = (
            f"internal error ({type(exc).__name__}): {text}. Run again with --debug for the "
            "traceback and report it"
        )
    return f"deepcurvature {command}: error: {text}"


def exit_status(exc: BaseException) -> int:
    """2 for bad input, 1 for a failed run, 130/143 for SIGINT/SIGTERM (:func:`interruption`)."""
    stop = interruption(exc)
    if isinstance(stop, KeyboardInterrupt):
        return 130
    if isinstance(stop, Terminated):
        return 143
    if isinstance(exc, ArithmeticError):  # diverged training, non-finite curvature
        return 1
    bad_input = (
        CommandError,
        ValueError,
        TypeError,
        KeyError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
    )
    if isinstance(exc, bad_input):
        return 2
    return 1
