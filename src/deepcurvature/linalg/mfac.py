"""M-FAC: matrix-free inverse of a damped sum of rank-one matrices (Frantar et al. 2021).

For ``m`` gradients ``g_1 .. g_m`` (the rows of ``G``, shape ``(m, P)``) and damping ``λ > 0``
the empirical-Fisher approximation is ``F = λ I + (1/m) Σ_i g_i g_iᵀ``. Its inverse is applied by
the paper's recursive (dynamic) Woodbury algorithm: with ``F_0 = λ I`` and
``F_j = F_{j-1} + g_j g_jᵀ / m``, Sherman-Morrison gives

    F_j^{-1} = F_{j-1}^{-1} - v_j v_jᵀ / d_j,   v_j = F_{j-1}^{-1} g_j,   d_j = m + g_jᵀ v_j,

so ``F^{-1} x = x / λ - Σ_j v_j (v_jᵀ x) / d_j``. Every ``v_j`` is a combination of the gradients,
``v_j = Σ_k B[j, k] g_k`` with ``B`` lower triangular, and the coefficients follow from the Gram
matrix ``K = G Gᵀ`` alone: ``B[j] = e_j / λ - Σ_{k<j} ((B K)[k, j] / d_k) B[k]`` and
``d_j = m + (B K)[j, j]``. Set-up costs ``O(m² P)`` for ``K`` plus ``O(m³)`` for ``B``; a product

    F^{-1} X = X / λ - Gᵀ Bᵀ diag(1/d) B G X        (X of shape (P, k))

costs ``O(m P k + m² k)``: two passes over ``G``, never a ``(P, P)`` matrix.

The sliding window of the optimisation setting (:class:`MFACWindow`) keeps ``G``, ``K``, ``B``
and ``d``; replacing the oldest gradient recomputes one row and column of ``K`` (``m`` dot
products, ``O(m P)``) and the coefficients (``O(m³)``), instead of the ``O(m² P)`` of a rebuild.
The product does not depend on the order of the gradients in the recursion, so the window keeps
them in slot order (a circular buffer).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .operator import LinearOperator, refuse_complex

__all__ = ["MFACInverse", "MFACWindow", "mfac_coefficients", "mfac_inverse"]


def _check_damping(damping: Any, owner: str) -> float:
    try:
        value = float(damping)
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: damping must be a positive finite number, got {damping!r}; "
            "pass e.g. damping=1e-4"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{owner}: damping must be a positive finite number, got {damping!r}; it is the "
            "λ of λI + GᵀG/m and keeps the matrix invertible: pass e.g. damping=1e-4"
        )
    return value


def _check_finite(x: torch.Tensor, name: str, owner: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"{owner}: {name} is not finite: {int(bad.sum())} of its {x.numel()} entries are "
            f"NaN or infinite (the first at index {first}); find where they come from (a "
            "diverged loss?) or drop those gradients"
        )


def _check_gradients(gradients: Any, owner: str) -> torch.Tensor:
    if not isinstance(gradients, torch.Tensor):
        raise TypeError(
            f"{owner}: gradients must be a torch.Tensor of shape (m, P), got "
            f"{type(gradients).__name__}; stack them with torch.stack(list_of_gradients)"
        )
    if gradients.is_complex():
        raise refuse_complex(f"{owner}: the {gradients.dtype} gradients")
    if gradients.ndim != 2 or gradients.shape[0] < 1 or gradients.shape[1] < 1:
        raise ValueError(
            f"{owner}: gradients must have shape (m, P) with m, P >= 1 (one flattened gradient "
            f"per row), got shape {tuple(gradients.shape)}; stack flattened gradients with "
            "torch.stack([g.reshape(-1) for g in grads])"
        )
    if not gradients.dtype.is_floating_point:
        gradients = gradients.to(torch.get_default_dtype())
    _check_finite(gradients, "gradients", owner)
    return gradients


def mfac_coefficients(
    gram: torch.Tensor, damping: float, m: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients ``(B, d)`` of the recursive Woodbury algorithm from the Gram matrix.

    Implements the paper's Algorithm 1 on scalar products only: ``v_j = Σ_k B[j, k] g_k`` and
    ``d_j = m + g_jᵀ v_j`` (module docstring). ``O(m³)``.

    Args:
        gram: ``K = G Gᵀ``, shape ``(m, m)``.
        damping: ``λ > 0``.
        m: the normalisation ``1/m`` of the sum (default: the number of rows of ``gram``).

    Returns:
        ``B`` (lower triangular, ``(m, m)``) and ``d`` (``(m,)``, every entry ``>= m``).
    """
    rows = gram.shape[0]
    scale = float(rows if m is None else m)
    B = torch.zeros_like(gram)
    d = torch.empty(rows, dtype=gram.dtype, device=gram.device)
    for j in range(rows):
        row = torch.zeros(rows, dtype=gram.dtype, device=gram.device)
        if j:
            c = (B[:j] @ gram[:, j]) / d[:j]  # v_kᵀ g_j / d_k for k < j
            row -= c @ B[:j]
        row[j] += 1.0 / damping
        B[j] = row
        d[j] = scale + row @ gram[:, j]
    return B, d


class MFACInverse(LinearOperator):
    """``(λ I + GᵀG / m)^{-1}`` as a symmetric operator, applied matrix-free (module docstring).

    Build it with :func:`mfac_inverse`. Attributes ``gradients`` ``(m, P)``, ``gram`` ``(m, m)``,
    ``coefficients`` ``B`` ``(m, m)``, ``denominators`` ``d`` ``(m,)`` and ``damping``.
    """

    def __init__(
        self,
        gradients: torch.Tensor,
        damping: float,
        gram: torch.Tensor,
        coefficients: torch.Tensor,
        denominators: torch.Tensor,
    ) -> None:
        P = gradients.shape[1]
        super().__init__((P, P), gradients.dtype, gradients.device, symmetric=True)
        self.gradients = gradients
        self.damping = float(damping)
        self.gram = gram
        self.coefficients = coefficients
        self.denominators = denominators

    @property
    def m(self) -> int:
        """The number of gradients (the ``m`` of ``1/m``)."""
        return self.gradients.shape[0]

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        Y = self.coefficients @ (self.gradients @ V)  # (m, k): v_jᵀ X
        Y = Y / self.denominators.unsqueeze(1)
        return V / self.damping - self.gradients.T @ (self.coefficients.T @ Y)


def mfac_inverse(gradients: torch.Tensor, damping: float) -> MFACInverse:
    """The operator ``(λ I + (1/m) Σ_i g_i g_iᵀ)^{-1}`` of M-FAC (the paper's static algorithm).

    Args:
        gradients: ``G``, shape ``(m, P)``: one flattened gradient per row (``m < P`` or not).
        damping: ``λ > 0``.

    Returns:
        An :class:`MFACInverse`: ``O(m² P)`` set-up (the Gram matrix), then ``O(m P + m²)`` per
        product (``O(m P k + m² k)`` for ``matmat`` of ``(P, k)``).

    Raises:
        TypeError: ``gradients`` is not a tensor, or is complex.
        ValueError: ``gradients`` is not ``(m, P)`` or has NaN/infinite entries, or ``damping`` is
            not a positive finite number.
    """
    owner = "mfac_inverse"
    lam = _check_damping(damping, owner)
    G = _check_gradients(gradients, owner)
    K = G @ G.T
    B, d = mfac_coefficients(K, lam)
    return MFACInverse(G, lam, K, B, d)


class MFACWindow(MFACInverse):
    """The M-FAC inverse over a sliding window of the last ``m`` gradients (the dynamic algorithm).

    The window starts with ``m`` zero gradients (which add nothing to ``λ I + GᵀG / m``: the
    normalisation stays ``1/m``); :meth:`update` replaces the oldest gradient in ``O(m P + m³)``.
    Products equal those of :func:`mfac_inverse` on the ``m`` gradients in the window.

    Args:
        m: the window size.
        dim: ``P``, the length of a gradient.
        damping: ``λ > 0``.
        dtype: dtype of the gradients and vectors.
        device: their device.
    """

    def __init__(
        self,
        m: int,
        dim: int,
        damping: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        owner = "MFACWindow"
        lam = _check_damping(damping, owner)
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"{owner}: m (the window size) must be an int >= 1, got {m!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(
                f"{owner}: dim (the gradient length P) must be an int >= 1, got {dim!r}"
            )
        if dtype.is_complex or not dtype.is_floating_point:
            raise TypeError(f"{owner}: dtype must be a real floating dtype, got {dtype}")
        G = torch.zeros(m, dim, dtype=dtype, device=device)
        K = torch.zeros(m, m, dtype=dtype, device=device)
        B, d = mfac_coefficients(K, lam)
        super().__init__(G, lam, K, B, d)
        #: the slot the next gradient goes to (the oldest one)
        self.next = 0

    @classmethod
    def from_state(cls, state: dict[str, Any], damping: float) -> MFACWindow:
        """A window sharing the tensors of :meth:`state` (updates then change them in place)."""
        window = cls.__new__(cls)
        lam = _check_damping(damping, "MFACWindow")
        MFACInverse.__init__(
            window,
            state["gradients"],
            lam,
            state["gram"],
            state["coefficients"],
            state["denominators"],
        )
        window.next = int(state["next"])
        return window

    def state(self) -> dict[str, Any]:
        """The window's tensors and next slot (for checkpoints; :meth:`from_state` inverts it)."""
        return {
            "gradients": self.gradients,
            "gram": self.gram,
            "coefficients": self.coefficients,
            "denominators": self.denominators,
            "next": self.next,
        }

    def update(self, gradient: torch.Tensor) -> None:
        """Replace the oldest gradient by ``gradient`` (shape ``(P,)``): ``O(m P + m³)``.

        Raises:
            ValueError: ``gradient`` has the wrong shape or device, NaN/infinite entries, or dot
                products that overflow (the window is then left unchanged).
            TypeError: ``gradient`` is not a tensor of the window's dtype.
        """
        self._check(gradient, ndim=1)
        _check_finite(gradient, "gradient", "MFACWindow.update")
        s = self.next
        row = self.gradients @ gradient  # m dot products
        row[s] = gradient @ gradient
        if not bool(torch.isfinite(row).all()):
            raise ValueError(
                "MFACWindow.update: the dot products of the gradient overflow "
                f"({self.dtype}); scale the loss down or work in float64 (the window is unchanged)"
            )
        self.gradients[s] = gradient
        self.gram[s] = row
        self.gram[:, s] = row
        B, d = mfac_coefficients(self.gram, self.damping)
        self.coefficients.copy_(B)
        self.denominators.copy_(d)
        self.next = (s + 1) % self.m
