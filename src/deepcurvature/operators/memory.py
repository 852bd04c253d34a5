"""How much memory is free on a device, and how much a structure of tensors holds.

Used to refuse, with one clear line, a cache that would not fit (``cache="forward"``) before it
fills the memory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["available_memory", "held_bytes"]


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``; ``None`` when unknown.

    A GPU's free memory (``torch.cuda.mem_get_info``); on the host Linux's ``MemAvailable``
    (free memory plus the page cache that can be dropped), else the free physical pages.
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def held_bytes(obj: Any, exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensor storages reachable from ``obj`` (each storage counted once).

    Follows dataclasses, dicts, lists and tuples; other objects count nothing. The storages of
    ``exclude`` (e.g. the parameters, held anyway) are not counted.
    """
    seen = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in exclude}
    total = 0
    stack = [obj]
    visited: set[int] = set()
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
            continue
        if id(x) in visited:
            continue
        visited.add(id(x))
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            stack.extend(getattr(x, f.name) for f in dataclasses.fields(x))
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total
