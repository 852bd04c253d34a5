"""Discrete spectral densities from stochastic Lanczos quadrature (equation 25 of the paper)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.results import load_npz_json, save_npz_json

__all__ = ["SpectralDensity"]


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
        metadata: free-form JSON-serialisable information (configuration, timings...).
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

    # -- summary statistics ---------------------------------------------------------------------
    @property
    def lambda_max(self) -> float:
        """Largest node."""
        return float(self.nodes.max())

    @property
    def lambda_min(self) -> float:
        """Smallest node."""
        return float(self.nodes.min())

    def negative_mass(self, tol: float = 0.0) -> float:
        """Mass of nodes below ``-tol``."""
        return float(self.weights[self.nodes < -abs(tol)].sum())

    def mass_near_zero(self, rel_tol: float = 1e-3) -> float:
        """Mass of nodes with ``|theta| <= rel_tol * max|theta|`` (the degeneracy at zero)."""
        scale = float(np.abs(self.nodes).max())
        return float(self.weights[np.abs(self.nodes) <= rel_tol * scale].sum())

    def trace_estimate(self) -> float:
        r"""Estimate ``tr(A) = P * sum_i w_i theta_i`` (equation 23 with k = 1); needs ``dim``."""
        if self.dim is None:
            raise ValueError("the trace estimate needs the matrix dimension: set dim=P")
        return float(self.dim * self.moment(1))

    def summary(self, zero_tol: float = 1e-3) -> dict[str, float | int | None]:
        """Return lambda_max/min, negative mass, mass near zero, trace estimate and sizes."""
        return {
            "dim": self.dim,
            "n_nodes": int(self.nodes.size),
            "n_probes": len(np.unique(self.probe_index)),
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "negative_mass": self.negative_mass(),
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
            metadata=meta.get("metadata", {}),
        )

    def __repr__(self) -> str:
        return (
            f"SpectralDensity(n_nodes={self.nodes.size}, dim={self.dim}, "
            f"range=[{self.lambda_min:.4g}, {self.lambda_max:.4g}])"
        )
