"""Scaffolding shared by the tests that run real gloo process groups (``test_distributed*.py``).

Imported as ``from _distributed import ...``: the tests folder is on ``sys.path`` (pytest's
rootdir-relative import), and ``torch.multiprocessing.spawn`` hands ``sys.path`` to the spawned
processes, which unpickle :func:`_entry` from this module and import the worker's own module.
"""

from __future__ import annotations

import datetime
import importlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deepcurvature.operators import distributed as dcdist

DT = torch.float64
N = 11  # samples in all, split unequally over the ranks by each test file
BS = 3
REL = 1e-12


# ------------------------------------------------------------------------------------------------
# models and data (identical on every rank: seeded)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2)
        )
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def setup(kind: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 ``"mlp"`` or ``"cnn"`` (batch norm, perturbed running statistics) and N samples."""
    torch.manual_seed(seed)
    model = (MLP() if kind == "mlp" else CNN()).to(DT)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(N, 4, dtype=DT) if kind == "mlp" else torch.randn(N, 2, 4, 4, dtype=DT)
    y = torch.randint(0, 3, (N,))
    return model, x, y


def to_batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + BS], y[i : i + BS]) for i in range(0, len(y), BS)]


def shard_of(x: torch.Tensor, y: torch.Tensor, sizes: list[int], rank: int) -> list:
    """The batches of ``rank``'s shard when the ranks hold ``sizes`` consecutive samples each."""
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    return to_batches(x[start:stop], y[start:stop])


def close(a, b, rel: float = REL) -> None:
    """``a`` equals ``b`` (tensors or arrays of one shape) to a relative max-norm error ``rel``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-300)
    assert err <= rel, f"relative error {err:.3g} > {rel}"


class Counter:
    """Counts the operators' collective (:func:`all_reduce_sum`) and torch's raw all-reduces."""

    def __init__(self) -> None:
        self.wrapped = self.raw = 0
        inner, raw = dcdist.all_reduce_sum, dist.all_reduce

        def counted(t: torch.Tensor) -> torch.Tensor:
            self.wrapped += 1
            return inner(t)

        def counted_raw(*args, **kwargs):
            self.raw += 1
            return raw(*args, **kwargs)

        dcdist.all_reduce_sum = counted
        dist.all_reduce = counted_raw

    def calls(self) -> tuple[int, int]:
        return self.wrapped, self.raw


class FailsLater:
    """A re-iterable shard whose second pass raises on its second batch."""

    def __init__(self, batches: list) -> None:
        self.batches, self.passes = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.passes += 1
        for i, b in enumerate(self.batches):
            if self.passes > 1 and i == 1:
                raise RuntimeError("corrupt record 7 in shard file")
            yield b


# ------------------------------------------------------------------------------------------------
# process groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int, world: int, port: int, module: str, name: str, tmp: str, pg_timeout: float
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=pg_timeout),
    )
    try:
        getattr(importlib.import_module(module), name)(rank, world, Path(tmp))
    finally:
        dist.destroy_process_group()


def spawn(
    world: int,
    worker: Callable[[int, int, Path], None],
    tmp: Path,
    *,
    pg_timeout: float = 20,
    limit: float = 90,
) -> None:
    """Run ``worker(rank, world, tmp)`` on ``world`` gloo ranks; fail (not hang) after ``limit``.

    ``worker`` is a module-level function of an importable module (a test file): the spawned
    processes import it by module and name.
    """
    ctx = mp.spawn(
        _entry,
        args=(world, _free_port(), worker.__module__, worker.__name__, str(tmp), pg_timeout),
        nprocs=world,
        join=False,
    )
    deadline = time.monotonic() + limit
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            name = worker.__name__
            pytest.fail(f"{name} on {world} ranks did not finish within {limit} s (a hang)")
