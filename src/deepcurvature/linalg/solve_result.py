"""The results of :func:`~.solve.solve` and :func:`~.solve.matrix_function` and their summaries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: The named functions of :func:`~.solve.matrix_function` (``lam`` is the damping).
FUNCTIONS = {
    "inverse": "1 / (theta + lam)",
    "abs_inverse": "1 / (|theta| + lam)",
    "inverse_sqrt": "(theta + lam)^(-1/2)",
}


class _ColumnResult:
    """What the results of :func:`solve` and :func:`matrix_function` share."""

    column_converged: np.ndarray
    iterations: np.ndarray
    n_products: int
    n_matmat: int

    @property
    def converged(self) -> bool:
        """Whether every column converged."""
        return bool(self.column_converged.all())

    def _cost_lines(self, limit: str) -> list[str]:
        return [
            f"iterations per column: min {int(self.iterations.min())}, "
            f"max {int(self.iterations.max())} ({limit})",
            f"cost: {self.n_products} operator products in {self.n_matmat} matmat calls",
        ]


@dataclass
class SolveResult(_ColumnResult):
    """The solution of ``(A + damping I) x = b`` and what it cost.

    Attributes:
        x: the solution, same shape as ``b`` (``(P,)`` or ``(P, k)``), in the operator's dtype and
            device.
        residual_norms: ``(k,)`` float64 TRUE relative residuals ``||(A + lam I) x - b|| / ||b||``
            per column, from one final product (0 for a zero column of ``b``).
        residual_estimates: ``(k,)`` float64 the recurrence's estimates of the same at its end.
        iterations: ``(k,)`` steps (products) per column.
        n_products: operator columns applied, the final check included (``iterations.sum() + k``).
        n_matmat: ``op.matmat`` calls, the final check included (= passes over the data for a
            network operator).
        column_converged: ``(k,)`` whether each true relative residual is ``<= tol``.
        method: ``"cg"``, ``"minres"`` or ``"lanczos"``.
        damping: ``lam``.
        tol: the relative residual tolerance.
        max_steps: the largest number of steps a column could run.
    """

    x: torch.Tensor
    residual_norms: np.ndarray
    residual_estimates: np.ndarray
    iterations: np.ndarray
    n_products: int
    n_matmat: int
    column_converged: np.ndarray
    method: str
    damping: float
    tol: float
    max_steps: int

    def summary(self) -> str:
        """One line per fact: method, columns, residuals, iterations, cost."""
        k = self.iterations.size
        state = "converged" if self.converged else "NOT converged"
        return "\n".join(
            [
                f"solve (A + {self.damping:g} I) x = b by {self.method}: {state} "
                f"({int(self.column_converged.sum())}/{k} columns, tol {self.tol:.1e})",
                f"true relative residual: max {float(self.residual_norms.max()):.3e}",
                *self._cost_lines(f"max_steps {self.max_steps}; cost includes the final check"),
            ]
        )


@dataclass
class MatrixFunctionResult(_ColumnResult):
    """``f(A) b`` by Lanczos (:func:`matrix_function`) and what it cost.

    Attributes:
        x: ``f(A) b``, same shape as ``b``, in the operator's dtype and device.
        iterations: ``(k,)`` Lanczos steps per column.
        changes: ``(k,)`` float64 relative change ``||x_m - x_{m-1}|| / ||x_m||`` of each column's
            last step (0 after an invariant subspace, where the result is exact).
        invariant: ``(k,)`` whether a column's Krylov space became invariant (exact result).
        column_converged: ``(k,)`` invariant, or the change fell to ``<= tol``.
        n_products: operator columns applied.
        n_matmat: ``op.matmat`` calls (= passes over the data for a network operator).
        fn: the function's name (``"inverse"``, ...) or ``"callable"``.
        damping: ``lam``.
        tol: the change tolerance (``None``: ran ``steps`` steps).
        steps: the largest number of steps a column could run.
    """

    x: torch.Tensor
    iterations: np.ndarray
    changes: np.ndarray
    invariant: np.ndarray
    column_converged: np.ndarray
    n_products: int
    n_matmat: int
    fn: str
    damping: float
    tol: float | None
    steps: int

    def summary(self) -> str:
        """One line per fact: function, columns, last changes, iterations, cost."""
        k = self.iterations.size
        return "\n".join(
            [
                f"f(A) b with f = {FUNCTIONS.get(self.fn, self.fn)} (damping {self.damping:g}) "
                f"by Lanczos: {int(self.column_converged.sum())}/{k} columns converged",
                f"last relative change: max {float(self.changes.max()):.3e}",
                *self._cost_lines(f"steps {self.steps}"),
            ]
        )
