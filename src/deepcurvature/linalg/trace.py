"""Stochastic estimates of the trace and the diagonal of a symmetric operator.

* Hutchinson's estimator (Lemma 1 of the paper, equation 23): ``tr(A) ~ mean_k z_k^T A z_k`` for
  probes with zero mean and unit variance entries; unbiased, with variance at most
  ``(2 + m_4) tr(A^T A)`` (zero for a diagonal matrix and Rademacher probes).
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a third of the budget sketches ``Y = A S``, its
  orthonormal basis ``Q`` captures the top of the spectrum, ``tr(Q^T A Q)`` is computed exactly
  (a second third) and Hutchinson's estimator with the last third estimates the trace of the
  deflated remainder ``(I - QQ^T) A (I - QQ^T)``.
  The remainder probes do not depend on ``Q``: ``(Pz)^T A (Pz)`` is computed from ``A z`` and
  ``A Q`` (``P = I - QQ^T``), so the products ``A z`` share the sketch's ``matmat`` blocks and
  the estimate takes two phases of passes over the data instead of three.
* The diagonal estimator of Bekas, Kokiopoulou & Saad (2007):
  ``diag(A) ~ sum_k z_k * (A z_k) / sum_k z_k * z_k`` (elementwise).

All products go through ``matmat`` in blocks of probes, so one pass over the data serves a block.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..progress import ProgressBar
from .lanczos_state import operator_fingerprint
from .operator import LinearOperator, as_operator
from .probes import PROBE_KINDS, draw_probes, resolve_seed
from .trace_checkpoint import load_trace_checkpoint, save_trace_checkpoint

__all__ = ["DiagonalEstimate", "TraceEstimate", "diagonal", "trace"]

TRACE_METHODS = ("hutchinson", "hutch++")


@dataclass
class TraceEstimate:
    """A stochastic trace estimate.

    Attributes:
        value: the estimate of ``tr(A)``.
        std_error: its standard error, from the sample of quadratic forms (``nan`` with fewer
            than two of them).
        n_matvec: number of probes applied (operator columns, or quadratic forms).
        samples: ``(n,)`` float64 quadratic forms ``z^T A z`` averaged by the estimator; for
            Hutch++ those of the deflated remainder ``(I - QQ^T) A (I - QQ^T)``.
        method: ``"hutchinson"`` or ``"hutch++"``.
        probe: ``"rademacher"`` or ``"gaussian"``.
        seed: the seed of the probes.
        exact_part: Hutch++'s exactly computed ``tr(Q^T A Q)`` (0 for Hutchinson).
        n_passes: number of ``matmat`` (or ``quadratic_forms``) calls: passes over the data for
            a curvature operator.
        route: how Hutchinson's quadratic forms were computed: ``"products"`` (``z^T (A z)``) or
            ``"taylor"`` (the Hessian of a layer chain in Taylor mode, without the products; see
            :mod:`deepcurvature.operators.taylor`); ``"products"`` for Hutch++.
    """

    value: float
    std_error: float
    n_matvec: int
    samples: np.ndarray
    method: str
    probe: str
    seed: int
    exact_part: float = 0.0
    n_passes: int = 0
    route: str = "products"

    def __float__(self) -> float:
        return float(self.value)


@dataclass
class DiagonalEstimate:
    """A stochastic estimate of ``diag(A)``.

    Attributes:
        value: ``(P,)`` estimate of the diagonal, in the operator's dtype and device.
        std_error: ``(P,)`` per-entry standard error (ratio-estimator formula; for Rademacher
            probes the standard error of the mean of ``z * A z``); ``nan`` with one probe.
        n_matvec: number of operator columns applied.
        probe: ``"rademacher"`` or ``"gaussian"``.
        seed: the seed of the probes.
    """

    value: torch.Tensor
    std_error: torch.Tensor
    n_matvec: int
    probe: str
    seed: int


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _prepare(op: Any, probe: str) -> LinearOperator:
    op = as_operator(op)
    if probe not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {probe!r}: use one of {PROBE_KINDS}")
    return op


def _draw(op: LinearOperator, n: int, probe: str, generator: torch.Generator) -> torch.Tensor:
    """``(P, n)`` probes drawn one at a time, so the stream does not depend on the blocking."""
    P = op.shape[0]
    Z = torch.cat([draw_probes(P, 1, kind=probe, generator=generator) for _ in range(n)])
    return Z.T.to(dtype=op.dtype, device=op.device)


def _apply(op: LinearOperator, X: torch.Tensor, what: str) -> torch.Tensor:
    Y = op.matmat(X.contiguous())  # operators may reshape their input with .view
    if not bool(torch.isfinite(Y).all()):
        raise FloatingPointError(
            f"the operator returned a non-finite product ({what}); check the operator "
            "(model, loss, data) for NaN or infinity"
        )
    return Y


def _blocks(n: int, block_size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + block_size)) for a in range(0, n, block_size)]


def _hutchinson_samples(
    op: LinearOperator,
    n: int,
    probe: str,
    generator: torch.Generator,
    block_size: int,
    bar: ProgressBar,
    done: np.ndarray | None = None,
    on_block: Any = None,
) -> np.ndarray:
    """``(n,)`` quadratic forms ``z^T A z``, continuing after the samples ``done`` (resumed).

    ``on_block(samples_so_far)`` is called after every block (to write a checkpoint).
    """
    out = np.empty(n)
    start = 0 if done is None else len(done)
    if start:
        out[:start] = done
    for a, b in _blocks(n, block_size):
        if b <= start:  # blocks of a resumed run keep their boundaries: same probes
            bar.advance()
            continue
        Z = _draw(op, b - a, probe, generator)
        forms = op.quadratic_forms(Z.contiguous())
        if not bool(torch.isfinite(forms).all()):
            raise FloatingPointError(
                "the operator returned a non-finite quadratic form (Hutchinson probes "
                f"{a + 1}-{b}); check the operator (model, loss, data) for NaN or infinity"
            )
        out[a:b] = forms.cpu().numpy()
        bar.advance()
        if on_block is not None:
            on_block(out[:b])
    return out


def _std_error(samples: np.ndarray) -> float:
    if samples.size < 2:
        return math.nan
    return float(np.std(samples, ddof=1) / math.sqrt(samples.size))


def trace(
    op: Any,
    probes: int = 100,
    *,
    method: str = "hutchinson",
    seed: int | None = None,
    probe: str = "rademacher",
    block_size: int = 16,
    checkpoint: str | os.PathLike | None = None,
    verbose: bool = True,
) -> TraceEstimate:
    """Estimate ``tr(A)`` from ``probes`` operator products.

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes, ``(P, P)``.
        probes: the budget of operator products (probe vectors); at least 3 for Hutch++.
        method: ``"hutchinson"`` (Lemma 1: unbiased, variance ``<= (2 + m_4) tr(A^T A)``) or
            ``"hutch++"`` (a third of the budget for the sketch ``A S``, a third for the exact
            ``tr(Q^T A Q)``, the rest for Hutchinson on the deflated remainder; far more accurate
            when the spectrum decays; two phases of ``matmat`` calls).
        seed: seed of the probes (drawn on the CPU); fresh when ``None``, recorded in the result.
        probe: ``"rademacher"`` or ``"gaussian"`` probe entries.
        block_size: probes per ``matmat`` call.
        checkpoint: Hutchinson only: a file where the samples so far and the state of the probe
            stream are written atomically after every block; if it exists, the run resumes from
            it (read with ``torch.load(weights_only=True)``) and gives the bit-identical
            estimate of an uninterrupted run. ``seed=None`` then takes the checkpoint's seed.
        verbose: show a progress bar over blocks of probes.

    Returns:
        A :class:`TraceEstimate` (value, standard error, number of products, samples).

    Raises:
        ValueError: non-positive ``probes``/``block_size``, fewer than 3 probes for Hutch++, an
            unknown ``method`` or ``probe``.
        FloatingPointError: the operator returned a non-finite product (names the probes).
    """
    op = _prepare(op, probe)
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown trace method {method!r}: use one of {TRACE_METHODS}")
    n = _check_count("probes", probes, 3 if method == "hutch++" else 1)
    block_size = _check_count("block_size", block_size, 1)
    if checkpoint is not None and method != "hutchinson":
        raise ValueError(f"checkpoint= is supported for method='hutchinson' only, not {method!r}")
    state = None
    fingerprint = operator_fingerprint(op) if checkpoint is not None else None
    if checkpoint is not None:
        state = load_trace_checkpoint(
            checkpoint, P=op.shape[0], probes=n, probe=probe, seed=seed, fingerprint=fingerprint
        )
    if state is not None:
        used_seed, block_size = int(state["seed"]), int(state["block_size"])
        generator = torch.Generator()
        generator.set_state(state["rng_state"])
    else:
        used_seed = resolve_seed(seed)
        generator = torch.Generator().manual_seed(used_seed)

    if method == "hutchinson":
        on_block = None
        if checkpoint is not None:

            def on_block(done: np.ndarray) -> None:
                save_trace_checkpoint(
                    checkpoint,
                    P=op.shape[0],
                    probes=n,
                    probe=probe,
                    seed=used_seed,
                    block_size=block_size,
                    samples=done,
                    generator=generator,
                    fingerprint=fingerprint,
                )

        done = state["samples"].numpy() if state is not None else None
        with ProgressBar(len(_blocks(n, block_size)), "trace (Hutchinson)", verbose) as bar:
            samples = _hutchinson_samples(
                op, n, probe, generator, block_size, bar, done=done, on_block=on_block
            )
        return TraceEstimate(
            value=float(samples.mean()),
            std_error=_std_error(samples),
            n_matvec=n,
            samples=samples,
            method=method,
            probe=probe,
            seed=used_seed,
            n_passes=len(_blocks(n, block_size)),
            route=op.quadratic_route,
        )
    return _hutchpp(op, n, probe, generator, block_size, used_seed, verbose)


def _hutchpp(
    op: LinearOperator,
    n: int,
    probe: str,
    generator: torch.Generator,
    block_size: int,
    seed: int,
    verbose: bool,
) -> TraceEstimate:
    """Hutch++ in two phases over the data: ``[A S, A Z]`` shared, then ``A Q``.

    ``S`` ``(P, n // 3)`` and ``Z`` ``(P, n - 2 (n // 3))`` are drawn in that order; ``Q =
    orth(A S)`` ``(P, q)``, ``M = Q^T A Q``. The samples ``(P z)^T A (P z)`` with ``P = I - QQ^T``
    are computed from ``A z`` and ``A Q`` as ``z^T A z - 2 w^T (AQ)^T z + w^T M w``,
    ``w = Q^T z``, so the probes do not wait for ``Q`` and share the sketch's ``matmat`` blocks.
    """
    n_sketch = n // 3
    n_rest = n - 2 * n_sketch
    S = _draw(op, n_sketch, probe, generator)
    Z = _draw(op, n_rest, probe, generator)
    X = torch.cat([S, Z], dim=1)  # (P, n_sketch + n_rest)
    first = _blocks(X.shape[1], block_size)
    with ProgressBar(
        len(first) + len(_blocks(n_sketch, block_size)), "trace (Hutch++)", verbose
    ) as bar:
        AX = []
        for a, b in first:
            AX.append(_apply(op, X[:, a:b], f"Hutch++ sketch and probes {a + 1}-{b}"))
            bar.advance()
        AX = torch.cat(AX, dim=1)
        Y, AZ = AX[:, :n_sketch], AX[:, n_sketch:]
        Q = torch.linalg.qr(Y.double())[0].to(op.dtype)  # (P, q), q = min(n_sketch, P)
        second = _blocks(Q.shape[1], block_size)
        AQ = []
        for a, b in second:
            AQ.append(_apply(op, Q[:, a:b], f"Hutch++ exact part {a + 1}-{b}"))
            bar.advance()
        AQ = torch.cat(AQ, dim=1).double()
    Qd, Zd = Q.double(), Z.double()
    M = Qd.T @ AQ
    M = (M + M.T) / 2  # (q, q)
    W = Qd.T @ Zd  # (q, n_rest)
    zAz = (Zd * AZ.double()).sum(dim=0)
    cross = (W * (AQ.T @ Zd)).sum(dim=0)  # w^T (AQ)^T z = z^T A Q Q^T z
    samples = (zAz - 2 * cross + (W * (M @ W)).sum(dim=0)).cpu().numpy()
    exact = float(torch.trace(M))
    return TraceEstimate(
        value=exact + float(samples.mean()),
        std_error=_std_error(samples),
        n_matvec=X.shape[1] + Q.shape[1],
        samples=samples,
        method="hutch++",
        probe=probe,
        seed=seed,
        exact_part=exact,
        n_passes=len(first) + len(second),
    )


def diagonal(
    op: Any,
    probes: int = 100,
    *,
    seed: int | None = None,
    probe: str = "rademacher",
    block_size: int = 16,
    verbose: bool = True,
) -> DiagonalEstimate:
    """Estimate ``diag(A)`` as ``sum_k z_k * (A z_k) / sum_k z_k * z_k`` (Bekas et al. 2007).

    Exact for a diagonal matrix with Rademacher probes; otherwise unbiased for Rademacher probes
    (ratio estimator for Gaussian ones), with variance ``sum_{j != i} A_ij^2 / n`` per entry.

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes, ``(P, P)``.
        probes: number of probe vectors ``n`` (operator products).
        seed: seed of the probes (drawn on the CPU); fresh when ``None``, recorded.
        probe: ``"rademacher"`` or ``"gaussian"`` probe entries.
        block_size: probes per ``matmat`` call.
        verbose: show a progress bar over blocks of probes.

    Returns:
        A :class:`DiagonalEstimate`: value ``(P,)`` and per-entry standard error ``(P,)``.

    Raises:
        ValueError: non-positive ``probes``/``block_size`` or an unknown ``probe``.
        FloatingPointError: the operator returned a non-finite product (names the probes).
    """
    op = _prepare(op, probe)
    n = _check_count("probes", probes, 1)
    block_size = _check_count("block_size", block_size, 1)
    used_seed = resolve_seed(seed)
    generator = torch.Generator().manual_seed(used_seed)
    P = op.shape[0]
    dev = op.device
    # sums of a = x - R0 y (x = z * Az, y = z * z) around a pilot ratio R0, for a stable variance
    shift = sum_a = sum_a2 = sum_ay = None
    sum_y = torch.zeros(P, dtype=torch.float64, device=dev)
    sum_y2 = torch.zeros(P, dtype=torch.float64, device=dev)
    with ProgressBar(len(_blocks(n, block_size)), "diagonal", verbose) as bar:
        for a, b in _blocks(n, block_size):
            Z = _draw(op, b - a, probe, generator)
            AZ = _apply(op, Z, f"diagonal probes {a + 1}-{b}")
            x = Z.double() * AZ.double()
            y = Z.double() * Z.double()
            if shift is None:
                shift = x.sum(dim=1) / y.sum(dim=1)
                sum_a = torch.zeros(P, dtype=torch.float64, device=dev)
                sum_a2 = torch.zeros_like(sum_a)
                sum_ay = torch.zeros_like(sum_a)
            d = x - shift[:, None] * y
            sum_a += d.sum(dim=1)
            sum_a2 += (d * d).sum(dim=1)
            sum_ay += (d * y).sum(dim=1)
            sum_y += y.sum(dim=1)
            sum_y2 += (y * y).sum(dim=1)
            bar.advance()
    delta = sum_a / sum_y  # R - R0
    value = shift + delta
    if n >= 2:
        sse = (sum_a2 - 2 * delta * sum_ay + delta**2 * sum_y2).clamp_min(0.0)
        mean_y = sum_y / n
        std_error = torch.sqrt(sse / (n * (n - 1))) / mean_y
    else:
        std_error = torch.full((P,), math.nan, dtype=torch.float64, device=dev)
    return DiagonalEstimate(
        value=value.to(op.dtype),
        std_error=std_error.to(op.dtype),
        n_matvec=n,
        probe=probe,
        seed=used_seed,
    )
