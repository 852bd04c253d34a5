"""Loss landscapes: the loss along eigenvectors and random directions (paper sections 5 and 9).

A 1-D landscape evaluates the train (and test) loss and accuracy at ``w* + t u`` for ``n_points``
values ``t`` in ``[-dist, dist]`` along each direction ``u``; a 2-D landscape evaluates
``w* + a u + b v`` on an ``n_points x n_points`` grid. Only the selected parameters move; batch
norm keeps the model's running statistics, or recomputes them at every point
(``bn_recompute=True``).

Directions (:mod:`.directions`): eigen-directions (Ritz vectors of a saved spectrum, the paper's
choice; ``t`` is the parameter-space distance), filter-normalised random directions (Li et al.
2017; ``t`` relative to the filter norms), Gaussian unit directions and given vectors.

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
memory; :mod:`.landscape_points`). The quadratic model costs one gradient and one Hessian product
over the training data.

In a ``torch.distributed`` process group each rank passes its own shard of the training (and
test) data; every point is evaluated by all ranks over their shards with one all-reduce per pass
of points, so every rank returns the landscape of the union of the shards (only rank 0 should
write files).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..linalg.probes import resolve_seed
from ..operators.base import CurvatureOperator
from ..operators.distributed import all_reduce_sum, compare_replicas, tensor_checksum
from .directions import (
    BIAS_BN_MODES,
    KINDS,
    SPEC_HELP,
    Direction,
    _is_spec_string,
    _parse_spec,
    filter_normalize,
    filter_normalized_direction,
    resolve_directions,
)
from .landscape_points import POINTS_MEMORY_BYTES, PointEvaluator
from .landscape_result import METRICS, LandscapeResult

__all__ = [
    "BIAS_BN_MODES",
    "Direction",
    "LandscapeResult",
    "filter_normalize",
    "filter_normalized_direction",
    "loss_landscape",
    "resolve_directions",
]

# re-exported for the command line and older imports
_REEXPORTS = (KINDS, SPEC_HELP, METRICS, POINTS_MEMORY_BYTES, _is_spec_string, _parse_spec)
THETA_MODES = ("rayleigh", "ritz")


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
    targets: str | None = None,
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
        targets: ``None`` (batches are ``(inputs, targets)`` pairs) or the key of the targets in
            dict batches, e.g. ``"labels"``, for the training and the test data (the model is
            called with the other keys). A model output that is not a tensor (a dict, a
            ``ModelOutput``) goes to a custom ``loss_fn`` unchanged, the built-in losses use its
            logits, and the accuracy is that of its logits.
        verbose: progress bars.
        config: extra entries recorded in ``config``.

    In a ``torch.distributed`` process group ``train_data`` and ``test_data`` are this rank's
    shards; every rank must pass the same model and arguments (checked with one all-reduce:
    the points, ``points_per_pass``, test data or not and checksums of the directions; with
    ``seed=None`` rank 0's seed is used), and every rank returns the landscape of the union of
    the shards (only rank 0 should write it).

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
    given_seed = seed
    seed = resolve_seed(seed)
    op = _operator(model, loss_fn, train_data, params, dtype, device, cache, targets)
    if op.ranks is not None and given_seed is None:
        seed = _rank0_seed(op, seed)  # the same random directions on every rank
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
    ev = PointEvaluator(
        op, test_data, bn_recompute=bn_recompute, points_per_pass=points_per_pass, verbose=verbose
    )

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
    if op.ranks is not None:
        _check_ranks(op, ev, U, coeffs, bn_recompute=bn_recompute, quadratic=quadratic)
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
        "N_train": op.num_samples,
        "N_test": ev.num_test,
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
    targets: str | None = None,
) -> CurvatureOperator:
    from ..operators import hessian

    return hessian(
        model,
        loss_fn,
        data,
        params=params,
        bn_mode="eval",
        dtype=dtype,
        device=device,
        cache=cache,
        targets=targets,
    )


def _rank0_seed(op: CurvatureOperator, seed: int) -> int:
    """Rank 0's ``seed`` on every rank of the operator's process group (one all-reduce)."""
    assert op.ranks is not None
    buf = torch.tensor([seed if op.ranks.rank == 0 else 0], dtype=torch.int64, device=op.device)
    return int(all_reduce_sum(buf).item())


def _check_ranks(
    op: CurvatureOperator,
    ev: PointEvaluator,
    U: torch.Tensor,
    coeffs: np.ndarray,
    *,
    bn_recompute: bool,
    quadratic: bool,
) -> None:
    """One all-reduce: every rank evaluates the same points in the same passes as rank 0.

    Compares the settings that shape the collectives (points, points per pass, test data or
    not, ``bn_recompute``, ``quadratic``) exactly and checksums of the directions ``U`` ``(P, D)``
    and of the coefficients ``(K, D)``; raises ``ValueError`` on every rank on a mismatch.
    """
    assert op.ranks is not None
    fields = {
        "number of points": float(coeffs.shape[0]),
        "points_per_pass": float(ev.points_per_pass),
        "test data given": float(ev.test is not None),
        "bn_recompute": float(bool(bn_recompute)),
        "quadratic": float(bool(quadratic)),
    }
    sums: dict[str, float] = {}
    sums["directions (weighted sum)"], sums["directions (sum of squares)"] = tensor_checksum(
        U.double()
    )
    grid = torch.as_tensor(coeffs, dtype=torch.float64)
    sums["grid (weighted sum)"], sums["grid (sum of squares)"] = tensor_checksum(grid)
    compare_replicas(op.ranks, fields, sums, None, op.device)
