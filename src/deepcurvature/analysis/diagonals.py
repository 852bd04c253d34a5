"""Diagonal approximations of curvature matrices, and how they compare with the spectrum.

Diagonals are a popular proxy for the curvature of a network (Bishop 2006; the diagonal Fisher;
Adam's second-moment estimate, Chaudhari et al. 2016). Section 6.3 of the paper shows why they are
a poor proxy for the *spectrum*: the diagonal of ``A`` has the right mean (``sum_i A_ii / P =
tr(A) / P``, the first moment of the spectral density) but not the right spread (``sum_i A_ii^2 <=
sum_ij A_ij^2 = tr(A^2)``, equation 10), so its histogram is far narrower than the eigenvalue
density and misses the outliers (Figures 5, 6(c) and 7). This module computes the diagonals

* :func:`hessian_diagonal`: exact, from ``P`` Hessian-vector products with unit vectors;
* :func:`ggn_diagonal`: exact, ``(1/N) sum_i diag(J_i^T H_i J_i)`` from per-sample Jacobians;
* :func:`mc_ggn_diagonal`: the diagonal of the Monte Carlo Fisher (sampled labels), an unbiased
  estimate of the GGN diagonal;
* :func:`empirical_fisher_diagonal`: ``(1/N) sum_i g_i^2``;
* :func:`hutchinson_diagonal`: the stochastic estimate ``E[z * (A z)]`` of any operator;
* :func:`adam_second_moment`: Adam's ``exp_avg_sq``;

each as a :class:`DiagonalResult` ``(P,)`` in the order of ``model.named_parameters()``, and
:func:`compare_diagonal` puts one beside a Lanczos spectral density (:class:`DiagonalComparison`
with a summary and the paper's overlay plot).

Per-sample methods (the exact GGN, the Monte Carlo and empirical Fisher diagonals) evaluate the
model on one sample at a time under ``torch.func.vmap``; they need a loss that is a sum over
samples (every mean-reduced loss) and batch norm in ``bn_mode="eval"``.

In a ``torch.distributed`` process group (``torchrun``) each rank passes its own shard of the data:
the per-sample methods sum their squares over the shard and reduce the sums and the sample count
with one all-reduce, so every rank returns the diagonal of the union of the shards (a failing rank
makes every rank raise); :func:`hessian_diagonal` and :func:`hutchinson_diagonal` are built on the
operators' products, which are reduced already.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_map

from ..linalg.density import SpectralDensity
from ..linalg.probes import resolve_seed
from ..linalg.trace import diagonal as stochastic_diagonal
from ..operators.base import CurvatureOperator
from ..operators.batches import Batch
from ..operators.distributed import all_reduce_sum, reduce_pass
from ..operators.fisher import _rank_seed
from ..progress import ProgressBar
from .loss_stats import group_parameters

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DiagonalComparison",
    "DiagonalResult",
    "adam_second_moment",
    "compare_diagonal",
    "empirical_fisher_diagonal",
    "ggn_diagonal",
    "hessian_diagonal",
    "hutchinson_diagonal",
    "mc_ggn_diagonal",
]

#: Default size limit of :func:`hessian_diagonal` (``P`` Hessian-vector products).
HESSIAN_DIAGONAL_MAX_PARAMS = 20_000

Tensors = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------------
# the result


@dataclass
class DiagonalResult:
    """A diagonal ``(P,)`` over the flattened selected parameters.

    Attributes:
        value: ``(P,)`` the diagonal (or its estimate).
        name: what it is (``"hessian"``, ``"ggn"``, ``"mc_ggn"``, ``"empirical_fisher"``,
            ``"hutchinson"``, ``"adam"``).
        std_error: ``(P,)`` per-entry standard error of a stochastic estimate, else ``None``.
        param_names: the parameters, in flattening order (empty when unknown).
        numels: their sizes.
        shapes: their shapes.
        metadata: how it was computed (cost, seeds, sizes).
    """

    value: torch.Tensor
    name: str
    std_error: torch.Tensor | None = None
    param_names: list[str] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.value.numel())

    def numpy(self) -> np.ndarray:
        """The diagonal as a float64 numpy array ``(P,)``."""
        return self.value.detach().double().cpu().numpy()

    def per_parameter(self) -> dict[str, torch.Tensor]:
        """``{parameter name: diagonal entries shaped like the parameter}``."""
        self._need_layout()
        out, o = {}, 0
        for n, m, s in zip(self.param_names, self.numels, self.shapes, strict=True):
            out[n] = self.value[o : o + m].reshape(s)
            o += m
        return out

    def per_layer(self) -> dict[str, torch.Tensor]:
        """``{layer (owning module): its diagonal entries (flattened, weights then biases)}``."""
        params = self.per_parameter()
        return {
            layer: torch.cat([params[n].reshape(-1) for n in names])
            for layer, names in group_parameters(self.param_names).items()
        }

    def _need_layout(self) -> None:
        if not self.param_names:
            raise ValueError(
                f"this {self.name} diagonal has no parameter layout (it came from a plain "
                "operator); build it from a model's curvature operator to split it per layer"
            )

    def __repr__(self) -> str:
        v = self.value
        return (
            f"DiagonalResult(name={self.name!r}, P={v.numel()}, "
            f"range=[{float(v.min()):.4g}, {float(v.max()):.4g}], mean={float(v.mean()):.4g})"
        )


def _result(
    op: CurvatureOperator,
    value: torch.Tensor,
    name: str,
    std_error: torch.Tensor | None = None,
    **metadata: Any,
) -> DiagonalResult:
    layout = op.layout
    return DiagonalResult(
        value=value,
        name=name,
        std_error=std_error,
        param_names=list(layout.names),
        numels=list(layout.numels),
        shapes=[tuple(s) for s in layout.shapes],
        metadata={**op.metadata, **metadata},
    )


# ------------------------------------------------------------------------------------------------
# exact Hessian diagonal


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def hessian_diagonal(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    params: Any = None,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    block_size: int = 64,
    max_params: int = HESSIAN_DIAGONAL_MAX_PARAMS,
    force: bool = False,
    verbose: bool = True,
) -> DiagonalResult:
    """The EXACT diagonal of the Hessian of the mean loss: ``H_ii = e_i^T H e_i``.

    Computed as the Hessian-vector products ``H E`` with the unit vectors ``E = [e_i, ...]`` in
    blocks of ``block_size`` columns (``matmat`` of :func:`deepcurvature.hessian`, the columns of a
    block sharing each forward pass), keeping entry ``i`` of column ``e_i``. Cost: ``P``
    Hessian-vector products in ``ceil(P / block_size)`` passes over the data (memory ``P *
    block_size`` numbers): for small models only. There is no cheaper exact method for a general
    network (the diagonal of ``H`` is not a product of a few passes), hence the guard.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list).
        params: parameter selection (names, glob patterns, modules); default all trainable.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        dtype: evaluation dtype (e.g. ``torch.float64``); default the model's.
        device: evaluation device; default the model's.
        block_size: unit vectors per data pass.
        max_params: refuse more than this many parameters ...
        force: ... unless ``force=True``.
        verbose: progress bar over the blocks.

    Returns:
        A :class:`DiagonalResult` named ``"hessian"``.

    Raises:
        ValueError: ``P > max_params`` without ``force`` (the message gives the cost and the
            cheaper estimates), or a non-positive ``block_size``.
    """
    from ..operators import hessian

    block_size = _check_count("block_size", block_size)
    op = hessian(model, loss_fn, data, params=params, bn_mode=bn_mode, dtype=dtype, device=device)
    P = op.num_params
    if P > max_params and not force:
        raise ValueError(
            f"the exact Hessian diagonal of {P:,} parameters costs {P:,} Hessian-vector products "
            f"({math.ceil(P / block_size):,} passes over the data); it is refused above "
            f"max_params={max_params:,}. Pass force=True (or a larger max_params) to run it "
            "anyway, select fewer parameters with params=..., or estimate it with "
            "hutchinson_diagonal(dc.hessian(...), probes)"
        )
    out = torch.empty(P, dtype=op.dtype, device=op.device)
    starts = range(0, P, block_size)
    with ProgressBar(len(starts), "Hessian diagonal", verbose) as bar:
        for a in starts:
            b = min(a + block_size, P)
            idx = torch.arange(a, b, device=op.device)
            E = torch.zeros(P, b - a, dtype=op.dtype, device=op.device)
            E[idx, idx - a] = 1
            HE = op.matmat(E)
            out[a:b] = HE[idx, idx - a]
            bar.advance()
    return _result(op, out, "hessian", method="unit vectors", matvecs=P, data_passes=len(starts))


# ------------------------------------------------------------------------------------------------
# per-sample machinery


def _per_sample_operator(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    params: Any,
    bn_mode: str,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    what: str,
) -> CurvatureOperator:
    from ..operators import ggn

    op = ggn(model, loss_fn, data, params=params, bn_mode=bn_mode, dtype=dtype, device=device)
    if bn_mode == "train" and any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ValueError(
            f"{what} needs per-sample Jacobians, but with bn_mode='train' batch norm couples the "
            "samples of a batch (its statistics); use bn_mode='eval' (running statistics), or "
            "hutchinson_diagonal on the operator for the batch-statistics curvature"
        )
    return op


def _squares_pass(
    op: CurvatureOperator,
    label: str,
    verbose: bool,
    chunk: int,
    cotangents: Callable[[torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor]],
    rows: int,
    *,
    collapse: bool = False,
) -> tuple[torch.Tensor, int]:
    """One pass over the data: ``sum_b`` of :func:`_per_sample_squares`, ``((rows, P), N)``.

    ``cotangents(output, batch) -> (W, weights)`` gives the ``(S, n_b, *out)`` output-space
    vectors and their ``(S, n_b)`` weights from the batch's output (computed without a graph);
    ``collapse`` sums the ``S`` rows of every batch (``rows = 1``), else ``S = rows``.

    In a ``torch.distributed`` process group (the operator's ``ranks``) this rank's sums over its
    shard and its sample count are summed over the ranks with one all-reduce
    (:func:`~deepcurvature.operators.distributed.reduce_pass`): the result is that of one process
    on the union of the shards. A rank whose pass fails still joins the all-reduce, so every
    rank raises (the failing rank its own error, the others one naming it).
    """
    state, fixed = op.functional_state()
    acc = torch.zeros((rows, op.num_params), dtype=torch.float64, device=op.device)
    n_total = 0
    failure: Exception | None = None
    quiet = op.ranks is not None and op.ranks.rank != 0  # one progress bar: rank 0's
    try:
        with op.evaluation_mode(), _bar(op, label, verbose and not quiet) as bar:
            for batch in op.source:
                with torch.no_grad():
                    out = op.batch_output(state, fixed, batch)
                W, weights = cotangents(out, batch)
                part = _per_sample_squares(op, state, fixed, batch, W, weights, chunk)
                acc.add_(part.sum(0, keepdim=True) if collapse else part)
                n_total += batch.n
                bar.advance()
        if not bool(torch.isfinite(acc).all()):
            raise FloatingPointError(
                f"the {label} is not finite (a non-finite output or loss in the data); check the "
                "data and the model's outputs"
            )
    except Exception as exc:
        if op.ranks is None:
            raise
        failure = exc
    if op.ranks is not None:
        acc, counts = reduce_pass(op.ranks, acc, n_total, failure, label)
        n_total = sum(counts)
    return acc, n_total


def _per_sample_squares(
    op: CurvatureOperator,
    state: Tensors,
    fixed: Tensors,
    batch: Batch,
    W: torch.Tensor,
    weights: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``sum_i weights[s, i] * (J_i^T W[s, i])**2`` for each ``s``: ``(S, P)`` float64.

    ``J_i`` is the Jacobian of sample ``i``'s output with respect to the selected parameters and
    ``W`` ``(S, n_b, *out)`` holds ``S`` output-space vectors per sample: one ``vjp`` per sample
    (vectorised with ``vmap`` over the samples of a chunk) pulled back along the ``S`` vectors.
    """
    names = list(state)
    inputs = batch.inputs
    in_dims = tree_map(lambda t: 0 if isinstance(t, torch.Tensor) else None, inputs)

    def one(inputs_i: Any, w_i: torch.Tensor) -> torch.Tensor:
        def f(p: Tensors) -> torch.Tensor:
            x = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, inputs_i)
            return op.batch_output(p, fixed, Batch(x, batch.targets, 1, batch.index))[0]

        _, pullback = vjp(f, state)
        (grads,) = vmap(pullback)(w_i)
        S = w_i.shape[0]
        return torch.cat([grads[n].reshape(S, -1) for n in names], dim=1)

    per_sample = vmap(one, in_dims=(in_dims, 1))
    n = batch.n
    out = torch.zeros((W.shape[0], op.num_params), dtype=torch.float64, device=op.device)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        x = tree_map(lambda t, a=a, b=b: t[a:b] if isinstance(t, torch.Tensor) else t, inputs)
        rows = per_sample(x, W[:, a:b]).double()  # (c, S, P)
        w = weights[:, a:b].double().T  # (c, S)
        out += torch.einsum("cs,csp->sp", w, rows * rows)
    return out


def _bar(op: CurvatureOperator, description: str, verbose: bool) -> ProgressBar:
    bar = ProgressBar(
        op.source.num_batches or 0, description, verbose and bool(op.source.num_batches)
    )
    return bar


# ------------------------------------------------------------------------------------------------
# exact GGN diagonal


def ggn_diagonal(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    params: Any = None,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sample_chunk: int = 64,
    verbose: bool = True,
) -> DiagonalResult:
    """The EXACT diagonal of the generalised Gauss-Newton matrix of the mean loss.

    ``diag G = (1/N) sum_i diag(J_i^T H_i J_i) = (1/N) sum_i sum_c lambda_ic (J_i^T u_ic)^2``, with
    ``J_i`` ``(D, P)`` the Jacobian of sample ``i``'s output (``D`` numbers) and ``H_i =
    sum_c lambda_ic u_ic u_ic^T`` the eigendecomposition of its ``D x D`` output Hessian
    (``n_b`` times the sample's block of the batch loss's output Hessian, closed form for
    cross-entropy, MSE and BCE; exact for indefinite output Hessians too). Cost: one pass over the
    data with ``D`` backward passes per batch (``vjp`` of each sample along its ``D`` vectors,
    vectorised over the samples of a chunk), i.e. ``N * D`` per-sample vector-Jacobian products;
    memory ``sample_chunk * D * P`` numbers.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list).
        params: parameter selection (names, glob patterns, modules); default all trainable.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics); the
            latter is refused for models with batch norm, whose samples it couples.
        dtype: evaluation dtype (e.g. ``torch.float64``); default the model's.
        device: evaluation device; default the model's.
        sample_chunk: samples evaluated together (memory bound).
        verbose: progress bar over the batches.

    Returns:
        A :class:`DiagonalResult` named ``"ggn"``.
    """
    sample_chunk = _check_count("sample_chunk", sample_chunk)
    op = _per_sample_operator(model, loss_fn, data, params, bn_mode, dtype, device, "ggn_diagonal")
    D = 0

    def eigenvectors(out: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # columns of the output Hessian, block-diagonal over samples: U[c, i] = e_c
        nonlocal D
        n, D = batch.n, out[0].numel()
        eye = torch.eye(D, dtype=out.dtype, device=out.device)
        U = eye.reshape(D, 1, *out.shape[1:]).expand(D, n, *out.shape[1:]).contiguous()
        with torch.no_grad():
            HU = op.objective.hessian_product(out, batch.targets, U)  # (D, n, *out)
        blocks = HU.reshape(D, n, D).permute(1, 2, 0).double() * n  # (n, D, D): [i, :, c]
        blocks = (blocks + blocks.transpose(1, 2)) / 2
        lam, Q = torch.linalg.eigh(blocks)  # (n, D), (n, D, D)
        return Q.permute(2, 0, 1).reshape(D, n, *out.shape[1:]).to(out.dtype), lam.T

    acc, n_total = _squares_pass(
        op, "GGN diagonal", verbose, sample_chunk, eigenvectors, 1, collapse=True
    )
    acc = acc[0]
    return _result(
        op,
        (acc / n_total).to(op.dtype),
        "ggn",
        method="per-sample Jacobians",
        output_size=D,
        per_sample_vjps=n_total * D,
        data_passes=1,
    )


# ------------------------------------------------------------------------------------------------
# Monte Carlo GGN (MC Fisher) diagonal


def mc_ggn_diagonal(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    mc_samples: int = 1,
    seed: int | None = None,
    params: Any = None,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sample_chunk: int = 64,
    verbose: bool = True,
) -> DiagonalResult:
    """The diagonal of the Monte Carlo Fisher: an unbiased estimate of the GGN diagonal.

    ``(1/N) sum_i (1/S) sum_s (J_i^T r_is)^2`` where ``r_is`` is ``sqrt(n_b c_i)`` times the
    gradient of the negative log-likelihood with respect to the output at a target drawn from the
    model's predictive distribution (categorical for cross-entropy, Bernoulli for BCE-with-logits,
    Gaussian for MSE), so that ``E[r r^T] = H_i`` and the expectation is exactly
    :func:`ggn_diagonal` (for cross-entropy the GGN is the Fisher). This is the "Diag-GGN" of the
    paper's Figure 7. Cost: one pass with ``mc_samples`` backward passes per batch (per-sample
    ``vjp``s); memory ``sample_chunk * mc_samples * P``.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list).
        params: parameter selection (names, glob patterns, modules); default all trainable.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics); only
            ``"eval"`` for models with batch norm.
        dtype: evaluation dtype (e.g. ``torch.float64``); default the model's.
        device: evaluation device; default the model's.
        mc_samples: ``S``, targets drawn per sample.
        seed: seed of the sampled targets (a generator on the evaluation device); fresh when
            ``None`` (recorded in ``metadata``). In a process group rank 0's seed is used and
            each rank draws the targets of its own samples from its own stream (the seed mixed
            with the rank, as :func:`deepcurvature.fisher` with ``kind="mc"`` does), so the
            result is the diagonal of that operator built with the same seed on the same shards.
        sample_chunk: samples evaluated together.
        verbose: progress bar over the batches.

    Returns:
        A :class:`DiagonalResult` named ``"mc_ggn"`` whose ``std_error`` (NaN for one sample) is
        the standard error over the ``S`` independent single-sample estimates.
    """
    S = _check_count("mc_samples", mc_samples)
    sample_chunk = _check_count("sample_chunk", sample_chunk)
    op = _per_sample_operator(
        model, loss_fn, data, params, bn_mode, dtype, device, "mc_ggn_diagonal"
    )
    op.objective.check_mc()
    used_seed = resolve_seed(seed)
    if op.ranks is not None:  # rank 0's seed; every rank draws its own stream for its samples
        if seed is None:
            used_seed = _rank0_seed(used_seed, op)
        stream = _rank_seed(used_seed, op.ranks.rank)
    else:
        stream = used_seed
    generator = torch.Generator(device=op.device).manual_seed(stream)

    def sampled(out: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        drawn = op.objective.draw_samples(out, batch.targets, S, generator)
        R = op.objective.mc_factors(out, batch.targets, drawn)  # (S, n, *out)
        return R, torch.full((S, batch.n), float(batch.n), dtype=torch.float64, device=op.device)

    acc, n_total = _squares_pass(op, "MC GGN diagonal", verbose, sample_chunk, sampled, S)
    replicas = acc / n_total  # (S, P): one estimate per Monte Carlo sample
    value = replicas.mean(0)
    se = (
        replicas.std(0, unbiased=True) / math.sqrt(S) if S > 1 else torch.full_like(value, math.nan)
    )
    return _result(
        op,
        value.to(op.dtype),
        "mc_ggn",
        se.to(op.dtype),
        method="Monte Carlo Fisher",
        mc_samples=S,
        seed=used_seed,
        per_sample_vjps=n_total * S,
        data_passes=1,
    )


def _rank0_seed(seed: int, op: CurvatureOperator) -> int:
    """Rank 0's ``seed`` on every rank (one all-reduce; only for ``seed=None``)."""
    assert op.ranks is not None
    buf = torch.tensor([seed if op.ranks.rank == 0 else 0], dtype=torch.int64, device=op.device)
    return int(all_reduce_sum(buf).item())


# ------------------------------------------------------------------------------------------------
# empirical Fisher diagonal


def empirical_fisher_diagonal(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    params: Any = None,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sample_chunk: int = 64,
    verbose: bool = True,
) -> DiagonalResult:
    """The diagonal of the empirical Fisher: the mean of the squared per-sample gradients.

    ``(1/N) sum_i g_i^2`` with ``g_i`` the gradient of sample ``i``'s loss ``l_i`` (``L = (1/N)
    sum_i l_i``; for the built-in losses ``l_i`` is ``loss_fn`` of the sample alone), exactly the
    diagonal of :func:`deepcurvature.fisher` with ``kind="empirical"``. Cost: one pass, one
    backward pass per batch (per-sample ``vjp``, vectorised).

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list).
        params: parameter selection (names, glob patterns, modules); default all trainable.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics); only
            ``"eval"`` for models with batch norm.
        dtype: evaluation dtype (e.g. ``torch.float64``); default the model's.
        device: evaluation device; default the model's.
        sample_chunk: samples evaluated together.
        verbose: progress bar over the batches.

    Returns:
        A :class:`DiagonalResult` named ``"empirical_fisher"``.
    """
    sample_chunk = _check_count("sample_chunk", sample_chunk)
    op = _per_sample_operator(
        model, loss_fn, data, params, bn_mode, dtype, device, "empirical_fisher_diagonal"
    )

    def gradients(out: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        G = op.objective.output_gradient(out, batch.targets).mul(batch.n)  # per-sample l_i
        return G.unsqueeze(0), torch.ones((1, batch.n), dtype=torch.float64, device=op.device)

    acc, n_total = _squares_pass(
        op, "empirical Fisher diagonal", verbose, sample_chunk, gradients, 1
    )
    acc = acc[0]
    return _result(
        op,
        (acc / n_total).to(op.dtype),
        "empirical_fisher",
        method="per-sample gradients",
        per_sample_vjps=n_total,
        data_passes=1,
    )


# ------------------------------------------------------------------------------------------------
# Hutchinson diagonal of any operator


def hutchinson_diagonal(
    op: Any,
    probes: int = 100,
    *,
    seed: int | None = None,
    probe: str = "rademacher",
    block_size: int = 16,
    verbose: bool = True,
) -> DiagonalResult:
    """Stochastic diagonal estimate ``sum_k z_k * (A z_k) / sum_k z_k * z_k`` (Bekas et al. 2007).

    A thin wrapper of :func:`deepcurvature.diagonal` that keeps the operator's parameter layout
    (for :meth:`DiagonalResult.per_layer`). Unbiased with Rademacher probes; the per-entry error
    falls like ``sqrt(sum_{j != i} A_ij^2 / probes)``. Cost: ``probes`` operator products
    (``ceil(probes / block_size)`` passes over the data for a curvature operator).

    Args:
        op: a curvature operator (:func:`deepcurvature.hessian`, ``ggn``, ``fisher``) or any
            symmetric operator / matrix.
        probes: number of probe vectors.
        seed: seed of the probes (recorded).
        probe: ``"rademacher"`` or ``"gaussian"``.
        block_size: probes per ``matmat`` (one data pass each).
        verbose: progress bar.

    Returns:
        A :class:`DiagonalResult` named ``"hutchinson"`` with per-entry ``std_error``.
    """
    est = stochastic_diagonal(
        op, probes, seed=seed, probe=probe, block_size=block_size, verbose=verbose
    )
    meta = {"method": "Hutchinson", "probes": est.n_matvec, "probe": est.probe, "seed": est.seed}
    if isinstance(op, CurvatureOperator):
        return _result(op, est.value, "hutchinson", est.std_error, **meta)
    return DiagonalResult(est.value, "hutchinson", est.std_error, metadata=meta)


# ------------------------------------------------------------------------------------------------
# Adam's second moment


def adam_second_moment(
    optimizer_or_state: torch.optim.Optimizer | Mapping[str, Any],
    model: nn.Module,
    *,
    bias_correction: bool = True,
    params: Any = None,
) -> DiagonalResult:
    """Adam's running average of squared gradients ``v`` (``exp_avg_sq``), flattened.

    ``v_t = beta2 v_{t-1} + (1 - beta2) g_t^2`` is the diagonal curvature proxy implied by Adam,
    AdamW and the project's Gadam (their preconditioner is ``sqrt(v_hat) + eps``). With
    ``bias_correction`` the value is ``v_hat = v_t / (1 - beta2^t)`` (``t`` the parameter's step
    count), as Adam uses it.

    Args:
        optimizer_or_state: a ``torch.optim.Adam``/``AdamW``/``Gadam`` (any optimiser keeping
            ``exp_avg_sq``), its ``state_dict()``, or a checkpoint dict holding one under
            ``"optimizer"`` (e.g. ``dc.read_checkpoint(path)``). A state dict is matched to the
            model's parameters in ``model.parameters()`` order (how optimisers are usually
            built), its shapes checked.
        model: the network whose parameters the optimiser updates.
        bias_correction: divide by ``1 - beta2^t``.
        params: parameter selection (default: those with ``requires_grad``).

    Returns:
        A :class:`DiagonalResult` named ``"adam"`` in ``model.named_parameters()`` order.

    Raises:
        ValueError: no ``exp_avg_sq`` for a selected parameter (the optimiser is not Adam-like or
            has not stepped yet), or a state dict that does not fit the model.
    """
    from ..operators.params import ParameterLayout, select_parameters

    names = select_parameters(model, params)
    named = dict(model.named_parameters())
    states: dict[str, Mapping[str, Any]] = {}
    beta2: dict[str, float] = {}
    if isinstance(optimizer_or_state, torch.optim.Optimizer):
        opt = optimizer_or_state
        by_id = {id(p): n for n, p in named.items()}
        for group in opt.param_groups:
            b2 = float(group.get("betas", (0.9, 0.999))[1])
            for p in group["params"]:
                n = by_id.get(id(p))
                if n is not None:
                    beta2[n] = b2
                    states[n] = opt.state.get(p, {})
        source = type(opt).__name__
    elif isinstance(optimizer_or_state, Mapping):
        sd = optimizer_or_state
        if "state" not in sd and isinstance(sd.get("optimizer"), Mapping):
            sd = sd["optimizer"]
        if "state" not in sd or "param_groups" not in sd:
            raise ValueError(
                "expected an optimizer state dict (keys 'state' and 'param_groups') or a "
                "checkpoint holding one under 'optimizer'; got keys "
                f"{sorted(map(str, optimizer_or_state))[:8]}"
            )
        ids = [(pid, group) for group in sd["param_groups"] for pid in group["params"]]
        all_names = [n for n, _ in model.named_parameters()]
        if len(ids) != len(all_names):
            raise ValueError(
                f"the optimizer state covers {len(ids)} parameters but the model has "
                f"{len(all_names)}; it must come from an optimizer built with model.parameters()"
            )
        for (pid, group), n in zip(ids, all_names, strict=True):
            beta2[n] = float(group.get("betas", (0.9, 0.999))[1])
            states[n] = sd["state"].get(pid, sd["state"].get(str(pid), {}))
        source = "state dict"
    else:
        raise TypeError(
            "adam_second_moment needs an optimizer, its state_dict() or a checkpoint dict; got "
            f"{type(optimizer_or_state).__name__}"
        )
    parts = []
    for n in names:
        st = states.get(n)
        if st is None or "exp_avg_sq" not in st:
            raise ValueError(
                f"no Adam second moment (exp_avg_sq) for parameter {n!r}: the optimizer is not "
                "Adam-like (Adam, AdamW, Gadam) or has not taken a step for this parameter"
            )
        v = st["exp_avg_sq"].detach()
        if tuple(v.shape) != tuple(named[n].shape):
            raise ValueError(
                f"exp_avg_sq of {n!r} has shape {tuple(v.shape)} but the parameter has "
                f"{tuple(named[n].shape)}: the optimizer state does not fit this model"
            )
        v = v.to(torch.float64)
        if bias_correction:
            step = float(st.get("step", 0))
            if step < 1:
                raise ValueError(f"the Adam state of {n!r} has step={step}: nothing to correct")
            v = v / (1.0 - beta2[n] ** step)
        parts.append(v.reshape(-1))
    layout = ParameterLayout.from_model(model, names)
    first = named[names[0]]
    value = torch.cat(parts).to(first.dtype if first.is_floating_point() else torch.float64)
    return DiagonalResult(
        value=value,
        name="adam",
        param_names=list(layout.names),
        numels=list(layout.numels),
        shapes=[tuple(s) for s in layout.shapes],
        metadata={"source": source, "bias_correction": bias_correction},
    )


# ------------------------------------------------------------------------------------------------
# comparison with a spectral density


def _as_density(density: Any) -> SpectralDensity:
    if isinstance(density, SpectralDensity):
        return density
    inner = getattr(density, "density", None)
    if isinstance(inner, SpectralDensity):  # SpectrumResult
        return inner
    if callable(inner):  # LanczosResult
        return inner()
    raise TypeError(
        "density must be a SpectralDensity, a SpectrumResult or a LanczosResult, got "
        f"{type(density).__name__}"
    )


def _as_values(x: Any, what: str) -> np.ndarray:
    if isinstance(x, DiagonalResult) or hasattr(x, "std_error"):
        x = x.value
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be a non-empty array of finite numbers")
    return arr


@dataclass
class DiagonalComparison:
    """A diagonal beside the spectral density of the same matrix (paper section 6.3, Figure 7).

    Attributes:
        diagonal: ``(P,)`` the diagonal entries.
        density: the (Lanczos) spectral density.
        name: label of the diagonal.
        eigenvalues: exact eigenvalues when known (small cases), else ``None``.
        summary: the numbers compared (see :func:`compare_diagonal`).
        bins: number of histogram bins of :meth:`plot`.
    """

    diagonal: np.ndarray
    density: SpectralDensity
    name: str
    eigenvalues: np.ndarray | None
    summary: dict[str, float]
    bins: int = 60

    def plot(
        self,
        *,
        ax: Any = None,
        title: str | None = None,
        bins: int | None = None,
        log_weights: bool = False,
    ) -> Figure:
        """The diagonal's histogram (bar masses sum to 1) over the density's stems (Figure 5/7).

        Drawn by :func:`deepcurvature.plot_comparison`: everything in one unit (probability
        mass), common bins, exact eigenvalues as a second histogram when known, and a table of
        the range, mean and second moment of each. Colours: Okabe-Ito (colour-blind safe).

        Args:
            ax: draw into these axes (default: a new figure).
            title: axes title.
            bins: number of histogram bins over the plotted range (default ``self.bins``).
            log_weights: logarithmic mass axis, which keeps small stems (outliers) and sparse
                bins visible next to a spike at zero (typical of networks).

        Returns:
            The :class:`matplotlib.figure.Figure`.
        """
        from ..plotting.comparison import plot_comparison

        label = self.name if "diag" in self.name.lower() else f"{self.name} diagonal"
        return plot_comparison(
            self.density,
            exact_eigenvalues=self.eigenvalues,
            diagonal=self.diagonal,
            diagonal_label=label,
            bins=int(bins or self.bins),
            log_scale=log_weights,
            ax=ax,
            title=title or f"Diagonal ({self.name}) vs Lanczos spectral density",
        )

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"DiagonalComparison({self.name!r}: diagonal [{s['diag_min']:.4g}, "
            f"{s['diag_max']:.4g}] vs density [{s['density_min']:.4g}, {s['density_max']:.4g}])"
        )


def compare_diagonal(
    diag: Any,
    density: Any,
    *,
    bins: int = 60,
    zero_tol: float = 1e-3,
    eigenvalues: Any = None,
    name: str | None = None,
) -> DiagonalComparison:
    """Compare a diagonal with the spectral density of the same matrix (section 6.3).

    Summary (``diag_*`` of the diagonal entries, ``density_*`` of the density, ``eig_*`` of exact
    eigenvalues when given): ``min``/``max`` (the support), ``mean`` (both estimate ``tr(A)/P``:
    the diagonal's exactly, the density's first moment up to the probe error),
    ``second_moment`` (the diagonal's ``sum_i A_ii^2 / P`` is at most the spectrum's ``tr(A^2)/P =
    sum_ij A_ij^2 / P``, equation 10: the diagonal is too narrow), ``std``, ``negative`` (fraction
    of negative entries / negative mass) and ``mass_near_zero`` (``|x| <= zero_tol * scale``, the
    scale the largest magnitude of all values); ``support_ratio`` = diagonal range / density
    range and ``second_moment_ratio`` = diagonal / density second moment.

    Args:
        diag: a :class:`DiagonalResult`, a ``DiagonalEstimate``, a tensor or an array ``(P,)``.
        density: a :class:`SpectralDensity`, a ``SpectrumResult`` or a ``LanczosResult``.
        bins: histogram bins of the plot.
        zero_tol: relative tolerance of "near zero".
        eigenvalues: exact eigenvalues ``(P,)`` (small cases), added to the summary and plot.
        name: label of the diagonal (default its ``name``).

    Returns:
        A :class:`DiagonalComparison` (``.summary``, ``.plot()``).
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    label = name or getattr(diag, "name", None) or "diagonal"
    d = _as_values(diag, "the diagonal")
    dens = _as_density(density)
    ev = None if eigenvalues is None else _as_values(eigenvalues, "eigenvalues")
    scale = max(float(np.abs(d).max()), float(np.abs(dens.nodes).max()))
    if ev is not None:
        scale = max(scale, float(np.abs(ev).max()))
    tol = zero_tol * scale
    s: dict[str, float] = {
        "dim": float(d.size),
        "diag_min": float(d.min()),
        "diag_max": float(d.max()),
        "diag_mean": float(d.mean()),
        "diag_second_moment": float(np.mean(d * d)),
        "diag_std": float(d.std()),
        "diag_negative": float(np.mean(d < 0)),
        "diag_mass_near_zero": float(np.mean(np.abs(d) <= tol)),
        "density_min": dens.lambda_min,
        "density_max": dens.lambda_max,
        "density_mean": dens.moment(1),
        "density_second_moment": dens.moment(2),
        "density_std": math.sqrt(max(dens.moment(2) - dens.moment(1) ** 2, 0.0)),
        "density_negative": dens.negative_mass(),
        "density_mass_near_zero": float(dens.weights[np.abs(dens.nodes) <= tol].sum()),
    }
    span = s["density_max"] - s["density_min"]
    s["support_ratio"] = (s["diag_max"] - s["diag_min"]) / span if span > 0 else math.nan
    m2 = s["density_second_moment"]
    s["second_moment_ratio"] = s["diag_second_moment"] / m2 if m2 > 0 else math.nan
    if ev is not None:
        s.update(
            {
                "eig_min": float(ev.min()),
                "eig_max": float(ev.max()),
                "eig_mean": float(ev.mean()),
                "eig_second_moment": float(np.mean(ev * ev)),
                "eig_negative": float(np.mean(ev < 0)),
                "eig_mass_near_zero": float(np.mean(np.abs(ev) <= tol)),
            }
        )
    return DiagonalComparison(d, dens, str(label), ev, s, int(bins))
