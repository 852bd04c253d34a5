"""The common product of the GGN and the Fisher: ``J^T W(f, J V)`` with ``W`` in output space.

Both operators (paper section 5) multiply a block ``V`` by ``J^T M J`` for an output-space matrix
``M``: forward-mode ``J V`` (:class:`~.jacobian.LinearisedOutput`, one recorded forward pass per
batch shared by the block's columns), the weights ``W = n_b M (J V)`` from the output and the
targets (:meth:`OutputSpaceOperator._output_weights`, each subclass's own), and one reverse pass
``J^T W`` batched over the columns. On the CPU, a block of several columns of a model whose rows
are independent is linearised in micro-batches of rows (:mod:`.microbatch`), so that blocks of
16 columns stay within the same memory as one column.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CurvatureOperator, Tensors
from .batches import Batch
from .chain_products import operator_chain_products
from .compiled import compiled_linearised_product, run_compiled
from .jacobian import LinearisedOutput
from .microbatch import micro_batches, rows_are_independent
from .products import CPU_BLOCK_BYTES, MAX_BLOCK, Block

__all__ = ["OutputSpaceOperator"]


class OutputSpaceOperator(CurvatureOperator):
    """Base class of the GGN and Fisher operators: products ``J^T W(f, J V)`` per batch."""

    _activation_rows = 0  # rows of the batch whose largest activation was measured

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # decided on the model as given (the evaluation context patches some forwards)
        self._rows_independent = self.device.type == "cpu" and rows_are_independent(
            self.model, self.bn_mode
        )

    def _output_weights(
        self, out: torch.Tensor, jv: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``W`` ``(k, n_b, ...)`` (scaled by ``n_b``) and the batch loss from ``f``, ``J V``."""
        raise NotImplementedError  # pragma: no cover

    def _micro_rows(self) -> bool:
        """Whether wide blocks are linearised in micro-batches (CPU, independent rows)."""
        return self._rows_independent

    def _auto_block_width(self, leaves: Tensors, fixed: Tensors, batch: Batch) -> int:
        """16 columns when micro-batches bound a block's memory, else the base class's choice."""
        if not self.compile and self._micro_rows():
            return MAX_BLOCK
        return super()._auto_block_width(leaves, fixed, batch)

    def _micro_size(self, block: Block, fixed: Tensors, batch: Batch) -> int:
        """Rows per micro-batch: ``k x`` a micro-batch's largest activation within 16 MiB."""
        if self._activation_bytes is None:
            self._activation_bytes = self._largest_activation(block.leaves, fixed, batch)
            self._activation_rows = batch.n
        rows = self._activation_rows or batch.n
        per_row = max(1, self._activation_bytes // max(1, rows))
        return max(1, CPU_BLOCK_BYTES // (block.k * per_row))

    def _batch_products(
        self, blocks: list[Block], fixed: Tensors, batch: Batch
    ) -> tuple[list[list[torch.Tensor | None]], torch.Tensor]:
        """A layer chain in passes of several columns: every block by :mod:`.chain_products`."""
        chained = operator_chain_products(self, blocks, fixed, batch, self._output_weights, False)
        if chained is not None:
            return chained
        return super()._batch_products(blocks, fixed, batch)

    def _batch_product(
        self, block: Block, fixed: Tensors, batch: Batch
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        if self.compile:
            if self._compiled is None:
                self._compiled = compiled_linearised_product(self, self._output_weights)
            return run_compiled(self, self._compiled, block, fixed, batch)
        parts = None
        if block.k > 1 and self._micro_rows():
            parts = micro_batches(batch, self._micro_size(block, fixed, batch))
        if parts is None:
            lin = self._linearise(block, fixed, batch)
            W, value = self._output_weights(lin.output, lin.jv, batch)
            return lin.vjp(W), value
        with torch.no_grad():  # f of the whole batch, for the output-space weights
            out = self._output_tensor(block.state, fixed, batch)
        total: list[torch.Tensor | None] = [None] * len(self.layout.names)
        value, lo = None, 0
        for part in parts:  # each micro-batch linearised, weighted and pulled back in turn
            lin = self._linearise(block, fixed, part)
            hi = lo + part.n
            U = lin.jv.new_zeros((block.k, *out.shape))
            U[:, lo:hi] = lin.jv
            W, value = self._output_weights(out, U, batch)
            for i, g in enumerate(lin.vjp(W[:, lo:hi])):
                if g is not None:
                    total[i] = g if total[i] is None else total[i].add_(g)
            lo = hi
        assert value is not None
        return total, value

    def _linearise(self, block: Block, fixed: Tensors, batch: Batch) -> LinearisedOutput:
        return LinearisedOutput(
            lambda p: self._output_tensor(p, fixed, batch),
            block.leaves,
            block.tangents,
            block.single,
        )
