"""Exact and Monte Carlo diagonals of the GGN and Fisher from per-sample passes.

* :func:`ggn_diagonal`: exact, ``(1/N) sum_i diag(J_i^T H_i J_i)`` from per-sample Jacobians;
* :func:`mc_ggn_diagonal`: the diagonal of the Monte Carlo Fisher (sampled labels), an unbiased
  estimate of the GGN diagonal;
* :func:`empirical_fisher_diagonal`: ``(1/N) sum_i g_i^2``.

They evaluate the model on one sample at a time under ``torch.func.vmap`` (a loss that is a sum
over samples, batch norm in ``bn_mode="eval"``), or, for ``nn.Sequential`` chains of linear,
convolution and batch-norm layers, layer by layer from one batched forward pass and ``S``
batched backward passes (:mod:`.layer_squares`; about twice as fast on the CNN of
``benchmarks/peers.py``, and without the ``sample_chunk * S * P`` numbers of the per-sample
route); ``metadata["per_sample_route"]`` says which. In a process group each rank sums its shard's
squares and one all-reduce sums them over the ranks (see :mod:`.diagonals`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_map

from ..linalg.probes import resolve_seed
from ..operators.base import CurvatureOperator
from ..operators.batches import Batch
from ..operators.distributed import all_reduce_sum, reduce_pass
from ..operators.fisher import _rank_seed
from ..progress import ProgressBar
from .diagonals import DiagonalResult, _check_count, _result
from .layer_squares import chain_layers, layer_squares

__all__ = ["empirical_fisher_diagonal", "ggn_diagonal", "mc_ggn_diagonal"]

#: take the layer-by-layer route of :mod:`.layer_squares` for the chain networks it supports
#: (``False``: always one sample at a time under ``vmap``, the general route)
LAYERWISE = True

Tensors = dict[str, torch.Tensor]


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
    layers = chain_layers(op.model, op.bn_mode) if LAYERWISE else None
    failure: Exception | None = None
    quiet = op.ranks is not None and op.ranks.rank != 0  # one progress bar: rank 0's
    try:
        with op.evaluation_mode(), _bar(op, label, verbose and not quiet) as bar:
            for batch in op.source:
                if layers is not None and isinstance(batch.inputs, torch.Tensor):
                    # its own forward pass gives the output the cotangents are made of
                    part = layer_squares(op, layers, state, fixed, batch, cotangents)
                else:
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


def _route(op: CurvatureOperator) -> str:
    """``"layerwise"`` (:mod:`.layer_squares`) or ``"vmap"``: how the squares are computed."""
    return "layerwise" if LAYERWISE and chain_layers(op.model, op.bn_mode) is not None else "vmap"


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
        per_sample_route=_route(op),
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
        per_sample_route=_route(op),
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
        per_sample_route=_route(op),
    )
