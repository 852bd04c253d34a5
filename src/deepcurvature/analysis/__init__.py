"""Analyses built on the curvature operators: spectra (and, later, statistics and landscapes)."""

from .spectrum import MATRICES, SpectrumResult, curvature_operator, spectrum

__all__ = ["MATRICES", "SpectrumResult", "curvature_operator", "spectrum"]
