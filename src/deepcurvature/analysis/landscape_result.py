"""The result of a loss landscape: :class:`LandscapeResult` (arrays, summary, save and load)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.errors import invalid_file
from ..io.results import load_npz_json, save_npz_json

__all__ = ["METRICS", "LandscapeResult"]

#: the metrics evaluated at every point
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
_METRICS = METRICS


@dataclass
class LandscapeResult:
    """A loss landscape: train/test loss and accuracy along directions (1-D) or over a plane (2-D).

    Attributes:
        t: ``(n,)`` step sizes in ``[-dist, dist]``; the point is ``w* + t u`` (``t`` is the
            parameter-space distance for unit-norm directions: eigen, gaussian).
        labels: ``D`` direction names (``D = 2`` for a plane: its two axes).
        kinds: ``D`` kinds (``"eigen"``, ``"random"``, ``"gaussian"``, ``"given"``).
        eigenvalues: ``(D,)`` Ritz values of eigen-directions, NaN for the others.
        ritz_indices: ``(D,)`` their columns in the spectrum, -1 for the others.
        norms: ``(D,)`` Euclidean norms ``||u||``.
        slopes: ``(D,)`` directional derivatives ``g.u`` (NaN without the quadratic model).
        uhu: ``(D, D)`` matrix ``U^T H U`` (NaN without the quadratic model).
        thetas: ``(D,)`` the ``theta`` used in the quadratic model (``u^T H u``, or the Ritz value
            with ``theta="ritz"``).
        train_loss: ``(D, n)`` for 1-D (row ``d`` along direction ``d``); ``(n, n)`` for 2-D with
            ``[i, j]`` at ``w* + t_i u + t_j v``.
        train_accuracy: same shape, fractions in [0, 1]; ``None`` when the outputs are not
            class scores.
        test_loss: same shape, or ``None`` without test data.
        test_accuracy: same shape, or ``None``.
        quadratic: the quadratic model of the train loss (same shape), or ``None``.
        origin: the metrics at ``w*`` with the model's own batch-norm statistics.
        ndim: 1 or 2.
        config: how it was computed (dist, n_points, directions, bn_recompute, seed...).
        info: sizes, passes and timings.
    """

    t: np.ndarray
    labels: list[str]
    kinds: list[str]
    eigenvalues: np.ndarray
    ritz_indices: np.ndarray
    norms: np.ndarray
    slopes: np.ndarray
    uhu: np.ndarray
    thetas: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray | None = None
    test_loss: np.ndarray | None = None
    test_accuracy: np.ndarray | None = None
    quadratic: np.ndarray | None = None
    origin: dict[str, float | None] = field(default_factory=dict)
    ndim: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dist(self) -> float:
        """The largest ``|t|``."""
        return float(np.abs(self.t).max())

    @property
    def rayleigh_quotients(self) -> np.ndarray:
        """``(D,)`` ``u^T H u / u^T u``, comparable with eigenvalues for any direction."""
        return np.diag(self.uhu) / self.norms**2

    def metric(self, name: str) -> np.ndarray | None:
        """The array of a metric: ``train_loss``, ``train_accuracy``, ``test_loss``, ...

        Args:
            name: ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy`` or
                ``quadratic``.
        """
        if name not in (*_METRICS, "quadratic"):
            raise ValueError(f"unknown metric {name!r}: use one of {(*_METRICS, 'quadratic')}")
        return getattr(self, name)

    def summary(self) -> list[dict[str, Any]]:
        """Rows for a table: one per direction (1-D) or one for the plane (2-D).

        A 1-D row holds the eigenvalue, ``u^T H u / ||u||^2``, the slope ``g.u`` and the train/test
        loss at the origin and at the ends ``t = -dist, +dist``.
        """
        rows = []
        if self.ndim == 2:
            rows.append(
                {
                    "direction": " x ".join(self.labels),
                    "train_loss_min": float(np.nanmin(self.train_loss)),
                    "train_loss_max": float(np.nanmax(self.train_loss)),
                    "train_loss_origin": self.origin.get("train_loss"),
                }
            )
            return rows
        rq = self.rayleigh_quotients
        for d, label in enumerate(self.labels):
            row: dict[str, Any] = {
                "direction": label,
                "eigenvalue": _nan_to_none(self.eigenvalues[d]),
                "rayleigh": _nan_to_none(rq[d]),
                "slope": _nan_to_none(self.slopes[d]),
                "train_loss_origin": self.origin.get("train_loss"),
                "train_loss_left": float(self.train_loss[d, 0]),
                "train_loss_right": float(self.train_loss[d, -1]),
            }
            if self.test_loss is not None:
                row["test_loss_left"] = float(self.test_loss[d, 0])
                row["test_loss_right"] = float(self.test_loss[d, -1])
            rows.append(row)
        return rows

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (arrays) and ``path.json`` (labels, config, info) atomically.

        Returns:
            The ``.npz`` path.
        """
        arrays: dict[str, np.ndarray] = {
            "t": self.t,
            "eigenvalues": self.eigenvalues,
            "ritz_indices": self.ritz_indices,
            "norms": self.norms,
            "slopes": self.slopes,
            "uhu": self.uhu,
            "thetas": self.thetas,
        }
        for name in (*_METRICS, "quadratic"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        meta = {
            "kind": "LandscapeResult",
            "ndim": self.ndim,
            "labels": self.labels,
            "kinds": self.kinds,
            "origin": self.origin,
            "config": self.config,
            "info": self.info,
            "summary": self.summary(),
        }
        npz, _ = save_npz_json(path, arrays, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> LandscapeResult:
        """Read a result written by :meth:`save` (path with or without ``.npz``)."""
        arrays, meta = load_npz_json(path)
        if meta.get("kind", "LandscapeResult") != "LandscapeResult" or "t" not in arrays:
            raise ValueError(
                f"{path} is not a loss-landscape file (kind {meta.get('kind')!r}); write one with "
                "dc.build_loss_landscape or 'deepcurvature landscape'"
            )
        needed = ("eigenvalues", "ritz_indices", "norms", "slopes", "uhu", "thetas", "train_loss")
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise invalid_file(
                path,
                "deepcurvature result file",
                f"no {missing[0]!r} array" + (f" (nor {missing[1:]})" if missing[1:] else ""),
                "compute it again or give a file written by deepcurvature",
            )
        return cls(
            t=arrays["t"],
            labels=list(meta.get("labels", [])),
            kinds=list(meta.get("kinds", [])),
            eigenvalues=arrays["eigenvalues"],
            ritz_indices=arrays["ritz_indices"],
            norms=arrays["norms"],
            slopes=arrays["slopes"],
            uhu=arrays["uhu"],
            thetas=arrays["thetas"],
            train_loss=arrays["train_loss"],
            train_accuracy=arrays.get("train_accuracy"),
            test_loss=arrays.get("test_loss"),
            test_accuracy=arrays.get("test_accuracy"),
            quadratic=arrays.get("quadratic"),
            origin=dict(meta.get("origin", {})),
            ndim=int(meta.get("ndim", arrays["train_loss"].ndim if "train_loss" in arrays else 1)),
            config=dict(meta.get("config", {})),
            info=dict(meta.get("info", {})),
        )


def _nan_to_none(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x
