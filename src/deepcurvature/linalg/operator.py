"""Symmetric linear operators on torch tensors: the contract every algorithm in `linalg` uses.

An operator ``A`` of shape ``(P, P)`` has ``dtype``, ``device``, ``matvec(v)`` for ``v`` of shape
``(P,)`` and ``matmat(V)`` for ``V`` of shape ``(P, k)``. :func:`as_operator` wraps dense torch or
numpy matrices, scipy sparse matrices, scipy ``LinearOperator`` objects and plain callables.

Curvature matrices are real and symmetric: complex input is refused (never silently cast to its
real part), and a dense or sparse matrix with NaN or infinite entries is refused when it is
wrapped, with the number and the first position of those entries.
"""

from __future__ import annotations

import warnings
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

#: Floating dtypes a callable may work in, tried in this order when it refuses the operator's.
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_COMPLEX_FIX = (
    "complex matrices are not supported: the curvature operators are real symmetric; "
    "pass the real part explicitly if that is what you want"
)


def refuse_complex(what: str) -> TypeError:
    """The error for complex input ``what`` (a matrix, a dtype or a function's output)."""
    return TypeError(f"{what} is complex: {_COMPLEX_FIX} (e.g. A.real)")


def _nonfinite_error(count: int, total: int, first: tuple[int, int]) -> ValueError:
    return ValueError(
        f"the matrix is not finite: {count} of its {total} entries are NaN or infinite (the first "
        f"at row {first[0]}, column {first[1]}); find where they come from, or replace them "
        "explicitly (e.g. torch.nan_to_num) if that is what you want"
    )


def _check_finite_dense(matrix: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the count and first position of non-finite entries."""
    bad = ~torch.isfinite(matrix)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        raise _nonfinite_error(int(bad.sum()), matrix.numel(), (first[0], first[1]))


def _check_finite_sparse(matrix: Any) -> None:
    coo = scipy.sparse.coo_matrix(matrix)
    bad = ~np.isfinite(coo.data)
    if bad.any():
        rows, cols = coo.row[bad], coo.col[bad]
        i = np.lexsort((cols, rows))[0]  # the first in row-major order
        raise _nonfinite_error(int(bad.sum()), int(np.prod(matrix.shape)), (rows[i], cols[i]))


def _is_dtype_error(exc: RuntimeError) -> bool:
    """Whether torch refused mixed dtypes ("same dtype", "expected scalar type Float")."""
    text = str(exc)
    return "dtype" in text or "scalar type" in text


def lower_precision(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The one of two floating dtypes with the larger rounding unit."""
    return b if torch.finfo(b).eps > torch.finfo(a).eps else a


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
        if dtype.is_complex:
            raise refuse_complex(f"the operator dtype {dtype}")
        if not dtype.is_floating_point:
            raise TypeError(f"operator dtype must be floating point, got {dtype}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.symmetric = symmetric

    @property
    def product_dtype(self) -> torch.dtype:
        """The dtype whose precision the products have.

        ``dtype``, unless the products are computed in a lower one (a float32 scipy matrix or
        callable behind a float64 operator).
        """
        return getattr(self, "_product_dtype", None) or self.dtype

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

    def quadratic_forms(self, V: torch.Tensor) -> torch.Tensor:
        """``(k,)`` float64 ``v_j^T A v_j`` for the columns of ``V`` ``(P, k)``.

        Hutchinson's estimator needs only these numbers; by default they come from ``matmat``,
        and an operator that has a cheaper way (the Hessian of a layer chain: Taylor mode, see
        :mod:`deepcurvature.operators.taylor`) overrides :meth:`_quadratic_forms`.
        """
        self._check(V, ndim=2, what="quadratic_forms")
        return self._quadratic_forms(V)

    def _quadratic_forms(self, V: torch.Tensor) -> torch.Tensor:
        return (V.double() * self.matmat(V).double()).sum(0)

    @property
    def quadratic_route(self) -> str:
        """How :meth:`quadratic_forms` computes: ``"products"`` (from ``matmat``) by default."""
        return "products"

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def _check(self, x: Any, ndim: int, what: str | None = None) -> None:
        what = what or ("matvec" if ndim == 1 else "matmat")
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
    """A dense ``(P, P)`` torch matrix as an operator.

    Raises:
        TypeError: the matrix is complex.
        ValueError: it is not 2-D, or has NaN or infinite entries (checked before symmetry).
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2:
            raise ValueError(
                f"a dense operator needs a 2-D matrix, got shape {tuple(matrix.shape)}"
            )
        if matrix.dtype.is_complex:
            raise refuse_complex(f"the {matrix.dtype} matrix")
        if not matrix.dtype.is_floating_point:
            matrix = matrix.to(torch.get_default_dtype())
        _check_finite_dense(matrix)
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

    Products run on the CPU in numpy; results come back as tensors on ``device``. A float32
    matrix behind a float64 operator gives products of float32 precision (``product_dtype``).

    Raises:
        TypeError: the matrix (or the operator's declared dtype, or a product) is complex.
        ValueError: a sparse matrix has NaN or infinite stored entries.
    """

    def __init__(
        self,
        matrix: Any,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        np_dtype = np.dtype(getattr(matrix, "dtype", np.float64) or np.float64)
        if np_dtype.kind == "c":
            raise refuse_complex(f"the scipy {type(matrix).__name__} of dtype {np_dtype}")
        if scipy.sparse.issparse(matrix):
            _check_finite_sparse(matrix)
        native = _NUMPY_TO_TORCH.get(np_dtype, torch.float64)
        super().__init__(tuple(matrix.shape), dtype or native, device, symmetric=None)
        self._product_dtype = lower_precision(self.dtype, native)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        X = V.detach().cpu().numpy()
        if isinstance(self.matrix, scipy.sparse.linalg.LinearOperator):
            Y = self.matrix.matmat(X)
        else:
            Y = self.matrix @ X
        Y = np.asarray(Y)
        if np.iscomplexobj(Y):
            raise refuse_complex("the scipy operator's product")
        return torch.as_tensor(Y, dtype=self.dtype, device=self.device)


class CallableOperator(LinearOperator):
    """An operator from a function ``f(V) -> A @ V``.

    The function's products are converted to the operator's ``dtype`` (a float32 function behind
    the default float64 operator works). If it refuses vectors of the operator's dtype with a
    dtype error (``A32 @ v64``), the first product finds the floating dtype it works in, warns
    once, and from then on hands it vectors of that dtype; ``product_dtype`` then records the
    lower precision (as it does for a function returning float32 products). Pass that dtype to
    :func:`as_operator` to say so and avoid the warning.

    Args:
        fn: a matvec ``(P,) -> (P,)`` or, with ``batched=True``, a matmat ``(P, k) -> (P, k)``;
            it returns tensors or numpy arrays, never complex ones.
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
        #: the dtype of the vectors handed to ``fn`` (found by the first product)
        self.input_dtype: torch.dtype | None = None

    def _as_tensor(self, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            out = np.asarray(out)
            if np.iscomplexobj(out):
                raise refuse_complex("the operator's function returned a product that")
            out = torch.as_tensor(out, device=self.device)
        if out.is_complex():
            raise refuse_complex(f"the operator's function returned a {out.dtype} product that")
        return out

    def _call(self, V: torch.Tensor) -> torch.Tensor:
        if self.batched:
            return self._as_tensor(self.fn(V))
        return torch.stack([self._as_tensor(self.fn(V[:, i])) for i in range(V.shape[1])], dim=1)

    def _first_call(self, V: torch.Tensor) -> torch.Tensor:
        """Call ``fn`` on ``V``, or on ``V`` in the floating dtype it works in."""
        try:
            out = self._call(V)
        except RuntimeError as exc:
            if not _is_dtype_error(exc):
                raise
            first_error = exc
        else:
            self.input_dtype = V.dtype
            return out
        for alt in _FLOAT_DTYPES:
            if alt == V.dtype:
                continue
            try:
                out = self._call(V.to(alt))
            except RuntimeError as exc:
                if _is_dtype_error(exc):
                    continue
                raise
            warnings.warn(
                f"the operator's function works in {alt}, not in the operator's {self.dtype}: "
                f"vectors are converted to {alt} for it and its products back to {self.dtype} "
                f"(they have {alt} precision); pass dtype={alt} to as_operator to say so",
                stacklevel=4,
            )
            self.input_dtype = alt
            return out
        raise TypeError(
            f"the operator's function fails on {V.dtype} vectors with a dtype error "
            f"({first_error}) and on every other floating dtype; pass the dtype it works in, "
            "e.g. as_operator(fn, shape=(P, P), dtype=torch.float32)"
        ) from first_error

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        if self.input_dtype is None:
            out = self._first_call(V)
        else:
            out = self._call(V.to(self.input_dtype))
        expected = tuple(V.shape)
        if tuple(out.shape) != expected:
            raise ValueError(
                f"the operator's function returned shape {tuple(out.shape)}, expected {expected}"
            )
        if out.dtype.is_floating_point:
            low = lower_precision(self.product_dtype, out.dtype)
            self._product_dtype = lower_precision(low, self.input_dtype or self.dtype)
        return out.to(self.dtype)


class ShiftedOperator(LinearOperator):
    """``scale * A + shift * I`` without forming either matrix (used for Theorem 1 of the paper)."""

    def __init__(self, op: LinearOperator, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__(op.shape, op.dtype, op.device, symmetric=op.symmetric)
        self.op, self.scale, self.shift = op, float(scale), float(shift)

    @property
    def product_dtype(self) -> torch.dtype:
        """The precision of the wrapped operator's products."""
        return self.op.product_dtype

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matmat(V) + self.shift * V

    def _quadratic_forms(self, V: torch.Tensor) -> torch.Tensor:
        squares = V.double().square().sum(0)
        return self.scale * self.op.quadratic_forms(V) + self.shift * squares

    @property
    def quadratic_route(self) -> str:
        """The wrapped operator's route."""
        return self.op.quadratic_route


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
        dtype: dtype of callable or scipy operators (default float64 for callables). A
            callable's products are converted to it; a callable that only works in another
            floating dtype (a float32 function) gets its vectors converted, with a warning (see
            :class:`CallableOperator`).
        device: device of the vectors (default: the tensor's, or CPU).
        batched: for callables, whether ``x`` takes ``(P, k)`` blocks.
        symmetric: for callables, what is known about symmetry.

    Returns:
        The operator.

    Raises:
        TypeError: ``x`` is of no supported kind, a callable came without ``shape``, or ``x``
            (or ``dtype``) is complex: curvature operators are real symmetric.
        ValueError: the matrix is not square, or a dense or sparse matrix has NaN or infinite
            entries (the message gives their number and the first position).
    """
    if isinstance(x, LinearOperator):
        return x
    if dtype is not None and dtype.is_complex:
        raise refuse_complex(f"the requested dtype {dtype}")
    if isinstance(x, torch.Tensor):
        if x.ndim != 2 or x.shape[0] != x.shape[1]:
            raise ValueError(f"as_operator needs a square matrix, got shape {tuple(x.shape)}")
        if x.is_complex():
            raise refuse_complex(f"the {x.dtype} matrix")
        if dtype is not None or device is not None:
            x = x.to(dtype=dtype or x.dtype, device=device or x.device)
        return DenseOperator(x)
    if isinstance(x, np.ndarray):
        if x.ndim != 2 or x.shape[0] != x.shape[1]:
            raise ValueError(f"as_operator needs a square matrix, got shape {x.shape}")
        if np.iscomplexobj(x):
            raise refuse_complex(f"the {x.dtype} array")
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
