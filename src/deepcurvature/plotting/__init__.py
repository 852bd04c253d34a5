"""Figures of spectra: the paper's stem plot of a spectral density, written atomically."""

from .batch_extremes import plot_batch_extremes
from .comparison import plot_comparison
from .landscape import plot_loss_landscape
from .local_statistics import plot_local_statistics
from .loss_stats import plot_loss_stats
from .maxent import plot_maxent
from .outliers import plot_outliers
from .spectrum import SPECTRUM_MODES, plot_spectrum, read_spectrum, save_figure
from .style import OKABE_ITO, PALETTE
from .training import plot_training, read_training_stats

__all__ = [
    "OKABE_ITO",
    "PALETTE",
    "SPECTRUM_MODES",
    "plot_comparison",
    "plot_loss_landscape",
    "plot_loss_stats",
    "plot_spectrum",
    "plot_training",
    "read_spectrum",
    "read_training_stats",
    "save_figure",
]
__all__ += ["plot_batch_extremes", "plot_local_statistics", "plot_maxent", "plot_outliers"]
