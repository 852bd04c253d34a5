"""The generalised Gauss-Newton matrix ``G = (1/N) sum_b n_b J_b^T H_b J_b`` as a linear operator.

``J_b`` is the Jacobian of the network output on batch ``b`` with respect to the selected
parameters and ``H_b`` the Hessian of the batch's mean loss with respect to that output (closed form
for cross-entropy, MSE and BCE-with-logits, automatic differentiation otherwise; see
:mod:`deepcurvature.operators.losses`). ``G`` is positive semi-definite for convex losses; it is the
Hessian without the terms with second derivatives of the network (paper section 5). Products: a JVP
of the output (forward mode), the output Hessian, a VJP back to the parameters; one forward pass
per batch shared by all columns of a block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .batches import Batch
from .output_space import OutputSpaceOperator

__all__ = ["GGNOperator", "ggn"]


class GGNOperator(OutputSpaceOperator):
    """``G = J^T H_out J`` (+ ``lam I``) averaged over the data set. See :func:`ggn`."""

    curvature = "ggn"

    def _output_weights(
        self, out: torch.Tensor, jv: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``W = n_b H_out (J V)`` ``(k, n_b, ...)`` and the batch loss, from ``f`` and ``J V``."""
        y = batch.targets
        with torch.no_grad():
            value = self.objective(out, y)
        W = self.objective.hessian_product(out, y, jv)
        return W * batch.n, value.detach()


def ggn(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    params: Any = None,
    bn_mode: str = "eval",
    weight_decay: float = 0.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cache: bool | str = False,
    verbose: bool = False,
    targets: str | None = None,
    compile: bool = False,
) -> GGNOperator:
    """The generalised Gauss-Newton matrix of the mean loss of ``model`` over ``data``.

    ``G = (1/N) sum_b n_b J_b^T H_b J_b (+ lam I)`` with ``J_b`` the Jacobian of the outputs of
    batch ``b`` and ``H_b`` the Hessian of ``loss_fn`` with respect to them: ``diag(p) - p p^T``
    per sample/position for cross-entropy (also for ``(B, T, C)`` outputs with
    :class:`SequenceCrossEntropyLoss`), ``2/d I`` for MSE, ``sigma (1 - sigma)`` for
    BCE-with-logits, each scaled exactly as torch's mean reduction; any other loss is
    differentiated automatically. Arguments, batch weighting and the returned helpers are those of
    :func:`deepcurvature.hessian`.

    The output Hessian needs the loss as a function of a tensor: a model whose output is not a
    tensor (a dict, a ``ModelOutput``) works with a built-in loss, applied to its logits (the
    ``logits`` attribute or ``"logits"`` key); a custom loss of such an output raises a
    ``TypeError`` at the first product (wrap the model so that it returns the loss's tensor).

    ``compile=True`` evaluates each batch's product with ``torch.compile`` (see
    :mod:`deepcurvature.operators.compiled`; opt-in, the first product compiles).

    Returns:
        A :class:`GGNOperator` (symmetric positive semi-definite for convex losses).
    """
    return GGNOperator(
        model,
        loss_fn,
        data,
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
