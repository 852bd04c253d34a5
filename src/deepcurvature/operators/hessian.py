"""The Hessian of the mean loss over a data set as a linear operator (Pearlmutter products).

The Hessian-vector product of a batch is the derivative of its gradient along ``v``,
``H v = d/dt grad L(theta + t v)`` (Pearlmutter's trick), computed exactly by one of two engines:

* ``engine="reverse"`` (default): reverse-over-reverse. One forward and one backward pass that
  keep their graph per batch, shared by all ``k`` columns; then ``H v = d (g . v) / d theta`` as
  a backward pass through the gradient's graph. Columns are taken in blocks (see
  :meth:`HessianOperator._auto_block_width`): a block of one column is a plain
  ``torch.autograd.grad`` through the graph (the least overhead); a wider block uses
  ``torch.func.vjp`` of ``torch.func.grad`` and ``vmap``-s the pullback over its columns
  (batched matrix products, up to 1.7x cheaper per column for small activations). The plain
  autograd forward of a model with ReLU, max-pooling or convolution modules runs under
  :func:`~deepcurvature.operators.lean.lean_derivatives` (ReLU, 2-D max pooling and
  convolutions of the data without second-derivative terms known to be zero). Works for
  every op PyTorch can differentiate twice: when ``vmap`` cannot run the model (e.g. an
  old-style ``autograd.Function``), the operator warns once and takes the columns one at a
  time.
* ``engine="forward"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad`` over
  ``functional_call``, ``vmap``-ed over the ``k`` tangents. It needs forward-mode formulas for the
  backward of every op, which PyTorch lacks for some (e.g. ``huber_loss_backward``, custom
  ``autograd.Function`` without ``jvp``) and fails on ``F.mse_loss`` in torch 2.13 ("ZeroTensors
  are immutable"; the operator evaluates MSE as ``((f - y) ** 2).mean()`` there instead). It is
  kept as an alternative and for comparison (``benchmarks/hvp.py``).

The forward engine recomputes the primal passes per block of columns. Reverse-over-reverse is the
default because in ``benchmarks/hvp.py`` it is about as fast as or faster than ``torch.func``
forward-over-reverse everywhere (within 5% on the CNN, about three times faster for a single
vector on a small MLP, where the ``torch.func`` overhead dominates), and it works for more losses
and layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap

from .base import MAX_BLOCK, Block, CurvatureOperator, Tensors
from .batches import Batch
from .chain_products import chain_of, operator_chain_products
from .compiled import compiled_hessian_product, run_compiled
from .lean import has_lean_layers, lean_derivatives
from .missing_derivatives import missing_derivative
from .products import raise_if_not_finite
from .taylor import taylor_quadratic_forms

__all__ = ["HESSIAN_ENGINES", "HessianOperator", "hessian"]

HESSIAN_ENGINES = ("reverse", "forward")
#: bytes of a block's largest tensor (``width x`` the largest activation) for the reverse engine
#: on the CPU
CPU_HESSIAN_BLOCK_BYTES = 4 * 2**20


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
        self._vmap_error: str | None = None  # set when the batched products failed once
        self._lean = has_lean_layers(self.model)  # ReLU, max pooling or convolutions
        self._taylor_inputs = True  # False once a batch's inputs were not a tensor

    @property
    def metadata(self) -> dict[str, Any]:
        """A JSON-able description of the operator (for result files)."""
        return {**super().metadata, "hvp_engine": self.engine}

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that build this operator again on other data."""
        return {**super().settings(), "engine": self.engine}

    def _auto_block_width(self, leaves: Tensors, fixed: Tensors, batch: Batch) -> int:
        """Columns per ``vmap`` of the reverse engine on the CPU: up to 16 while small.

        The block's tensors (``width x`` the largest activation) are kept below 4 MiB: in
        ``benchmarks/hvp.py`` and ``benchmarks/hvp_blocks.py``, vmapped columns are up to 1.7x
        cheaper than one at a time for small activations (an MLP on digits: 1.5 against 1.9-2.0
        gradients per column at 16 columns), and up to 4x dearer once the block's tensors reach
        tens of MiB (the CNN with batches of 128, which is best one column at a time).
        """
        if self.engine == "reverse" and self.device.type == "cpu":
            if self._activation_bytes is None:
                self._activation_bytes = self._largest_activation(leaves, fixed, batch)
            budget = CPU_HESSIAN_BLOCK_BYTES // max(1, self._activation_bytes)
            return max(1, min(MAX_BLOCK, budget))
        return super()._auto_block_width(leaves, fixed, batch)

    # -- quadratic forms (Hutchinson) --------------------------------------------------------------
    @property
    def quadratic_route(self) -> str:
        """How :meth:`quadratic_forms` computes: ``"taylor"`` or ``"products"``.

        ``"taylor"``: the model is a layer chain (:func:`~.chain.chain_layers`) evaluated in Taylor
        mode (:mod:`.taylor`, about half the work of a product per probe); else from ``matmat``.
        """
        return "taylor" if chain_of(self) and self._taylor_inputs else "products"

    def _quadratic_forms(self, V: torch.Tensor) -> torch.Tensor:
        """``(k,)`` float64 ``v_j^T H v_j``: one pass in Taylor mode for a layer chain."""
        if self.quadratic_route != "taylor":
            return super()._quadratic_forms(V)
        probes = self.layout.columns_to_dict(V)
        state, fixed = self._state()
        tensors = self._tensors(state, fixed)
        forms = torch.zeros(V.shape[1], dtype=torch.float64, device=self.device)
        values: list[tuple[int, torch.Tensor]] = []
        failure: Exception | None = None
        n_total = 0
        what = "Hessian quadratic form"
        try:
            with self._evaluation_mode(), self._bar(what) as bar:
                for batch in self.source:
                    if not isinstance(batch.inputs, torch.Tensor):
                        self._taylor_inputs = False  # dict or tuple inputs: products instead
                        break
                    part, value = taylor_quadratic_forms(
                        chain_of(self), tensors, probes, batch, self.objective
                    )
                    forms += part
                    values.append((batch.index, value))
                    n_total += batch.n
                    bar.advance()
            if self._taylor_inputs:
                raise_if_not_finite(values, forms, what, lambda: None)
        except Exception as exc:
            if self.ranks is None:
                raise
            failure = exc
        if not self._taylor_inputs:
            return super()._quadratic_forms(V)
        if self.ranks is not None:
            forms, n_total = self._reduce(forms, n_total, failure, what)
        forms = forms / n_total
        if self.weight_decay:
            forms = forms + self.weight_decay * V.double().square().sum(0)
        return forms

    def _batch_products(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        if self.engine == "forward" or self.compile:
            return super()._batch_products(blocks, fixed, batch)
        chained = operator_chain_products(self, blocks, fixed, batch, self._output_hessian, True)
        if chained is not None:
            return chained
        return self._reverse_over_reverse(blocks, fixed, batch)

    def _chain_route_allowed(self) -> bool:
        return self.engine == "reverse" and super()._chain_route_allowed()

    def _output_hessian(
        self, out: torch.Tensor, f1: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_b H_out f1`` ``(k, n_b, ...)`` and the batch loss (the chain route's top)."""
        with torch.no_grad():
            value = self.objective(out, batch.targets)
        return self.objective.hessian_product(out, batch.targets, f1) * batch.n, value

    def _batch_product(
        self, block: Block, fixed: Tensors, batch: Batch
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        if self.compile:
            if self._compiled is None:
                self._compiled = compiled_hessian_product(self)
            return run_compiled(self, self._compiled, block, fixed, batch)
        return self._forward_over_reverse(block, fixed, batch)

    def _reverse_over_reverse(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        """Hessian products of every block on one batch, by reverse-over-reverse.

        One forward and one backward pass (with the graph kept) are shared by every block; then
        one backward pass through the gradient's graph per block. Blocks of one column use plain
        ``torch.autograd`` (the least overhead); when a block has several columns, the batch is
        differentiated with ``torch.func.vjp`` of ``torch.func.grad`` and the pullback is
        ``vmap``-ed over the block's columns (``H`` is symmetric, so the VJP of the gradient is
        ``H v``).
        """
        if self._vmap_error is not None or all(b.single is not None for b in blocks):
            return self._autograd_products(blocks, fixed, batch)
        try:
            return self._vmapped_products(blocks, fixed, batch)
        except (RuntimeError, NotImplementedError) as error:
            if missing_derivative(error, self.curvature) is not None:
                raise  # no route differentiates it (the caller names it)
            # e.g. an old-style autograd.Function, which torch.func cannot transform: one
            # column at a time through plain autograd instead (a genuine error recurs there)
            self._vmap_error = f"{type(error).__name__}: {error}"
            warnings.warn(
                "the Hessian's batched (vmap) products failed on this model, so its columns are "
                f"computed one at a time with torch.autograd (slower): {self._vmap_error}",
                stacklevel=2,
            )
            return self._autograd_products(blocks, fixed, batch)

    def _autograd_products(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        names = self.layout.names
        first = blocks[0]
        leaves = [first.leaves[n] for n in names]
        with torch.enable_grad():
            # ReLU, max pooling, convolutions of the data: no zero terms (lean.py)
            with lean_derivatives() if self._lean else nullcontext():
                output = self._forward(first.leaves, fixed, batch)
            value = self.objective(output, batch.targets)
            grads = torch.autograd.grad(
                value * batch.n, leaves, create_graph=True, allow_unused=True
            )
        # a gradient that does not depend on the parameters contributes nothing to H V
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:
            return [[None] * len(names) for _ in blocks], value.detach()
        outputs = [grads[i] for i in live]
        columns = [[b.single] if b.single is not None else _columns(b) for b in blocks]
        remaining = sum(len(cols) for cols in columns)
        results = []
        for block, cols in zip(blocks, columns, strict=True):
            products = []
            for col in cols:
                remaining -= 1
                cot = [col[names[i]] for i in live]
                hv = torch.autograd.grad(
                    outputs, leaves, cot, retain_graph=remaining > 0, allow_unused=True
                )
                products.append(hv)
            if block.single is not None:
                results.append(list(products[0]))
            else:  # (k, *shape) per parameter
                per_param = zip(*products, strict=True)
                pairs = zip(per_param, leaves, strict=True)
                results.append([_stack(parts, leaf) for parts, leaf in pairs])
        return results, value.detach()

    def _vmapped_products(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        n = batch.n

        def scaled_loss(p: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
            value = self.objective(self._forward(p, fixed, batch), batch.targets)
            return value * n, value.detach()

        _, pullback, value = vjp(grad(scaled_loss, has_aux=True), blocks[0].state, has_aux=True)
        names = self.layout.names
        results = []
        for block in blocks:
            if block.single is not None:
                hv = pullback(block.single)[0]
            else:
                hv = vmap(pullback)(block.tangents)[0]
            results.append([hv[name] for name in names])
        return results, value

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


def _columns(block: Block) -> list[Tensors]:
    """The block's tangents one column at a time: ``k`` dicts ``{name: (*shape)}``."""
    return [{n: t[j] for n, t in block.tangents.items()} for j in range(block.k)]


def _stack(parts: tuple[torch.Tensor | None, ...], like: torch.Tensor) -> torch.Tensor | None:
    """``(k, *shape)`` from ``k`` per-column products (``None``: zero)."""
    if all(p is None for p in parts):
        return None
    return torch.stack([torch.zeros_like(like) if p is None else p for p in parts])


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
    cache: bool | str = False,
    verbose: bool = False,
    engine: str = "reverse",
    targets: str | None = None,
    compile: bool = False,
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
        cache: keep the batches on the device after the first pass (memory: the data set);
            ``"forward"`` also keeps each batch's forward pass for the chain route (see
            :class:`~.base.CurvatureOperator`).
        verbose: progress bar over the batches at each product.
        engine: ``"reverse"`` (reverse-over-reverse, the default: fastest in ``benchmarks/hvp.py``
            and works for every twice-differentiable op) or ``"forward"`` (forward-over-reverse
            with ``torch.func``); both are exact.
        compile: evaluate each batch's product with ``torch.compile`` (forward-over-reverse
            through ``torch.func``, whatever ``engine``; see :mod:`.compiled`). Opt-in: the
            first product compiles; on the CPU about twice as fast for a small MLP and slower
            for a CNN (``benchmarks/hvp.py``).
        targets: ``None`` (batches are pairs ``(inputs, targets)``) or the key of the targets in
            dict batches (HuggingFace style, ``targets="labels"``): the model is called with the
            other keys as keyword arguments and ``loss_fn`` gets ``batch["labels"]``.

    ``loss_fn`` gets the model's output unchanged when it is a custom function (a dict output with
    ``lambda o, y: F.cross_entropy(o["logits"], y)``); the built-in losses are applied to the
    logits of a non-tensor output (its ``logits`` attribute or ``"logits"`` key).

    Inside an initialised ``torch.distributed`` process group, ``data`` is this rank's shard (a
    list of batches or a DataLoader, e.g. over a ``DistributedSampler``, which pads the shards to
    equal size by repeating samples unless ``len(dataset)`` is a multiple of the world size), the
    model must be identical on every rank, and the operator is that of the union of the shards:
    one all-reduce per product (see :mod:`deepcurvature.operators.distributed`). Every rank must
    call each product with the same ``V`` (seed the probes of ``lanczos``, ``eigsh``, ``trace``).

    Returns:
        A :class:`HessianOperator` (``symmetric=True``) with ``matvec``, ``matmat``, ``gradient()``,
        ``loss()``, ``flatten``/``unflatten``, ``param_names``, ``num_params``, ``num_samples``.

    Raises:
        ValueError: an empty or unknown parameter selection, a bad ``bn_mode`` or ``weight_decay``.
        FloatingPointError: (at a product) a non-finite loss or product, naming the batch (and,
            in a process group, the rank).
        DistributedError: (in a process group) another rank failed or timed out, or the ranks
            were given different vectors.
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
        targets=targets,
        compile=compile,
    )
