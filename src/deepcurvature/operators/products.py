"""One pass over the data for a curvature product: column blocks, per-batch products, accumulation.

A product ``C V`` with ``V`` of shape ``(P, k)`` is one pass over the (local) data. Its columns are
split into :class:`Block` s, planned once per product on the first batch (the block width is
``block_size`` when set, else chosen from the size of the largest activation, see
:meth:`BatchProducts._auto_block_width`); every batch then adds ``n_b C_b V`` of every block to one
accumulator per parameter (``torch._foreach_add_``, one call per block). Nothing synchronises with
the host per batch: the finiteness of the batch losses and of the result is checked once per pass
(:func:`raise_if_not_finite`), and only a failing pass walks the data again to name the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batches import Batch
from .missing_derivatives import missing_derivative

if TYPE_CHECKING:
    from .base import CurvatureOperator

__all__ = ["CPU_BLOCK_BYTES", "MAX_BLOCK", "BatchProducts", "Block", "raise_if_not_finite"]

MAX_BLOCK = 16
CPU_BLOCK_BYTES = 16 * 2**20

Tensors = dict[str, torch.Tensor]


@dataclass
class Block:
    """A block of ``k`` columns of a product, prepared once per product.

    Attributes:
        k: number of columns.
        tangents: ``{name: (k, *shape)}``.
        single: ``{name: (*shape)}`` when ``k == 1`` (else ``None``).
        state: detached parameter values ``{name: tensor}``.
        leaves: the same values as autograd leaves (``requires_grad=True``), shared by all
            batches of the product.
    """

    k: int
    tangents: Tensors
    single: Tensors | None
    state: Tensors
    leaves: Tensors


class BatchProducts:
    """The per-batch product machinery of :class:`~.base.CurvatureOperator` (a mixin).

    Subclasses implement :meth:`_batch_product` (one block on one batch) or override
    :meth:`_batch_products` (every block on one batch, sharing work between them).
    """

    #: columns evaluated together (one ``vmap``) per batch; ``None`` chooses automatically (see
    #: :meth:`_auto_block_width`). Wider products are split into blocks, so the memory of a product
    #: is bounded by ``block_size`` copies of the activations (``to_dense`` included).
    block_size: int | None = None
    _activation_bytes: int | None = None
    #: swap the parameters into the model once per pass (see ``CurvatureOperator._bound``)
    bind_parameters: bool = True

    def _accumulate(
        self: CurvatureOperator,
        V: torch.Tensor,
        tangents: Tensors,
        state: Tensors,
        fixed: Tensors,
        leaves: Tensors,
        acc: Tensors,
        plan: list[tuple[Block, list[torch.Tensor]]],
        values: list[tuple[int, torch.Tensor]],
    ) -> int:
        """One pass over the (local) data: ``acc += n_b C_b V`` per batch; returns the samples.

        The batch losses are appended to ``values``; the column blocks are planned into ``plan``.
        """
        k, names, n_total = V.shape[1], self.layout.names, 0
        bound = self._bound(leaves, fixed) if self.bind_parameters else nullcontext()
        with self._evaluation_mode(), bound, self._bar(f"{self.curvature} product") as bar:
            for batch in self.source:
                if not plan:  # blocks of columns, planned once per product on the first batch
                    width = self._block_width(k, leaves, fixed, batch)
                    for j0 in range(0, k, width):
                        j1 = min(j0 + width, k)
                        part = {n: t[j0:j1] for n, t in tangents.items()}
                        single = {n: t[0] for n, t in part.items()} if j1 - j0 == 1 else None
                        block = Block(j1 - j0, part, single, state, leaves)
                        plan.append((block, [acc[n][j0:j1] for n in names]))
                try:
                    contribs, value = self._batch_products([b for b, _ in plan], fixed, batch)
                except (RuntimeError, NotImplementedError) as error:
                    clear = missing_derivative(error, self.curvature)
                    if clear is None:
                        raise
                    raise clear from error
                for (_, targets), contrib in zip(plan, contribs, strict=True):
                    pairs = [(t, c) for t, c in zip(targets, contrib, strict=True) if c is not None]
                    if pairs:  # c: (k, *shape), or (*shape) when k == 1
                        torch._foreach_add_(
                            [t for t, _ in pairs], [c.reshape(t.shape) for t, c in pairs]
                        )
                values.append((batch.index, value))
                n_total += batch.n
                bar.advance()
        return n_total

    def _locate(self: CurvatureOperator, blocks: list[Block], fixed: Tensors) -> int | None:
        """Diagnostic pass after a non-finite product: the first batch whose product is not finite.

        Returns ``None`` if every batch is finite on its own.
        """
        with self._evaluation_mode():
            for batch in self.source:
                contribs, _ = self._batch_products(blocks, fixed, batch)
                for contrib in contribs:
                    for c in contrib:
                        if c is not None and not bool(torch.isfinite(c).all()):
                            return batch.index
        return None

    def _block_width(self, k: int, leaves: Tensors, fixed: Tensors, batch: Batch) -> int:
        """How many columns one ``vmap`` evaluates: ``block_size`` when set, else automatic."""
        if self.block_size is not None:
            return max(1, int(self.block_size))
        if k == 1:
            return 1
        return self._auto_block_width(leaves, fixed, batch)

    def _auto_block_width(
        self: CurvatureOperator, leaves: Tensors, fixed: Tensors, batch: Batch
    ) -> int:
        """16 columns, fewer on the CPU when a block's tensors would be large.

        A block creates tensors of ``width x`` the largest activation, and on the CPU tensors
        beyond a few tens of MiB are fresh memory maps each time (page faults then dominate the
        product, see ``benchmarks/hvp.py``); blocks are sized to stay below 16 MiB.
        """
        if self.device.type != "cpu":
            return MAX_BLOCK
        if self._activation_bytes is None:
            self._activation_bytes = self._largest_activation(leaves, fixed, batch)
        return max(1, min(MAX_BLOCK, CPU_BLOCK_BYTES // max(1, self._activation_bytes)))

    def _largest_activation(
        self: CurvatureOperator, leaves: Tensors, fixed: Tensors, batch: Batch
    ) -> int:
        """Bytes of the largest tensor the forward pass of ``batch`` saves for backward."""
        largest = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal largest
            largest = max(largest, t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
            self._forward(leaves, fixed, batch)
        return largest

    def _batch_products(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        """Products of every block on one batch (subclasses may share work between blocks)."""
        out, value = [], None
        for block in blocks:
            contrib, value = self._batch_product(block, fixed, batch)
            out.append(contrib)
        assert value is not None
        return out, value

    def _batch_product(
        self, block: Block, fixed: Tensors, batch: Batch
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Return ``n_b * C_b V`` for the block's columns and the batch loss.

        ``C_b`` is the curvature of the batch's mean loss; the product is one tensor per selected
        parameter in flattening order (``(k, *shape)``, or ``(*shape)`` when ``k == 1``; ``None``
        for zero).
        """
        raise NotImplementedError  # pragma: no cover


def raise_if_not_finite(
    values: list[tuple[int, torch.Tensor]],
    result: torch.Tensor | None,
    what: str,
    locate: Callable[[], int | None],
) -> None:
    """One finiteness check per pass (no host synchronisation per batch).

    Raises ``FloatingPointError`` naming the first batch whose loss is not finite or, for a finite
    loss but a non-finite ``result``, the batch ``locate()`` finds.
    """
    if not values:
        return
    losses = torch.stack([v for _, v in values]).detach()
    total = losses.sum() if result is None else losses.sum() + result.sum()
    if bool(torch.isfinite(total)):  # the one host synchronisation on the fast path
        return
    ok = torch.isfinite(losses)
    if result is not None and bool(ok.all()) and bool(torch.isfinite(result).all()):
        return  # every entry is finite; only their sum overflowed
    if not bool(ok.all()):
        pos = int((~ok).nonzero()[0, 0])
        raise FloatingPointError(loss_message(values[pos][0], float(losses[pos])))
    index = locate()
    where = f"on batch {index}" if index is not None else "(summed over the batches)"
    raise FloatingPointError(
        f"the {what} {where} is not finite although the loss is; the derivatives overflow or are "
        "undefined there: evaluate in float64 (dtype=torch.float64) or check the parameters and "
        "the model's operations"
    )


def loss_message(index: int, value: float) -> str:
    """The error message of a non-finite loss on batch ``index``."""
    return (
        f"the loss on batch {index} is not finite ({value}); check that batch's inputs and targets "
        "and the model's parameters (NaN/inf), or evaluate in float64 (dtype=torch.float64)"
    )
