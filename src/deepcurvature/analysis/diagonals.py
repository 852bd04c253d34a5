"""Diagonal approximations of curvature matrices, and how they compare with the spectrum.

Diagonals are a popular proxy for the curvature of a network (Bishop 2006; the diagonal Fisher;
Adam's second-moment estimate, Chaudhari et al. 2016). Section 6.3 of the paper shows why they are
a poor proxy for the *spectrum*: the diagonal of ``A`` has the right mean (``sum_i A_ii / P =
tr(A) / P``, the first moment of the spectral density) but not the right spread (``sum_i A_ii^2 <=
sum_ij A_ij^2 = tr(A^2)``, equation 10), so its histogram is far narrower than the eigenvalue
density and misses the outliers (Figures 5, 6(c) and 7). This module computes the diagonals

* :func:`hessian_diagonal`: exact; for a network piecewise linear in every parameter (ReLU,
  convolutions, pooling, batch norm with running statistics) it equals the GGN diagonal and is
  computed from per-sample Jacobians (:mod:`.piecewise_linear`), else from ``P`` Hessian-vector
  products with unit vectors;
* :func:`ggn_diagonal`: exact, ``(1/N) sum_i diag(J_i^T H_i J_i)`` from per-sample Jacobians;
* :func:`mc_ggn_diagonal`: the diagonal of the Monte Carlo Fisher (sampled labels), an unbiased
  estimate of the GGN diagonal;
* :func:`empirical_fisher_diagonal`: ``(1/N) sum_i g_i^2``;
* :func:`hutchinson_diagonal`: the stochastic estimate ``E[z * (A z)]`` of any operator;
* :func:`adam_second_moment`: Adam's ``exp_avg_sq``;

each as a :class:`DiagonalResult` ``(P,)`` in the order of ``model.named_parameters()``, and
:func:`compare_diagonal` puts one beside a Lanczos spectral density (:class:`DiagonalComparison`
with a summary and the paper's overlay plot). The per-sample diagonals are in
:mod:`.exact_diagonals`, the comparison in :mod:`.diagonal_comparison`.

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
from typing import Any

import numpy as np
import torch
from torch import nn

from ..linalg.trace import diagonal as stochastic_diagonal
from ..operators.base import CurvatureOperator
from ..progress import ProgressBar
from .loss_stats import group_parameters

__all__ = ["DiagonalResult", "adam_second_moment", "hessian_diagonal", "hutchinson_diagonal"]

#: Default size limit of :func:`hessian_diagonal` (``P`` Hessian-vector products).
HESSIAN_DIAGONAL_MAX_PARAMS = 20_000
#: the methods of :func:`hessian_diagonal`
HESSIAN_DIAGONAL_METHODS = ("auto", "gauss-newton", "unit-vectors")

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

    @property
    def trace(self) -> float:
        """The sum of the diagonal: the trace of the matrix (exact for an exact diagonal)."""
        return float(self.value.double().sum())

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
    method: str = "auto",
    block_size: int = 64,
    sample_chunk: int = 32,
    max_params: int = HESSIAN_DIAGONAL_MAX_PARAMS,
    force: bool = False,
    verbose: bool = True,
) -> DiagonalResult:
    """The EXACT diagonal of the Hessian of the mean loss, ``H_ii``, and with it ``tr(H)``.

    Two exact methods:

    * ``"gauss-newton"``: for a network whose output is piecewise linear in every single
      parameter, ``H_ii = G_ii`` (the residual term ``sum_c dL/df_c d^2 f_c / d theta_i^2``
      vanishes, see :mod:`.piecewise_linear`), computed like :func:`~.exact_diagonals.ggn_diagonal`
      from per-sample Jacobians: ``N * D`` per-sample vector-Jacobian products in one pass over
      the data (``D`` outputs per sample), whatever ``P``.
    * ``"unit-vectors"``: ``H_ii = e_i^T H e_i`` from the Hessian-vector products ``H E`` with
      the unit vectors in blocks of ``block_size`` columns: ``P`` products in
      ``ceil(P / block_size)`` passes, for small models only (refused above ``max_params``
      unless ``force=True``). Valid for every network.

    ``"auto"`` (default) takes ``"gauss-newton"`` when
    :func:`~.piecewise_linear.piecewise_linear_obstacle` recognises the network (``nn.Sequential``
    chains of linear/convolution layers, ReLU-type activations, pooling and batch norm with
    ``bn_mode="eval"``), else ``"unit-vectors"``. Passing ``"gauss-newton"`` explicitly asserts
    the property for a network the check cannot inspect (e.g. a ReLU ResNet of custom modules);
    for a network without it (tanh, GELU, attention, batch statistics) the result is the GGN
    diagonal, not the Hessian's.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: an iterable of ``(inputs, targets)`` batches (a DataLoader or a list).
        params: parameter selection (names, glob patterns, modules); default all trainable.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        dtype: evaluation dtype (e.g. ``torch.float64``); default the model's.
        device: evaluation device; default the model's.
        method: ``"auto"``, ``"gauss-newton"`` or ``"unit-vectors"``.
        block_size: unit vectors per data pass (``"unit-vectors"``).
        sample_chunk: samples evaluated together (``"gauss-newton"``; memory
            ``sample_chunk * D * P`` numbers).
        max_params: refuse more than this many parameters with ``"unit-vectors"`` ...
        force: ... unless ``force=True``.
        verbose: progress bar.

    Returns:
        A :class:`DiagonalResult` named ``"hessian"``; ``metadata["method"]`` says which method
        ran (and, for ``"auto"`` falling back to unit vectors, ``metadata["not_piecewise_linear"]``
        why). Its :attr:`~DiagonalResult.trace` is the exact trace.

    Raises:
        ValueError: an unknown ``method``; ``P > max_params`` without ``force`` for
            ``"unit-vectors"`` (the message gives the cost and the cheaper estimates); a
            non-positive ``block_size`` or ``sample_chunk``.
    """
    from ..operators import hessian
    from .exact_diagonals import ggn_diagonal
    from .piecewise_linear import piecewise_linear_obstacle

    if method not in HESSIAN_DIAGONAL_METHODS:
        raise ValueError(
            f"unknown method={method!r}: use 'auto', 'gauss-newton' (networks piecewise linear in "
            "every parameter) or 'unit-vectors' (any network, P Hessian-vector products)"
        )
    block_size = _check_count("block_size", block_size)
    obstacle = piecewise_linear_obstacle(model, bn_mode) if method == "auto" else None
    if method == "gauss-newton" or (method == "auto" and obstacle is None):
        diag = ggn_diagonal(
            model,
            loss_fn,
            data,
            params=params,
            bn_mode=bn_mode,
            dtype=dtype,
            device=device,
            sample_chunk=sample_chunk,
            verbose=verbose,
        )
        diag.name = "hessian"
        diag.metadata["method"] = "gauss-newton (piecewise linear in every parameter)"
        diag.metadata["curvature"] = "hessian"
        return diag
    op = hessian(model, loss_fn, data, params=params, bn_mode=bn_mode, dtype=dtype, device=device)
    P = op.num_params
    if P > max_params and not force:
        why = f" ({obstacle})" if obstacle else ""
        raise ValueError(
            f"the exact Hessian diagonal of {P:,} parameters costs {P:,} Hessian-vector products "
            f"({math.ceil(P / block_size):,} passes over the data); it is refused above "
            f"max_params={max_params:,}. The network is not recognised as piecewise linear in "
            f"every parameter{why}, where method='gauss-newton' would be exact and cheap: pass "
            "that if it is (e.g. a ReLU network of custom modules), force=True (or a larger "
            "max_params) to run the unit vectors anyway, select fewer parameters with "
            "params=..., or estimate it with hutchinson_diagonal(dc.hessian(...), probes)"
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
    extra = {"not_piecewise_linear": obstacle} if obstacle else {}
    return _result(
        op, out, "hessian", method="unit vectors", matvecs=P, data_passes=len(starts), **extra
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
