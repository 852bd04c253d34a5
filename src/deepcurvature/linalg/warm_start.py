"""Warm starts for the eigensolver: a start vector from a cheaper operator.

Lanczos from a random vector needs about ``log(P / eps) / sqrt(gap)`` steps for the top
eigenvalue, most of them spent removing the start vector's components along the rest of the
spectrum. The Hessian (GGN, Fisher) of one batch has top eigenvectors close to the full data
set's (its spectrum is the full one plus sampling noise of order ``1 / sqrt(n_b)``), and each of
its products costs ``n_b / N`` of a pass. Solving it roughly (eigenvalue accuracy ``1e-2``) and
starting the full solve from the sum of its ``k`` Ritz vectors removes most of those steps: in
``benchmarks/peers.py`` (a CNN, 8 batches) the top eigenvalue to ``1e-6`` took 6 full products
instead of 11. For ``k = 5`` it did not help (22 against 23): the full solve still has to split
the five directions apart.

Operators offer their stand-in through a ``warm_start_operator()`` method returning a
:class:`~.operator.LinearOperator` of the same shape, or ``None`` when there is nothing cheaper
(e.g. the data is a single batch); the curvature operators return themselves on the first batch.
"""

from __future__ import annotations

from typing import Any

from .operator import LinearOperator, as_operator

__all__ = ["WARM_TOL", "resolve_warm_operator"]

#: relative eigenvalue accuracy of the warm-start solve
WARM_TOL = 1e-2


def resolve_warm_operator(op: LinearOperator, warm_start: Any) -> LinearOperator | None:
    """The operator a warm start solves: ``op.warm_start_operator()`` for ``"batch"``, or the given.

    Returns ``None`` when ``op`` has nothing cheaper to offer (its data is one batch).

    Raises:
        ValueError: ``"batch"`` for an operator without ``warm_start_operator``, an unknown
            string, or an operator whose shape differs from ``op``'s.
    """
    if isinstance(warm_start, str):
        if warm_start != "batch":
            raise ValueError(
                f"unknown warm_start={warm_start!r}: use 'batch' (the operator on its first "
                "batch), a cheaper LinearOperator of the same shape, or None"
            )
        make = getattr(op, "warm_start_operator", None)
        if make is None:
            raise ValueError(
                f"warm_start='batch' needs a curvature operator (dc.hessian, dc.ggn, dc.fisher); "
                f"{type(op).__name__} has no first batch: pass a cheaper operator of the same "
                "shape as warm_start instead"
            )
        sub = make()
        return None if sub is None else as_operator(sub)
    sub = as_operator(warm_start)
    if tuple(sub.shape) != tuple(op.shape):
        raise ValueError(
            f"warm_start operator has shape {tuple(sub.shape)}, the operator {tuple(op.shape)}: "
            "pass an operator over the same parameters"
        )
    return sub
