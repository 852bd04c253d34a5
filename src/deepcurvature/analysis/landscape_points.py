"""Evaluating the loss and accuracy at many parameter vectors: the points of a loss landscape.

:class:`PointEvaluator` evaluates the train (and test) loss and accuracy at ``w* + U c`` for many
coefficient rows ``c``. Points share each data pass: every batch is prepared once and evaluated at
up to ``points_per_pass`` points (their parameter copies are held in memory); with
``bn_recompute`` a pass in batch-norm training mode first recomputes the running statistics of
every point.

In a ``torch.distributed`` process group (``torchrun``) every point is evaluated by every rank over
its own shard of the data, and the per-point sums of the points of a pass (loss sums, correct
counts, sample counts) are summed over the ranks with ONE all-reduce per pass (one more per pass
for the recomputed batch-norm statistics): ``5 K`` numbers per data set for ``K`` points,
negligible beside the pass. Every rank then holds the whole landscape, equal to one process's on
the union of the shards (up to the summation order). The alternative, splitting the points over
the ranks and evaluating each over the whole data set, needs the whole data set on every rank and
leaves ranks idle when there are fewer points than ranks; measured with 2 gloo processes on the
CPU it was not faster (21 points of a 95k-parameter CNN on 1024 samples: about 4.0-4.3 s for
both against 7.6-8.5 s in one process; docs/distributed.md). A rank whose pass fails still joins
the all-reduce, so every rank raises; non-finite losses (far from ``w*``) are carried as flags
and stay NaN/inf as in one process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..operators.base import CurvatureOperator
from ..operators.batches import BatchSource
from ..operators.distributed import reduce_pass
from ..operators.losses import prediction_scores
from ..progress import ProgressBar
from .landscape_result import METRICS

__all__ = ["POINTS_MEMORY_BYTES", "PointEvaluator"]

#: Memory for the parameter copies of the points evaluated in one data pass (auto mode).
POINTS_MEMORY_BYTES = 256 * 2**20

Tensors = dict[str, torch.Tensor]


def _is_classification(out: torch.Tensor | None, y: torch.Tensor) -> bool:
    if out is None:
        return False
    return out.ndim == 2 and y.ndim == 1 and not y.is_floating_point()


@contextmanager
def _bn_statistics_mode(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """Batch norm in training mode with a cumulative average (``momentum=None``).

    As ``torch.optim.swa_utils.update_bn``; the module attributes are restored on exit.
    """
    saved = [(m.training, m.momentum) for m in norms]
    try:
        for m in norms:
            m.training = True
            m.momentum = None
        yield
    finally:
        for m, (flag, momentum) in zip(norms, saved, strict=True):
            m.training = flag
            m.momentum = momentum


def _split_finite(sums: torch.Tensor) -> torch.Tensor:
    """``(4, K)``: the finite part of ``sums`` ``(K,)`` and flags for NaN, +inf and -inf."""
    nan, pos, neg = sums.isnan(), sums == float("inf"), sums == float("-inf")
    finite = torch.where(nan | pos | neg, torch.zeros_like(sums), sums)
    return torch.stack([finite, nan.to(sums.dtype), pos.to(sums.dtype), neg.to(sums.dtype)])


def _join_finite(parts: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_split_finite` after the flags were summed over the ranks: ``(K,)``."""
    finite, nan, pos, neg = parts
    out = finite.clone()
    out[pos > 0] = float("inf")
    out[neg > 0] = float("-inf")
    out[(nan > 0) | ((pos > 0) & (neg > 0))] = float("nan")
    return out


class PointEvaluator:
    """Evaluates train/test loss and accuracy at many parameter vectors, sharing data passes.

    Args:
        op: the curvature operator of the training data (its batch source, model, layout,
            evaluation mode and, in a process group, its ``ranks``).
        test_data: test batches (this rank's shard in a process group), or ``None``.
        bn_recompute: whether :meth:`evaluate` may recompute batch-norm statistics.
        points_per_pass: points per data pass (default: as many as fit in
            :data:`POINTS_MEMORY_BYTES` of parameter copies).
        verbose: progress bar (rank 0's only in a process group).
    """

    def __init__(
        self,
        op: CurvatureOperator,
        test_data: Any,
        *,
        bn_recompute: bool,
        points_per_pass: int | None,
        verbose: bool,
    ) -> None:
        self.op = op
        self.ranks = op.ranks
        self.test = (
            BatchSource(test_data, op.device, op.dtype, targets_key=op.source.targets_key)
            if test_data is not None
            else None
        )
        self.bn_recompute = bn_recompute
        self.verbose = verbose and (self.ranks is None or self.ranks.rank == 0)
        self.base, self.fixed = op.functional_state()
        self.w0 = op.layout.flatten(self.base)
        self.norms = [
            (name, m)
            for name, m in op.model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
        ]
        itemsize = torch.empty((), dtype=op.dtype).element_size()
        auto = max(1, POINTS_MEMORY_BYTES // max(1, op.num_params * itemsize))
        self.points_per_pass = int(points_per_pass) if points_per_pass else auto
        self.passes = {"train": 0, "test": 0, "bn_statistics": 0}
        self.classify: bool | None = None
        self.num_test: int | None = None  # test samples (all ranks') once evaluated
        self.all_reduces = 0
        self._statistics_batches = 0

    # -- passes over one rank's data --------------------------------------------------------------
    def _fresh_statistics(self) -> Tensors:
        fresh: Tensors = {}
        for name, _ in self.norms:
            p = f"{name}." if name else ""
            mean, var = self.fixed[p + "running_mean"], self.fixed[p + "running_var"]
            fresh[p + "running_mean"] = torch.zeros_like(mean)
            fresh[p + "running_var"] = torch.ones_like(var)
            key = p + "num_batches_tracked"
            if key in self.fixed:
                fresh[key] = torch.zeros_like(self.fixed[key])
        return fresh

    def _pass(
        self, source: BatchSource, states: list[Tensors], fixeds: list[Tensors], bar: ProgressBar
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(loss sums (K,) float64, correct counts (K,) int64, samples)`` over ``source``."""
        k = len(states)
        device = self.op.device
        loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        n_total = 0
        classify = self.classify
        for batch in source:
            for i in range(k):
                out = self.op.batch_output(states[i], fixeds[i], batch)
                value = self.op.objective(out, batch.targets)
                loss_sum[i] += value.detach().double() * batch.n
                pred = prediction_scores(out, batch.index)
                if classify is None:
                    classify = _is_classification(pred, batch.targets)
                if classify and pred is not None:
                    correct[i] += (pred.argmax(dim=1) == batch.targets).sum()
            n_total += batch.n
            bar.advance()
        self.classify = classify
        return loss_sum, correct, n_total

    def _statistics_pass(self, states: list[Tensors], bar: ProgressBar) -> list[Tensors]:
        fixeds = [{**self.fixed, **self._fresh_statistics()} for _ in states]
        self._statistics_batches = 0
        with _bn_statistics_mode([m for _, m in self.norms]):
            for batch in self.op.source:
                for state, fixed in zip(states, fixeds, strict=True):
                    self.op.batch_output(state, fixed, batch)
                self._statistics_batches += 1
                bar.advance()
        self.passes["bn_statistics"] += 1
        return fixeds

    # -- the reductions over the ranks (one all-reduce each) ------------------------------------
    def _statistics_keys(self) -> list[tuple[str, str | None]]:
        """``(mean or var key, num_batches_tracked key or None)`` of every batch norm."""
        keys = []
        for name, _ in self.norms:
            p = f"{name}." if name else ""
            tracked = p + "num_batches_tracked"
            count = tracked if tracked in self.fixed else None
            keys += [(p + "running_mean", count), (p + "running_var", count)]
        return keys

    def _reduce_statistics(
        self, fixeds: list[Tensors] | None, failure: Exception | None, batches: int, K: int
    ) -> list[Tensors]:
        """Every point's batch-norm statistics averaged over the batches of ALL ranks.

        With ``momentum=None`` a running statistic is the average of the batch statistics over
        the batches of the pass, so the global one is ``sum_r n_r s_r / sum_r n_r`` with ``n_r``
        rank ``r``'s number of batches (``num_batches_tracked``).
        """
        assert self.ranks is not None
        keys = self._statistics_keys()
        sizes = [self.fixed[k].numel() for k, _ in keys]
        width = sum(sizes) + len(keys)
        payload = None
        if fixeds is not None and failure is None:
            rows = []
            for fixed in fixeds:
                parts = []
                for key, count in keys:
                    n = fixed[count].double() if count is not None else torch.tensor(batches)
                    n = n.to(device=self.op.device, dtype=torch.float64)
                    parts += [fixed[key].double().reshape(-1) * n, n.reshape(1)]
                rows.append(torch.cat(parts))
            payload = torch.stack(rows)
        like = torch.zeros(K, width, dtype=torch.float64, device=self.op.device)
        total, _ = reduce_pass(
            self.ranks, payload, batches, failure, "batch-norm statistics", like=like
        )
        self.all_reduces += 1
        assert fixeds is not None  # a failed pass raised in reduce_pass
        for fixed, row in zip(fixeds, total, strict=True):
            o = 0
            for (key, count), size in zip(keys, sizes, strict=True):
                n = row[o + size]
                fixed[key].copy_((row[o : o + size] / n).view_as(fixed[key]))
                if count is not None:
                    fixed[count].fill_(round(float(n)))
                o += size + 1
        return fixeds

    def _reduce_metrics(
        self, local: dict[str, Any] | None, failure: Exception | None, K: int
    ) -> dict[str, Any]:
        """The pass's per-point sums over all ranks: one all-reduce (train and test together)."""
        assert self.ranks is not None
        f64 = {"dtype": torch.float64, "device": self.op.device}
        has_test = self.test is not None
        width = 5 * K * (2 if has_test else 1) + 2
        payload = None
        n_train = 0
        if local is not None and failure is None:
            parts = []
            for split in ("train", "test") if has_test else ("train",):
                loss, correct, _ = local[split]
                parts += [_split_finite(loss).reshape(-1), correct.to(**f64)]
            n_test = local["test"][2] if has_test else 0
            parts.append(torch.tensor([float(bool(self.classify)), float(n_test)], **f64))
            payload = torch.cat(parts)
            n_train = local["train"][2]
        total, counts = reduce_pass(
            self.ranks,
            payload,
            n_train,
            failure,
            "loss landscape",
            like=torch.zeros(width, **f64),
        )
        self.all_reduces += 1
        classify, n_test = total[-2] > 0, round(float(total[-1]))
        self.classify = bool(classify)
        out: dict[str, Any] = {}
        o = 0
        for split in ("train", "test") if has_test else ("train",):
            loss = _join_finite(total[o : o + 4 * K].view(4, K))
            correct = total[o + 4 * K : o + 5 * K]
            o += 5 * K
            out[split] = (loss, correct, sum(counts) if split == "train" else n_test)
        return out

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(
        self, coeffs: np.ndarray, U: torch.Tensor, *, recompute: bool, description: str
    ) -> dict[str, np.ndarray | None]:
        """Metrics at ``w* + U c`` for every row ``c`` of ``coeffs`` ``(K, D)``; ``U`` ``(P, D)``.

        Returns:
            ``{metric: (K,) array or None}`` for the metrics of
            :data:`~deepcurvature.analysis.landscape_result.METRICS`.
        """
        K = coeffs.shape[0]
        step = self.points_per_pass
        chunks = [range(s, min(s + step, K)) for s in range(0, K, step)]
        recompute = recompute and bool(self.norms)
        per_chunk = (self.op.source.num_batches or 0) * (1 + recompute)
        if self.test is not None:
            per_chunk += self.test.num_batches or 0
        total = per_chunk * len(chunks) if per_chunk else 0
        out: dict[str, list[np.ndarray | None]] = {m: [] for m in METRICS}
        C = torch.as_tensor(coeffs, dtype=self.op.dtype, device=self.op.device)
        with (
            torch.no_grad(),
            self.op.evaluation_mode(),
            ProgressBar(total, description, verbose=self.verbose and bool(total)) as bar,
        ):
            for chunk in chunks:
                W = self.w0[None, :] + C[chunk.start : chunk.stop] @ U.T
                states = [
                    dict(zip(self.op.layout.names, self.op.layout.unflatten(w), strict=True))
                    for w in W
                ]
                sums = self._chunk(states, recompute, bar)
                for split in ("train", "test"):
                    if split not in sums:
                        continue
                    loss, correct, n = sums[split]
                    self.passes[split] += 1
                    out[f"{split}_loss"].append((loss / n).cpu().numpy())
                    acc = (correct.double() / n).cpu().numpy() if self.classify else None
                    out[f"{split}_accuracy"].append(acc)
                    if split == "test":
                        self.num_test = n
                bar.set_info(f"{chunk.stop}/{K} points")
        result: dict[str, np.ndarray | None] = {}
        for m in METRICS:
            parts = out[m]
            result[m] = (
                None if not parts or any(p is None for p in parts) else np.concatenate(parts)
            )
        return result

    def _chunk(self, states: list[Tensors], recompute: bool, bar: ProgressBar) -> dict[str, Any]:
        """The sums of one pass over the points ``states`` (over all ranks in a process group)."""
        K = len(states)
        failure: Exception | None = None
        fixeds: list[Tensors] | None = None
        try:
            fixeds = self._statistics_pass(states, bar) if recompute else [self.fixed] * K
        except Exception as exc:
            if self.ranks is None:
                raise
            failure = exc
        if self.ranks is not None and recompute:
            fixeds = self._reduce_statistics(fixeds, failure, self._statistics_batches, K)
        assert fixeds is not None
        local: dict[str, Any] | None = None
        try:
            local = {"train": self._pass(self.op.source, states, fixeds, bar)}
            if self.test is not None:
                local["test"] = self._pass(self.test, states, fixeds, bar)
        except Exception as exc:
            if self.ranks is None:
                raise
            failure = exc
        if self.ranks is None:
            assert local is not None
            return local
        return self._reduce_metrics(local, failure, K)
