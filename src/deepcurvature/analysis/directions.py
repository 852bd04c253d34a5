"""Directions of loss landscapes: eigen-directions, filter-normalised and Gaussian random ones.

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

Random directions are drawn on the CPU in float64 from a seed, so every process (and device)
draws the same vectors.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..linalg.probes import resolve_seed
from ..operators.params import ParameterLayout, select_parameters

__all__ = [
    "BIAS_BN_MODES",
    "KINDS",
    "SPEC_HELP",
    "Direction",
    "filter_normalize",
    "filter_normalized_direction",
    "resolve_directions",
]

BIAS_BN_MODES = ("zero", "filter")
KINDS = ("eigen", "random", "gaussian", "given")
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
