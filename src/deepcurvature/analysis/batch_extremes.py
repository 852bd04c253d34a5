"""Extreme eigenvalues of mini-batch curvature matrices and the learning rates they allow.

Granziol, Zohren & Roberts ("Learning Rates as a Function of Batch Size: A Random Matrix Theory
Approach to Neural Network Training", seeds 000/003) show that the extremal eigenvalues of the
batch Hessian (and GGN) exceed those of the full-data matrix, and derive from it the maximal
learning rate as a function of the batch size ``B``: linear scaling for SGD and square-root
scaling for adaptive methods such as Adam. :func:`batch_hessian_extremes` measures this:

* for every batch size ``B``, ``M`` random mini-batches (drawn without replacement within a
  batch) each give an operator ``H_B = dc.hessian(model, loss_fn, [batch])`` (or ``dc.ggn``)
  whose ``lambda_max`` and ``lambda_min`` come from ``dc.eigsh(H_B, 2, which="BE")``;
* the same for the whole data set (``lambda_max(full)``);
* a weighted least-squares fit of the law (finite-population form of ``lambda_full + c / B``)

      lambda_max(B) = a + c (1/B - 1/N),      a = lambda_max(full) (default) or fitted,

  in ``x = 1/B - 1/N`` (exact at ``B = N``, where the batch is the data set; ``c / B`` for
  ``B << N``), weighted by ``1 / (se_B^2 + (1e-3 mean_B)^2)`` with ``se_B`` the standard error of
  the batch mean; ``lambda_min`` is fitted the same way;
* the predicted maximal stable learning rates (BBP-spiked model of the paper):

  - SGD (gradient descent on the batch quadratic): ``alpha_sgd(B) = 2 / lambda_max(B)``; where
    ``c / B`` dominates ``lambda_full`` this is ``2 B / c``: linear scaling in ``B``;
  - Adam, whose second-moment estimate is dominated by the gradient noise ``v ~ sigma^2 / B``,
    acts as SGD preconditioned by ``sqrt(B) / sigma``: ``alpha_adam(B) = 2 sigma / (sqrt(B)
    lambda_max(B)) = 2 sigma sqrt(B) / (B a + c')`` (``c' = c (1 - B/N)``), which for
    ``c / B >> a`` is ``2 sigma sqrt(B) / c``: square-root scaling. ``sigma`` is not measured,
    so the result gives ``alpha_adam(B) / alpha_adam(B_0)`` relative to the smallest ``B_0``.

Cost: the products of a batch operator cost ``B / N`` data passes each (a batch of one
``chunk_size`` keeps its forward pass between them, ``cache="forward"``, which spares about a
quarter of a product on networks of convolutions); the result counts them
(``info["data_passes"]``, one per operator column: the final residual check of ``eigsh`` shares
one pass between its two columns, so the count is a slight upper bound).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .. import operators
from ..io.results import load_npz_json, save_npz_json
from ..linalg.eigsh import eigsh
from ..linalg.probes import resolve_seed
from ..progress import ProgressBar

__all__ = [
    "BATCH_MATRICES",
    "BatchExtremesResult",
    "batch_hessian_extremes",
    "draw_batches",
    "fit_batch_law",
]

BATCH_MATRICES = ("hessian", "ggn")
INTERCEPTS = ("full", "fit")
#: relative floor of the standard error in the fit weights (a batch size with no spread)
_SE_FLOOR = 1e-3


# -- data -----------------------------------------------------------------------------------------
class _Samples:
    """Indexable samples ``take(idx) -> (inputs, targets)`` from tensors, a Dataset or batches."""

    def __init__(self, data: Any) -> None:
        self.dataset: Dataset | None = None
        self.inputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        if isinstance(data, DataLoader):
            data = data.dataset
        if (
            isinstance(data, tuple)
            and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            self.inputs, self.targets = data
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.dataset = data
        elif isinstance(data, Iterable):
            batches = list(data)
            if not batches:
                raise ValueError("data is empty: give (inputs, targets), a Dataset or batches")
            try:
                self.inputs = torch.cat([torch.as_tensor(b[0]) for b in batches])
                self.targets = torch.cat([torch.as_tensor(b[1]) for b in batches])
            except (TypeError, IndexError, RuntimeError) as exc:
                raise TypeError(
                    "data must be (inputs, targets) tensors, a Dataset, a DataLoader or a list of "
                    f"(inputs, targets) batches; concatenating its batches failed: {exc}"
                ) from None
        else:
            raise TypeError(
                "data must be (inputs, targets) tensors, a Dataset, a DataLoader or a list of "
                f"(inputs, targets) batches, got {type(data).__name__}"
            )
        if self.inputs is not None and self.targets is not None:
            if self.inputs.shape[0] != self.targets.shape[0]:
                raise ValueError(
                    f"inputs and targets have different lengths ({self.inputs.shape[0]} and "
                    f"{self.targets.shape[0]}): give one target per input"
                )
        if len(self) < 1:
            raise ValueError("data has no samples")

    def __len__(self) -> int:
        if self.dataset is not None:
            return len(self.dataset)  # type: ignore[arg-type]
        assert self.inputs is not None
        return int(self.inputs.shape[0])

    def take(self, idx: np.ndarray) -> tuple[Any, Any]:
        if self.dataset is not None:
            batch = default_collate([self.dataset[int(i)] for i in idx])
            return batch[0], batch[1]
        assert self.inputs is not None and self.targets is not None
        t = torch.as_tensor(idx, dtype=torch.long)
        return self.inputs[t], self.targets[t]

    def chunks(self, idx: np.ndarray, chunk_size: int) -> list[tuple[Any, Any]]:
        """The samples ``idx`` as batches of at most ``chunk_size`` (the same mean loss)."""
        return [self.take(idx[i : i + chunk_size]) for i in range(0, len(idx), chunk_size)]


def check_batch_sizes(batch_sizes: Sequence[int], n: int) -> np.ndarray:
    """The sorted distinct batch sizes, each an integer in ``[1, n]`` (else a ``ValueError``)."""
    if isinstance(batch_sizes, (int, np.integer)):
        batch_sizes = [int(batch_sizes)]
    sizes = list(batch_sizes)
    if not sizes:
        raise ValueError("batch_sizes is empty: give at least one batch size, e.g. [32, 128, 512]")
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise TypeError(f"batch sizes must be integers, got {b!r}")
        if b < 1:
            raise ValueError(f"batch sizes must be positive integers, got {int(b)}")
        if b > n:
            raise ValueError(
                f"batch size {int(b)} is larger than the data set (N = {n} samples): use batch "
                f"sizes of at most {n}"
            )
    return np.array(sorted({int(b) for b in sizes}), dtype=np.int64)


def draw_batches(
    n: int, batch_sizes: Sequence[int], batches_per_size: int, seed: int
) -> list[list[np.ndarray]]:
    """The sample indices of every mini-batch: ``[size][batch] -> (B,)`` int64 indices.

    Each batch holds ``B`` distinct samples; the batches of one size are disjoint while the data
    set lasts (consecutive chunks of a seeded permutation, a fresh permutation when it runs out).
    """
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = []
    for b in batch_sizes:
        perm, pos, rows = rng.permutation(n), 0, []
        for _ in range(batches_per_size):
            if pos + b > n:
                perm, pos = rng.permutation(n), 0
            rows.append(np.sort(perm[pos : pos + b]))
            pos += b
        out.append(rows)
    return out


# -- the law and its fit --------------------------------------------------------------------------
def fit_batch_law(
    batch_sizes: np.ndarray,
    means: np.ndarray,
    standard_errors: np.ndarray,
    n: int,
    *,
    intercept: float | None = None,
) -> tuple[float, float]:
    """Weighted least squares of ``y(B) = a + c (1/B - 1/N)``; returns ``(a, c)``.

    Weights ``1 / (se_B^2 + (1e-3 |y_B|)^2)``. With ``intercept`` given, ``a`` is fixed to it and
    only ``c`` is fitted (one batch size suffices); else both (two distinct sizes needed).
    """
    x = 1.0 / np.asarray(batch_sizes, dtype=np.float64) - 1.0 / n
    y = np.asarray(means, dtype=np.float64)
    se = np.asarray(standard_errors, dtype=np.float64)
    w = 1.0 / (se**2 + (_SE_FLOOR * np.maximum(np.abs(y), 1e-300)) ** 2)
    if intercept is not None:
        den = float(np.sum(w * x * x))
        c = float(np.sum(w * x * (y - intercept)) / den) if den > 0 else 0.0
        return float(intercept), c
    if np.unique(x).size < 2:
        raise ValueError(
            "fitting the intercept needs at least two distinct batch sizes below N; give more "
            "batch sizes or use intercept='full'"
        )
    sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
    sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
    det = sw * sxx - sx * sx
    c = (sw * sxy - sx * sy) / det
    a = (sy - c * sx) / sw
    return float(a), float(c)


# -- the result -----------------------------------------------------------------------------------
@dataclass
class BatchExtremesResult:
    """Extreme eigenvalues of mini-batch curvature matrices against the batch size.

    Attributes:
        batch_sizes: ``(S,)`` the batch sizes ``B``, ascending.
        lambda_max: ``(S, M)`` ``lambda_max`` of every mini-batch matrix.
        lambda_min: ``(S, M)`` ``lambda_min`` of every mini-batch matrix.
        full_lambda_max: ``lambda_max`` of the full-data matrix.
        full_lambda_min: ``lambda_min`` of the full-data matrix.
        fit_max: ``(a, c)`` of ``lambda_max(B) = a + c (1/B - 1/N)``.
        fit_min: ``(a, c)`` of the same law for ``lambda_min``.
        config: the settings (matrix, seed, batches_per_size, intercept, tol...).
        info: ``N``, ``P``, ``data_passes`` (total, ``data_passes_batches``,
            ``data_passes_full``), ``n_matvec``, ``seconds``, ``converged``.
    """

    batch_sizes: np.ndarray
    lambda_max: np.ndarray
    lambda_min: np.ndarray
    full_lambda_max: float
    full_lambda_min: float
    fit_max: tuple[float, float]
    fit_min: tuple[float, float]
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # -- statistics over the batches ----------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """``N``, the size of the data set."""
        return int(self.info["N"])

    @staticmethod
    def _spread(values: np.ndarray) -> np.ndarray:
        m = values.shape[1]
        return values.std(axis=1, ddof=1) if m > 1 else np.zeros(values.shape[0])

    @property
    def lambda_max_mean(self) -> np.ndarray:
        """``(S,)`` mean of ``lambda_max`` over the batches of each size."""
        return self.lambda_max.mean(axis=1)

    @property
    def lambda_max_std(self) -> np.ndarray:
        """``(S,)`` standard deviation (ddof 1) of ``lambda_max`` over the batches."""
        return self._spread(self.lambda_max)

    @property
    def lambda_min_mean(self) -> np.ndarray:
        """``(S,)`` mean of ``lambda_min`` over the batches of each size."""
        return self.lambda_min.mean(axis=1)

    @property
    def lambda_min_std(self) -> np.ndarray:
        """``(S,)`` standard deviation (ddof 1) of ``lambda_min`` over the batches."""
        return self._spread(self.lambda_min)

    # -- the law and the learning rates -------------------------------------------------------
    def predicted_lambda_max(self, batch_sizes: Any) -> np.ndarray:
        """The fitted ``a + c (1/B - 1/N)`` at ``batch_sizes``."""
        b = np.asarray(batch_sizes, dtype=np.float64)
        a, c = self.fit_max
        return a + c * (1.0 / b - 1.0 / self.num_samples)

    def predicted_lambda_min(self, batch_sizes: Any) -> np.ndarray:
        """The fitted law of ``lambda_min`` at ``batch_sizes``."""
        b = np.asarray(batch_sizes, dtype=np.float64)
        a, c = self.fit_min
        return a + c * (1.0 / b - 1.0 / self.num_samples)

    def sgd_lr(self, batch_sizes: Any = None, *, measured: bool = False) -> np.ndarray:
        """Maximal stable SGD learning rate ``2 / lambda_max(B)`` (fitted law, or the batch means).

        ``measured=True`` uses the measured means at :attr:`batch_sizes` (``batch_sizes`` ignored).
        """
        if measured:
            return 2.0 / self.lambda_max_mean
        b = self.batch_sizes if batch_sizes is None else batch_sizes
        return 2.0 / self.predicted_lambda_max(b)

    def adam_lr_relative(self, batch_sizes: Any = None) -> np.ndarray:
        """``alpha_adam(B) / alpha_adam(B_0) = sqrt(B / B_0) lambda_max(B_0) / lambda_max(B)``.

        ``B_0`` is the smallest measured batch size; ``lambda_max`` from the fitted law (module
        docstring: ``alpha_adam(B) = 2 sigma / (sqrt(B) lambda_max(B))``).
        """
        b = np.asarray(self.batch_sizes if batch_sizes is None else batch_sizes, dtype=np.float64)
        b0 = float(self.batch_sizes[0])
        lam0 = float(self.predicted_lambda_max(b0))
        return np.sqrt(b / b0) * lam0 / self.predicted_lambda_max(b)

    def fit_relative_residuals(self) -> np.ndarray:
        """``(S,)`` ``(fit - mean) / mean`` of ``lambda_max`` at the measured batch sizes."""
        mean = self.lambda_max_mean
        return (self.predicted_lambda_max(self.batch_sizes) - mean) / mean

    def summary(self) -> dict[str, Any]:
        """Per batch size: mean and spread of both extremes, the fit and the learning rates."""
        a, c = self.fit_max
        return {
            "matrix": self.config.get("matrix"),
            "N": self.info.get("N"),
            "P": self.info.get("P"),
            "batch_sizes": self.batch_sizes.tolist(),
            "batches_per_size": int(self.lambda_max.shape[1]),
            "lambda_max_mean": self.lambda_max_mean.tolist(),
            "lambda_max_std": self.lambda_max_std.tolist(),
            "lambda_min_mean": self.lambda_min_mean.tolist(),
            "lambda_min_std": self.lambda_min_std.tolist(),
            "full_lambda_max": self.full_lambda_max,
            "full_lambda_min": self.full_lambda_min,
            "law": "lambda_max(B) = a + c (1/B - 1/N)",
            "fit_intercept": a,
            "fit_c": c,
            "fit_min_intercept": self.fit_min[0],
            "fit_min_c": self.fit_min[1],
            "fit_max_relative_residual": float(np.max(np.abs(self.fit_relative_residuals()))),
            "sgd_lr": self.sgd_lr().tolist(),
            "sgd_lr_measured": self.sgd_lr(measured=True).tolist(),
            "sgd_lr_full": 2.0 / self.full_lambda_max if self.full_lambda_max > 0 else math.inf,
            "adam_lr_relative": self.adam_lr_relative().tolist(),
            "data_passes": self.info.get("data_passes"),
            "seconds": self.info.get("seconds"),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (arrays) and ``path.json`` (fit, config, info, summary) atomically."""
        arrays = {
            "batch_sizes": self.batch_sizes,
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
        }
        meta = {
            "kind": "BatchExtremesResult",
            "full_lambda_max": self.full_lambda_max,
            "full_lambda_min": self.full_lambda_min,
            "fit_max": list(self.fit_max),
            "fit_min": list(self.fit_min),
            "config": self.config,
            "info": self.info,
            "summary": self.summary(),
        }
        npz, _ = save_npz_json(path, arrays, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> BatchExtremesResult:
        """Read a result written by :meth:`save` (path with or without ``.npz``)."""
        arrays, meta = load_npz_json(path)
        if meta.get("kind") != "BatchExtremesResult" or "lambda_max" not in arrays:
            raise ValueError(
                f"{path} is not a batch-extremes result file (kind {meta.get('kind')!r}); give "
                "a file written by BatchExtremesResult.save"
            )
        return cls(
            batch_sizes=np.asarray(arrays["batch_sizes"], dtype=np.int64),
            lambda_max=np.asarray(arrays["lambda_max"], dtype=np.float64),
            lambda_min=np.asarray(arrays["lambda_min"], dtype=np.float64),
            full_lambda_max=float(meta["full_lambda_max"]),
            full_lambda_min=float(meta["full_lambda_min"]),
            fit_max=(float(meta["fit_max"][0]), float(meta["fit_max"][1])),
            fit_min=(float(meta["fit_min"][0]), float(meta["fit_min"][1])),
            config=dict(meta.get("config") or {}),
            info=dict(meta.get("info") or {}),
        )


# -- the computation ------------------------------------------------------------------------------
def _extremes(op: Any, *, tol: float, seed: int) -> tuple[float, float, int, bool]:
    """``(lambda_max, lambda_min, products, converged)`` of a symmetric operator."""
    if op.shape[0] == 1:
        v = float(op.matvec(torch.ones(1, dtype=op.dtype, device=op.device))[0])
        return v, v, 1, True
    res = eigsh(op, 2, which="BE", tol=tol, seed=seed, verbose=False)
    return float(res.values[-1]), float(res.values[0]), int(res.n_matvec), bool(res.converged)


def batch_hessian_extremes(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Any,
    batch_sizes: Sequence[int],
    *,
    matrix: str = "hessian",
    batches_per_size: int = 5,
    seed: int | None = None,
    intercept: str = "full",
    tol: float = 1e-5,
    chunk_size: int = 512,
    params: Any = None,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    verbose: bool = True,
) -> BatchExtremesResult:
    """``lambda_max`` and ``lambda_min`` of mini-batch curvature matrices at several batch sizes.

    For each ``B`` in ``batch_sizes``, ``batches_per_size`` random mini-batches of ``B`` distinct
    samples each give ``H_B`` (the Hessian or GGN of the mean loss over that batch); its two
    extreme eigenvalues come from ``eigsh(H_B, 2, which="BE", tol=tol)``. The full-data matrix
    gives ``lambda_max(full)``. The law ``lambda(B) = a + c (1/B - 1/N)`` is fitted to both
    extremes (module docstring) and gives the learning rates (``result.sgd_lr()``,
    ``result.adam_lr_relative()``).

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: ``(inputs (N, ...), targets (N, ...))`` tensors, a ``Dataset``, a ``DataLoader``
            (its data set is used) or a list of ``(inputs, targets)`` batches (concatenated).
        batch_sizes: the batch sizes, integers in ``[1, N]``.
        matrix: ``"hessian"`` or ``"ggn"``.
        batches_per_size: mini-batches ``M`` per batch size (the spread needs ``M >= 2``).
        seed: seed of the mini-batches and of the ``eigsh`` start vectors (recorded).
        intercept: ``"full"``: ``a = lambda(full)`` measured; ``"fit"``: ``a`` fitted too.
        tol: relative residual tolerance of ``eigsh``.
        chunk_size: samples per forward pass (a larger batch is split; same matrix). With
            ``bn_mode="train"`` a mini-batch is never split (its batch statistics define it).
        params: parameter selection, as for :func:`~deepcurvature.hessian`.
        bn_mode: ``"eval"`` or ``"train"``, as for :func:`~deepcurvature.hessian`.
        dtype: evaluation dtype (default: the model's).
        device: evaluation device (default: the model's).
        verbose: progress bar over the eigenvalue problems.

    Returns:
        A :class:`BatchExtremesResult`.

    Raises:
        ValueError: an empty ``batch_sizes``, a batch size below 1 or above ``N``, inputs and
            targets of different lengths, an unknown ``matrix`` or ``intercept``, a bad
            ``batches_per_size`` or ``chunk_size``.
    """
    if matrix not in BATCH_MATRICES:
        raise ValueError(f"unknown matrix {matrix!r}: use one of {BATCH_MATRICES}")
    if intercept not in INTERCEPTS:
        raise ValueError(f"intercept must be one of {INTERCEPTS}, got {intercept!r}")
    for name, value in (("batches_per_size", batches_per_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    samples = _Samples(data)
    n = len(samples)
    sizes = check_batch_sizes(batch_sizes, n)
    seed = resolve_seed(seed)
    build = operators.hessian if matrix == "hessian" else operators.ggn
    kwargs = {"params": params, "bn_mode": bn_mode, "dtype": dtype, "device": device}

    t0 = time.perf_counter()
    batches = draw_batches(n, sizes, int(batches_per_size), seed)
    lam_max = np.zeros((sizes.size, int(batches_per_size)))
    lam_min = np.zeros_like(lam_max)
    passes_batches, n_matvec, converged, P = 0.0, 0, True, 0
    with ProgressBar(lam_max.size + 1, f"{matrix} extremes", verbose) as bar:
        for i, (b, rows) in enumerate(zip(sizes, batches, strict=True)):
            for j, idx in enumerate(rows):
                # batch statistics (bn_mode="train") are those of the whole mini-batch
                width = int(b) if bn_mode == "train" else chunk_size
                # a batch of one pass keeps its forward pass between eigsh's products (the
                # chain route; the memory a product needs anyway)
                cache = "forward" if int(b) <= width else False
                op = build(model, loss_fn, samples.chunks(idx, width), cache=cache, **kwargs)
                P = op.shape[0]
                hi, lo, k, ok = _extremes(op, tol=tol, seed=seed + 1 + i * 7919 + j)
                lam_max[i, j], lam_min[i, j] = hi, lo
                passes_batches += k * int(b) / n
                n_matvec += k
                converged &= ok
                bar.advance()
        full = build(model, loss_fn, samples.chunks(np.arange(n), chunk_size), **kwargs)
        full_max, full_min, k_full, ok = _extremes(full, tol=tol, seed=seed)
        converged &= ok
        n_matvec += k_full
        bar.advance()
    seconds = time.perf_counter() - t0

    def fit(values: np.ndarray, full_value: float) -> tuple[float, float]:
        m = values.shape[1]
        se = values.std(axis=1, ddof=1) / math.sqrt(m) if m > 1 else np.zeros(values.shape[0])
        fixed = full_value if intercept == "full" else None
        return fit_batch_law(sizes, values.mean(axis=1), se, n, intercept=fixed)

    return BatchExtremesResult(
        batch_sizes=sizes,
        lambda_max=lam_max,
        lambda_min=lam_min,
        full_lambda_max=full_max,
        full_lambda_min=full_min,
        fit_max=fit(lam_max, full_max),
        fit_min=fit(lam_min, full_min),
        config={
            "matrix": matrix,
            "batches_per_size": int(batches_per_size),
            "seed": seed,
            "intercept": intercept,
            "tol": tol,
            "chunk_size": int(chunk_size),
            "bn_mode": bn_mode,
            "params": params if params is None or isinstance(params, (str, list)) else str(params),
            "law": "lambda(B) = a + c (1/B - 1/N)",
            "sgd_rule": "alpha_sgd(B) = 2 / lambda_max(B)",
            "adam_rule": "alpha_adam(B) / alpha_adam(B0) = sqrt(B/B0) lambda_max(B0)/lambda_max(B)",
        },
        info={
            "N": n,
            "P": int(P or full.shape[0]),
            "data_passes": passes_batches + k_full,
            "data_passes_batches": passes_batches,
            "data_passes_full": float(k_full),
            "n_matvec": n_matvec,
            "seconds": seconds,
            "converged": bool(converged),
        },
    )
