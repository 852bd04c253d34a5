"""The Hessian of the loss with respect to the inputs, as a linear operator (Pearlmutter products).

For samples ``x_i`` (each of ``d = prod(input shape)`` entries) with per-sample losses
``l_i = loss_fn(f(x_i), y_i)``:

* ``reduction="mean"``: the ``(d, d)`` operator ``H_in = (1/n) sum_i grad^2_{x_i} l_i``, the
  average input Hessian (Granziol & Flynn, "A Linear Approach to Data Poisoning": the Hessian
  with respect to the input as a diagnostic of poisoning);
* ``reduction="per_sample"``: the ``(n d, n d)`` block-diagonal operator
  ``diag(grad^2_{x_1} l_1, ..., grad^2_{x_n} l_n)`` acting on vectors ``v`` of ``n d`` entries
  (``v.reshape(n, d)[i]`` is sample ``i``'s block); the operator of one sample ``i`` alone is
  ``input_hessian(model, loss_fn, inputs[i:i+1], targets[i:i+1])``.

Products are exact double-backward (Pearlmutter) products: with ``L(X) = sum_i w_i l_i`` over the
stacked inputs ``X`` ``(n, d)``, the gradient ``G = grad_X L`` is built with its graph and
``grad_X (G . T)`` is ``(grad^2_X L) T``, which is block diagonal because the samples do not
interact: row ``i`` is ``w_i grad^2_{x_i} l_i T_i``. The mean operator uses ``w_i = 1/n``
(``loss_fn`` with mean reduction over the batch) and ``T_i = v`` for every ``i``, then sums the
rows. One forward and backward pass per chunk of samples is shared by the ``k`` columns of a
``matmat``.

The model is evaluated like the curvature operators do: dropout off and batch norm on its running
statistics (``eval`` mode; batch statistics would couple the samples), parameters detached and
never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..linalg.operator import LinearOperator
from .evaluation import evaluation_context
from .losses import OutputLoss
from .missing_derivatives import missing_derivative

__all__ = ["INPUT_HESSIAN_REDUCTIONS", "InputHessianOperator", "input_hessian"]

INPUT_HESSIAN_REDUCTIONS = ("mean", "per_sample")


class InputHessianOperator(LinearOperator):
    """Input Hessian of ``loss_fn(model(x), y)``: averaged ``(d, d)`` or per sample ``(n d, n d)``.

    See :func:`input_hessian` for the arguments.

    Attributes:
        num_samples: ``n``.
        input_dim: ``d``, the entries of one input.
        input_shape: the shape of one input.
        reduction: ``"mean"`` or ``"per_sample"``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        inputs: torch.Tensor,
        targets: Any,
        *,
        reduction: str = "mean",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        chunk_size: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if reduction not in INPUT_HESSIAN_REDUCTIONS:
            raise ValueError(
                f"reduction must be 'mean' (the (d, d) average) or 'per_sample' (the block-"
                f"diagonal (n d, n d) operator), got {reduction!r}"
            )
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise TypeError("inputs must be a floating torch.Tensor of shape (n, *input_shape)")
        if inputs.ndim < 2 or inputs.shape[0] < 1:
            raise ValueError(
                f"inputs must have shape (n, *input_shape) with n >= 1, got {tuple(inputs.shape)}"
            )
        n = int(inputs.shape[0])
        n_targets = len(targets) if hasattr(targets, "__len__") else None
        if n_targets != n:
            raise ValueError(
                f"inputs and targets have different lengths ({n} and {n_targets}): give one "
                "target per input"
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        dtype = dtype or inputs.dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype}")
        first = next(model.parameters(), None)
        dev = (
            torch.device(device)
            if device is not None
            else (first.device if first is not None else inputs.device)
        )
        d = int(inputs[0].numel())
        size = d if reduction == "mean" else n * d
        super().__init__((size, size), dtype, dev, symmetric=True)
        self.model, self.loss_fn, self.reduction = model, loss_fn, reduction
        self.objective = OutputLoss(loss_fn)  # (losses torch cannot differentiate twice)
        self.inputs = inputs.detach().to(device=dev, dtype=dtype)
        self.targets = targets.to(dev) if isinstance(targets, torch.Tensor) else targets
        if isinstance(self.targets, torch.Tensor) and self.targets.is_floating_point():
            self.targets = self.targets.to(dtype)
        self.num_samples, self.input_dim = n, d
        self.input_shape = tuple(inputs.shape[1:])
        self.chunk_size = chunk_size

    def _state(self) -> dict[str, torch.Tensor]:
        """Detached parameters and buffers in the operator's dtype and device."""
        state: dict[str, torch.Tensor] = {}
        for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
            t = t.detach().to(self.device)
            state[name] = t.to(self.dtype) if t.is_floating_point() else t
        return state

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        try:
            return self._products(V)
        except (RuntimeError, NotImplementedError) as error:
            clear = missing_derivative(error, "input Hessian")
            if clear is None:
                raise
            raise clear from error

    def _products(self, V: torch.Tensor) -> torch.Tensor:
        """``(size, k)``: the products with the columns of ``V`` (see the module)."""
        n, d, k = self.num_samples, self.input_dim, V.shape[1]
        state = self._state()
        per_sample = self.reduction == "per_sample"
        blocks = V.T.reshape(k, n, d) if per_sample else None
        out = torch.zeros(k, n, d, dtype=self.dtype, device=self.device) if per_sample else None
        total = torch.zeros(k, d, dtype=self.dtype, device=self.device)
        with evaluation_context(self.model, "eval", self.device), torch.enable_grad():
            for lo in range(0, n, self.chunk_size):
                hi = min(n, lo + self.chunk_size)
                x = self.inputs[lo:hi].clone().requires_grad_(True)
                output = functional_call(self.model, state, (x,))
                value = self.objective(output, self.targets[lo:hi])
                if not bool(torch.isfinite(value)):
                    raise FloatingPointError(
                        f"the loss of samples {lo}..{hi - 1} is not finite ({float(value)}); "
                        "check the model and the inputs"
                    )
                # sum_i w_i l_i: w_i = 1/n (mean) or 1 (per sample; blocks unscaled)
                weight = (hi - lo) if per_sample else (hi - lo) / n
                (g,) = torch.autograd.grad(value * weight, x, create_graph=True)
                if not g.requires_grad:  # the loss is linear in the inputs: H = 0
                    continue
                g = g.reshape(hi - lo, d)
                for j in range(k):
                    if per_sample:
                        assert blocks is not None
                        tangent = blocks[j, lo:hi]
                    else:
                        tangent = V[:, j].expand(hi - lo, d)
                    (hv,) = torch.autograd.grad(
                        g, x, tangent, retain_graph=j < k - 1, allow_unused=True
                    )
                    if hv is None:
                        continue
                    hv = hv.reshape(hi - lo, d)
                    if per_sample:
                        assert out is not None
                        out[j, lo:hi] = hv
                    else:
                        total[j] += hv.sum(dim=0)
        if per_sample:
            assert out is not None
            result = out.reshape(k, n * d).T
        else:
            result = total.T
        if not bool(torch.isfinite(result).all()):
            raise FloatingPointError("the input-Hessian product is not finite")
        return result.contiguous()


def input_hessian(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: Any,
    *,
    reduction: str = "mean",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = 256,
) -> InputHessianOperator:
    """The Hessian of the loss with respect to the inputs, as a symmetric linear operator.

    ``reduction="mean"``: ``(1/n) sum_i grad^2_{x_i} l_i`` of shape ``(d, d)``;
    ``reduction="per_sample"``: ``diag_i(grad^2_{x_i} l_i)`` of shape ``(n d, n d)`` (module
    docstring), with ``l_i = loss_fn(model(x_i), y_i)`` and ``d`` the entries of one input.
    ``dc.lanczos``, ``dc.eigsh`` and the plots work on either.

    Args:
        model: any ``nn.Module`` taking ``(n, *input_shape)``; evaluated with dropout off and batch
            norm on its running statistics; not modified.
        loss_fn: ``loss_fn(output, targets)`` with mean reduction over the samples.
        inputs: ``(n, *input_shape)`` floating tensor.
        targets: ``n`` targets (a tensor or anything ``loss_fn`` takes with ``len`` and slicing).
        reduction: ``"mean"`` or ``"per_sample"``.
        dtype: evaluation dtype (default the inputs'); ``torch.float64`` evaluates a float64
            copy of the model state and inputs.
        device: evaluation device (default the model's).
        chunk_size: samples per forward pass.

    Raises:
        ValueError: inputs and targets of different lengths, a bad ``reduction`` or shape.
        TypeError: a non-floating ``inputs`` or a model that is not an ``nn.Module``.
        FloatingPointError: (at a product) a non-finite loss or product.
    """
    return InputHessianOperator(
        model,
        loss_fn,
        inputs,
        targets,
        reduction=reduction,
        dtype=dtype,
        device=device,
        chunk_size=chunk_size,
    )
