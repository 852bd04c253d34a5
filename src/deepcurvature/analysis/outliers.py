r"""Outliers of a spectrum and the edge of its bulk.

Three rules separate the outliers from the bulk of sorted values :math:`v_1 \le \dots \le v_n`
(eigenvalues, or the Ritz values of a spectral density):

* ``"gap"``: a large gap relative to the local spacing (the atom at zero left out, as for
  ``"mp"``). With gaps :math:`g_i = v_{i+1} - v_i` and the local spacing
  :math:`\ell_i = \operatorname{median}(g_{i-w}, \dots, g_{i-1})` of the ``w`` gaps just below
  (``w = 10``), the edge is the lowest gap :math:`i^*` among the top ``max_outliers`` with
  :math:`g_{i^*} / \ell_{i^*} \ge` ``min_ratio`` (default 8); the values above :math:`v_{i^*}`
  are the outliers (none when no gap qualifies). The lowest, not the largest: the gap between two
  outliers, measured against a local spacing that is still mostly the bulk's, can exceed the gap
  from the bulk to the first outlier. Inside a bulk the ratio stays below about 5 (its edge
  spacing grows only with the Tracy-Widom fluctuations). For a density the rule is applied to
  each probe's nodes (one Gauss rule each) and a value is an outlier when it lies beyond the bulk
  edge of more than half of the probes.
* ``"semicircle"``: a semicircle of centre ``c = mean`` and radius ``R = 2 std`` fitted to the
  bulk by its (weighted) moments; values beyond :math:`c \pm R` by more than
  ``edge_tol * R * n^{-2/3}`` (the Tracy-Widom scale of the edge) are outliers; refitted without
  them until nothing changes.
* ``"mp"``: a Marčenko–Pastur law fitted to the non-zero bulk by its moments: the mean is the
  scale ``s`` and ``var / mean^2`` the ratio ``q' <= 1``, edges :math:`s (1 \pm \sqrt{q'})^2`;
  values within ``zero_tol * max|v|`` of zero (the atom of a rank-deficient matrix) are neither
  bulk nor outliers; otherwise as ``"semicircle"``.

For a spectral density (several probes) the nodes of all probes are pooled and weighted by their
quadrature weights: the outlier nodes of different probes that agree to ``merge_rtol`` are one
eigenvalue, whose weight is their summed weight; ``mass * dim`` estimates how many eigenvalues
the outliers stand for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.results import load_npz_json, save_npz_json
from ..linalg.density import SpectralDensity
from ..linalg.eigsh import EigshResult

__all__ = ["OUTLIER_METHODS", "OutlierResult", "outliers"]

#: The rules of :func:`outliers`.
OUTLIER_METHODS = ("gap", "mp", "semicircle")
_SIDES = ("right", "left", "both")


@dataclass
class OutlierResult:
    """Outliers separated from the bulk of a spectrum.

    Attributes:
        method: ``"gap"``, ``"mp"`` or ``"semicircle"``.
        side: ``"right"``, ``"left"`` or ``"both"``.
        values: ``(r,)`` the outliers, ascending (probes merged).
        weights: ``(r,)`` their quadrature weights (a density), or ``None`` (eigenvalues).
        lower_edge: lower edge of the bulk (its smallest value, or the fitted edge).
        upper_edge: upper edge of the bulk.
        n_values: how many values (nodes) were analysed.
        n_bulk: how many of them are in the bulk.
        dim: ``P`` of the matrix when known.
        fit: the rule's numbers (``gap_ratio``; ``center``, ``radius``; ``scale``, ``ratio``).
        count_per_probe: ``(n_probes,)`` outlier nodes per probe (densities).
        metadata: the options used.
    """

    method: str
    side: str
    values: np.ndarray
    weights: np.ndarray | None
    lower_edge: float
    upper_edge: float
    n_values: int
    n_bulk: int
    dim: int | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    count_per_probe: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of outliers (distinct eigenvalues)."""
        return int(self.values.size)

    @property
    def mass(self) -> float | None:
        """Summed weight of the outliers (their share of the spectrum), for a density."""
        return None if self.weights is None else float(self.weights.sum())

    @property
    def count_from_mass(self) -> float | None:
        """``mass * dim``: how many eigenvalues the outliers' weight stands for."""
        if self.mass is None or self.dim is None:
            return None
        return self.mass * self.dim

    @property
    def edge(self) -> float:
        """The bulk edge on the outliers' side (the upper one unless ``side="left"``)."""
        return self.lower_edge if self.side == "left" else self.upper_edge

    def summary(self) -> dict[str, Any]:
        """Count, values, weights, edges, mass and the fit."""
        return {
            "method": self.method,
            "side": self.side,
            "count": self.count,
            "values": self.values.tolist(),
            "weights": None if self.weights is None else self.weights.tolist(),
            "lower_edge": self.lower_edge,
            "upper_edge": self.upper_edge,
            "n_values": self.n_values,
            "n_bulk": self.n_bulk,
            "dim": self.dim,
            "mass": self.mass,
            "count_from_mass": self.count_from_mass,
            "count_per_probe": (
                None if self.count_per_probe is None else self.count_per_probe.tolist()
            ),
            "fit": self.fit,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` and ``path.json`` atomically; returns the ``.npz`` path."""
        arrays: dict[str, np.ndarray] = {"values": self.values}
        if self.weights is not None:
            arrays["weights"] = self.weights
        if self.count_per_probe is not None:
            arrays["count_per_probe"] = self.count_per_probe
        meta = {
            "kind": "OutlierResult",
            "method": self.method,
            "side": self.side,
            "lower_edge": self.lower_edge,
            "upper_edge": self.upper_edge,
            "n_values": self.n_values,
            "n_bulk": self.n_bulk,
            "dim": self.dim,
            "fit": self.fit,
            "metadata": self.metadata,
            "summary": self.summary(),
        }
        npz, _ = save_npz_json(path, arrays, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> OutlierResult:
        """Read a result written by :meth:`save`."""
        arrays, meta = load_npz_json(path)
        if meta.get("kind") != "OutlierResult" or "values" not in arrays:
            raise ValueError(f"{path} is not an outlier file (OutlierResult.save)")
        return cls(
            method=meta["method"],
            side=meta["side"],
            values=arrays["values"],
            weights=arrays.get("weights"),
            lower_edge=float(meta["lower_edge"]),
            upper_edge=float(meta["upper_edge"]),
            n_values=int(meta["n_values"]),
            n_bulk=int(meta["n_bulk"]),
            dim=meta.get("dim"),
            fit=meta.get("fit", {}),
            count_per_probe=arrays.get("count_per_probe"),
            metadata=meta.get("metadata", {}),
        )

    def __repr__(self) -> str:
        return (
            f"OutlierResult(method={self.method!r}, count={self.count}, "
            f"bulk=[{self.lower_edge:.4g}, {self.upper_edge:.4g}])"
        )


# -- inputs ------------------------------------------------------------------------------------
def _spectrum_of(source: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int | None]:
    """``(values, weights or None, probe_index, dim)`` of a density, eigsh result or array."""
    density = source
    if not isinstance(density, SpectralDensity):
        attr = getattr(source, "density", None)
        density = attr() if callable(attr) else attr  # LanczosResult / SpectrumResult
    if isinstance(density, SpectralDensity):
        return density.nodes, density.weights, density.probe_index, density.dim
    if isinstance(source, EigshResult):
        values = np.asarray(source.values, dtype=np.float64)
        return values, None, np.zeros(values.size, dtype=np.int64), None
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().to(torch.float64).numpy()
    values = np.asarray(source, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            f"outliers needs a spectral density, an eigsh result or a 1-D array of eigenvalues, "
            f"got an array of shape {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("eigenvalues must be finite (found NaN or infinity)")
    return values, None, np.zeros(values.size, dtype=np.int64), values.size


# -- the rules ---------------------------------------------------------------------------------
def _gap_edge(v: np.ndarray, max_outliers: int, w: int, min_ratio: float) -> tuple[int, float]:
    """Number of top values of sorted ``v`` that are outliers by the gap rule, and the ratio.

    The edge is the lowest of the top ``max_outliers`` gaps whose ratio to the local spacing
    reaches ``min_ratio``; the ratio returned is the edge's (the largest one when none reaches).
    """
    n = v.size
    g = np.diff(v)
    tiny = np.finfo(np.float64).eps * max(1.0, float(np.abs(v).max()))
    largest = 0.0
    for i in range(max(1, n - 1 - max_outliers), n - 1):
        local = float(np.median(g[max(0, i - w) : i]))
        ratio = float(g[i] / max(local, tiny)) if g[i] > 0 else 0.0
        if ratio >= min_ratio:
            return n - 1 - i, ratio
        largest = max(largest, ratio)
    return 0, largest


def _gap_edges(
    v: np.ndarray, side: str, max_outliers: int | None, w: int, min_ratio: float
) -> tuple[float, float, dict[str, float]]:
    """``(lower edge, upper edge, ratios)`` of the bulk of ``v`` by the gap rule."""
    v = np.sort(v)
    if v.size < 3:
        raise ValueError(f"the gap rule needs at least 3 values (per probe), got {v.size}")
    cap = max(1, v.size // 3) if max_outliers is None else max_outliers
    cap = min(cap, v.size - 2)
    lo, hi, ratios = float(v[0]), float(v[-1]), {}
    if side in ("right", "both"):
        n_hi, ratios["gap_ratio_right"] = _gap_edge(v, cap, w, min_ratio)
        hi = float(v[v.size - n_hi - 1])
    if side in ("left", "both"):
        n_lo, ratios["gap_ratio_left"] = _gap_edge(-v[::-1], cap, w, min_ratio)
        lo = float(v[n_lo])
    return lo, hi, ratios


def _weighted_moments(v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    m = float(np.sum(w * v) / np.sum(w))
    return m, float(np.sum(w * (v - m) ** 2) / np.sum(w))


def _fit_edges(
    method: str, v: np.ndarray, w: np.ndarray, n: int
) -> tuple[float, float, float, dict[str, float]]:
    """``(low, high, half-width * n^{-2/3}, fit)`` of the law fitted to ``v`` weighted by ``w``."""
    mean, var = _weighted_moments(v, w)
    if method == "semicircle":
        R = 2.0 * math.sqrt(var)
        lo, hi, half = mean - R, mean + R, R
        fit = {"center": mean, "radius": R}
    else:
        if mean <= 0:
            raise ValueError(
                "a Marčenko–Pastur bulk is positive, but the non-zero values have mean "
                f"{mean:.3g} <= 0; use method='gap' or 'semicircle'"
            )
        q = min(var / mean**2, 1.0)
        lo, hi = mean * (1 - math.sqrt(q)) ** 2, mean * (1 + math.sqrt(q)) ** 2
        half = (hi - lo) / 2.0
        fit = {"scale": mean, "ratio": q}
    fit["half_width"] = half
    return lo, hi, half * n ** (-2.0 / 3.0), fit


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def outliers(
    source: Any,
    method: str = "gap",
    *,
    side: str = "right",
    max_outliers: int | None = None,
    min_ratio: float = 8.0,
    local_window: int = 10,
    edge_tol: float = 4.0,
    zero_tol: float = 1e-6,
    merge_rtol: float = 1e-6,
) -> OutlierResult:
    """Separate the outliers of a spectrum from its bulk (rules in the module docstring).

    Args:
        source: a :class:`~deepcurvature.SpectralDensity` (or a ``LanczosResult`` or
            ``SpectrumResult``), an :class:`~deepcurvature.EigshResult`, or ``(n,)`` eigenvalues.
        method: ``"gap"``, ``"mp"`` or ``"semicircle"``.
        side: outliers above the bulk (``"right"``), below it (``"left"``) or both.
        max_outliers: most outliers per side for ``"gap"`` (default ``n // 3``).
        min_ratio: smallest gap / local spacing that makes an edge (``"gap"``).
        local_window: ``w``, how many gaps below give the local spacing (``"gap"``).
        edge_tol: fitted edges are widened by ``edge_tol * half-width * n^{-2/3}``.
        zero_tol: ``"gap"`` and ``"mp"``: ``|v| <= zero_tol * max|v|`` is the atom at zero of a
            rank-deficient matrix, neither bulk nor outlier (``fit["n_zero"]`` counts it).
        merge_rtol: outlier nodes within ``merge_rtol * max|v|`` are one eigenvalue.

    Returns:
        An :class:`OutlierResult`.

    Raises:
        ValueError: unknown method or side, bad options, fewer than 3 values (4 for a fit).
    """
    if method not in OUTLIER_METHODS:
        raise ValueError(f"unknown method={method!r}: use one of {OUTLIER_METHODS}")
    if side not in _SIDES:
        raise ValueError(f"unknown side={side!r}: use one of {_SIDES}")
    values, weights, probe, dim = _spectrum_of(source)
    if values.size < 3:
        raise ValueError(f"outliers need at least 3 values to tell a bulk, got {values.size}")
    scale = float(np.abs(values).max()) or 1.0
    v, w, members = _merge(values, weights, merge_rtol * scale)
    n_probes = int(np.unique(probe).size)
    out = np.zeros(v.size, dtype=bool)
    fit: dict[str, Any] = {}
    lo, hi = float(v[0]), float(v[-1])
    # the atom at zero of a rank-deficient matrix is no bulk ("gap" and "mp")
    zero = np.abs(values) <= zero_tol * scale
    atom = np.abs(v) <= zero_tol * scale
    if method == "semicircle":
        zero, atom = np.zeros_like(zero), np.zeros_like(atom)
    fit["n_zero"] = int(zero.sum())
    if method == "gap":
        w_loc = _check_int("local_window", local_window, 1)
        if max_outliers is not None:
            _check_int("max_outliers", max_outliers, 1)
        # per probe: the nodes of one probe are one Gauss rule, evenly spread over the bulk
        edges = [
            _gap_edges(values[(probe == p) & ~zero], side, max_outliers, w_loc, min_ratio)
            for p in np.unique(probe)
        ]
        fit.update({key: float(np.median([e[2][key] for e in edges])) for key in edges[0][2]})
        # an outlier lies beyond the bulk edge of more than half of the probes
        if side in ("right", "both"):
            above = v[:, None] > np.array([e[1] for e in edges]) + merge_rtol * scale
            out |= (2 * above.sum(axis=1) > len(edges)) & ~atom
        if side in ("left", "both"):
            below = v[:, None] < np.array([e[0] for e in edges]) - merge_rtol * scale
            out |= (2 * below.sum(axis=1) > len(edges)) & ~atom
        if (out | atom).all():  # pragma: no cover - the rule keeps two values per probe
            raise ValueError("the gap rule left no bulk")
        lo, hi = float(v[~out & ~atom].min()), float(v[~out & ~atom].max())
    else:
        if np.sum(~atom) < 4:
            raise ValueError(
                f"a {method} fit needs at least 4 non-zero values, got {np.sum(~atom)}"
            )
        for _ in range(100):
            bulk = ~atom & ~out
            # the Tracy-Widom scale belongs to the matrix: its size, not the number of nodes
            n_eff = bulk.sum() if weights is None or not dim else dim * w[bulk].sum()
            lo, hi, tol, law = _fit_edges(method, v[bulk], w[bulk], max(int(n_eff), 1))
            fit.update(law)
            tol *= edge_tol
            if weights is not None:  # moments from n_probes random probes: their error too
                tol += 2.0 * law["half_width"] * math.sqrt(2.0 / (max(n_eff, 1.0) * n_probes))
            new = np.zeros_like(out)
            if side in ("right", "both"):
                new |= v > hi + tol
            if side in ("left", "both"):
                new |= (v < lo - tol) & ~atom
            if np.array_equal(new, out):
                break
            out = new
        fit["edge_tolerance"] = tol
    per_probe = None
    if weights is not None:
        flagged = np.concatenate([members[i] for i in np.flatnonzero(out)] or [np.array([], int)])
        per_probe = np.array([int(np.sum(probe[flagged] == p)) for p in np.unique(probe)])
    return OutlierResult(
        method=method,
        side=side,
        values=v[out],
        weights=None if weights is None else w[out],
        lower_edge=float(lo),
        upper_edge=float(hi),
        n_values=int(values.size),
        n_bulk=int(v.size - out.sum()),
        dim=dim,
        fit=fit,
        count_per_probe=per_probe,
        metadata={
            "min_ratio": min_ratio,
            "local_window": local_window,
            "edge_tol": edge_tol,
            "zero_tol": zero_tol,
            "merge_rtol": merge_rtol,
            "max_outliers": max_outliers,
            "n_probes": n_probes,
        },
    )


def _merge(
    values: np.ndarray, weights: np.ndarray | None, tol: float
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Sorted distinct values (runs closer than ``tol`` merged), summed weights, member indices.

    Eigenvalues (``weights`` None) are never merged: each gets weight ``1 / n``.
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    if weights is None:
        return v, np.full(v.size, 1.0 / v.size), [order[i : i + 1] for i in range(v.size)]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(v) > tol) + 1])
    ends = np.concatenate([starts[1:], [v.size]])
    w = weights[order]
    merged = np.array(
        [
            v[a:b] @ w[a:b] / w[a:b].sum() if w[a:b].sum() > 0 else v[a:b].mean()
            for a, b in zip(starts, ends, strict=True)
        ]
    )
    return (
        merged,
        np.add.reduceat(w, starts),
        [order[a:b] for a, b in zip(starts, ends, strict=True)],
    )
