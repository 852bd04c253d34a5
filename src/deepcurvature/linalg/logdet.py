r"""Log-determinants ``log det(A + lambda I)`` of a symmetric positive-definite operator.

Two estimators share one Lanczos run with ``n_v`` Rademacher probes ``v_l`` (``||v_l||^2 = P``)
of ``m`` steps each, whose products share one ``matmat`` per step:

* ``method="slq"``, stochastic Lanczos quadrature (Ubaru, Chen and Saad 2017): per probe
  :math:`\Gamma_l = P \sum_j w_{lj} \log(\theta_{lj} + \lambda) \approx
  v_l^T \log(A + \lambda I) v_l` with Ritz values :math:`\theta_{lj}` and Gauss quadrature
  weights :math:`w_{lj}` (summing to 1), and :math:`\log\det \approx \frac{1}{n_v}\sum_l
  \Gamma_l`, standard error :math:`\mathrm{sd}(\Gamma_l) / \sqrt{n_v}`;
* ``method="maxent"`` ("Entropic Trace Estimates for Log Determinants", Fitzsimons et al. 2017):
  the maximum-entropy density :math:`p` matching ``n_moments`` moments of the pooled Lanczos
  density (:mod:`.maxent`), and :math:`\log\det \approx P \int \log(x + \lambda) p(x)\,dx`; the
  standard error is the leave-one-probe-out jackknife (each refit warm-started), and the
  per-probe values are the jackknife pseudo-values :math:`n_v \hat\Gamma - (n_v - 1)
  \hat\Gamma_{(-l)}`, whose mean and standard error are the jackknife's.

Ritz values lie inside the spectrum, so one at or below ``-lambda`` proves that ``A + lambda I``
is not positive definite and raises; the converse does not hold (the smallest eigenvalue may be
below every Ritz value), so an indefinite matrix can slip through with too few steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.results import load_npz_json, save_npz_json
from .lanczos import LanczosResult, lanczos
from .maxent import maxent_from_quadrature

__all__ = ["LOGDET_METHODS", "LogdetResult", "logdet"]

#: The estimators of :func:`logdet`.
LOGDET_METHODS = ("slq", "maxent")


@dataclass
class LogdetResult:
    """An estimate of ``log det(A + shift I)`` with its standard error across probes.

    Attributes:
        value: the estimate.
        standard_error: its standard error (``nan`` with one probe).
        per_probe: ``(n_v,)`` the per-probe values (SLQ) or jackknife pseudo-values (MaxEnt).
        shift: ``lambda``.
        method: ``"slq"`` or ``"maxent"``.
        dim: ``P``.
        products: matrix-vector products used (all probes' Lanczos steps).
        steps: Lanczos steps per probe.
        seed: the probes' seed.
        metadata: free-form (MaxEnt fit summary, support, smallest Ritz value...).
    """

    value: float
    standard_error: float
    per_probe: np.ndarray
    shift: float
    method: str
    dim: int
    products: int
    steps: int
    seed: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_probes(self) -> int:
        """Number of probes ``n_v``."""
        return int(self.per_probe.size)

    @property
    def relative_standard_error(self) -> float:
        """``standard_error / |value|``."""
        return float(self.standard_error / abs(self.value)) if self.value else math.inf

    def summary(self) -> dict[str, Any]:
        """Value, standard error, method, shift, sizes and products."""
        return {
            "value": self.value,
            "standard_error": self.standard_error,
            "relative_standard_error": self.relative_standard_error,
            "method": self.method,
            "shift": self.shift,
            "dim": self.dim,
            "probes": self.n_probes,
            "steps": self.steps,
            "products": self.products,
            "seed": self.seed,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (per-probe values) and ``path.json`` (the rest) atomically."""
        meta = {"kind": "LogdetResult", **self.summary(), "metadata": self.metadata}
        npz, _ = save_npz_json(path, {"per_probe": self.per_probe}, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> LogdetResult:
        """Read a result written by :meth:`save` (``.npz`` with or without the suffix)."""
        arrays, meta = load_npz_json(path)
        if "per_probe" not in arrays or meta.get("kind") != "LogdetResult":
            raise ValueError(f"{path} is not a log-determinant result file")
        return cls(
            value=float(meta["value"]),
            standard_error=float(meta["standard_error"]),
            per_probe=np.asarray(arrays["per_probe"], dtype=np.float64),
            shift=float(meta["shift"]),
            method=str(meta["method"]),
            dim=int(meta["dim"]),
            products=int(meta["products"]),
            steps=int(meta["steps"]),
            seed=meta.get("seed"),
            metadata=dict(meta.get("metadata") or {}),
        )

    def __repr__(self) -> str:
        return (
            f"LogdetResult({self.method}: {self.value:.6g} +- {self.standard_error:.2g}, "
            f"P={self.dim}, shift={self.shift:g}, probes={self.n_probes})"
        )


def _check_positive_definite(run: LanczosResult, shift: float) -> float:
    """The smallest Ritz value; raises when ``theta_min + shift <= 0``."""
    theta = np.concatenate(run.ritz_values)
    low, radius = float(theta.min()), float(np.abs(theta).max())
    if low + shift <= 0:
        suggest = max(-low, 0.0) + 1e-2 * radius
        raise ValueError(
            f"A + shift*I is not positive definite: a Ritz value {low:.6g} <= -shift (shift = "
            f"{shift:g}; Ritz values lie inside the spectrum, so A has an eigenvalue at or "
            f"below it) and its log-determinant is not real; add shift={suggest:.3g} or more "
            "(e.g. the prior precision or damping)"
        )
    return low


def _slq(run: LanczosResult, shift: float) -> np.ndarray:
    P = run.dim
    return np.array(
        [
            P * float(w @ np.log(t + shift))
            for t, w in zip(run.ritz_values, run.weights, strict=True)
        ]
    )


def _maxent(
    run: LanczosResult, shift: float, n_moments: int, margin: float, quadrature_points: int
) -> tuple[float, np.ndarray, dict[str, Any]]:
    nodes, weights = run.ritz_values, run.weights
    low = min(float(t.min()) for t in nodes)
    high = max(float(t.max()) for t in nodes)
    width = high - low
    if not width > 0:
        raise ValueError("all Ritz values coincide: use method='slq'")
    a, b = low - margin * width, high + margin * width
    if a + shift <= 0:  # keep log(x + shift) finite: halfway between -shift and the lowest node
        a = low - 0.5 * (low + shift)
    support = (a, b)

    def fit(keep: list[int], initial: np.ndarray | None = None) -> Any:
        return maxent_from_quadrature(
            np.concatenate([nodes[i] for i in keep]),
            np.concatenate([weights[i] for i in keep]),
            n_moments,
            support,
            quadrature_points=quadrature_points,
            initial=initial,
        )

    n = run.n_probes
    full = fit(list(range(n)))
    P = run.dim

    def value_of(res: Any) -> float:
        return P * res.expectation(lambda x: np.log(x + shift))

    value = value_of(full)
    if n > 1:
        loo = np.array(
            [value_of(fit([i for i in range(n) if i != j], full.multipliers)) for j in range(n)]
        )
        pseudo = n * value - (n - 1) * loo
    else:
        pseudo = np.array([value])
    meta = {"maxent": full.summary(), "support": list(support), "n_moments": n_moments}
    return value, pseudo, meta


def logdet(
    op: Any,
    *,
    shift: float = 0.0,
    method: str = "slq",
    probes: int = 30,
    steps: int = 30,
    seed: int | None = None,
    n_moments: int = 10,
    margin: float = 0.01,
    quadrature_points: int = 512,
    verbose: bool = False,
) -> LogdetResult:
    r"""Estimate :math:`\log\det(A + \lambda I)` by stochastic Lanczos quadrature or MaxEnt.

    Args:
        op: a symmetric ``(P, P)`` operator, or anything :func:`as_operator` takes; or the
            :class:`LanczosResult` of an earlier run on ``A`` (reused: no new products, and
            ``probes``, ``steps`` and ``seed`` are ignored).
        shift: ``lambda`` (``A + lambda I`` must be positive definite).
        method: ``"slq"`` or ``"maxent"`` (module docstring).
        probes: Rademacher probes ``n_v`` (the standard error is across them).
        steps: Lanczos steps ``m`` per probe (the SLQ error for ``log`` falls geometrically
            with ``m`` at a rate set by the condition number of ``A + lambda I``).
        seed: seed of the probes.
        n_moments: moments of the MaxEnt fit (``method="maxent"``; needs ``n_moments < 2 m``).
        margin: MaxEnt support margin, as :meth:`SpectralDensity.maxent`; its lower end is
            raised to halfway between ``-lambda`` and the lowest Ritz value if needed.
        quadrature_points: Gauss-Legendre nodes of the MaxEnt integrals.
        verbose: show Lanczos progress.

    Returns:
        A :class:`LogdetResult`.

    Raises:
        ValueError: an unknown method, or ``A + lambda I`` not positive definite (a Ritz value
            ``<= -lambda``; the message suggests a shift).
        MaxEntError: the MaxEnt moment problem failed (fewer ``n_moments``).
    """
    if method not in LOGDET_METHODS:
        raise ValueError(f"method must be one of {LOGDET_METHODS}, got {method!r}")
    shift = float(shift)
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {shift}")
    if isinstance(op, LanczosResult):
        run = op
    else:
        run = lanczos(op, steps, probes=probes, seed=seed, verbose=verbose, description="logdet")
    low = _check_positive_definite(run, shift)
    meta: dict[str, Any] = {"lowest_ritz_value": low, "precision": run.precision}
    if method == "slq":
        per_probe = _slq(run, shift)
        value = float(per_probe.mean())
    else:
        value, per_probe, extra = _maxent(run, shift, int(n_moments), margin, quadrature_points)
        meta.update(extra)
    n = per_probe.size
    se = float(per_probe.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return LogdetResult(
        value=value,
        standard_error=se,
        per_probe=per_probe,
        shift=shift,
        method=method,
        dim=run.dim,
        products=int(sum(run.steps_done)),
        steps=run.steps,
        seed=run.seed,
        metadata=meta,
    )
