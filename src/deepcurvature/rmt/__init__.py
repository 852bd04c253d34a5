"""Random-matrix ensembles and their limiting spectral laws (section 6 and Appendix A).

Generators return seeded float64 torch tensors (:mod:`.ensembles`); the laws are numpy functions
(:mod:`.laws`): the semicircle (equation 7) and Marcenko-Pastur (equations 8-9) densities, CDFs
and edges, and the Kolmogorov distance of a sample to a law.
"""

from .ensembles import (
    SYNTHETIC_FRACTIONS,
    SyntheticSpectrum,
    haar_orthogonal,
    synthetic_counts,
    synthetic_spectrum,
    wigner,
    wishart,
)
from .laws import (
    kolmogorov_distance,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_edges,
    semicircle_cdf,
    semicircle_density,
    semicircle_edges,
    wigner_radius,
)

__all__ = [
    "SYNTHETIC_FRACTIONS",
    "SyntheticSpectrum",
    "haar_orthogonal",
    "kolmogorov_distance",
    "marchenko_pastur_atom",
    "marchenko_pastur_cdf",
    "marchenko_pastur_density",
    "marchenko_pastur_edges",
    "semicircle_cdf",
    "semicircle_density",
    "semicircle_edges",
    "synthetic_counts",
    "synthetic_spectrum",
    "wigner",
    "wigner_radius",
    "wishart",
]
