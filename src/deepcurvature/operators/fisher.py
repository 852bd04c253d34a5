"""Fisher information matrices of a network as linear operators: empirical and Monte Carlo.

* ``kind="empirical"``: ``F = (1/N) sum_i g_i g_i^T`` with ``g_i`` the gradient of the per-sample
  loss ``l_i``, defined so that ``L = (1/N) sum_i l_i``: ``l_i`` is ``n_b`` times sample ``i``'s
  term in its batch's mean loss, i.e. ``loss_fn`` of that sample alone for the built-in losses
  (the output gradient of ``l_i`` is ``n_b`` times row ``i`` of ``grad_f loss_fn(f, y)``, which
  is how it is computed: the loss must be a sum of per-sample terms).
* ``kind="mc"``: ``F = (1/N) sum_i (1/M) sum_m J_i^T R_im R_im^T J_i`` with ``R_im`` the scaled
  gradient of the negative log-likelihood at a target ``y_im`` sampled from the model's predictive
  distribution (categorical for cross-entropy, Bernoulli for BCE-with-logits, Gaussian for MSE),
  ``M = mc_samples``; in expectation it equals the GGN.

Neither per-sample Jacobians nor per-sample gradients are materialised: a product is a JVP of the
output (``J V``, one forward pass shared by the columns of a block), per-sample scalars
``s_i = <G_i, (J V)_i>`` with ``G_i`` the output gradient of ``l_i`` (or the scaled ``R_im``), and
one VJP ``J^T (s_i G_i)``.

The Monte Carlo targets are drawn once, at the first product, from a generator seeded with ``seed``
and kept (so the operator is one fixed matrix): memory ``N * mc_samples`` integers for
cross-entropy (per position for sequences), ``N * mc_samples * d`` bytes for BCE and
``N * mc_samples * d`` floats for MSE, with ``d`` the output size per sample. The data must then
yield the same batches in the same order at every product (no shuffling).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..linalg.probes import resolve_seed
from .batches import Batch
from .model_state import shuffles
from .output_space import OutputSpaceOperator

__all__ = ["FISHER_KINDS", "FisherOperator", "fisher"]

FISHER_KINDS = ("empirical", "mc")


class FisherOperator(OutputSpaceOperator):
    """Empirical or Monte Carlo Fisher (+ ``lam I``) over the data set. See :func:`fisher`.

    Attributes:
        kind: ``"empirical"`` or ``"mc"``.
        mc_samples: targets sampled per sample (``"mc"``).
        seed: the seed of the Monte Carlo targets (``None`` for ``"empirical"``).
    """

    curvature = "fisher"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        data: Iterable[Any],
        *,
        kind: str = "empirical",
        mc_samples: int = 1,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if kind not in FISHER_KINDS:
            raise ValueError(f"kind must be 'empirical' or 'mc', got {kind!r}")
        if kind == "mc" and (
            isinstance(mc_samples, bool)
            or not isinstance(mc_samples, (int, np.integer))
            or mc_samples < 1
        ):
            raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        if kind == "mc" and kwargs.get("compile"):
            raise ValueError(
                "compile=True is not available for kind='mc' (the sampled targets are drawn "
                "per batch from a seeded generator, outside what torch.compile reproduces); use "
                "kind='mc' without compile, or compile=True with the GGN or the empirical Fisher"
            )
        self.kind = kind  # before the base class, whose process-group check reads them
        self.mc_samples = int(mc_samples)
        super().__init__(model, loss_fn, data, **kwargs)
        self.seed = resolve_seed(seed) if kind == "mc" else None
        self._samples: dict[int, torch.Tensor] = {}
        self._generator: torch.Generator | None = None
        if kind == "mc":
            self.objective.check_mc()
            # in a process group every rank draws its own stream for its own samples
            stream = self.seed if self.ranks is None else _rank_seed(self.seed, self.ranks.rank)
            self._generator = torch.Generator(device=self.device).manual_seed(stream)
            if shuffles(data):
                warnings.warn(
                    "kind='mc' with a shuffling DataLoader: the sampled targets are kept per batch "
                    "position, so products would pair them with other samples; use shuffle=False",
                    stacklevel=3,
                )

    def _replica_fields(self) -> dict[str, float]:
        fields = super()._replica_fields()
        fields["Fisher kind"] = float(FISHER_KINDS.index(self.kind))
        fields["mc_samples"] = float(self.mc_samples)
        return fields

    @property
    def metadata(self) -> dict[str, Any]:
        """A JSON-able description of the operator (for result files)."""
        meta = super().metadata
        meta["fisher_kind"] = self.kind
        if self.kind == "mc":
            meta.update(mc_samples=self.mc_samples, seed=self.seed)
        return meta

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that build this operator again on other data."""
        return {
            **super().settings(),
            "kind": self.kind,
            "mc_samples": self.mc_samples,
            "seed": self.seed,
        }

    def _factors(self, out: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, float]:
        """Per-sample vectors ``(S, n_b, ...)`` and the scale of their outer products."""
        y = batch.targets
        if self.kind == "empirical":
            G = self.objective.output_gradient(out, y).mul_(batch.n)
            return G.unsqueeze(0), 1.0
        samples = self._samples.get(batch.index)
        if samples is None:
            assert self._generator is not None
            samples = self.objective.draw_samples(out, y, self.mc_samples, self._generator)
            self._samples[batch.index] = samples
        elif samples.shape[1] != batch.n:
            raise ValueError(
                f"batch {batch.index} has {batch.n} samples but had {samples.shape[1]} when the "
                "Monte Carlo targets were drawn; the data must yield the same batches in the same "
                "order at every product"
            )
        return self.objective.mc_factors(out, y, samples), batch.n / self.mc_samples

    def _output_weights(
        self, out: torch.Tensor, jv: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``W = sum_s R_s <R_s, J V>`` (scaled) ``(k, n_b, ...)`` and the batch loss."""
        y, k = batch.targets, jv.shape[0]
        with torch.no_grad():
            value = self.objective(out, y)
        R, scale = self._factors(out.detach(), batch)
        S, n = R.shape[0], R.shape[1]
        Rf = R.reshape(S, n, -1)
        U = jv.reshape(k, n, -1)
        s = torch.einsum("knd,snd->ksn", U, Rf)  # per-sample scalars <R_si, (J v)_i>
        W = torch.einsum("ksn,snd->knd", s, Rf) * scale
        return W.reshape(jv.shape), value.detach()


def _rank_seed(seed: int, rank: int) -> int:
    """The Monte Carlo seed of ``rank``: distinct per rank, ``seed`` itself on rank 0."""
    return (seed + rank * 0x9E3779B97F4A7C15) % 2**63


def fisher(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    kind: str = "empirical",
    mc_samples: int = 1,
    seed: int | None = None,
    params: Any = None,
    bn_mode: str = "eval",
    weight_decay: float = 0.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cache: bool | str = False,
    verbose: bool = False,
    targets: str | None = None,
    compile: bool = False,
) -> FisherOperator:
    """The Fisher information of ``model`` over ``data`` as a ``(P, P)`` linear operator.

    ``kind="empirical"``: ``F = (1/N) sum_i g_i g_i^T (+ lam I)``, ``g_i`` the gradient of sample
    ``i``'s loss (any loss separable over samples; the per-sample loss is ``n_b`` times the
    sample's share of the batch's mean loss). ``kind="mc"``: the Monte Carlo Fisher with
    ``mc_samples`` targets per sample drawn from the model's predictive distribution (categorical
    for cross-entropy, Bernoulli for BCE-with-logits, Gaussian for MSE; other losses raise), drawn
    once with ``seed`` and kept so the operator is a fixed matrix; its expectation is the GGN.
    In a ``torch.distributed`` process group each rank draws the targets of its own samples from
    its own stream (``seed`` mixed with the rank; pass the same ``seed`` on every rank).
    Other arguments and the batch weighting are those of :func:`deepcurvature.hessian`.
    Like :func:`deepcurvature.ggn`, a non-tensor model output needs a built-in loss (of its
    logits).

    ``compile=True`` evaluates each batch's product with ``torch.compile`` (see
    :mod:`deepcurvature.operators.compiled`; opt-in, the first product compiles; not with
    ``kind="mc"``).

    Returns:
        A :class:`FisherOperator` (symmetric positive semi-definite).

    Raises:
        ValueError: bad ``kind`` or ``mc_samples``, or ``kind="mc"`` with an unsupported loss.
    """
    return FisherOperator(
        model,
        loss_fn,
        data,
        kind=kind,
        mc_samples=mc_samples,
        seed=seed,
        params=params,
        bn_mode=bn_mode,
        weight_decay=weight_decay,
        dtype=dtype,
        device=device,
        cache=cache,
        verbose=verbose,
        targets=targets,
        compile=compile,
    )
