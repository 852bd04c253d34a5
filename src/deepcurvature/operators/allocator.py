"""glibc's allocator set up for curvature products on the CPU: freed memory is reused, not unmapped.

A curvature product allocates and frees the same large tensors over and over (every column of
a ``matmat`` walks the gradient's graph again). With glibc's default settings, memory freed at
the top of the heap beyond ``M_TRIM_THRESHOLD`` (it adapts to about twice the largest freed block,
32 MiB for 16 MiB activations) is handed back to the kernel at once, and every later tensor
there is faulted in again page by page. On the CNN of ``benchmarks/hvp.py`` (16 MiB activations)
a 16-column Hessian ``matmat`` took about two million page faults and a quarter of its wall time
in the kernel; with the settings below, a few thousand (``tests/test_allocator.py`` counts the
page faults of a smaller CNN's products).

:func:`tune_cpu_allocator` sets, once per process,

* ``M_MMAP_THRESHOLD`` = 32 MiB (the largest glibc accepts): blocks below it come from the heap,
  which can keep them, instead of private memory maps, which are unmapped when freed;
* ``M_TRIM_THRESHOLD`` = 1 GiB: up to that much free memory at the top of the heap is kept for
  reuse (the process's resident memory stays up to that much above what it uses).

The curvature operators call it before their first pass over data on a CPU device. It does
nothing when the C library is not glibc, when the process was started with glibc's own
settings of these thresholds (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or the same in ``GLIBC_TUNABLES``: the user's choice
stands), or when ``DEEPCURVATURE_TUNE_MALLOC=0`` is set. It changes only how fast memory is
reused, never a result.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

__all__ = [
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "cpu_allocator_status",
    "tune_cpu_allocator",
]

#: bytes: allocations below this come from the heap (glibc's maximum for M_MMAP_THRESHOLD)
MMAP_THRESHOLD = 32 * 2**20
#: bytes of free memory at the top of the heap that glibc keeps instead of returning it
TRIM_THRESHOLD = 2**30
#: environment variable that switches the tuning off ("0", "false", "no", "off")
OPT_OUT = "DEEPCURVATURE_TUNE_MALLOC"

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3

#: glibc's environment settings of the same thresholds: when present, the user's choice stands
_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
_USER_TUNABLES = ("mmap_threshold", "trim_threshold", "top_pad", "mmap_max")

_lock = threading.Lock()
_status: str | None = None  # None: not attempted yet


def _reason_to_skip() -> str | None:
    """Why the allocator is left alone, or ``None`` when it can be tuned."""
    if os.environ.get(OPT_OUT, "").strip().lower() in ("0", "false", "no", "off"):
        return f"switched off by {OPT_OUT}={os.environ[OPT_OUT]}"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    user = [k for k in _USER_SETTINGS if k in os.environ]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    user += [f"GLIBC_TUNABLES ({t})" for t in _USER_TUNABLES if t in tunables]
    if user:
        return "the thresholds are set by the environment: " + ", ".join(user)
    return None


def tune_cpu_allocator() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB, once.

    Process-wide and idempotent; called by the curvature operators before a pass over data on
    the CPU. Returns whether the settings are in effect; :func:`cpu_allocator_status` says why
    not (another C library, the user's own threshold settings or
    ``DEEPCURVATURE_TUNE_MALLOC=0``).
    """
    global _status
    with _lock:
        if _status is None:
            reason = _reason_to_skip()
            if reason is None:
                try:
                    libc = ctypes.CDLL("libc.so.6")
                    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                    ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                except (OSError, AttributeError) as error:
                    reason = f"mallopt is not available: {error}"
                else:
                    reason = None if ok else "mallopt refused the settings"
            _status = "tuned" if reason is None else f"not tuned: {reason}"
        return _status == "tuned"


def cpu_allocator_status() -> str:
    """``"tuned"``, ``"not tuned: <reason>"``, or ``"not attempted"`` (no CPU product yet)."""
    return _status or "not attempted"
