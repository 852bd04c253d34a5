"""Analyses built on the curvature operators: spectra (and, later, statistics and landscapes)."""

from .batch_extremes import (
    BATCH_MATRICES,
    BatchExtremesResult,
    batch_hessian_extremes,
    draw_batches,
    fit_batch_law,
)
from .diagonal_comparison import DiagonalComparison, compare_diagonal
from .diagonals import (
    DiagonalResult,
    adam_second_moment,
    hessian_diagonal,
    hutchinson_diagonal,
)
from .exact_diagonals import empirical_fisher_diagonal, ggn_diagonal, mc_ggn_diagonal
from .landscape import (
    Direction,
    LandscapeResult,
    filter_normalize,
    filter_normalized_direction,
    loss_landscape,
    resolve_directions,
)
from .local_statistics import (
    DEFAULT_TRIM,
    GOE_MEAN_RATIO,
    GOE_SURMISE_MEAN_RATIO,
    MIN_WINDOW,
    POISSON_MEAN_RATIO,
    LocalStatistics,
    goe_ratio_cdf,
    goe_ratio_density,
    local_statistics,
    poisson_ratio_cdf,
    poisson_ratio_density,
    select_window,
    spacing_ratios,
)
from .loss_stats import LossStats, group_parameters, layer_of, loss_stats
from .outliers import OUTLIER_METHODS, OutlierResult, outliers
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
__all__ += [
    "BATCH_MATRICES",
    "DEFAULT_TRIM",
    "GOE_MEAN_RATIO",
    "GOE_SURMISE_MEAN_RATIO",
    "MIN_WINDOW",
    "OUTLIER_METHODS",
    "POISSON_MEAN_RATIO",
    "BatchExtremesResult",
    "LocalStatistics",
    "OutlierResult",
    "batch_hessian_extremes",
    "draw_batches",
    "fit_batch_law",
    "goe_ratio_cdf",
    "goe_ratio_density",
    "local_statistics",
    "outliers",
    "poisson_ratio_cdf",
    "poisson_ratio_density",
    "select_window",
    "spacing_ratios",
]
