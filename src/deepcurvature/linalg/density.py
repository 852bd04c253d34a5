"""Discrete spectral densities from stochastic Lanczos quadrature (equation 25 of the paper).

Negative mass and round-off
---------------------------
The Ritz values of a zero eigenvalue come out at ``+-(round-off) * ||A||``, and a curvature matrix
of a network has a huge null space: counted strictly, "negative mass" would read round-off as
negative curvature (a VGG-16 GGN, positive semi-definite by construction, had "negative mass
0.9997" from Ritz values at -2e-9). So mass counts as negative only below a tolerance relative
to the spectral radius, ``theta < -rtol * max|theta|``, with ``rtol`` chosen from the precision
of the computation (:data:`NEGATIVE_MASS_RTOL_BY_PRECISION`):

* a Ritz value is an eigenvalue of ``A + E`` with ``||E|| ~ gamma ||A||``, ``gamma`` the relative
  error of one product ``A v`` (the Lanczos scalars and ``T``'s eigenproblem are float64, and full
  reorthogonalisation keeps the basis orthonormal to working precision);
* a product sums ``n`` rounded terms, ``gamma ~ eps * sqrt(n)`` (random-walk rounding), with ``n``
  at most ``P``: float32 (``eps = 1.2e-7``) stays below ``1e-3`` for ``n <= 7e7``, above
  the 15.2 M parameters of VGG-16 (``eps sqrt(P) = 4.6e-4``) -> ``rtol = 1e-3``;
* float64 round-off is ``eps sqrt(P) ~ 2e-12`` at ``P = 1e8``; ``rtol = 1e-6`` leaves six orders
  of magnitude for products less accurate than their dtype (float32 pieces, finite differences)
  and is still far below any negative curvature that matters (a direction with curvature
  ``-1e-6 * lambda_max`` is flat for every optimiser step size);
* half precision (float16 ``eps = 1e-3``, bfloat16 ``8e-3``) over sums of ~100 terms: ``1e-2``
  and ``1e-1`` (such spectra are qualitative).

The precision comes from ``metadata["precision"]`` (written by :func:`~.lanczos.lanczos`); without
it, :data:`NEGATIVE_MASS_RTOL` (float64's) applies. Summaries report the tolerance-based mass with
the threshold and the strict count. Matrices that are positive semi-definite by construction
(:data:`PSD_MATRICES`: GGN and Fisher, ``metadata["matrix"]``, or
``metadata["psd_by_construction"] = True``) have no negative eigenvalues: their negative Ritz
values are round-off and the summary's negative mass is 0.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.results import load_npz_json, save_npz_json
from .maxent import MaxEntResult, maxent_from_quadrature

__all__ = [
    "NEGATIVE_MASS_RTOL",
    "NEGATIVE_MASS_RTOL_BY_PRECISION",
    "PSD_MATRICES",
    "SpectralDensity",
    "canonical_matrix",
    "density_metadata_from_file",
    "is_psd_matrix",
    "precision_name",
]

#: Relative round-off tolerance of the negative mass per precision of the computation: mass
#: counts as negative below ``-rtol * max|theta|`` (the reasoning is in the module docstring).
NEGATIVE_MASS_RTOL_BY_PRECISION: dict[str, float] = {
    "float64": 1e-6,
    "float32": 1e-3,
    "float16": 1e-2,
    "bfloat16": 1e-1,
}
#: Unit round-off of the lower precisions (half the machine epsilon).
_UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: The default relative tolerance when the precision is unknown (float64's, the library's dtype
#: for dense and callable operators).
NEGATIVE_MASS_RTOL = NEGATIVE_MASS_RTOL_BY_PRECISION["float64"]

#: Curvature matrices that are positive semi-definite by construction (their canonical names).
PSD_MATRICES = ("ggn", "fisher", "fisher_mc")
_MATRIX_ALIASES = {
    "gauss_newton": "ggn",
    "fisher_empirical": "fisher",
    "empirical_fisher": "fisher",
    "mc_fisher": "fisher_mc",
}


def canonical_matrix(name: Any) -> str | None:
    """The canonical name of a curvature matrix (``"GGN"``, ``"gauss-newton"`` -> ``"ggn"``)."""
    if not isinstance(name, str):
        return None
    key = name.lower().replace("-", "_")
    return _MATRIX_ALIASES.get(key, key)


def is_psd_matrix(name: Any) -> bool:
    """Whether the matrix named ``name`` is positive semi-definite by construction."""
    return canonical_matrix(name) in PSD_MATRICES


def precision_name(*dtypes: Any) -> str | None:
    """The lowest precision among ``dtypes`` (torch dtypes or names such as ``"torch.float32"``).

    Returns:
        A key of :data:`NEGATIVE_MASS_RTOL_BY_PRECISION`, or ``None`` if none is recognised.
    """
    names = [str(d).removeprefix("torch.") for d in dtypes if d is not None]
    known = [n for n in names if n in NEGATIVE_MASS_RTOL_BY_PRECISION]
    return max(known, key=NEGATIVE_MASS_RTOL_BY_PRECISION.__getitem__) if known else None


def density_metadata_from_file(meta: dict[str, Any]) -> dict[str, Any]:
    """The density metadata in a result file's JSON, completed from its ``config``.

    Files written before the precision and the matrix were part of the density's metadata
    (``density_metadata`` of a ``SpectrumResult``, ``metadata`` of a ``SpectralDensity``) get
    ``"matrix"`` and ``"precision"`` from ``config["matrix"]``, ``config["dtype"]`` and
    ``config["basis_dtype"]`` when these are there.
    """
    inner = meta.get("density_metadata", meta.get("metadata"))
    out = dict(inner) if isinstance(inner, dict) else {}
    config = meta.get("config")
    if isinstance(config, dict):
        if out.get("matrix") is None and isinstance(config.get("matrix"), str):
            out["matrix"] = config["matrix"]
        if out.get("precision") is None:
            found = precision_name(config.get("dtype"), config.get("basis_dtype"))
            if found is not None:
                out["precision"] = found
    return out


@dataclass
class SpectralDensity:
    r"""A discrete spectral density :math:`p(\lambda) = \sum_i w_i \delta(\lambda - \theta_i)`.

    With ``n_v`` probes of ``m`` Lanczos steps each, the nodes are all Ritz values and the weights
    the squared first components of the eigenvectors of each probe's tridiagonal matrix divided by
    ``n_v`` (equation 25), so the weights sum to 1.

    Attributes:
        nodes: ``(n,)`` float64 Ritz values.
        weights: ``(n,)`` float64 non-negative weights summing to 1.
        dim: ``P``, the dimension of the matrix (for the trace estimate), or ``None``.
        probe_index: ``(n,)`` which probe each node came from (``-1`` when unknown).
        metadata: free-form JSON-serialisable information (configuration, timings...). Read
            here: ``"precision"`` (the dtype limiting the computation, which sets the round-off
            tolerance of :meth:`negative_mass`), ``"matrix"`` and ``"psd_by_construction"``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int | None = None
    probe_index: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes = np.asarray(self.nodes, dtype=np.float64).reshape(-1)
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if self.nodes.shape != self.weights.shape:
            raise ValueError(
                f"nodes {self.nodes.shape} and weights {self.weights.shape} differ in length"
            )
        if self.nodes.size == 0:
            raise ValueError("a spectral density needs at least one node")
        if not (np.all(np.isfinite(self.nodes)) and np.all(np.isfinite(self.weights))):
            raise ValueError("spectral density nodes and weights must be finite")
        if np.any(self.weights < 0):
            raise ValueError("spectral density weights must be non-negative")
        total = self.weights.sum()
        if not math.isclose(total, 1.0, rel_tol=1e-8, abs_tol=1e-8):
            raise ValueError(f"spectral density weights must sum to 1, they sum to {total!r}")
        if self.probe_index is None:
            self.probe_index = np.full(self.nodes.shape, -1, dtype=np.int64)
        else:
            self.probe_index = np.asarray(self.probe_index, dtype=np.int64).reshape(-1)
        if self.dim is not None:
            self.dim = int(self.dim)

    # -- moments and distribution ---------------------------------------------------------------
    def moment(self, k: int) -> float:
        r"""Return the k-th moment :math:`\sum_i w_i \theta_i^k`.

        For Gauss quadrature with one probe ``v`` this equals ``v^T A^k v / v^T v`` for
        ``k <= 2m - 1``; averaged over probes it estimates ``tr(A^k) / P`` (equation 23).
        """
        if k < 0:
            raise ValueError(f"moment order must be non-negative, got {k}")
        return float(np.sum(self.weights * self.nodes**k))

    def cdf(self, x: float | np.ndarray) -> float | np.ndarray:
        """Return the mass at or below ``x`` (vectorised over ``x``)."""
        order = np.argsort(self.nodes, kind="stable")
        nodes, cum = self.nodes[order], np.cumsum(self.weights[order])
        idx = np.searchsorted(nodes, np.asarray(x, dtype=np.float64), side="right")
        out = np.where(idx > 0, cum[np.maximum(idx - 1, 0)], 0.0)
        return float(out) if np.ndim(out) == 0 else out

    def smooth(self, sigma: float, grid: np.ndarray | int = 512) -> tuple[np.ndarray, np.ndarray]:
        r"""Gaussian-kernel smoothed density (equation 15 of the paper).

        :math:`\tilde p(\lambda)=\sum_i w_i k_\sigma(\lambda-\theta_i)`.

        Smoothing biases the moments (Theorem 5 of the paper): the k-th moment of the smoothed
        density exceeds the discrete one by
        :math:`\sum_i w_i \sum_{j=1}^{\lfloor k/2 \rfloor} \binom{k}{2j}
        \sigma^{2j}(2j-1)!!\,\theta_i^{k-2j}` (for the Gaussian kernel; e.g. the second moment
        grows by :math:`\sigma^2`). Use the discrete
        nodes and weights for any quantitative statement; smooth only to draw.

        Args:
            sigma: kernel width (same units as the eigenvalues), positive.
            grid: the evaluation points, or their number spanning the nodes +- 5 sigma.

        Returns:
            ``(grid, density)``, both ``(n_grid,)``; the density integrates to 1 over the real line.
        """
        if not sigma > 0:
            raise ValueError(f"smoothing width sigma must be positive, got {sigma}")
        if np.isscalar(grid):
            lo, hi = self.nodes.min() - 5 * sigma, self.nodes.max() + 5 * sigma
            grid = np.linspace(lo, hi, int(grid))
        grid = np.asarray(grid, dtype=np.float64)
        z = (grid[:, None] - self.nodes[None, :]) / sigma
        dens = (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))) @ self.weights
        return grid, dens

    def maxent(
        self,
        n_moments: int = 10,
        *,
        margin: float = 0.01,
        support: tuple[float, float] | None = None,
        quadrature_points: int = 512,
    ) -> MaxEntResult:
        r"""The maximum-entropy density matching the first ``n_moments`` moments of this one.

        The Legendre moments are computed from the nodes and weights directly
        (:func:`~deepcurvature.linalg.maxent.maxent_from_quadrature`); with ``m`` Lanczos steps
        they are exact for the quadrature up to degree ``2m - 1``, so keep ``n_moments < 2m``.

        Args:
            n_moments: the number ``n`` of moments to match.
            margin: the support is ``[lambda_min - margin * w, lambda_max + margin * w]`` with
                ``w = lambda_max - lambda_min`` the spread of the nodes (extreme Ritz values lie
                inside the spectrum, the density needs room at its edges).
            support: an explicit ``(a, b)`` instead (it must contain the nodes).
            quadrature_points: Gauss-Legendre nodes of the fit.

        Returns:
            A :class:`~deepcurvature.linalg.maxent.MaxEntResult`.

        Raises:
            MaxEntError: no density has these moments (e.g. too few nodes for ``n_moments``).
        """
        if support is None:
            width = self.lambda_max - self.lambda_min
            if not width > 0:
                raise ValueError(
                    "a maximum-entropy density needs nodes spread over an interval; all nodes "
                    f"are at {self.lambda_min:.6g} (give support=(a, b))"
                )
            if not margin >= 0:
                raise ValueError(f"margin must be non-negative, got {margin}")
            support = (self.lambda_min - margin * width, self.lambda_max + margin * width)
        result = maxent_from_quadrature(
            self.nodes, self.weights, n_moments, support, quadrature_points=quadrature_points
        )
        result.metadata.update(
            {"dim": self.dim, "margin": margin, "density_metadata": dict(self.metadata)}
        )
        return result

    # -- summary statistics ---------------------------------------------------------------------
    @property
    def lambda_max(self) -> float:
        """Largest node."""
        return float(self.nodes.max())

    @property
    def lambda_min(self) -> float:
        """Smallest node."""
        return float(self.nodes.min())

    @property
    def spectral_radius(self) -> float:
        """``max |theta|`` over the nodes."""
        return float(np.abs(self.nodes).max())

    @property
    def precision(self) -> str | None:
        """The precision of the computation (``metadata["precision"]``), or ``None``."""
        return precision_name(self.metadata.get("precision"))

    @property
    def negative_mass_rtol(self) -> float:
        """The default relative tolerance of :meth:`negative_mass`.

        For float32 and half precision ``min(cap, max(10 eps sqrt(P), NEGATIVE_MASS_RTOL))``,
        ``eps`` the unit round-off and the cap :data:`NEGATIVE_MASS_RTOL_BY_PRECISION` of the
        precision (the cap alone when ``dim`` is not known): 5.6e-5 for a float32 MLP with
        P = 8,970, the cap 1e-3 from P = 4.5 M on. For float64 and an unknown precision:
        :data:`NEGATIVE_MASS_RTOL`.
        """
        cap = NEGATIVE_MASS_RTOL_BY_PRECISION.get(self.precision or "", NEGATIVE_MASS_RTOL)
        eps = _UNIT_ROUNDOFF.get(self.precision or "")
        if eps is None or not self.dim:
            return cap
        # ten times the round-off of a product of P terms, so that a small float32 model does
        # not hide curvature a thousand times below lambda_max; within [float64's, the cap]
        return float(min(cap, max(10.0 * eps * math.sqrt(self.dim), NEGATIVE_MASS_RTOL)))

    @property
    def psd_by_construction(self) -> bool:
        """Whether the matrix is positive semi-definite by construction.

        ``metadata["psd_by_construction"]`` if set, else whether ``metadata["matrix"]`` is one
        of :data:`PSD_MATRICES`.
        """
        flag = self.metadata.get("psd_by_construction")
        return bool(flag) if flag is not None else is_psd_matrix(self.metadata.get("matrix"))

    def negative_mass_tol(self, rtol: float | None = None) -> float:
        """The absolute threshold ``rtol * max|theta|`` (default: :attr:`negative_mass_rtol`)."""
        return (self.negative_mass_rtol if rtol is None else float(rtol)) * self.spectral_radius

    def negative_mass(self, tol: float | None = None, *, rtol: float | None = None) -> float:
        """Mass of the nodes below ``-tol``: what is negative beyond round-off.

        Args:
            tol: absolute threshold; ``None`` (default) uses :meth:`negative_mass_tol`, the
                relative tolerance for the precision of the computation times the spectral radius
                (see the module docstring for how it is chosen); ``0.0`` counts every node
                strictly below 0.
            rtol: relative tolerance instead of the default one (with ``tol=None``).

        Returns:
            The mass (a sum of weights) in ``[0, 1]``.
        """
        threshold = self.negative_mass_tol(rtol) if tol is None else abs(float(tol))
        return float(self.weights[self.nodes < -threshold].sum())

    def negative_mass_summary(self, psd_by_construction: bool | None = None) -> dict[str, Any]:
        """The negative-mass entries of :meth:`summary`, with the tolerance they count below.

        Args:
            psd_by_construction: whether the matrix is PSD by construction (default:
                :attr:`psd_by_construction`).

        Returns:
            ``negative_mass`` (below ``-negative_mass_tol``; 0 for a PSD-by-construction matrix,
            whose negative Ritz values can only be round-off), ``negative_mass_tol`` (the absolute
            threshold), ``negative_mass_rtol`` (relative to ``max|theta|``),
            ``negative_mass_strict`` (every node below 0), ``psd_by_construction`` and ``note``
            (a sentence on what was not counted, or ``None``).
        """
        psd = self.psd_by_construction if psd_by_construction is None else bool(psd_by_construction)
        rtol = self.negative_mass_rtol
        tol = self.negative_mass_tol()
        mass, strict = self.negative_mass(), self.negative_mass(0.0)
        note = None
        if psd:
            note = "positive semi-definite by construction: negative_mass is 0"
            if strict > 0:
                note += (
                    f"; the negative Ritz values (mass {strict:.3g}, the lowest "
                    f"{self.lambda_min:.3g}) are round-off"
                )
            if mass > 0:
                note += (
                    f"; mass {mass:.3g} lies below -{tol:.3g} = -{rtol:g}*max|theta|, more "
                    "round-off than expected: check the precision of the operator's products"
                )
            mass = 0.0
        elif strict > mass:
            note = (
                f"negative Ritz values above -{tol:.3g} = -{rtol:g}*max|theta| (mass "
                f"{strict - mass:.3g}) are round-off of zero and not counted as negative"
            )
        return {
            "negative_mass": mass,
            "negative_mass_tol": tol,
            "negative_mass_rtol": rtol,
            "negative_mass_strict": strict,
            "psd_by_construction": psd,
            "note": note,
        }

    def mass_near_zero(self, rel_tol: float = 1e-3) -> float:
        """Mass of nodes with ``|theta| <= rel_tol * max|theta|`` (the degeneracy at zero)."""
        return float(self.weights[np.abs(self.nodes) <= rel_tol * self.spectral_radius].sum())

    def trace_estimate(self) -> float:
        r"""Estimate ``tr(A) = P * sum_i w_i theta_i`` (equation 23 with k = 1); needs ``dim``."""
        if self.dim is None:
            raise ValueError("the trace estimate needs the matrix dimension: set dim=P")
        return float(self.dim * self.moment(1))

    def summary(
        self, zero_tol: float = 1e-3, *, psd_by_construction: bool | None = None
    ) -> dict[str, Any]:
        """Return lambda_max/min, negative mass, mass near zero, trace estimate and sizes.

        The negative mass counts below the round-off tolerance and says which (see
        :meth:`negative_mass_summary` for its keys ``negative_mass``, ``negative_mass_tol``,
        ``negative_mass_rtol``, ``negative_mass_strict``, ``psd_by_construction``, ``note``).
        """
        return {
            "dim": self.dim,
            "n_nodes": int(self.nodes.size),
            "n_probes": len(np.unique(self.probe_index)),
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            **self.negative_mass_summary(psd_by_construction),
            "mass_near_zero": self.mass_near_zero(zero_tol),
            "mean": self.moment(1),
            "second_moment": self.moment(2),
            "trace_estimate": self.trace_estimate() if self.dim is not None else None,
        }

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (nodes, weights, probe index) and ``path.json`` atomically.

        Returns:
            The path of the ``.npz`` file.
        """
        meta = {"kind": "SpectralDensity", "dim": self.dim, "summary": self.summary()}
        meta["metadata"] = self.metadata
        npz, _ = save_npz_json(
            path,
            {"nodes": self.nodes, "weights": self.weights, "probe_index": self.probe_index},
            meta,
        )
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpectralDensity:
        """Read a density written by :meth:`save` (``.npz`` with or without the suffix)."""
        arrays, meta = load_npz_json(path)
        for key in ("nodes", "weights"):
            if key not in arrays:
                raise ValueError(f"{path} is not a spectral density file: it has no '{key}' array")
        return cls(
            nodes=arrays["nodes"],
            weights=arrays["weights"],
            dim=meta.get("dim"),
            probe_index=arrays.get("probe_index"),
            metadata=density_metadata_from_file(meta),
        )

    def __repr__(self) -> str:
        return (
            f"SpectralDensity(n_nodes={self.nodes.size}, dim={self.dim}, "
            f"range=[{self.lambda_min:.4g}, {self.lambda_max:.4g}])"
        )
