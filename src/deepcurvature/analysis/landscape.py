"""Loss landscapes: the loss along eigenvectors and random directions (paper sections 5 and 9).

A 1-D landscape evaluates the train (and test) loss and accuracy at ``w* + t u`` for ``n_points``
values ``t`` in ``[-dist, dist]`` along each direction ``u``; a 2-D landscape evaluates
``w* + a u + b v`` on an ``n_points x n_points`` grid. Only the selected parameters move; batch
norm keeps the model's running statistics, or recomputes them at every point
(``bn_recompute=True``).

Directions:

* **Eigen-directions** (the paper's choice): Ritz vectors of a saved spectrum
  (:class:`~deepcurvature.SpectrumResult` with ``eigvecs``, or an ``EigshResult``). They have unit
  Euclidean norm, so ``t`` is the distance ``||w - w*||`` in parameter space.
* **Filter-normalised random directions** (Li et al. 2017, "Visualizing the loss landscape of
  neural nets"): a Gaussian direction ``d`` rescaled filter by filter,
  ``d_i <- d_i ||w_i|| / ||d_i||``, where a filter is a slice ``[i]`` along the first dimension of a
  weight with at least 2 dimensions (an output neuron of a linear layer, an output channel of a
  convolution). One-dimensional parameters (biases, batch-norm weights and biases) are zeroed
  (``bias_bn="zero"``, Li et al.'s default) or rescaled as one filter (``bias_bn="filter"``).
  ``t`` is then relative: at ``t = 1`` every filter has moved by its own norm.
* **Gaussian directions**: isotropic random unit vectors (``t`` in parameter-space distance, the
  baseline to compare eigen-directions with), and any given ``(P,)`` vectors (used as given).

For 1-D landscapes the second-order Taylor model (the quadratic model behind Lanczos curvature)

    ``q(t) = L(w*) + t g.u + theta t^2 / 2``,   ``theta = u^T H u``,

is stored beside the train loss (``g`` the full-data gradient, ``H`` the Hessian of the mean train
loss with fixed batch-norm statistics). By default ``theta`` is computed exactly with one
Hessian-vector product shared by all directions (``theta="rayleigh"``): a Ritz value equals
``u^T H u`` only when the spectrum is of the Hessian, over the same data, in the same batch-norm
mode; ``theta="ritz"`` uses the stored Ritz values for eigen-directions instead. 2-D landscapes
store ``q(a, b) = L + a g.u + b g.v + (a^2 u^T H u + 2 a b u^T H v + b^2 v^T H v) / 2``.

Cost: every point is one forward pass over the training data and one over the test data (plus one
over the training data with ``bn_recompute``). Points share each pass: every batch is prepared
once and evaluated at up to ``points_per_pass`` points (their parameter copies are held in
memory). The quadratic model costs one gradient and one Hessian product over the training data.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..io.errors import invalid_file
from ..io.results import load_npz_json, save_npz_json
from ..linalg.probes import resolve_seed
from ..operators.base import CurvatureOperator
from ..operators.batches import BatchSource
from ..operators.params import ParameterLayout, select_parameters
from ..progress import ProgressBar

__all__ = [
    "BIAS_BN_MODES",
    "Direction",
    "LandscapeResult",
    "filter_normalize",
    "filter_normalized_direction",
    "loss_landscape",
    "resolve_directions",
]

BIAS_BN_MODES = ("zero", "filter")
THETA_MODES = ("rayleigh", "ritz")
KINDS = ("eigen", "random", "gaussian", "given")
#: Memory for the parameter copies of the points evaluated in one data pass (auto mode).
POINTS_MEMORY_BYTES = 256 * 2**20
_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
_SPEC_NAMES = {
    "largest": "largest",
    "top": "largest",
    "smallest": "smallest",
    "bottom": "smallest",
    "negative": "negative",
    "mostnegative": "negative",
    "extremes": "extremes",
    "all": "all",
    "index": "index",
    "ritz": "index",
    "eigenvalue": "eigenvalue",
    "nearest": "eigenvalue",
    "random": "random",
    "filter": "random",
    "gaussian": "gaussian",
}
SPEC_HELP = (
    "direction specs: 'largest[:k]', 'smallest[:k]', 'most-negative[:k]', 'extremes[:k]' "
    "(k largest and k smallest), 'all', 'index:i' (i into the ascending Ritz values, negative "
    "from the end), 'eigenvalue:x' (nearest Ritz value), 'random[:k]' (filter-normalised "
    "random), 'gaussian[:k]' (random unit vectors), an int (= index:i) or a (P,) vector"
)


# ------------------------------------------------------------------------------------ directions
@dataclass
class Direction:
    """One direction ``u`` of a landscape.

    Attributes:
        vector: ``(P,)`` over the selected parameters (flattened in ``named_parameters`` order).
        label: a short name (``"Ritz #9"``, ``"random #1"``...).
        kind: ``"eigen"``, ``"random"`` (filter-normalised), ``"gaussian"`` (unit norm) or
            ``"given"``.
        eigenvalue: the Ritz value / eigenvalue of an eigen-direction, else ``None``.
        ritz_index: its column in the spectrum (ascending order), else ``None``.
    """

    vector: torch.Tensor
    label: str
    kind: str = "given"
    eigenvalue: float | None = None
    ritz_index: int | None = None


def _weights_of(model: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    lookup = dict(model.named_parameters())
    return [lookup[n].detach() for n in names]


def filter_normalize(
    direction: torch.Tensor,
    model: nn.Module,
    *,
    params: Any = None,
    bias_bn: str = "zero",
) -> torch.Tensor:
    """Rescale a direction filter by filter to the norms of the model's filters (Li et al. 2017).

    For every selected parameter ``w`` with ``w.ndim >= 2`` and each filter ``i`` (the slice
    ``w[i]``: an output neuron or output channel), ``d[i] <- d[i] * ||w[i]|| / ||d[i]||``; a zero
    filter of ``d`` stays zero. One-dimensional parameters (biases, batch-norm weights/biases) are
    set to zero (``bias_bn="zero"``) or rescaled as a single filter (``bias_bn="filter"``).

    Args:
        direction: ``(P,)`` over the selected parameters.
        model: the network whose weights give the filter norms.
        params: parameter selection (see :func:`deepcurvature.select_parameters`).
        bias_bn: ``"zero"`` or ``"filter"``.

    Returns:
        A new ``(P,)`` tensor (dtype and device of ``direction``).
    """
    if bias_bn not in BIAS_BN_MODES:
        raise ValueError(f"bias_bn must be one of {BIAS_BN_MODES}, got {bias_bn!r}")
    names = select_parameters(model, params)
    layout = ParameterLayout.from_model(model, names)
    if not isinstance(direction, torch.Tensor) or tuple(direction.shape) != (layout.size,):
        shape = tuple(direction.shape) if isinstance(direction, torch.Tensor) else None
        raise ValueError(
            f"direction must be a ({layout.size},) tensor over the selected parameters, got "
            f"{shape if shape is not None else type(direction).__name__}"
        )
    out = direction.detach().clone()
    for d, w in zip(layout.unflatten(out), _weights_of(model, names), strict=True):
        w = w.to(device=d.device, dtype=d.dtype)
        if w.ndim <= 1:
            if bias_bn == "zero":
                d.zero_()
                continue
            d2, w2 = d.reshape(1, -1), w.reshape(1, -1)
        else:
            d2, w2 = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
        dn = d2.norm(dim=1, keepdim=True)
        scale = torch.where(dn > 0, w2.norm(dim=1, keepdim=True) / dn.clamp_min(1e-300), 0.0)
        d2.mul_(scale)  # d2 is a view of d, itself a view of out
    return out


def filter_normalized_direction(
    model: nn.Module,
    *,
    params: Any = None,
    seed: int | None = None,
    bias_bn: str = "zero",
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random Gaussian direction, filter-normalised (Li et al. 2017).

    The Gaussian vector is drawn on the CPU in float64 from ``seed`` (device-independent), then
    rescaled by :func:`filter_normalize`.

    Args:
        model: the network.
        params: parameter selection.
        seed: seed of the draw (``generator`` overrides it).
        bias_bn: ``"zero"`` or ``"filter"`` for one-dimensional parameters.
        dtype: dtype of the result (default: the first selected parameter's).
        generator: a CPU ``torch.Generator`` to draw from.

    Returns:
        ``(P,)`` on the model's device.
    """
    names = select_parameters(model, params)
    first = dict(model.named_parameters())[names[0]]
    size = ParameterLayout.from_model(model, names).size
    if generator is None:
        generator = torch.Generator().manual_seed(resolve_seed(seed))
    d = torch.randn(size, generator=generator, dtype=torch.float64)
    d = filter_normalize(d, model, params=names, bias_bn=bias_bn)
    return d.to(device=first.device, dtype=dtype or first.dtype)


def _spectrum_pairs(spectrum: Any) -> tuple[np.ndarray, torch.Tensor, str]:
    """``(values (m,), vectors (P, m), source)`` of a spectrum-like object or file."""
    if isinstance(spectrum, (str, os.PathLike)):
        from .spectrum import SpectrumResult

        spectrum = SpectrumResult.load(spectrum)
    values = getattr(spectrum, "ritz_values", None)
    vectors = getattr(spectrum, "ritz_vectors", None)
    source = "Ritz"
    if values is None and hasattr(spectrum, "values") and hasattr(spectrum, "vectors"):
        values, vectors, source = spectrum.values, spectrum.vectors, "eigenvector"
    if values is None:
        raise TypeError(
            "spectrum must be a SpectrumResult, a path to one, or an EigshResult; got "
            f"{type(spectrum).__name__}"
        )
    if vectors is None:
        raise ValueError(
            "the spectrum holds no eigenvectors, which eigen-directions need: compute it with "
            "store_vectors=True (dc.spectrum), save_eigvec=True (dc.compute_eigenspectrum) or "
            "'deepcurvature spectrum --save-eigvec'"
        )
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    vecs = torch.as_tensor(vectors)
    if vecs.ndim != 2 or vecs.shape[1] != vals.size:
        raise ValueError(
            f"the spectrum's eigenvectors have shape {tuple(vecs.shape)}; expected (P, {vals.size})"
        )
    return vals, vecs, source


def _parse_spec(spec: str) -> tuple[str, str | None]:
    text = spec.strip().lower()
    name, _, arg = text.partition(":")
    key = re.sub(r"[-_\s]", "", name)
    if key not in _SPEC_NAMES:
        raise ValueError(f"unknown direction {spec!r}; {SPEC_HELP}")
    return _SPEC_NAMES[key], (arg.strip() or None) if _ else None


def _count(spec: str, arg: str | None) -> int:
    if arg is None:
        return 1
    try:
        k = int(arg)
    except ValueError:
        raise ValueError(f"direction {spec!r}: the count after ':' must be an integer") from None
    if k < 1:
        raise ValueError(f"direction {spec!r}: the count must be >= 1")
    return k


def resolve_directions(
    specs: Any,
    *,
    model: nn.Module,
    spectrum: Any = None,
    params: Any = None,
    seed: int | None = None,
    bias_bn: str = "zero",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> list[Direction]:
    """Turn direction specifications into :class:`Direction` objects with ``(P,)`` vectors.

    Args:
        specs: one item or a list of items, each a spec string (see below), an ``int`` (index of a
            Ritz vector), a ``(P,)`` tensor/array, a ``(P, k)`` tensor (``k`` given directions),
            a ``(label, vector)`` pair or a :class:`Direction`. Spec strings:
            ``"largest[:k]"``, ``"smallest[:k]"``, ``"most-negative[:k]"`` (the ``k`` most
            negative Ritz values), ``"extremes[:k]"`` (``k`` largest and ``k`` smallest),
            ``"all"``, ``"index:i"`` (into the ascending Ritz values; ``-1`` is the largest),
            ``"eigenvalue:x"`` (nearest Ritz value), ``"random[:k]"`` (filter-normalised) and
            ``"gaussian[:k]"`` (isotropic unit vectors). Repeated eigen-directions are dropped.
        model: the network (sizes, filter norms).
        spectrum: a ``SpectrumResult`` (or path) with eigenvectors, or an ``EigshResult``; needed
            for eigen-directions.
        params: parameter selection; the spectrum's vectors must be over the same parameters.
        seed: seed of the random directions (drawn in order from one generator).
        bias_bn: how filter normalisation treats one-dimensional parameters.
        dtype: dtype of the vectors (default: the first selected parameter's).
        device: their device (default: the model's).

    Returns:
        The directions, in the order given.
    """
    names = select_parameters(model, params)
    size = ParameterLayout.from_model(model, names).size
    first = dict(model.named_parameters())[names[0]]
    dtype = dtype or first.dtype
    device = torch.device(device) if device is not None else first.device
    items = [specs] if isinstance(specs, (str, int, torch.Tensor, np.ndarray, Direction)) else specs
    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], str):
        if not _is_spec_string(items[0]) and not isinstance(items[1], str):
            items = [items]  # a single (label, vector) pair
    items = list(items)
    if not items:
        raise ValueError(f"no directions given; {SPEC_HELP}")
    pairs: tuple[np.ndarray, torch.Tensor, str] | None = None
    generator = torch.Generator().manual_seed(resolve_seed(seed))
    counters = {"random": 0, "gaussian": 0, "given": 0}
    out: list[Direction] = []
    seen: set[int] = set()

    def eigen() -> tuple[np.ndarray, torch.Tensor, str]:
        nonlocal pairs
        if pairs is None:
            if spectrum is None:
                raise ValueError(
                    "eigen-directions need a spectrum with eigenvectors (spectrum=...); without "
                    "one use 'random[:k]' or 'gaussian[:k]' directions"
                )
            pairs = _spectrum_pairs(spectrum)
            if pairs[1].shape[0] != size:
                raise ValueError(
                    f"the spectrum's eigenvectors have length {pairs[1].shape[0]} but the "
                    f"selected parameters of the model have P={size}: the spectrum was computed "
                    "for another model or parameter selection (params=...)"
                )
        return pairs

    def add_eigen(indices: Iterable[int]) -> None:
        vals, vecs, source = eigen()
        for i in indices:
            i = int(i)
            if not -vals.size <= i < vals.size:
                raise ValueError(
                    f"Ritz index {i} is out of range: the spectrum has {vals.size} Ritz vectors "
                    f"(indices 0..{vals.size - 1}, or negative from the end)"
                )
            i %= vals.size
            if i in seen:
                continue
            seen.add(i)
            u = vecs[:, i].to(device=device, dtype=dtype)
            out.append(Direction(u, f"{source} #{i}", "eigen", float(vals[i]), i))

    def add_random(kind: str, k: int) -> None:
        for _ in range(k):
            counters[kind] += 1
            d = torch.randn(size, generator=generator, dtype=torch.float64)
            if kind == "random":
                d = filter_normalize(d, model, params=names, bias_bn=bias_bn)
                label = f"random #{counters[kind]} (filter-normalised)"
            else:
                d = d / d.norm()
                label = f"gaussian #{counters[kind]}"
            out.append(Direction(d.to(device=device, dtype=dtype), label, kind))

    def add_given(vector: Any, label: str | None) -> None:
        v = torch.as_tensor(vector.detach() if isinstance(vector, torch.Tensor) else vector)
        cols = [v] if v.ndim == 1 else ([v[:, j] for j in range(v.shape[1])] if v.ndim == 2 else [])
        if not cols or any(c.shape[0] != size for c in cols):
            raise ValueError(
                f"a given direction must have shape ({size},) (P, the number of selected "
                f"parameter elements) or ({size}, k); got {tuple(v.shape)}"
            )
        for c in cols:
            if not bool(torch.isfinite(c).all()) or not bool((c != 0).any()):
                raise ValueError("a given direction must be finite and non-zero")
            counters["given"] += 1
            name = label if label and len(cols) == 1 else f"given #{counters['given']}"
            out.append(Direction(c.to(device=device, dtype=dtype), name, "given"))

    for item in items:
        if isinstance(item, Direction):
            out.append(item)
        elif isinstance(item, bool):
            raise TypeError(f"a direction cannot be a bool; {SPEC_HELP}")
        elif isinstance(item, (int, np.integer)):
            add_eigen([int(item)])
        elif isinstance(item, str):
            kind, arg = _parse_spec(item)
            if kind in ("random", "gaussian"):
                add_random(kind, _count(item, arg))
                continue
            vals = eigen()[0]
            m = vals.size
            if kind == "largest":
                add_eigen(range(m - 1, max(m - 1 - _count(item, arg), -1), -1))
            elif kind == "smallest":
                add_eigen(range(min(_count(item, arg), m)))
            elif kind == "extremes":
                k = _count(item, arg)
                add_eigen(list(range(m - 1, max(m - 1 - k, -1), -1)) + list(range(min(k, m))))
            elif kind == "negative":
                neg = np.flatnonzero(vals < 0)
                if neg.size == 0:
                    raise ValueError(
                        f"direction {item!r}: the spectrum has no negative Ritz value "
                        f"(smallest {vals.min():.6g}); use 'smallest' instead"
                    )
                add_eigen(neg[: _count(item, arg)])
            elif kind == "all":
                add_eigen(range(m))
            elif kind == "index":
                if arg is None:
                    raise ValueError(f"direction {item!r}: give the index, e.g. 'index:-1'")
                try:
                    add_eigen([int(arg)])
                except ValueError as exc:
                    if "out of range" in str(exc):
                        raise
                    raise ValueError(f"direction {item!r}: the index must be an integer") from None
            else:  # eigenvalue
                try:
                    x = float(arg) if arg is not None else math.nan
                except ValueError:
                    x = math.nan
                if not math.isfinite(x):
                    raise ValueError(f"direction {item!r}: give a number, e.g. 'eigenvalue:2.5'")
                add_eigen([int(np.argmin(np.abs(vals - x)))])
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            add_given(item[1], item[0])
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            add_given(item, None)
        else:
            raise TypeError(f"cannot use a {type(item).__name__} as a direction; {SPEC_HELP}")
    return out


def _is_spec_string(text: str) -> bool:
    try:
        _parse_spec(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------- the result
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


# ------------------------------------------------------------------------------ the evaluation
def _is_classification(out: torch.Tensor, y: torch.Tensor) -> bool:
    return out.ndim == 2 and y.ndim == 1 and not y.is_floating_point()


@contextmanager
def _bn_statistics_mode(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """Batch norm in training mode with a cumulative average (``momentum=None``).

    As ``torch.optim.swa_utils.update_bn``; the module attributes are restored on exit.
    """
    saved = [(m.training, m.momentum) for m in norms]
    try:
        for m in norms:
            m.training = True
            m.momentum = None
        yield
    finally:
        for m, (flag, momentum) in zip(norms, saved, strict=True):
            m.training = flag
            m.momentum = momentum


class _Evaluator:
    """Evaluates train/test loss and accuracy at many parameter vectors, sharing data passes."""

    def __init__(
        self,
        op: CurvatureOperator,
        test_data: Any,
        *,
        bn_recompute: bool,
        points_per_pass: int | None,
        verbose: bool,
    ) -> None:
        self.op = op
        self.test = BatchSource(test_data, op.device, op.dtype) if test_data is not None else None
        self.bn_recompute = bn_recompute
        self.verbose = verbose
        self.base, self.fixed = op.functional_state()
        self.w0 = op.layout.flatten(self.base)
        self.norms = [
            (name, m)
            for name, m in op.model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
        ]
        itemsize = torch.empty((), dtype=op.dtype).element_size()
        auto = max(1, POINTS_MEMORY_BYTES // max(1, op.num_params * itemsize))
        self.points_per_pass = int(points_per_pass) if points_per_pass else auto
        self.passes = {"train": 0, "test": 0, "bn_statistics": 0}
        self.classify: bool | None = None

    def _fresh_statistics(self) -> dict[str, torch.Tensor]:
        fresh: dict[str, torch.Tensor] = {}
        for name, _ in self.norms:
            p = f"{name}." if name else ""
            mean, var = self.fixed[p + "running_mean"], self.fixed[p + "running_var"]
            fresh[p + "running_mean"] = torch.zeros_like(mean)
            fresh[p + "running_var"] = torch.ones_like(var)
            key = p + "num_batches_tracked"
            if key in self.fixed:
                fresh[key] = torch.zeros_like(self.fixed[key])
        return fresh

    def _pass(
        self,
        source: BatchSource,
        states: list[dict[str, torch.Tensor]],
        fixeds: list[dict[str, torch.Tensor]],
        bar: ProgressBar,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        k = len(states)
        device = self.op.device
        loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        n_total = 0
        classify = self.classify
        for batch in source:
            for i in range(k):
                out = self.op.batch_output(states[i], fixeds[i], batch)
                value = self.op.objective(out, batch.targets)
                loss_sum[i] += value.detach().double() * batch.n
                if classify is None:
                    classify = _is_classification(out, batch.targets)
                if classify:
                    correct[i] += (out.argmax(dim=1) == batch.targets).sum()
            n_total += batch.n
            bar.advance()
        self.classify = classify
        losses = (loss_sum / n_total).cpu().numpy()
        acc = (correct.double() / n_total).cpu().numpy() if classify else None
        return losses, acc

    def _statistics_pass(
        self, states: list[dict[str, torch.Tensor]], bar: ProgressBar
    ) -> list[dict[str, torch.Tensor]]:
        fixeds = [{**self.fixed, **self._fresh_statistics()} for _ in states]
        with _bn_statistics_mode([m for _, m in self.norms]):
            for batch in self.op.source:
                for state, fixed in zip(states, fixeds, strict=True):
                    self.op.batch_output(state, fixed, batch)
                bar.advance()
        self.passes["bn_statistics"] += 1
        return fixeds

    def evaluate(
        self, coeffs: np.ndarray, U: torch.Tensor, *, recompute: bool, description: str
    ) -> dict[str, np.ndarray | None]:
        """Metrics at ``w* + U c`` for every row ``c`` of ``coeffs`` ``(K, D)``."""
        K = coeffs.shape[0]
        chunks = [
            range(s, min(s + self.points_per_pass, K)) for s in range(0, K, self.points_per_pass)
        ]
        recompute = recompute and bool(self.norms)
        per_chunk = (self.op.source.num_batches or 0) * (1 + recompute)
        if self.test is not None:
            per_chunk += self.test.num_batches or 0
        total = per_chunk * len(chunks) if per_chunk else 0
        out: dict[str, list[np.ndarray]] = {m: [] for m in _METRICS}
        C = torch.as_tensor(coeffs, dtype=self.op.dtype, device=self.op.device)
        with (
            torch.no_grad(),
            self.op.evaluation_mode(),
            ProgressBar(total, description, verbose=self.verbose and bool(total)) as bar,
        ):
            for chunk in chunks:
                W = self.w0[None, :] + C[chunk.start : chunk.stop] @ U.T
                states = [
                    dict(zip(self.op.layout.names, self.op.layout.unflatten(w), strict=True))
                    for w in W
                ]
                fixeds = (
                    self._statistics_pass(states, bar) if recompute else [self.fixed] * len(states)
                )
                loss, acc = self._pass(self.op.source, states, fixeds, bar)
                self.passes["train"] += 1
                out["train_loss"].append(loss)
                out["train_accuracy"].append(acc)
                if self.test is not None:
                    loss, acc = self._pass(self.test, states, fixeds, bar)
                    self.passes["test"] += 1
                    out["test_loss"].append(loss)
                    out["test_accuracy"].append(acc)
                bar.set_info(f"{chunk.stop}/{K} points")
        result: dict[str, np.ndarray | None] = {}
        for m in _METRICS:
            parts = out[m]
            result[m] = (
                None if not parts or any(p is None for p in parts) else np.concatenate(parts)
            )
        return result


def _grid(dist: float, n_points: int) -> np.ndarray:
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    try:
        dist = float(dist)
    except (TypeError, ValueError):
        raise TypeError(f"dist must be a number, got {type(dist).__name__}") from None
    if not (dist > 0 and math.isfinite(dist)):
        raise ValueError(f"dist must be positive and finite, got {dist}")
    t = np.linspace(-dist, dist, int(n_points))
    t[np.isclose(t, 0.0, rtol=0.0, atol=1e-12 * dist)] = 0.0
    return t


def loss_landscape(
    model: nn.Module,
    loss_fn: Any,
    train_data: Any,
    test_data: Any = None,
    *,
    directions: Any = None,
    plane: Any = None,
    spectrum: Any = None,
    dist: float = 1.0,
    n_points: int = 21,
    params: Any = None,
    bn_recompute: bool = False,
    quadratic: bool = True,
    theta: str = "rayleigh",
    bias_bn: str = "zero",
    seed: int | None = None,
    points_per_pass: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cache: bool = False,
    verbose: bool = True,
    config: dict[str, Any] | None = None,
) -> LandscapeResult:
    """The loss landscape of ``model`` along directions (1-D) or over a plane (2-D).

    Evaluates ``L(w* + t u)`` (1-D, ``t`` in ``np.linspace(-dist, dist, n_points)``) or
    ``L(w* + a u + b v)`` (2-D grid) on the training data and the test data, with loss and
    accuracy. The model is evaluated functionally: its parameters, buffers and flags are never
    changed (also when an exception interrupts the evaluation).

    Args:
        model: the network (``w*`` = its current parameters). The landscape is of the data loss
            ``loss_fn`` alone (no weight-decay term).
        loss_fn: mean-reduction loss ``loss_fn(model(x), y)``.
        train_data: iterable of ``(inputs, targets)`` training batches (a DataLoader or a list).
        test_data: the same for the test data, or ``None``.
        directions: 1-D directions, see :func:`resolve_directions` (default ``"extremes:3"``
            with a spectrum, ``"random:2"`` without).
        plane: 2-D: direction specs resolving to exactly two directions, e.g. ``"random:2"``
            (Li et al.'s plane), ``"largest:2"``, ``["index:-1", "smallest"]``.
        spectrum: ``SpectrumResult`` (or path) with eigenvectors, or an ``EigshResult``.
        dist: largest ``|t|``.
        n_points: points per axis.
        params: which parameters move (names, glob patterns, modules); the others stay fixed.
        bn_recompute: recompute the batch-norm running statistics at every point with one pass
            over the training data in training mode (cumulative average over batches, as
            ``torch.optim.swa_utils.update_bn``): what the network would use had it been trained
            to that point. Default: keep the model's running statistics.
        quadratic: compute the quadratic model (one gradient and one Hessian product pass).
        theta: ``"rayleigh"`` (``u^T H u`` computed) or ``"ritz"`` (the stored Ritz value for
            eigen-directions).
        bias_bn: filter normalisation of one-dimensional parameters: ``"zero"`` or ``"filter"``.
        seed: seed of random directions (recorded in ``config``).
        points_per_pass: points evaluated per data pass (default: as many as fit in 256 MiB of
            parameter copies).
        dtype: evaluation dtype (default: the model's; float64 evaluates a converted copy).
        device: evaluation device (default: the model's).
        cache: keep the prepared training batches on the device between passes.
        verbose: progress bars.
        config: extra entries recorded in ``config``.

    Returns:
        A :class:`LandscapeResult`.
    """
    t0 = time.perf_counter()
    t = _grid(dist, n_points)
    if theta not in THETA_MODES:
        raise ValueError(f"theta must be one of {THETA_MODES}, got {theta!r}")
    if directions is not None and plane is not None:
        raise ValueError(
            "give either directions (1-D landscapes) or plane (one 2-D landscape), not both"
        )
    seed = resolve_seed(seed)
    op = _operator(model, loss_fn, train_data, params, dtype, device, cache)
    if bn_recompute and _shuffles(train_data):
        warnings.warn(
            "bn_recompute=True with a shuffling DataLoader: points evaluated in different passes "
            "recompute their batch-norm statistics on different batches; use shuffle=False",
            stacklevel=2,
        )
    ndim = 2 if plane is not None else 1
    if ndim == 1 and directions is None:
        directions = "extremes:3" if spectrum is not None else "random:2"
    specs = plane if ndim == 2 else directions
    dirs = resolve_directions(
        specs,
        model=model,
        spectrum=spectrum,
        params=op.param_names,
        seed=seed,
        bias_bn=bias_bn,
        dtype=op.dtype,
        device=op.device,
    )
    if ndim == 2 and len(dirs) != 2:
        raise ValueError(
            f"plane must give exactly two directions, got {len(dirs)} "
            f"({', '.join(d.label for d in dirs)}); e.g. plane='random:2' or "
            "plane=['index:-1', 'index:-2']"
        )
    U = torch.stack([d.vector.to(device=op.device, dtype=op.dtype) for d in dirs], dim=1)
    D = len(dirs)
    norms = U.norm(dim=0).double().cpu().numpy()
    ev = _Evaluator(op, test_data, bn_recompute=bn_recompute, points_per_pass=points_per_pass,
                    verbose=verbose)  # fmt: skip

    # -- the points: the origin first, then every grid point off the origin --------------------
    if ndim == 1:
        index = [(d, j) for d in range(D) for j in range(t.size) if t[j] != 0.0]
        coeffs = np.zeros((len(index) + 1, D))
        for row, (d, j) in enumerate(index, start=1):
            coeffs[row, d] = t[j]
        shape: tuple[int, ...] = (D, t.size)
    else:
        index = [(i, j) for i in range(t.size) for j in range(t.size) if t[i] != 0 or t[j] != 0]
        coeffs = np.zeros((len(index) + 1, 2))
        for row, (i, j) in enumerate(index, start=1):
            coeffs[row] = (t[i], t[j])
        shape = (t.size, t.size)
    values = ev.evaluate(coeffs, U, recompute=bn_recompute, description="loss landscape")
    if bn_recompute and ev.norms:
        origin_vals = ev.evaluate(coeffs[:1], U, recompute=False, description="origin")
    else:
        origin_vals = values
    origin = {m: (None if v is None else float(v[0])) for m, v in origin_vals.items()}

    grids: dict[str, np.ndarray | None] = {}
    for m, v in values.items():
        if v is None:
            grids[m] = None
            continue
        g = np.full(shape, v[0])  # points at the origin
        for row, key in enumerate(index, start=1):
            g[key] = v[row]
        grids[m] = g
    bad = int(np.sum(~np.isfinite(grids["train_loss"])))
    if bad:
        warnings.warn(
            f"the train loss is not finite at {bad} of {grids['train_loss'].size} points (the "
            "model overflows far from w*); they are stored as NaN/inf: reduce dist",
            stacklevel=2,
        )

    # -- the quadratic model ------------------------------------------------------------------
    nan = np.full(D, np.nan)
    slopes, uhu, thetas, quad = nan.copy(), np.full((D, D), np.nan), nan.copy(), None
    eig = np.array([np.nan if d.eigenvalue is None else d.eigenvalue for d in dirs])
    passes_quadratic = 0
    if quadratic:
        g = op.gradient(include_weight_decay=False)
        slopes = (g @ U).double().cpu().numpy()
        use_ritz = theta == "ritz" and all(d.kind == "eigen" for d in dirs)
        if use_ritz:
            uhu = np.diag(eig * norms**2)
            passes_quadratic = 1
        else:
            HU = op.matmat(U)
            uhu = (U.T @ HU).double().cpu().numpy()
            uhu = 0.5 * (uhu + uhu.T)
            passes_quadratic = 2
        thetas = np.diag(uhu).copy()
        if theta == "ritz":
            for d, direction in enumerate(dirs):
                if direction.kind == "eigen":
                    thetas[d] = direction.eigenvalue * norms[d] ** 2
        L0 = origin["train_loss"]
        if ndim == 1:
            quad = L0 + slopes[:, None] * t[None, :] + 0.5 * thetas[:, None] * t[None, :] ** 2
        else:
            a, b = np.meshgrid(t, t, indexing="ij")
            off = uhu[0, 1]
            quad = (
                L0
                + a * slopes[0]
                + b * slopes[1]
                + 0.5 * (a**2 * thetas[0] + 2 * a * b * off + b**2 * thetas[1])
            )

    cfg = {
        "dist": float(np.abs(t).max()),
        "n_points": int(t.size),
        "ndim": ndim,
        "directions": _describe_specs(specs),
        "bn_recompute": bool(bn_recompute),
        "quadratic": bool(quadratic),
        "theta": theta,
        "bias_bn": bias_bn,
        "seed": seed,
        "params": op.param_names if params is not None else None,
        "loss": op.objective.name,
        "dtype": str(op.dtype).replace("torch.", ""),
        "device": str(op.device),
        "points_per_pass": ev.points_per_pass,
    }
    cfg.update(config or {})
    info = {
        "P": op.num_params,
        "N_train": op.source.num_samples,
        "N_test": ev.test.num_samples if ev.test is not None else None,
        "points": int(coeffs.shape[0]),
        "passes": {**ev.passes, "quadratic": passes_quadratic},
        "seconds": time.perf_counter() - t0,
        "t_units": [_units(d.kind) for d in dirs],
    }
    return LandscapeResult(
        t=t,
        labels=[d.label for d in dirs],
        kinds=[d.kind for d in dirs],
        eigenvalues=eig,
        ritz_indices=np.array([-1 if d.ritz_index is None else d.ritz_index for d in dirs]),
        norms=norms,
        slopes=slopes,
        uhu=uhu,
        thetas=thetas,
        train_loss=grids["train_loss"],
        train_accuracy=grids["train_accuracy"],
        test_loss=grids["test_loss"],
        test_accuracy=grids["test_accuracy"],
        quadratic=quad,
        origin=origin,
        ndim=ndim,
        config=cfg,
        info=info,
    )


def _shuffles(data: Any) -> bool:
    return isinstance(data, torch.utils.data.DataLoader) and isinstance(
        data.sampler, torch.utils.data.RandomSampler
    )


def _units(kind: str) -> str:
    if kind in ("eigen", "gaussian"):
        return "parameter-space distance ||w - w*||"
    if kind == "random":
        return "relative to the filter norms (filter-normalised)"
    return "multiples of the given vector"


def _describe_specs(specs: Any) -> Any:
    items = specs if isinstance(specs, (list, tuple)) else [specs]
    out = []
    for s in items:
        if isinstance(s, (str, int)) and not isinstance(s, bool):
            out.append(s)
        elif isinstance(s, Direction):
            out.append(s.label)
        elif isinstance(s, tuple) and s and isinstance(s[0], str):
            out.append(s[0])
        else:
            out.append("given vector")
    return out


def _operator(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    params: Any,
    dtype: torch.dtype | None,
    device: Any,
    cache: bool,
) -> CurvatureOperator:
    from ..operators import hessian

    return hessian(
        model, loss_fn, data, params=params, bn_mode="eval", dtype=dtype, device=device, cache=cache
    )
