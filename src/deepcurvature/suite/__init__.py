"""The paper's workflows with its argument names: files in, files out."""

from .eigenspectrum import compute_eigenspectrum
from .landscape import build_loss_landscape
from .loss_stats import compute_loss_stats, read_loss_stats

__all__ = ["compute_eigenspectrum"]
__all__ += ["build_loss_landscape"]
__all__ += ["compute_loss_stats", "read_loss_stats"]
