"""The Hessian of the mean loss over a data set as a linear operator (Pearlmutter products).

The Hessian-vector product of a batch is the derivative of its gradient along ``v``,
``H v = d/dt grad L(theta + t v)`` (Pearlmutter's trick), computed exactly by one of two engines:

* ``engine="reverse"`` (default): reverse-over-reverse. One forward and one backward pass with
  ``create_graph=True`` per batch, shared by all ``k`` columns; then ``H v = d (g . v) / d theta``
  as a backward pass through the gradient's graph, one per column on the CPU (measured fastest)
  or one per block of up to 16 columns elsewhere (``torch.autograd.grad(...,
  is_grads_batched=True)``, i.e. ``vmap`` over the cotangents). Works for every op PyTorch can
  differentiate twice.
* ``engine="forward"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad`` over
  ``functional_call``, ``vmap``-ed over the ``k`` tangents. It needs forward-mode formulas for the
  backward of every op, which PyTorch lacks for some (e.g. ``huber_loss_backward``, custom
  ``autograd.Function`` without ``jvp``) and fails on ``F.mse_loss`` in torch 2.13 ("ZeroTensors
  are immutable"; the operator evaluates MSE as ``((f - y) ** 2).mean()`` there instead). It is
  kept as an alternative and for comparison (``benchmarks/hvp.py``).

The forward engine recomputes the primal passes per block of columns. Reverse-over-reverse is the
default because in ``benchmarks/hvp.py`` it is as fast as or faster than ``torch.func``
forward-over-reverse everywhere (about three times faster for a single vector on a small MLP,
where the ``torch.func`` overhead dominates), and it works for more losses and layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from .base import Block, CurvatureOperator, Tensors
from .batches import Batch

__all__ = ["HESSIAN_ENGINES", "HessianOperator", "hessian"]

HESSIAN_ENGINES = ("reverse", "forward")


class HessianOperator(CurvatureOperator):
    """``H = grad^2 L(theta)`` (+ ``lam I``), the Hessian of the mean loss over the data set.

    See :func:`hessian` for the arguments.
    """

    curvature = "hessian"

    def __init__(self, *args: Any, engine: str = "reverse", **kwargs: Any) -> None:
        if engine not in HESSIAN_ENGINES:
            raise ValueError(
                f"engine must be 'reverse' (reverse-over-reverse) or 'forward' "
                f"(forward-over-reverse), got {engine!r}"
            )
        super().__init__(*args, **kwargs)
        self.engine = engine

    @property
    def metadata(self) -> dict[str, Any]:
        """A JSON-able description of the operator (for result files)."""
        return {**super().metadata, "hvp_engine": self.engine}

    def _auto_block_width(self, leaves: Tensors, fixed: Tensors, batch: Batch) -> int:
        # reverse-over-reverse on the CPU: one column at a time through the shared graph is
        # fastest (a vmap-ed double backward costs more per column, benchmarks/hvp.py)
        if self.engine == "reverse" and self.device.type == "cpu":
            return 1
        return super()._auto_block_width(leaves, fixed, batch)

    def _batch_products(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        if self.engine == "forward":
            return super()._batch_products(blocks, fixed, batch)
        return self._reverse_over_reverse(blocks, fixed, batch)

    def _batch_product(
        self, block: Block, fixed: Tensors, batch: Batch
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        return self._forward_over_reverse(block, fixed, batch)

    def _reverse_over_reverse(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        """Hessian products of every block on one batch, by reverse-over-reverse.

        One forward and one backward pass (``create_graph=True``) are shared by every block;
        then one backward pass through the gradient's graph per block.
        """
        names = self.layout.names
        first = blocks[0]
        leaves = [first.leaves[n] for n in names]
        with torch.enable_grad():
            value = self.objective(self._forward(first.leaves, fixed, batch), batch.targets)
            grads = torch.autograd.grad(
                value * batch.n, leaves, create_graph=True, allow_unused=True
            )
        # a gradient that does not depend on the parameters contributes nothing to H V
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:
            return [[None] * len(names) for _ in blocks], value.detach()
        outputs = [grads[i] for i in live]
        results = []
        for j, block in enumerate(blocks):
            keep = j < len(blocks) - 1
            if block.single is not None:
                cot = [block.single[names[i]] for i in live]
                hv = torch.autograd.grad(outputs, leaves, cot, retain_graph=keep, allow_unused=True)
            else:
                cot = [block.tangents[names[i]] for i in live]
                hv = torch.autograd.grad(
                    outputs,
                    leaves,
                    cot,
                    retain_graph=keep,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            results.append(list(hv))
        return results, value.detach()

    def _forward_over_reverse(
        self, block: Block, fixed: Tensors, batch: Batch
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        n = batch.n

        def scaled_loss(p: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
            value = self.objective.forward_ad_safe(self._forward(p, fixed, batch), batch.targets)
            return value * n, value.detach()

        gradient = grad(scaled_loss, has_aux=True)  # (grads, loss)

        def hvp(v: Tensors) -> tuple[Tensors, torch.Tensor]:
            _, hv, value = jvp(gradient, (block.state,), (v,), has_aux=True)
            return hv, value

        if block.single is not None:
            hv, value = hvp(block.single)
        else:
            hv, value = vmap(hvp, out_dims=(0, None))(block.tangents)
        return [hv[name] for name in self.layout.names], value


def hessian(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    *,
    params: Any = None,
    bn_mode: str = "eval",
    weight_decay: float = 0.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cache: bool = False,
    verbose: bool = False,
    engine: str = "reverse",
) -> HessianOperator:
    """The Hessian of the mean loss of ``model`` over ``data`` as a ``(P, P)`` linear operator.

    ``L(theta) = (1/N) sum_b n_b loss_fn(model(x_b), y_b)`` (batches weighted by their number of
    samples, i.e. ``loss_fn`` with mean reduction on the concatenated data set); ``H = grad^2 L``
    over the flattened selected parameters, in the order of ``model.named_parameters()``. Each
    product is one pass over ``data``.

    Args:
        model: any ``nn.Module``; it is not modified (flags, buffers, parameters, requires_grad).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction, e.g. ``nn.CrossEntropyLoss()``.
        data: iterable of ``(inputs, targets)`` batches: a DataLoader or a list of tuples; inputs a
            tensor (``model(x)``), a dict of tensors (``model(**x)``) or a tuple (``model(*x)``).
        params: ``None`` (all parameters with ``requires_grad``), or names, ``fnmatch`` glob
            patterns (``"layer1.*"``) and/or submodules; the others are held fixed.
        bn_mode: ``"eval"``: batch norm uses running statistics; ``"train"``: batch statistics of
            each batch (the curvature of the loss as trained, which depends on the batch size).
            Dropout is off in both; running statistics are never updated.
        weight_decay: ``lam``; adds ``lam * I`` (the L2 term ``lam/2 ||theta||^2``).
        dtype: evaluation dtype; ``torch.float64`` evaluates a float64 copy of the model state and
            of the floating inputs. Default: the model's.
        device: evaluation device (default: the model's).
        cache: keep the batches on the device after the first pass (memory: the data set).
        verbose: progress bar over the batches at each product.
        engine: ``"reverse"`` (reverse-over-reverse, the default: fastest in ``benchmarks/hvp.py``
            and works for every twice-differentiable op) or ``"forward"`` (forward-over-reverse
            with ``torch.func``); both are exact.

    Returns:
        A :class:`HessianOperator` (``symmetric=True``) with ``matvec``, ``matmat``, ``gradient()``,
        ``loss()``, ``flatten``/``unflatten``, ``param_names``, ``num_params``, ``num_samples``.

    Raises:
        ValueError: an empty or unknown parameter selection, a bad ``bn_mode`` or ``weight_decay``.
        FloatingPointError: (at a product) a non-finite loss or product, naming the batch.
    """
    return HessianOperator(
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
        engine=engine,
    )
