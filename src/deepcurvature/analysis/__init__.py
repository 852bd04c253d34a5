"""Analyses built on the curvature operators: spectra (and, later, statistics and landscapes)."""

from .diagonals import (
    DiagonalComparison,
    DiagonalResult,
    adam_second_moment,
    compare_diagonal,
    empirical_fisher_diagonal,
    ggn_diagonal,
    hessian_diagonal,
    hutchinson_diagonal,
    mc_ggn_diagonal,
)
from .landscape import (
    Direction,
    LandscapeResult,
    filter_normalize,
    filter_normalized_direction,
    loss_landscape,
    resolve_directions,
)
from .loss_stats import LossStats, group_parameters, layer_of, loss_stats
from .spectrum import MATRICES, SpectrumResult, curvature_operator, spectrum

__all__ = ["MATRICES", "SpectrumResult", "curvature_operator", "spectrum"]
__all__ += [
    "Direction",
    "LandscapeResult",
    "filter_normalize",
    "filter_normalized_direction",
    "loss_landscape",
    "resolve_directions",
]
__all__ += [
    "DiagonalComparison",
    "DiagonalResult",
    "LossStats",
    "adam_second_moment",
    "compare_diagonal",
    "empirical_fisher_diagonal",
    "ggn_diagonal",
    "group_parameters",
    "hessian_diagonal",
    "hutchinson_diagonal",
    "layer_of",
    "loss_stats",
    "mc_ggn_diagonal",
]
