"""Symmetric linear operators on torch tensors: the contract every algorithm in `linalg` uses.

An operator ``A`` of shape ``(P, P)`` has ``dtype``, ``device``, ``matvec(v)`` for ``v`` of shape
``(P,)`` and ``matmat(V)`` for ``V`` of shape ``(P, k)``. :func:`as_operator` wraps dense torch or
numpy matrices, scipy sparse matrices, scipy ``LinearOperator`` objects and plain callables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

__all__ = [
    "CallableOperator",
    "DenseOperator",
    "LinearOperator",
    "ScipyOperator",
    "ShiftedOperator",
    "as_operator",
]

_NUMPY_TO_TORCH = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


class LinearOperator:
    """A square linear operator on torch tensors (assumed symmetric unless ``symmetric`` is False).

    Subclasses implement :meth:`_matmat`; :meth:`matvec` and :meth:`matmat` check shapes, dtypes and
    devices before calling it, so every algorithm can rely on well-formed inputs.

    Attributes:
        shape: ``(P, P)``.
        dtype: floating dtype of the vectors the operator takes and returns.
        device: device of those vectors.
        symmetric: ``True`` if known symmetric, ``False`` if known not, ``None`` if unknown.
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    symmetric: bool | None = None

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        symmetric: bool | None = None,
    ) -> None:
        if len(shape) != 2 or shape[0] != shape[1] or int(shape[0]) < 1:
            raise ValueError(
                f"a curvature operator must be square with positive size, got shape {tuple(shape)}"
            )
        if not dtype.is_floating_point:
            raise TypeError(f"operator dtype must be floating point, got {dtype}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.symmetric = symmetric

    # -- the contract -------------------------------------------------------------------------
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``A @ v`` for ``v`` of shape ``(P,)``."""
        self._check(v, ndim=1)
        return self._matmat(v.unsqueeze(1)).squeeze(1)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``A @ V`` for ``V`` of shape ``(P, k)``; all k columns share one application."""
        self._check(V, ndim=2)
        return self._matmat(V)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def _check(self, x: Any, ndim: int) -> None:
        what = "matvec" if ndim == 1 else "matmat"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{what} takes a torch.Tensor, got {type(x).__name__}; "
                "convert with torch.as_tensor(x, dtype=op.dtype, device=op.device)"
            )
        want = "(P,)" if ndim == 1 else "(P, k)"
        if x.ndim != ndim or x.shape[0] != self.shape[1]:
            raise ValueError(
                f"{what} expects a tensor of shape {want} with P = {self.shape[1]}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            raise TypeError(
                f"{what} got a {x.dtype} tensor but the operator works in {self.dtype}; "
                "convert with x.to(op.dtype)"
            )
        if x.device.type != self.device.type or (
            self.device.index is not None and x.device.index not in (None, self.device.index)
        ):
            raise ValueError(
                f"{what} got a tensor on {x.device} but the operator lives on {self.device}; "
                "move it with x.to(op.device)"
            )

    # -- conveniences --------------------------------------------------------------------------
    def to_scipy(self) -> scipy.sparse.linalg.LinearOperator:
        """Export as a ``scipy.sparse.linalg.LinearOperator`` working on numpy arrays."""
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        op = self

        def _mv(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x).reshape(-1), dtype=op.dtype, device=op.device)
            return op.matvec(t).detach().cpu().numpy()

        def _mm(X: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(X), dtype=op.dtype, device=op.device)
            return op.matmat(t).detach().cpu().numpy()

        return scipy.sparse.linalg.LinearOperator(
            self.shape, matvec=_mv, rmatvec=_mv, matmat=_mm, rmatmat=_mm, dtype=np_dtype
        )

    def to_dense(self) -> torch.Tensor:
        """Materialise the ``(P, P)`` matrix (P applications, for small operators and tests)."""
        eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"
        )


class DenseOperator(LinearOperator):
    """A dense ``(P, P)`` torch matrix as an operator."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2:
            raise ValueError(
                f"a dense operator needs a 2-D matrix, got shape {tuple(matrix.shape)}"
            )
        if not matrix.dtype.is_floating_point:
            matrix = matrix.to(torch.get_default_dtype())
        sym = (
            bool(torch.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-12))
            if (matrix.shape[0] == matrix.shape[1])
            else False
        )
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device, symmetric=sym)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    def to_dense(self) -> torch.Tensor:
        """Return the wrapped matrix."""
        return self.matrix


class ScipyOperator(LinearOperator):
    """A scipy sparse matrix or ``scipy.sparse.linalg.LinearOperator`` as a torch operator.

    Products run on the CPU in numpy; results come back as tensors on ``device``.
    """

    def __init__(
        self,
        matrix: Any,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        np_dtype = np.dtype(getattr(matrix, "dtype", np.float64) or np.float64)
        if dtype is None:
            dtype = _NUMPY_TO_TORCH.get(np_dtype, torch.float64)
        super().__init__(tuple(matrix.shape), dtype, device, symmetric=None)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        X = V.detach().cpu().numpy()
        if isinstance(self.matrix, scipy.sparse.linalg.LinearOperator):
            Y = self.matrix.matmat(X)
        else:
            Y = self.matrix @ X
        return torch.as_tensor(np.asarray(Y), dtype=self.dtype, device=self.device)


class CallableOperator(LinearOperator):
    """An operator from a function ``f(V) -> A @ V``.

    Args:
        fn: a matvec ``(P,) -> (P,)`` or, with ``batched=True``, a matmat ``(P, k) -> (P, k)``.
        shape: ``(P, P)``.
        dtype: dtype of the vectors.
        device: device of the vectors.
        batched: whether ``fn`` takes ``(P, k)`` blocks.
        symmetric: what is known about symmetry.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        shape: tuple[int, int],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        batched: bool = False,
        symmetric: bool | None = None,
    ) -> None:
        super().__init__(shape, dtype, device, symmetric=symmetric)
        self.fn = fn
        self.batched = batched

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        if self.batched:
            out = self.fn(V)
            expected = tuple(V.shape)
        else:
            out = torch.stack([self.fn(V[:, i]) for i in range(V.shape[1])], dim=1)
            expected = tuple(V.shape)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out), dtype=self.dtype, device=self.device)
        if tuple(out.shape) != expected:
            raise ValueError(
                f"the operator's function returned shape {tuple(out.shape)}, expected {expected}"
            )
        return out.to(self.dtype)


class ShiftedOperator(LinearOperator):
    """``scale * A + shift * I`` without forming either matrix (used for Theorem 1 of the paper)."""

    def __init__(self, op: LinearOperator, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__(op.shape, op.dtype, op.device, symmetric=op.symmetric)
        self.op, self.scale, self.shift = op, float(scale), float(shift)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matmat(V) + self.shift * V


def as_operator(
    x: Any,
    shape: tuple[int, int] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    batched: bool = False,
    symmetric: bool | None = None,
) -> LinearOperator:
    """Wrap ``x`` as a :class:`LinearOperator`.

    Args:
        x: a ``LinearOperator`` (returned as is), a dense ``(P, P)`` torch tensor or numpy array,
            a scipy sparse matrix, a ``scipy.sparse.linalg.LinearOperator``, or a callable
            computing ``A @ v`` (then ``shape`` is required).
        shape: ``(P, P)``, required for callables.
        dtype: dtype of callable or scipy operators (default float64 for callables).
        device: device of the vectors (default: the tensor's, or CPU).
        batched: for callables, whether ``x`` takes ``(P, k)`` blocks.
        symmetric: for callables, what is known about symmetry.

    Returns:
        The operator.

    Raises:
        TypeError: ``x`` is of no supported kind, or a callable came without ``shape``.
        ValueError: the matrix is not square.
    """
    if isinstance(x, LinearOperator):
        return x
    if isinstance(x, torch.Tensor):
        if x.ndim != 2 or x.shape[0] != x.shape[1]:
            raise ValueError(f"as_operator needs a square matrix, got shape {tuple(x.shape)}")
        if dtype is not None or device is not None:
            x = x.to(dtype=dtype or x.dtype, device=device or x.device)
        return DenseOperator(x)
    if isinstance(x, np.ndarray):
        if x.ndim != 2 or x.shape[0] != x.shape[1]:
            raise ValueError(f"as_operator needs a square matrix, got shape {x.shape}")
        t = torch.as_tensor(x)
        if not t.dtype.is_floating_point:
            t = t.to(torch.float64)
        return DenseOperator(t.to(dtype=dtype or t.dtype, device=device or "cpu"))
    if scipy.sparse.issparse(x) or isinstance(x, scipy.sparse.linalg.LinearOperator):
        if x.shape[0] != x.shape[1]:
            raise ValueError(f"as_operator needs a square operator, got shape {x.shape}")
        return ScipyOperator(x, dtype=dtype, device=device)
    if callable(x):
        if shape is None:
            raise TypeError(
                "as_operator(callable) needs shape=(P, P): the size of the vectors it acts on"
            )
        return CallableOperator(
            x,
            shape,
            dtype=dtype or torch.float64,
            device=device,
            batched=batched,
            symmetric=symmetric,
        )
    raise TypeError(
        f"cannot make a linear operator from {type(x).__name__}: pass a square torch tensor, "
        "numpy array, scipy sparse matrix, scipy LinearOperator or a callable with shape="
    )
