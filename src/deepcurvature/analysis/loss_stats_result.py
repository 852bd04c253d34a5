"""The result of :func:`~deepcurvature.analysis.loss_stats.loss_stats`: values, layers, files."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.results import load_npz_json, save_npz_json


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return x


def _none_to_nan(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (math.nan if v is None else v) for k, v in d.items()}


@dataclass
class LossStats:
    """Loss, gradient and curvature statistics over a data set (see :mod:`.loss_stats`'s doc).

    Attributes:
        values: whole-model statistics, ``{key: float}`` (NaN when undefined, e.g. the accuracy of
            a regression model or a standard error with one probe).
        layers: per-layer statistics, ``{layer: {key: float}}`` (empty when ``per_layer=False``).
        per_probe: whole-model probe-dependent values before averaging, ``{key: (k,) array}``.
        batches: per-mini-batch records: ``loss`` ``(M,)``, ``grad_norm_sq`` ``(M,)``,
            ``curv_norm_sq`` ``(M, k)``, ``size`` ``(M,)``.
        config: how they were computed (matrix, probes, seed, batch size, sizes, data passes...).
    """

    values: dict[str, float]
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    per_probe: dict[str, np.ndarray] = field(default_factory=dict)
    batches: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def as_row(self, *, layers: bool = False) -> dict[str, Any]:
        """A flat ``{column: value}`` dict for tables.

        The whole-model values, the matrix, probes and sizes, and with ``layers=True`` also
        ``"LAYER/KEY"`` columns.
        """
        row: dict[str, Any] = {
            "matrix": self.config.get("matrix"),
            "probes": self.config.get("probes"),
            "batch_size": self.config.get("batch_size"),
            "num_batches": self.config.get("num_batches"),
            "num_samples": self.config.get("num_samples"),
            "num_params": self.config.get("num_params"),
        }
        row.update(self.values)
        if layers:
            for name, vals in self.layers.items():
                row.update({f"{name}/{k}": v for k, v in vals.items()})
        return row

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` and ``path.json`` atomically.

        The npz file holds the per-probe and per-batch arrays, the JSON file the values, layers
        and config (NaN written as ``null``).

        Returns:
            The ``.npz`` path.
        """
        arrays = {f"probe_{k}": np.asarray(v) for k, v in self.per_probe.items()}
        arrays.update({f"batch_{k}": np.asarray(v) for k, v in self.batches.items()})
        meta = {
            "kind": "LossStats",
            "values": _nan_to_none(self.values),
            "layers": {k: _nan_to_none(v) for k, v in self.layers.items()},
            "config": self.config,
        }
        npz, _ = save_npz_json(path, arrays, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> LossStats:
        """Read statistics written by :meth:`save` (path with or without ``.npz``)."""
        arrays, meta = load_npz_json(path)
        if meta.get("kind") != "LossStats":
            raise ValueError(f"{path} is not a loss statistics file (kind={meta.get('kind')!r})")
        return cls(
            values=_none_to_nan(meta["values"]),
            layers={k: _none_to_nan(v) for k, v in meta.get("layers", {}).items()},
            per_probe={k[6:]: v for k, v in arrays.items() if k.startswith("probe_")},
            batches={k[6:]: v for k, v in arrays.items() if k.startswith("batch_")},
            config=meta.get("config", {}),
        )

    def __repr__(self) -> str:
        v = self.values
        return (
            f"LossStats(matrix={self.config.get('matrix')!r}, loss={v.get('loss'):.4g}, "
            f"grad_var={v.get('grad_var'):.4g}, curv_shrinkage={v.get('curv_shrinkage'):.3g}, "
            f"layers={len(self.layers)})"
        )
