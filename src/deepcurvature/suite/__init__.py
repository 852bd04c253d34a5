"""The paper's workflows with its argument names: files in, files out."""

from .eigenspectrum import compute_eigenspectrum

__all__ = ["compute_eigenspectrum"]
