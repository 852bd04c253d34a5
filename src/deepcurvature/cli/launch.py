"""The command line under ``torchrun``: the process group, rank 0's role, failures of any rank.

When ``torchrun`` starts the command (``WORLD_SIZE`` > 1 in the environment, with ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), :func:`process_group` initialises the
default process group from those variables: ``nccl`` when the run uses CUDA (each process on
``cuda:LOCAL_RANK``), ``gloo`` on the CPU, with a timeout (``DEEPCURVATURE_DIST_TIMEOUT``
seconds, default :data:`DEFAULT_TIMEOUT`) so that a rank that died or hangs never blocks the
others for ever. It is destroyed when the command ends. Without those variables nothing here runs.

Only rank 0 prints and writes: it claims the output folder and broadcasts the path it chose
(:func:`claim_on_rank0`); the other ranks' standard output goes to ``os.devnull``, their
progress bars and warnings are off (every rank computes the same numbers), and only their
error lines reach standard error.

A failure on any rank becomes one line on every rank (:func:`failure_lines`): the rank that
failed prints its error naming itself (``rank 1 of 2: ...``) and posts it in the process group's
key-value store; a rank that stops because of it (a collective that lost its peer or timed out,
or ``torchrun`` terminating it) prints ``rank 0 of 2 stopped: rank 1 failed: ...`` and exits with
the failing rank's status.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT",
    "claim_on_rank0",
    "failure_lines",
    "is_rank0",
    "process_group",
    "torchrun_world",
    "wait_for_all",
]

#: Seconds a collective waits for the other ranks before it fails (``DEEPCURVATURE_DIST_TIMEOUT``).
DEFAULT_TIMEOUT = 600.0
_KEY, _COUNT = "deepcurvature/failure", "deepcurvature/failures"
_WAIT = 10.0  # seconds a stopped rank waits for the failing rank's message


def torchrun_world() -> int:
    """The ``WORLD_SIZE`` that ``torchrun`` set (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _timeout() -> datetime.timedelta:
    text = os.environ.get("DEEPCURVATURE_DIST_TIMEOUT", "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(
            f"DEEPCURVATURE_DIST_TIMEOUT={text!r} is not a number of seconds: e.g. 600"
        ) from None
    if not seconds > 0:
        raise ValueError(f"DEEPCURVATURE_DIST_TIMEOUT must be positive, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def _uses_cuda(args: argparse.Namespace) -> bool:
    import torch

    device = getattr(args, "device", None)
    if device is None:
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


@contextmanager
def process_group(args: argparse.Namespace) -> Iterator[bool]:
    """Initialise the default process group under ``torchrun`` (yields whether it did).

    On CUDA each process uses ``cuda:LOCAL_RANK`` (``--device cuda`` becomes that device) and the
    backend is ``nccl``; on the CPU it is ``gloo``. Rank > 0 prints nothing on standard output.
    """
    import torch
    import torch.distributed as dist

    if torchrun_world() <= 1 or dist.is_initialized():
        yield False
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = _uses_cuda(args)
    if cuda:
        device = getattr(args, "device", None)
        if device not in (None, "cuda") and torch.device(device).index != local:
            raise ValueError(
                f"--device {device} under torchrun: every process uses cuda:LOCAL_RANK (this one "
                f"cuda:{local}); pass --device cuda or leave it out (choose the GPUs with "
                "CUDA_VISIBLE_DEVICES)"
            )
        torch.cuda.set_device(local)
        if hasattr(args, "device"):
            args.device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=_timeout())
    stdout = sys.stdout
    quiet = None
    if dist.get_rank() != 0:  # rank 0 speaks for all: progress, tables, warnings
        if hasattr(args, "quiet"):
            args.quiet = True
        warnings.filterwarnings("ignore")
        quiet = open(os.devnull, "w")
        sys.stdout = quiet
    try:
        yield True
    finally:
        sys.stdout = stdout
        if quiet is not None:
            quiet.close()
        if not _broken:  # a broken group is left to the process's exit (leave_if_broken)
            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - a broken group: nothing left to release
                pass


#: whether this rank's process group failed (a collective timed out, a peer was lost)
_broken = False


def leave_if_broken(status: int) -> None:
    """End the process now with ``status`` when its process group is broken.

    A group whose collective timed out or lost a peer is in an undefined state: tearing it
    down (``destroy_process_group``, or gloo's destructors at the interpreter's exit) can abort
    the process (SIGABRT, "terminate called without an active exception") after its one line.
    The rank's files are settled by then (written atomically, its partial ones removed).
    """
    if not _broken:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover - a closed stream
            pass
    os._exit(status)


def wait_for_all() -> None:
    """In a process group: return once every rank has finished its command (a barrier).

    A rank that failed after the others finished (rank 0 writing its files) then stops them
    with its error instead of leaving them to exit successfully.
    """
    import torch.distributed as dist

    from ..operators.distributed import DistributedError

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    except Exception as exc:
        raise DistributedError(
            f"rank {dist.get_rank()} finished but another rank did not (see its error): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def is_rank0() -> bool:
    """Whether this process writes: outside a process group, or rank 0 of one."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def claim_on_rank0(claim: Callable[[], Any], outputs: Any) -> Any:
    """Run ``claim()`` (an :class:`~deepcurvature.io.OutputFolder` claim) on rank 0 only.

    Rank 0 broadcasts the path it claimed; the other ranks return
    :meth:`~deepcurvature.io.OutputFolder.follow` of it. When rank 0's claim fails, every other
    rank raises a :class:`~deepcurvature.operators.DistributedError` naming it.
    """
    import torch.distributed as dist

    from ..io.outputs import OutputFolder
    from ..operators.distributed import DistributedError

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return claim()
    message: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            folder = claim()
        except BaseException as exc:
            message = [("error", f"{type(exc).__name__}: {exc}")]
            dist.broadcast_object_list(message, src=0)
            raise
        message = [("ok", str(folder.path))]
        dist.broadcast_object_list(message, src=0)
        return folder
    try:
        dist.broadcast_object_list(message, src=0)
    except Exception as exc:
        raise DistributedError(
            f"rank {dist.get_rank()} did not hear from rank 0 about the output folder (rank 0 "
            f"probably failed; see its error): {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from exc
    kind, text = message[0]
    if kind == "ok":
        return OutputFolder.follow(text, outputs)
    raise DistributedError(f"rank 0 could not make the output folder: {text}")


def _store() -> Any:
    try:
        import torch.distributed as dist

        return dist.distributed_c10d._get_default_store()
    except Exception:  # no group, or a torch without it
        return None


def failure_lines(line: str, status: int, exc: BaseException) -> tuple[str, int]:
    """The line (and exit status) this rank prints for ``exc`` in a process group.

    ``line`` is the usual ``deepcurvature CMD: error: TEXT``; the rank is inserted after
    ``error:``. A rank stopped by another rank's failure reports that failure instead.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return line, status
    try:  # this rank is stopping: torchrun's SIGTERM must not cut its one line short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # pragma: no cover - not the main thread
        pass
    rank, world = dist.get_rank(), dist.get_world_size()
    head, sep, text = line.partition(": error: ")
    if not sep:  # an interrupt line
        head, sep, text = line.partition(": ")
    global _broken
    _broken = _is_consequence(exc)
    store = _store()
    if _broken and store is not None:
        try:
            _poll(store, _KEY, _WAIT)
            other, other_status, other_text = store.get(_KEY).decode().split("\t", 2)
            if int(other) != rank:
                return (
                    f"{head}: error: rank {rank} of {world} stopped: rank {other} failed: "
                    f"{other_text}",
                    int(other_status),
                )
        except Exception:  # no message in time: report this rank's own error
            pass
    elif store is not None:
        try:
            if store.add(_COUNT, 1) == 1:
                store.set(_KEY, f"{rank}\t{status}\t{text}")
        except Exception:  # the store is gone (its host exited)
            pass
    return f"{head}{sep}rank {rank} of {world}: {text}", status


def _poll(store: Any, key: str, seconds: float) -> None:
    """Wait until ``store`` holds ``key`` (``TimeoutError`` after ``seconds``).

    Polled: the store's own ``wait`` prints two C++ warnings when it times out, which would
    break the rank's one line.
    """
    deadline = time.monotonic() + seconds
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {key} in {seconds} s")
        time.sleep(0.05)


def _is_consequence(exc: BaseException) -> bool:
    """Whether ``exc`` is how another rank's failure shows here (lost peer, timeout, SIGTERM)."""
    from ..operators.distributed import DistributedError
    from .failures import Terminated, interruption

    if isinstance(exc, DistributedError) or isinstance(interruption(exc), Terminated):
        return True  # torchrun's SIGTERM, also where it surfaced as another error
    try:
        from torch.distributed import DistBackendError

        if isinstance(exc, DistBackendError):
            return True
    except ImportError:  # pragma: no cover - older torch
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        w in text for w in ("gloo", "connection closed", "connection reset", "nccl", "timed out")
    )
