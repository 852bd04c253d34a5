"""Matrix-free linear algebra on any symmetric linear operator (no torch.nn, models or data)."""

from .basis import BASIS_KINDS, LanczosBasis, open_basis
from .density import (
    NEGATIVE_MASS_RTOL,
    NEGATIVE_MASS_RTOL_BY_PRECISION,
    PSD_MATRICES,
    SpectralDensity,
)
from .eigsh import EigshResult, eigsh
from .lanczos import LanczosResult, lanczos, tridiagonal_eigh
from .lanczos_state import load_state, operator_fingerprint
from .logdet import LOGDET_METHODS, LogdetResult, logdet
from .maxent import (
    MaxEntError,
    MaxEntResult,
    legendre_moments,
    maxent_density,
    maxent_from_quadrature,
    power_to_legendre_moments,
)
from .mfac import MFACInverse, MFACWindow, mfac_coefficients, mfac_inverse
from .operator import (
    CallableOperator,
    DenseOperator,
    LinearOperator,
    ScipyOperator,
    ShiftedOperator,
    as_operator,
)
from .power import power_iteration
from .probes import draw_probes
from .shrinkage import ShrinkageDamping, ShrinkageEstimate, shrinkage_ratio
from .solve import MatrixFunctionResult, SolveResult, matrix_function, solve
from .trace import DiagonalEstimate, TraceEstimate, diagonal, trace

__all__ = [
    "NEGATIVE_MASS_RTOL",
    "NEGATIVE_MASS_RTOL_BY_PRECISION",
    "PSD_MATRICES",
    "CallableOperator",
    "DenseOperator",
    "DiagonalEstimate",
    "EigshResult",
    "LanczosResult",
    "LinearOperator",
    "MFACInverse",
    "MFACWindow",
    "MatrixFunctionResult",
    "ScipyOperator",
    "ShiftedOperator",
    "ShrinkageDamping",
    "ShrinkageEstimate",
    "SolveResult",
    "SpectralDensity",
    "TraceEstimate",
    "as_operator",
    "diagonal",
    "draw_probes",
    "eigsh",
    "lanczos",
    "matrix_function",
    "mfac_coefficients",
    "mfac_inverse",
    "power_iteration",
    "shrinkage_ratio",
    "solve",
    "trace",
    "tridiagonal_eigh",
]
__all__ += [
    "BASIS_KINDS",
    "LanczosBasis",
    "load_state",
    "open_basis",
    "operator_fingerprint",
]
__all__ += [
    "LOGDET_METHODS",
    "LogdetResult",
    "MaxEntError",
    "MaxEntResult",
    "legendre_moments",
    "logdet",
    "maxent_density",
    "maxent_from_quadrature",
    "power_to_legendre_moments",
]
