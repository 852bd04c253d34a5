"""The common machinery of the curvature operators of a network over a data set.

A :class:`CurvatureOperator` is a :class:`~deepcurvature.linalg.LinearOperator` of shape ``(P, P)``
over the flattened selected parameters. It represents a curvature matrix of the mean loss over the
samples of the whole data set,

    L(theta) = (1 / N) sum_b n_b loss_fn(f(x_b; theta), y_b),    N = sum_b n_b,

so a batch with ``n_b`` samples has weight ``n_b / N`` (a smaller last batch is handled exactly)
and ``L`` is ``loss_fn`` with mean reduction on the concatenated data. ``N`` is counted during every
product (and by :attr:`CurvatureOperator.num_samples`, from ``len(loader.sampler)`` of a DataLoader
or from a pass over the targets).

Every product evaluates the model functionally (``torch.func.functional_call``) on detached copies
of its state, inside a context that switches dropout off and sets the batch-norm layers to the
requested mode (in eval mode as the equivalent affine maps, whose second derivatives are cheap),
and restores everything afterwards: the user's model is left exactly as it was.

Inside an initialised ``torch.distributed`` process group (e.g. under ``torchrun``) every rank
holds a replica of the model and passes its own shard of the data: the operator is then that of
the union of the shards. Each product, ``gradient()`` and ``loss()`` computes the rank's
sample-weighted partial sum over its shard for the whole block ``V`` and ends in one all-reduce
(:mod:`.distributed`); ``N`` is the sum of the ranks' counts and ``weight_decay`` is added after
the reduction. Building the operator checks, with one all-reduce, that the replicas and settings
agree across ranks and that no rank's shard is empty. Outside a process group nothing of this runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module

from ..linalg.operator import LinearOperator
from ..progress import ProgressBar
from . import chain_products
from .batches import Batch, BatchSource
from .distributed import (
    Ranks,
    check_backend,
    compare_replicas,
    current_ranks,
    reduce_pass,
    tensor_checksum,
)
from .evaluation import evaluation_context
from .losses import OutputLoss
from .model_state import ModelState, shuffles, tied_aliases
from .params import ParameterLayout, select_parameters
from .products import (
    CPU_BLOCK_BYTES,
    MAX_BLOCK,
    BatchProducts,
    Block,
    raise_if_not_finite,
)

__all__ = ["BN_MODES", "CPU_BLOCK_BYTES", "MAX_BLOCK", "Block", "CurvatureOperator"]

BN_MODES = ("eval", "train")

Tensors = dict[str, torch.Tensor]


class CurvatureOperator(BatchProducts, LinearOperator):
    """Base class of :class:`HessianOperator`, :class:`GGNOperator` and :class:`FisherOperator`.

    Args:
        model: the network, an ``nn.Module`` (not modified).
        loss_fn: ``loss_fn(output, targets) -> scalar`` with mean reduction.
        data: an iterable of ``(inputs, targets)`` batches, iterated once per product (or of dicts
            holding the targets under the key ``targets``).
        params: parameter selection (see :func:`select_parameters`); ``None`` for all parameters
            with ``requires_grad``.
        bn_mode: ``"eval"`` (batch norm uses its running statistics) or ``"train"`` (batch
            statistics of each batch; the curvature then depends on the batch size). Dropout is off
            in both modes and no buffer of the model is ever updated.
        weight_decay: ``lam >= 0``; adds ``lam * I``, the Hessian of ``lam / 2 * ||theta||^2``.
        dtype: evaluation dtype (default: the model's); float64 evaluates a converted copy.
        device: evaluation device (default: the model's).
        cache: ``True`` keeps the prepared batches on the device after the first pass (memory:
            the whole data set in ``dtype`` on ``device``); ``"forward"`` also keeps each
            batch's forward pass for the chain route of the products (:mod:`.chain_products`;
            memory: about the activations of a gradient pass, for every batch), so that later
            products skip it while the model is unchanged.
        verbose: show a progress bar over the batches during each product.
        targets: ``None`` (batches are pairs ``(inputs, targets)``) or the key of the targets in
            dict batches (e.g. ``"labels"``): the model is called with the other keys as keyword
            arguments (see :mod:`.batches`).
        compile: evaluate the per-batch product with a ``torch.func`` function compiled by
            ``torch.compile`` (see :mod:`.compiled`); opt-in: the first products compile (tens
            of seconds), and on the CPU it pays off for small dense networks only.
    """

    curvature = "curvature"
    #: set to False to compute the products with autograd even for a layer chain (comparisons)
    chain_route = True
    _bound_dicts: tuple[Tensors, Tensors] | None = None  # see _bound

    def __init__(
        self,
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if bn_mode not in BN_MODES:
            raise ValueError(
                f"bn_mode must be 'eval' (running statistics) or 'train' (batch statistics), "
                f"got {bn_mode!r}"
            )
        try:
            weight_decay = float(weight_decay)
        except (TypeError, ValueError):
            raise TypeError(
                f"weight_decay must be a number, got {type(weight_decay).__name__}"
            ) from None
        if not (weight_decay >= 0.0 and weight_decay < float("inf")):
            raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {type(compile).__name__}")
        names = select_parameters(model, params)
        lookup = dict(model.named_parameters())
        first = lookup[names[0]]
        if dtype is None:
            dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(
                f"dtype must be a floating torch dtype (e.g. torch.float64), got {dtype}"
            )
        bad = [n for n in names if not lookup[n].is_floating_point()]
        if bad:
            raise TypeError(f"selected parameters must be floating point; not: {', '.join(bad)}")
        device = torch.device(device) if device is not None else first.device
        self.layout = ParameterLayout.from_model(model, names)
        super().__init__((self.layout.size, self.layout.size), dtype, device, symmetric=True)
        self.model = model
        self.objective = OutputLoss(loss_fn)
        self.loss_fn = loss_fn
        if cache not in (False, True, "forward"):
            raise ValueError(
                f"cache must be False, True (keep the batches) or 'forward' (also keep each "
                f"batch's forward pass), got {cache!r}"
            )
        self.source = BatchSource(data, self.device, dtype, cache=bool(cache), targets_key=targets)
        self.targets_key = targets
        self.data = data
        self.bn_mode = bn_mode
        self.weight_decay = weight_decay
        self.cache = cache
        self.verbose = verbose
        self.compile = compile
        self._compiled: Any = None  # the compiled per-batch product (see .compiled)
        self._selected = frozenset(names)
        self._aliases = tied_aliases(model)
        self._model_state = ModelState(model, self._selected, self.device, dtype)
        self._activation_bytes: int | None = None
        chain_products.chain_of(self)  # on the model as given, outside any evaluation context
        if bn_mode == "train" and shuffles(data):
            warnings.warn(
                "bn_mode='train' with a shuffling DataLoader: the batch statistics change between "
                "products, so the operator is not a fixed matrix; use shuffle=False",
                stacklevel=3,
            )
        #: the process group (``None`` outside one); see :mod:`.distributed`
        self.ranks: Ranks | None = current_ranks()
        self._counts: list[int] | None = None  # samples per rank (in a process group)
        if self.ranks is not None:
            self._counts = self.check_replicas(self.ranks)

    # -- data parallelism -------------------------------------------------------------------------
    def _replica_fields(self) -> dict[str, float]:
        """Settings every rank's operator must share exactly (as numbers, for the check)."""
        return {
            "number of selected parameters": float(self.num_params),
            "number of selected tensors": float(len(self.layout.names)),
            "dtype": float(torch.finfo(self.dtype).eps),
            "device type": float(sum(map(ord, self.device.type))),
            "bn_mode": float(BN_MODES.index(self.bn_mode)),
            "weight_decay": self.weight_decay,
            "curvature": float(sum(map(ord, self.curvature))),
        }

    def check_replicas(self, ranks: Ranks, *, count: bool = True) -> list[int]:
        """The construction check in a process group: one all-reduce, on every rank.

        Compares this rank's settings and a checksum of the model state (parameters and floating
        buffers) with rank 0's and, with ``count``, counts every rank's samples (``N`` is their
        sum). Called when an operator is built inside a process group; analyses that reduce their
        own sums (``loss_stats``) call it with ``count=False``.

        Returns:
            The number of samples of every rank (``-1`` each without ``count``).

        Raises:
            ValueError: on every rank, for a replica or setting that differs from rank 0's, a rank
                without samples, or a backend that cannot reduce tensors on the device.
        """
        check_backend(ranks, self.device)
        state, fixed = self._state()
        params = self.layout.flatten(state).double()  # once per operator: float64 checksums
        buffers = [t for t in fixed.values() if t.is_floating_point()]
        flat_buffers = (
            torch.cat([t.reshape(-1) for t in buffers]).double() if buffers else params[:0]
        )
        sums: dict[str, float] = {}
        sums["parameters (weighted sum)"], sums["parameters (sum of squares)"] = tensor_checksum(
            params
        )
        sums["buffers (weighted sum)"], sums["buffers (sum of squares)"] = tensor_checksum(
            flat_buffers
        )
        error: Exception | None = None
        n: int | None = None
        try:  # an empty shard (len 0) is reported as such on every rank
            if count:
                n = 0 if self.source.num_batches == 0 else self.source.count_samples()
        except Exception as exc:  # raised below, once the other ranks know
            error, n = exc, 0
        try:
            return compare_replicas(ranks, self._replica_fields(), sums, n, self.device)
        except ValueError:
            if error is not None:
                raise error from None
            raise

    # -- public helpers ---------------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """Names of the selected parameters, in flattening order."""
        return list(self.layout.names)

    @property
    def num_params(self) -> int:
        """``P``: the number of selected parameter elements (the operator is ``(P, P)``)."""
        return self.layout.size

    @property
    def num_samples(self) -> int:
        """``N``: the number of samples of the data set (leading dimension of the targets).

        In a process group: the sum over the ranks' shards (counted when the operator was built
        and by every product; no collective here).
        """
        if self._counts is not None:
            return sum(self._counts)
        return self.source.count_samples()

    def flatten(self, tensors: Any) -> torch.Tensor:
        """Concatenate tensors shaped like the selected parameters into a ``(P,)`` vector.

        Takes a list in :attr:`param_names` order or a ``{name: tensor}`` dict.
        """
        return self.layout.flatten(tensors)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a ``(P,)`` vector into tensors shaped like the selected parameters (views)."""
        return self.layout.unflatten(vector)

    def parameters_vector(self) -> torch.Tensor:
        """The current values of the selected parameters, ``(P,)`` in the operator's dtype."""
        state, _ = self._state()
        return self.layout.flatten(state)

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that build this operator again on other data (:meth:`on_data`)."""
        return {
            "params": self.param_names,
            "bn_mode": self.bn_mode,
            "weight_decay": self.weight_decay,
            "dtype": self.dtype,
            "device": self.device,
            "targets": self.targets_key,
            "compile": self.compile,
        }

    def on_data(self, data: Iterable[Any]) -> CurvatureOperator:
        """The same curvature (model, loss, parameters, settings) on other ``data``.

        The new operator shares the model (not copied) and ``block_size``; it does not cache and
        shows no progress bar. In a process group every rank must call it (it checks replicas).
        """
        op = type(self)(self.model, self.loss_fn, data, **self.settings())
        op.block_size = self.block_size
        return op

    def warm_start_operator(self) -> CurvatureOperator | None:
        """The same curvature on the first batch only: a cheap stand-in for warm starts.

        Its products cost one batch instead of a pass over the data, and its top eigenvectors
        lie close to the full operator's (see :func:`~deepcurvature.linalg.eigsh`'s
        ``warm_start``). ``None`` when the data is a single batch (outside a process group; in
        one, every rank takes its first local batch).
        """
        batches = iter(self.data)
        first = next(batches, None)
        if first is None:
            return None
        if self.ranks is None and next(batches, None) is None:
            return None
        return self.on_data([first])

    # -- building blocks for analyses that evaluate the model like the operator does -------------
    def functional_state(self) -> tuple[Tensors, Tensors]:
        """``(selected, fixed)``: detached copies of the parameters and buffers, as in a product.

        ``selected`` maps the selected parameter names to their current values and ``fixed`` the
        other parameters and copies of the buffers, all on the operator's device and dtype. Pass
        them (or differentiable replacements of ``selected``) to :meth:`batch_output`. The dicts
        (and buffer copies) are the caller's own.
        """
        return self._model_state.fresh()

    def batch_output(self, params: Tensors, fixed: Tensors, batch: Batch) -> Any:
        """The model output ``(n_b, ...)`` on ``batch`` with parameters ``params`` (functional).

        What the loss takes: a tensor output as is; a non-tensor output (a dict, a ``ModelOutput``)
        unchanged for a custom loss and as its logits for a built-in one (see
        :mod:`.losses`). Call inside :meth:`evaluation_mode`; works under ``torch.func`` transforms.
        """
        return self._forward(params, fixed, batch)

    def evaluation_mode(self) -> Any:
        """Context manager: the model set up as the operator evaluates it (see ``bn_mode``).

        Every flag (and batch-norm ``forward``) is restored on exit.
        """
        return self._evaluation_mode()

    def batches(self) -> Iterator[Batch]:
        """The data set's batches, prepared (checked, on the device, in the dtype)."""
        return iter(self.source)

    @property
    def metadata(self) -> dict[str, Any]:
        """A JSON-able description of the operator (for result files)."""
        return {
            "curvature": self.curvature,
            "num_params": self.num_params,
            "param_names": self.param_names,
            "bn_mode": self.bn_mode,
            "weight_decay": self.weight_decay,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            **self.objective.describe(),
            **({"targets_key": self.targets_key} if self.targets_key is not None else {}),
            **({"world_size": self.ranks.world_size} if self.ranks is not None else {}),
            **({"compile": True} if self.compile else {}),
            "product_route": self.product_route,
        }

    @property
    def product_route(self) -> str:
        """How the products are computed: ``"chain"`` or ``"autograd"``.

        ``"chain"``: written out layer by layer (:mod:`.chain_products`) for a layer chain, on
        every batch whose inputs are a tensor.
        """
        allowed = chain_products.ENABLED and self.chain_route and self._chain_route_allowed()
        return "chain" if allowed else "autograd"

    def _chain_route_allowed(self) -> bool:
        """Whether the products may take the chain route (a chain, no ``compile``)."""
        return not self.compile and bool(chain_products.chain_of(self))

    def loss(self, *, include_weight_decay: bool = True) -> float:
        """The mean loss ``L`` over the data set, as a float.

        Adds ``lam / 2 ||theta||^2`` over the selected parameters when ``weight_decay`` is set and
        ``include_weight_decay`` (so that the operator is the Hessian of this function).
        """
        state, fixed = self._state()
        total, n_total = torch.zeros((), dtype=torch.float64, device=self.device), 0
        values: list[tuple[int, torch.Tensor]] = []
        failure: Exception | None = None
        try:
            with torch.no_grad(), self._evaluation_mode(), self._bar("loss") as bar:
                for batch in self.source:
                    value = self.objective(self._forward(state, fixed, batch), batch.targets)
                    values.append((batch.index, value))
                    total += batch.n * value.double()
                    n_total += batch.n
                    bar.advance()
            raise_if_not_finite(values, None, "loss", lambda: None)
        except Exception as exc:
            if self.ranks is None:
                raise
            failure = exc
        if self.ranks is not None:
            total, n_total = self._reduce(total, n_total, failure, "loss")
        out = float(total) / n_total
        if include_weight_decay and self.weight_decay:
            sq = sum(float((t.double() ** 2).sum()) for t in state.values())
            out += 0.5 * self.weight_decay * sq
        return out

    def gradient(self, *, include_weight_decay: bool = True) -> torch.Tensor:
        """The gradient ``(P,)`` of the mean loss over the data set.

        Adds ``lam * theta`` when ``weight_decay`` is set and ``include_weight_decay``.
        """
        state, fixed = self._state()
        names = self.layout.names
        leaves = {n: state[n].detach().requires_grad_() for n in names}
        leaf_list = [leaves[n] for n in names]
        acc = [torch.zeros_like(t) for t in leaf_list]
        n_total = 0
        values: list[tuple[int, torch.Tensor]] = []

        def batch_gradient(batch: Batch) -> tuple[tuple, torch.Tensor]:
            with torch.enable_grad():
                value = self.objective(self._forward(leaves, fixed, batch), batch.targets)
                grads = torch.autograd.grad(value * batch.n, leaf_list, allow_unused=True)
            return grads, value.detach()

        def locate() -> int | None:
            with self._evaluation_mode():
                for batch in self.source:
                    grads, _ = batch_gradient(batch)
                    if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
                        return batch.index
            return None

        failure: Exception | None = None
        try:
            with self._evaluation_mode(), self._bar("gradient") as bar:
                for batch in self.source:
                    grads, value = batch_gradient(batch)
                    for a, g_b in zip(acc, grads, strict=True):
                        if g_b is not None:
                            a.add_(g_b)
                    values.append((batch.index, value))
                    n_total += batch.n
                    bar.advance()
            g = torch.cat([a.reshape(-1) for a in acc])
            raise_if_not_finite(values, g, "gradient", locate)
        except Exception as exc:
            if self.ranks is None:
                raise
            failure, g = exc, torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        if self.ranks is not None:
            g, n_total = self._reduce(g, n_total, failure, "gradient")
        g = g / n_total
        if include_weight_decay and self.weight_decay:
            g = g + self.weight_decay * self.layout.flatten(state)
        return g

    # -- the product ------------------------------------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        tangents = self.layout.columns_to_dict(V)
        state, fixed = self._state()
        names = self.layout.names
        leaves = {n: state[n].detach().requires_grad_() for n in names}
        flat = torch.zeros((k, self.num_params), dtype=self.dtype, device=self.device)
        acc = self.layout.row_views(flat)  # {name: (k, *shape)} views of the flat rows
        plan: list[tuple[Block, list[torch.Tensor]]] = []
        values: list[tuple[int, torch.Tensor]] = []
        what = f"{self.curvature} product"
        failure: Exception | None = None
        n_total = 0
        try:
            n_total = self._accumulate(V, tangents, state, fixed, leaves, acc, plan, values)
            out = flat.T if k == 1 else flat.T.contiguous()  # (P, k)
            blocks = [b for b, _ in plan]
            raise_if_not_finite(values, out, what, lambda: self._locate(blocks, fixed))
        except Exception as exc:
            if self.ranks is None:
                raise
            failure, out = exc, torch.zeros_like(V)
        if self.ranks is not None:
            out, n_total = self._reduce(out, n_total, failure, what, vectors=V)
        out.div_(n_total)
        if self.weight_decay:
            out.add_(V, alpha=self.weight_decay)
        return out

    def _reduce(
        self,
        partial: torch.Tensor,
        n_local: int,
        failure: Exception | None,
        what: str,
        *,
        vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Sum a pass's partial result over the ranks (its one all-reduce) and count ``N``.

        Raises on every rank when a rank's pass failed (see
        :func:`~deepcurvature.operators.distributed.reduce_pass`).
        """
        assert self.ranks is not None
        total, counts = reduce_pass(
            self.ranks,
            None if failure is not None else partial,
            n_local,
            failure,
            what,
            vectors=vectors,
            like=partial,
        )
        self._counts = counts
        return total, sum(counts)

    # -- internals --------------------------------------------------------------------------------
    def _state(self) -> tuple[Tensors, Tensors]:
        """Detached selected parameters and the fixed rest (other parameters, buffer copies).

        All on the operator's device, floating tensors in its dtype; cached while the model is
        unchanged (see :class:`~.model_state.ModelState`), so not to be modified.
        """
        return self._model_state.get()

    def _tensors(self, state: Tensors, fixed: Tensors) -> Tensors:
        """Every parameter and buffer name of the model mapped to the tensor a product uses."""
        tensors = {**fixed, **state}
        for alias, name in self._aliases:  # tied weights: every name gets the same tensor
            tensors[alias] = tensors[name]
        return tensors

    @contextmanager
    def _bound(self, state: Tensors, fixed: Tensors) -> Iterator[None]:
        """Within: the model holds ``state`` and ``fixed`` (swapped in once for a whole pass).

        :meth:`_forward` with these very dicts then calls the model directly instead of
        ``functional_call`` per batch (whose swap costs ~40 us, a tenth of a millisecond batch of
        a small MLP); torch.func transforms pass other dicts and still go through
        ``functional_call``. Everything is restored on exit, also after an error.
        """
        with _reparametrize_module(self.model, self._tensors(state, fixed), tie_weights=False):
            self._bound_dicts = (state, fixed)
            try:
                yield
            finally:
                self._bound_dicts = None

    def _forward(self, state: Tensors, fixed: Tensors, batch: Batch) -> Any:
        """The model output ``(n_b, ...)`` on one batch with parameters ``state``.

        A tensor output is returned as is; any other output is passed through
        :meth:`OutputLoss.loss_input` (unchanged for a custom loss, its logits for a built-in one).
        """
        bound = self._bound_dicts
        if bound is not None and bound[0] is state and bound[1] is fixed:
            result = batch.call(self.model)
        else:
            tensors = self._tensors(state, fixed)

            def call(*args: Any, **kwargs: Any) -> Any:
                return functional_call(self.model, tensors, args, kwargs, tie_weights=False)

            result = batch.call(call)
        if isinstance(result, torch.Tensor):
            return result
        return self.objective.loss_input(result, batch.index)

    def _output_tensor(self, state: Tensors, fixed: Tensors, batch: Batch) -> torch.Tensor:
        """:meth:`_forward` for the GGN and the Fisher: a tensor, or a clear ``TypeError``."""
        out = self._forward(state, fixed, batch)
        if isinstance(out, torch.Tensor):
            return out
        return self.objective.check_tensor(out, batch.index)

    def _evaluation_mode(self) -> Any:
        """Dropout off, batch norm per ``bn_mode``, running statistics never updated.

        See :func:`~deepcurvature.operators.evaluation.evaluation_context`.
        """
        return evaluation_context(self.model, self.bn_mode, self.device)

    def _bar(self, description: str) -> ProgressBar:
        total = self.source.num_batches
        quiet = self.ranks is not None and self.ranks.rank != 0  # one progress bar: rank 0's
        verbose = self.verbose and bool(total) and not quiet
        return ProgressBar(total or 0, description, verbose=verbose)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.num_params}, params={len(self.param_names)} tensors, "
            f"loss={self.objective.name}, bn_mode={self.bn_mode!r}, "
            f"weight_decay={self.weight_decay}, dtype={self.dtype}, device={self.device})"
        )
