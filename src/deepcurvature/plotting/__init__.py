"""Figures of spectra: the paper's stem plot of a spectral density, written atomically."""

from .spectrum import plot_spectrum, save_figure

__all__ = ["plot_spectrum", "save_figure"]
