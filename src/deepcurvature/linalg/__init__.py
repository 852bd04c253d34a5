"""Matrix-free linear algebra on any symmetric linear operator (no torch.nn, models or data)."""

from .density import SpectralDensity
from .lanczos import LanczosResult, lanczos, tridiagonal_eigh
from .operator import (
    CallableOperator,
    DenseOperator,
    LinearOperator,
    ScipyOperator,
    ShiftedOperator,
    as_operator,
)
from .probes import draw_probes

__all__ = [
    "CallableOperator",
    "DenseOperator",
    "LanczosResult",
    "LinearOperator",
    "ScipyOperator",
    "ShiftedOperator",
    "SpectralDensity",
    "as_operator",
    "draw_probes",
    "lanczos",
    "tridiagonal_eigh",
]
