"""Data-parallel curvature over ``torch.distributed``: the process-group glue of the operators.

Inside an initialised process group (``torchrun``, or ``torch.distributed.init_process_group``;
gloo on the CPU, nccl on CUDA) every rank holds a replica of the model and its own shard of the
data. A curvature product is the sample-weighted sum of every rank's partial product over its
shard, so each pass ends in exactly one collective: :func:`all_reduce_sum`, through which every
collective of the operators goes. Its buffer carries the partial sums *and* a small status tail
(:func:`reduce_pass`): per rank its sample count, a failure code and a checksum of the vectors it
was given. A rank whose batch raised (or whose partial product is not finite) still joins the
collective, with its failure code set, so that every rank raises one clear error naming it
instead of hanging; the failing rank raises its own original error. A rank that never joins (it
crashed before the collective, or is stuck) turns into a :class:`DistributedError` on the others
when the process group's ``timeout`` expires.

What must be identical on every rank (checked by :func:`compare_replicas`, one all-reduce when an
operator is built): the model's parameters and buffers (load the same checkpoint or set the same
seed), the parameter selection, ``dtype``, ``bn_mode``, ``weight_decay`` and the kind of matrix.
The vectors ``V`` every product receives must be identical too (seed every probe: ``seed=`` of
``lanczos``, ``eigsh``, ``trace``...; without a seed each rank draws its own): their checksum
travels in the product's buffer and a mismatch is an error on every rank. Nothing else is
communicated, so algorithms built on the products (Lanczos, ``eigsh``, ``trace``, ``solve``) run
identically on every rank, because the reduced products are bitwise identical on all of them.

Outside a process group none of this runs: no collective, no extra synchronisation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistributedError",
    "Ranks",
    "all_reduce_sum",
    "check_backend",
    "compare_replicas",
    "current_ranks",
    "local_evaluation",
    "process_group_active",
    "reduce_pass",
    "tensor_checksum",
]

#: failure codes a rank reports in the status tail of a pass
FAILED_ERROR, FAILED_NONFINITE = 1, 2
_DIGIT, _DIGITS = 128, 5  # sample counts as 5 base-128 digits: exact in every float dtype
_TAIL = _DIGITS + 3  # count digits, failure code, two checksums of V

_local = threading.local()


class DistributedError(RuntimeError):
    """An error of the process group as a whole: another rank failed, timed out or disagrees."""


@dataclass(frozen=True)
class Ranks:
    """The process group as the operators see it: this ``rank`` of ``world_size``."""

    rank: int
    world_size: int
    backend: str


def process_group_active() -> bool:
    """Whether a default process group is initialised (and not switched off locally)."""
    if getattr(_local, "off", False):
        return False
    return dist.is_available() and dist.is_initialized()


def current_ranks() -> Ranks | None:
    """The default process group's :class:`Ranks`, or ``None`` outside a process group."""
    if not process_group_active():
        return None
    return Ranks(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


@contextmanager
def local_evaluation() -> Iterator[None]:
    """Operators built inside this context ignore the process group (they evaluate locally).

    For analyses that reduce their own sums (``loss_stats``) and only borrow an operator's
    evaluation machinery.
    """
    previous = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = previous


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (the one collective of the operators) and return it.

    Raises:
        DistributedError: the collective timed out (another rank failed before joining it or is
            stuck) or lost its connection (another rank exited).
    """
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    except Exception as exc:  # gloo/nccl raise RuntimeError or DistBackendError
        rank = dist.get_rank() if dist.is_initialized() else "?"
        text = str(exc)
        if "timed out" in text.lower() or "timeout" in text.lower():
            message = (
                f"rank {rank} timed out waiting for the other ranks: another rank failed or is "
                "stuck; see its error"
            )
        else:
            message = (
                f"rank {rank} lost contact with the other ranks during an all-reduce (another "
                f"rank probably exited after an error; see its error): {text.splitlines()[0]}"
            )
        raise DistributedError(message) from exc
    return tensor


def check_backend(ranks: Ranks, device: torch.device) -> None:
    """Raise if the process group's backend cannot all-reduce tensors on ``device``.

    ``gloo`` serves the CPU (and CUDA), ``nccl`` only CUDA; a combined backend such as
    ``"cpu:gloo,cuda:nccl"`` is taken per device type.
    """
    backend = ranks.backend.lower()
    kind = device.type
    if ":" in backend:  # "cpu:gloo,cuda:nccl"
        pairs = dict(part.split(":", 1) for part in backend.split(",") if ":" in part)
        if kind in pairs:
            return
        supported = sorted(pairs)
    else:
        supported = dist.Backend.backend_capability.get(backend)
        if supported is None or kind in supported:
            return  # an unknown (third-party) backend: trust the user
    fix = "backend='gloo' for CPU tensors" if kind == "cpu" else f"a backend for {kind} tensors"
    raise ValueError(
        f"the process group's backend {ranks.backend!r} cannot all-reduce {kind} tensors "
        f"(it supports {', '.join(supported) or 'no device'}), but the curvature operator "
        f"evaluates on {device}: initialise the process group with {fix} (nccl is for CUDA, gloo "
        "for the CPU), or evaluate on the device the backend serves (e.g. device=f'cuda:"
        "{LOCAL_RANK}')"
    )


_WEIGHTS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _row_weights(rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fixed positional weights ``1 + (i mod 97) / 97``, ``(rows,)``, cached per size."""
    key = (rows, dtype, device)
    w = _WEIGHTS.get(key)
    if w is None:
        if len(_WEIGHTS) >= 4:
            _WEIGHTS.clear()
        w = 1.0 + (torch.arange(rows, device=device) % 97).to(dtype) / 97.0
        _WEIGHTS[key] = w
    return w


def tensor_checksum(t: torch.Tensor) -> tuple[float, float]:
    """Two sums of ``t`` (``(P,)`` or ``(P, k)``) that differ when its entries or their order do.

    ``(sum_ij w_i (j + 1) t_ij, sum_ij t_ij^2)`` with fixed positional weights
    ``w_i = 1 + (i mod 97) / 97``, in ``t``'s dtype (no copy of ``t``). Identical tensors give
    identical sums on identical hardware. One host synchronisation.
    """
    a, b = _checksum(t).double().tolist()
    return a, b


def _checksum(t: torch.Tensor) -> torch.Tensor:
    """:func:`tensor_checksum` as a ``(2,)`` tensor on ``t``'s device (no synchronisation)."""
    flat = t.detach()
    flat = flat.reshape(-1, 1) if flat.ndim < 2 else flat.reshape(flat.shape[0], -1)
    rows, cols = flat.shape
    columns = _row_weights(rows, flat.dtype, flat.device) @ flat  # (k,)
    order = torch.arange(1, cols + 1, device=flat.device).to(flat.dtype)
    return torch.stack([(columns * order).sum(), torch.linalg.vector_norm(flat) ** 2])


def _close(a: float, b: float, rtol: float) -> bool:
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def compare_replicas(
    ranks: Ranks,
    fields: dict[str, float],
    checksums: dict[str, float],
    count: int | None,
    device: torch.device,
) -> list[int]:
    """One all-reduce comparing every rank's replica with rank 0's; the sample counts of the ranks.

    Args:
        ranks: the process group.
        fields: settings that must be equal exactly (numbers: sizes, codes, ``weight_decay``).
        checksums: float64 checksums of the model state (equal to ``1e-10`` relative).
        count: this rank's number of samples (``None``: not counted; ``0``: no data).
        device: where the buffer goes (the operator's device, which the backend serves).

    Returns:
        The sample count of every rank (``-1`` where not counted).

    Raises:
        ValueError: on every rank, when a rank's replica or settings differ from rank 0's, or a
            rank has no samples.
    """
    names = list(fields) + list(checksums)
    values = list(fields.values()) + list(checksums.values())
    m = len(values) + 1
    buf = torch.zeros(ranks.world_size, m, dtype=torch.float64, device=device)
    buf[ranks.rank] = torch.tensor([*values, -1 if count is None else count], dtype=torch.float64)
    rows = all_reduce_sum(buf).tolist()
    ref = rows[0]
    n_exact = len(fields)
    for r, row in enumerate(rows[1:], start=1):
        bad = [
            names[i]
            for i in range(len(values))
            if not (row[i] == ref[i] if i < n_exact else _close(row[i], ref[i], 1e-10))
        ]
        if bad:
            raise ValueError(
                f"model replicas differ across ranks: rank {r} differs from rank 0 in "
                f"{', '.join(bad)}; every rank must hold the same model and settings: "
                "load the same checkpoint (or set the same seed before building the model) on "
                "every rank and pass the same operator arguments"
            )
    counts = [int(row[-1]) for row in rows]
    empty = [r for r, c in enumerate(counts) if c == 0]
    if empty:
        raise ValueError(
            f"rank(s) {', '.join(map(str, empty))} have no samples: every rank needs a non-empty "
            f"shard of the data ({len(counts)} ranks); use fewer processes or a sampler that "
            "gives every rank at least one sample (DistributedSampler does)"
        )
    return counts


def _digits(n: int) -> list[float]:
    out = []
    for _ in range(_DIGITS):
        n, d = divmod(n, _DIGIT)
        out.append(float(d))
    return out


def _number(digits: list[float]) -> int:
    return sum(int(d) * _DIGIT**i for i, d in enumerate(digits))


def reduce_pass(
    ranks: Ranks,
    payload: torch.Tensor | None,
    count: int,
    failure: BaseException | None,
    what: str,
    *,
    vectors: torch.Tensor | None = None,
    like: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Sum a pass's partial result over the ranks with one all-reduce, and agree on its status.

    Args:
        ranks: the process group.
        payload: this rank's partial sum (any shape), or ``None`` if the pass failed.
        count: this rank's number of samples in the pass.
        failure: the exception this rank's pass raised (``FloatingPointError`` for a non-finite
            partial result), or ``None``.
        what: the quantity, for messages (``"hessian product"``).
        vectors: the ``V`` the pass was given; its checksum is compared with rank 0's.
        like: a tensor shaped like the payload (dtype, device), needed when ``payload`` is None.

    Returns:
        ``(total, counts)``: the sum of the payloads (identical on every rank) and every rank's
        sample count.

    Raises:
        the rank's own ``failure``; on the other ranks ``FloatingPointError`` (a non-finite
        partial result) or :class:`DistributedError` naming the failing rank(s); on every rank
        ``FloatingPointError`` when the sum over the ranks overflows and ``DistributedError``
        when the ranks were given different vectors.
    """
    ref = payload if payload is not None else like
    assert ref is not None
    dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float64
    numel = ref.numel()
    code = 0
    if failure is not None:
        code = FAILED_NONFINITE if isinstance(failure, FloatingPointError) else FAILED_ERROR
    status = torch.tensor([*_digits(count), float(code)], dtype=dtype).to(ref.device)
    check = _checksum(vectors).to(dtype) if vectors is not None else status.new_zeros(2)
    head = (
        payload.reshape(-1).to(dtype)
        if payload is not None and failure is None
        else torch.zeros(numel, dtype=dtype, device=ref.device)
    )
    before = status.new_zeros(ranks.rank * _TAIL)  # this rank's slot of the status tail
    after = status.new_zeros((ranks.world_size - ranks.rank - 1) * _TAIL)
    buf = torch.cat([head, before, status, check, after])
    all_reduce_sum(buf)
    total = buf[:numel]
    status = torch.cat([buf[numel:].double(), torch.isfinite(total).all().double().reshape(1)])
    values = status.tolist()  # the one host synchronisation
    finite = values.pop() == 1.0
    rows = [values[r * _TAIL : (r + 1) * _TAIL] for r in range(ranks.world_size)]
    failed = {r: int(row[_DIGITS]) for r, row in enumerate(rows) if row[_DIGITS] != 0}
    if failed:
        if failure is not None:
            failure.add_note(
                f"(raised on rank {ranks.rank} of {ranks.world_size}; the other ranks stop with "
                "an error naming it)"
            )
            raise failure
        names = ", ".join(map(str, sorted(failed)))
        if all(c == FAILED_NONFINITE for c in failed.values()):
            raise FloatingPointError(
                f"the {what} on rank {names} is not finite; see that rank's error for the batch "
                "(every rank stops)"
            )
        raise DistributedError(
            f"rank {names} failed during the {what}; see that rank's error (every rank stops)"
        )
    if vectors is not None:
        rtol = 1e3 * torch.finfo(dtype).eps
        differ = [
            r
            for r, row in enumerate(rows[1:], start=1)
            if not all(_close(row[_DIGITS + 1 + i], rows[0][_DIGITS + 1 + i], rtol) for i in (0, 1))
        ]
        if differ:
            raise DistributedError(
                f"the vectors of the {what} differ across ranks (rank "
                f"{', '.join(map(str, differ))} vs rank 0): every rank must be given the same "
                "vectors; seed the probes identically on every rank (pass seed=... to lanczos, "
                "eigsh, trace, diagonal, spectrum)"
            )
    if not finite:
        raise FloatingPointError(
            f"the {what} summed over the ranks is not finite although every rank's partial sum "
            "is (overflow): evaluate in float64 (dtype=torch.float64)"
        )
    counts = [_number(row[:_DIGITS]) for row in rows]
    return total.view(ref.shape).to(ref.dtype), counts
