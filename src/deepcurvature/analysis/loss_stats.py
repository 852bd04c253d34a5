"""Loss statistics over mini-batches: gradient noise, curvature noise and the shrinkage coefficient.

The "advanced statistics" of the paper's section 5 (squared means and variances of gradients and of
Hessian / GGN products, weight norms, train and test loss and accuracy), measured over seeded random
mini-batches of a data set, for the whole model and per layer.

Notation (everything is over the selected parameters, ``P`` of them). The data set has ``N``
samples; ``L``, ``g = grad L`` and ``H`` (the Hessian or the GGN) are those of the mean loss over
all ``N`` samples, exactly as :func:`deepcurvature.hessian` defines them. The ``M`` mini-batches
``b`` have ``B`` samples each and their own mean loss ``L_b``, gradient ``g_b`` and curvature
``H_b``. ``E_b`` is the mean over the ``M`` mini-batches. ``v_1..v_k`` are probe vectors
(Rademacher or Gaussian, seeded) normalised to ``||v|| = 1``.

======================  ==========================================================================
key                     definition
======================  ==========================================================================
``loss``                ``L`` (the training loss over the whole data set)
``accuracy``            fraction of correct arg-max predictions over the data set (classification)
``loss_batch_mean``     ``E_b L_b``
``loss_batch_var``      ``sum_b (L_b - E_b L_b)^2 / (M - 1)`` (unbiased; NaN when ``M = 1``)
``grad_norm_sq``        ``||g||^2``
``grad_batch_norm_sq``  ``E_b ||g_b||^2``
``grad_var``            ``E_b ||g_b - g||^2 = tr Cov(g_b)``, the mini-batch gradient noise (``g``
                        is the exact full-data mean, so this needs no ``M - 1`` correction)
``grad_var_per_sample`` ``tr Sigma``, ``Sigma`` the covariance of the per-sample gradients over the
                        data set: ``B (N - 1) / (N - B) * grad_var`` for batches drawn here (without
                        replacement; NaN when ``B = N``), ``B * grad_var`` for given batches of one
                        size ``B`` (treated as drawn with replacement), NaN for unequal ones
``curv_rayleigh``       ``v^T H v`` (mean over probes; ``_se`` its standard error)
``curv_norm_sq``        ``||H v||^2``
``curv_batch_norm_sq``  ``E_b ||H_b v||^2``
``curv_var``            ``E_b ||H_b v - H v||^2``, the curvature noise along ``v``
``curv_shrinkage``      ``rho_v = E_b ||H_b v - H v||^2 / E_b ||H_b v||^2`` (see below)
``curv_trace``          ``P * v^T H v``: Hutchinson's estimate of ``tr H`` (unbiased)
``curv_frobenius_sq``   ``P * ||H v||^2``: estimate of ``||H||_F^2 = tr H^2`` (unbiased)
``weight_l2``           ``||theta||_2``;  ``weight_linf``: ``max |theta_i|``
``test_loss``           mean loss over ``test_data``; ``test_accuracy`` likewise
======================  ==========================================================================

Probe-dependent quantities are computed per probe, then averaged; ``KEY_se`` is the standard error
of that mean, ``std(per-probe values, ddof=1) / sqrt(k)`` (NaN for one probe).

**Shrinkage coefficient.** Granziol & Baskerville, *A Random Matrix Theory Approach to Damping in
Deep Learning* (2020/2022), read the damping of second-order and adaptive optimisers as linear
shrinkage (Ledoit & Wolf, 2004) of the noisy batch curvature ``H_b`` towards the true ``H``. Along a
direction ``v`` the best multiple of the batch product, ``alpha* = argmin_alpha E_b ||alpha H_b v -
H v||^2 = <E_b H_b v, H v> / E_b ||H_b v||^2``, equals ``1 - rho_v`` whenever ``E_b H_b v = H v``
(mini-batches drawn uniformly), with ``rho_v = E_b ||H_b v - H v||^2 / E_b ||H_b v||^2 in [0, 1]``
the ratio of the curvature noise to the mean squared batch product: ``rho -> 0`` when the batch
curvature is exact, ``rho -> 1`` when it is all noise. ``curv_shrinkage`` is the mean of
``rho_{v_j}`` over the probes.

**Per layer.** Parameters are grouped by the module that owns them (``"features.0"`` holds
``features.0.weight`` and ``features.0.bias``). A layer's value is computed from the layer's block
(its slice) of the whole-model vectors ``g``, ``g_b``, ``H v``, ``H_b v``, ``v``: so the squared
norms, variances, Rayleigh quotients, traces and Frobenius estimates of the layers sum to the
whole-model values (``P * v_l^T (H v)_l`` estimates ``tr H_ll``, the trace of the layer's
diagonal block).

**Cost.** The mini-batches are drawn as a seeded random partition of the data set; the samples not
in a selected mini-batch are processed in chunks of ``batch_size`` too, so the full-data values
``L``, ``g``, ``H V`` are assembled from the same per-batch results: one pass over the data set
(with one gradient and ``k`` curvature products per batch, the ``k`` probes sharing its forward
pass), plus one forward pass over ``test_data``. More mini-batches than fit in one pass
(``num_batches > N // B``) come from further seeded permutations and add their samples to the count
(``data_passes``). Variances use the expansion ``E||X_b - X||^2 = E||X_b||^2 - 2<E X_b, X> +
||X||^2`` accumulated in float64 (evaluate in float64 when the noise is many orders of magnitude
below the signal).

**Many processes** (inside an initialised ``torch.distributed`` process group, e.g. under
``torchrun``): the result is the one a single process computes, with the work split over the
ranks. A ``Dataset`` (or the dataset of a ``DataLoader``, whose sampler is ignored as always) is the
*whole* data set on every rank: the seeded mini-batch plan is drawn identically everywhere and
its ``i``-th batch is evaluated by rank ``i mod world_size``. A list of batches is each rank's
*shard*: the mini-batches are those of all ranks' lists in rank order (``num_batches`` draws among
all of them). ``test_data``: a ``Dataset`` is dealt to the ranks the same way, a list or
``DataLoader`` is each rank's shard. Rank 0's seed is used (so ``seed=None`` works); the model
replicas are checked as for the curvature operators, and every sum and the per-batch records are
reduced with one all-reduce (one more for ``test_data``). A rank whose batch fails makes every rank
raise (see :mod:`deepcurvature.operators.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..linalg.probes import PROBE_KINDS, draw_probes, resolve_seed
from ..linalg.shrinkage import shrinkage_ratio
from ..operators.base import CurvatureOperator
from ..operators.batches import Batch, prepare_batch
from ..operators.distributed import (
    current_ranks,
    local_evaluation,
    reduce_pass,
)
from ..operators.losses import prediction_scores
from ..progress import ProgressBar
from .batch_products import _BatchEvaluator, _is_classification
from .loss_stats_result import LossStats
from .minibatch_plan import _agree, _eval_batches, _plan, _positive_int
from .parameter_groups import ROOT_LAYER, group_parameters, layer_of  # noqa: F401  (re-exported)

__all__ = [
    "STAT_MATRICES",
    "LossStats",
    "group_parameters",
    "layer_of",
    "loss_stats",
]

STAT_MATRICES = ("hessian", "ggn")

# quantities that depend on the probe vectors (reported as mean over probes and standard error)
PROBE_KEYS = (
    "curv_rayleigh",
    "curv_norm_sq",
    "curv_batch_norm_sq",
    "curv_var",
    "curv_shrinkage",
    "curv_trace",
    "curv_frobenius_sq",
)
GRAD_KEYS = ("grad_norm_sq", "grad_batch_norm_sq", "grad_var")


def _given_directions(probes: torch.Tensor, P: int) -> torch.Tensor:
    """User directions ``(P,)`` or ``(P, k)`` as ``(k, P)`` float64 rows (not yet normalised)."""
    Z = probes.detach().to(device="cpu", dtype=torch.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[0] != P or Z.shape[1] == 0:
        raise ValueError(
            f"probes given as a tensor must have shape (P,) or (P, k) with P={P} (the number of "
            f"selected parameters), got {tuple(probes.shape)}"
        )
    norms = Z.norm(dim=0)
    if not bool(torch.isfinite(Z).all()) or bool((norms == 0).any()):
        raise ValueError("probe directions must be finite and non-zero")
    return Z.T.contiguous()


def _probe_summary(per_probe: np.ndarray) -> tuple[float, float]:
    k = per_probe.shape[-1]
    mean = float(np.mean(per_probe))
    se = float(np.std(per_probe, ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return mean, se


def _layer_sum(seg: torch.Tensor, L: int, x: torch.Tensor) -> torch.Tensor:
    """Per-layer sums of a ``(P,)`` or ``(P, k)`` tensor: ``(L,)`` or ``(L, k)``."""
    out = torch.zeros((L, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return out.index_add_(0, seg, x)


def _check_finite(batch: Batch, value: torch.Tensor, g: torch.Tensor, hv: torch.Tensor) -> None:
    sums = [value.detach().double().reshape(()), g.sum().double(), hv.sum().double()]
    ok = torch.isfinite(torch.stack(sums)).all()
    if not bool(ok):
        raise FloatingPointError(
            f"the loss, gradient or curvature product of batch {batch.index} is not finite "
            f"(loss {float(value):.4g}); check the model's weights, the inputs and the learning "
            "rate that produced them, or evaluate in float64"
        )


def loss_stats(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Any,
    *,
    batch_size: int = 128,
    num_batches: int | None = None,
    matrix: str = "hessian",
    probes: int | torch.Tensor = 4,
    probe: str = "rademacher",
    seed: int | None = None,
    params: Any = None,
    per_layer: bool = True,
    bn_mode: str = "eval",
    test_data: Any = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    targets: str | None = None,
    verbose: bool = True,
) -> LossStats:
    """Loss, gradient-noise and curvature-noise statistics over seeded mini-batches (section 5).

    The definitions of every reported quantity (mean and unbiased variance of the mini-batch loss,
    ``||g||^2``, ``E_b ||g_b||^2``, ``tr Cov(g_b) = E_b ||g_b - g||^2`` and its per-sample version,
    ``v^T H v``, ``||H v||^2``, ``E_b ||H_b v||^2``, ``E_b ||H_b v - H v||^2``, the shrinkage
    coefficient ``rho = E_b ||H_b v - H v||^2 / E_b ||H_b v||^2`` of Granziol & Baskerville's
    random-matrix damping paper, trace and Frobenius estimates, weight norms, accuracies) are in
    the module documentation of :mod:`deepcurvature.analysis.loss_stats`.

    Args:
        model: the network (not modified: flags, buffers and parameters are left as they were).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction.
        data: a map-style ``Dataset`` (mini-batches of ``batch_size`` drawn from it without
            replacement, seeded), a ``DataLoader`` (its dataset and ``collate_fn`` are used; its
            own sampler and batch size are not), or a list of ``(inputs, targets)`` batches (used
            as they are, each one a mini-batch).
        batch_size: ``B``, the mini-batch size (Datasets and DataLoaders).
        num_batches: ``M``; default: all ``N // B`` full batches of one random partition. More than
            ``N // B`` draws further permutations (costing extra passes).
        matrix: ``"hessian"`` or ``"ggn"``.
        probes: ``k``, the number of random probe vectors (their products share each forward
            pass), or a tensor ``(P,)`` / ``(P, k)`` of directions of your own (e.g. Hessian
            eigenvectors), each normalised to unit length. Note that the trace and Frobenius
            estimates are only meaningful for random probes.
        probe: ``"rademacher"`` or ``"gaussian"`` (normalised to unit length).
        seed: seeds the mini-batches and the probes; fresh when ``None`` (recorded).
        params: parameter selection (names, glob patterns or modules; see
            :func:`deepcurvature.select_parameters`); statistics are over these parameters.
        per_layer: also compute every statistic per layer.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics of each
            mini-batch; the full-data values are then those of the batching used here).
        test_data: optional evaluation data (Dataset, DataLoader or list of batches): test loss
            and accuracy from one forward pass.
        dtype: evaluation dtype (e.g. ``torch.float64``); default the model's.
        device: evaluation device; default the model's.
        targets: ``None`` (batches are ``(inputs, targets)`` pairs) or the key of the targets in
            dict batches, e.g. ``"labels"`` (the model is called with the other keys; also for
            ``test_data``). A model output that is not a tensor (a dict, a ``ModelOutput``) goes
            to a custom ``loss_fn`` unchanged, the built-in losses and the GGN use its logits,
            and the accuracy is that of its logits.
        verbose: progress bar over the batches (rank 0's only in a process group).

    In a ``torch.distributed`` process group the work is split over the ranks and every rank
    returns the single-process result; see "Many processes" in the module documentation for what a
    rank's ``data`` means.

    Returns:
        A :class:`LossStats`.

    Raises:
        ValueError: an unknown ``matrix`` or ``probe``, non-positive sizes, a batch size larger
            than the data set, too few batches in a list.
        TypeError: data of an unsupported kind.
        FloatingPointError: a non-finite loss, gradient or product (naming the batch).
    """
    from .spectrum import curvature_operator

    key = str(matrix).lower()
    if key not in STAT_MATRICES:
        raise ValueError(
            f"matrix must be one of {STAT_MATRICES} for loss statistics, got {matrix!r}"
        )
    if probe not in PROBE_KINDS:
        raise ValueError(f"probe must be one of {PROBE_KINDS}, got {probe!r}")
    if not isinstance(probes, torch.Tensor):
        _positive_int("probes", probes)
    B = _positive_int("batch_size", batch_size)
    num_batches = _positive_int("num_batches", num_batches, allow_none=True)
    used_seed = resolve_seed(seed)
    ranks = current_ranks()
    with local_evaluation():  # only its evaluation machinery: the sums are reduced here
        op: CurvatureOperator = curvature_operator(  # type: ignore[assignment]
            model,
            loss_fn,
            [],
            matrix=key,
            params=params,
            bn_mode=bn_mode,
            dtype=dtype,
            device=device,
            targets=targets,
        )
    P, dev = op.num_params, op.device
    listed = None
    if ranks is not None:  # the replicas; rank 0's seed; every rank's number of listed batches
        op.check_replicas(ranks, count=False)
        n_list = len(data) if isinstance(data, (list, tuple)) else 0
        used_seed, listed = _agree(ranks, used_seed, n_list, dev)
        verbose = verbose and ranks.rank == 0
    generator = torch.Generator().manual_seed(used_seed)
    plan = _plan(data, B, num_batches, generator, ranks, listed)
    if isinstance(probes, torch.Tensor):
        Z = _given_directions(probes, P)
        probe = "given"
    else:
        Z = draw_probes(P, int(probes), kind=probe, seed=used_seed + 1)
    k = Z.shape[0]
    V64 = (Z / Z.norm(dim=1, keepdim=True)).T.contiguous().to(dev)  # (P, k), unit columns
    V = V64.to(op.dtype)
    evaluator = _BatchEvaluator(op, key, V)

    groups = group_parameters(op.param_names) if per_layer else {"model": op.param_names}
    layer_names = list(groups)
    L = len(layer_names)
    layer_index = {n: i for i, (_, ns) in enumerate(groups.items()) for n in ns}
    seg = torch.cat(
        [
            torch.full((m,), layer_index[n], dtype=torch.long)
            for n, m in zip(op.layout.names, op.layout.numels, strict=True)
        ]
    ).to(dev)

    f64 = {"dtype": torch.float64, "device": dev}
    g_sum, hv_sum = torch.zeros(P, **f64), torch.zeros(P, k, **f64)
    gb_sum, hvb_sum = torch.zeros(P, **f64), torch.zeros(P, k, **f64)
    gb_sq, hvb_sq = torch.zeros(L, **f64), torch.zeros(L, k, **f64)
    n_full, loss_sum = 0, 0.0
    correct, n_class, classify = 0, 0, None
    rec_loss: list[float] = []
    rec_gsq: list[float] = []
    rec_hsq: list[np.ndarray] = []
    rec_size: list[int] = []
    rec_slot: list[int] = []
    n_evaluated = 0
    failure: Exception | None = None

    total = len(plan.minibatch)
    try:
        with op.evaluation_mode(), ProgressBar(total, f"loss statistics ({key})", verbose) as bar:
            for i, raw in enumerate(plan.batches):
                batch = prepare_batch(raw, i, dev, op.dtype, op.source.targets_key)
                value, g, hv, out = evaluator(batch)
                _check_finite(batch, value, g, hv)
                g, hv, lv = g.double(), hv.double(), float(value)
                n_evaluated += batch.n
                if plan.full[i]:
                    n_full += batch.n
                    loss_sum += batch.n * lv
                    g_sum.add_(g, alpha=batch.n)
                    hv_sum.add_(hv, alpha=batch.n)
                    pred = prediction_scores(out, i)
                    if classify is None:
                        classify = _is_classification(pred, batch.targets)
                    if classify and pred is not None:
                        correct += int((pred.argmax(dim=1) == batch.targets).sum())
                        n_class += int(batch.targets.numel())
                if plan.minibatch[i]:
                    gb_sum.add_(g)
                    hvb_sum.add_(hv)
                    g2 = _layer_sum(seg, L, g * g)
                    h2 = _layer_sum(seg, L, hv * hv)
                    gb_sq.add_(g2)
                    hvb_sq.add_(h2)
                    rec_loss.append(lv)
                    rec_gsq.append(float(g2.sum()))
                    rec_hsq.append(h2.sum(0).cpu().numpy())
                    rec_size.append(batch.n)
                    rec_slot.append(plan.slots[i])
                bar.advance()
                bar.set_info(f"loss {lv:.4g}")

    except Exception as exc:
        if ranks is None:
            raise
        failure = exc
    if ranks is not None:  # one all-reduce of every sum and of the per-batch records
        sums = [g_sum, hv_sum, gb_sum, hvb_sum, gb_sq, hvb_sq]
        scalars = [n_full, loss_sum, correct, n_class, float(bool(classify)), n_evaluated]
        records = torch.zeros(plan.num_minibatches, 3 + k, **f64)
        if rec_slot and failure is None:
            rows = [
                [lv, gsq, size, *hsq]
                for lv, gsq, size, hsq in zip(rec_loss, rec_gsq, rec_size, rec_hsq, strict=True)
            ]
            records[torch.tensor(rec_slot)] = torch.tensor(rows, **f64)
        parts = [*sums, torch.tensor(scalars, **f64), records]
        payload = torch.cat([t.reshape(-1) for t in parts])
        reduced, _ = reduce_pass(
            ranks, payload, n_evaluated, failure, f"loss statistics ({key})", vectors=V64
        )
        pieces = reduced.split([t.numel() for t in parts])
        for t, piece in zip(sums, pieces, strict=False):
            t.copy_(piece.view_as(t))
        total_n, loss_sum, total_c, total_cls, any_cls, total_ev = pieces[-2].tolist()
        n_full, correct, n_class = round(total_n), round(total_c), round(total_cls)
        n_evaluated, classify = round(total_ev), any_cls > 0
        table = pieces[-1].view(plan.num_minibatches, 3 + k).cpu()
        rec_loss, rec_gsq = table[:, 0].tolist(), table[:, 1].tolist()
        rec_size = [round(v) for v in table[:, 2].tolist()]
        rec_hsq = list(table[:, 3:].numpy())

    N = n_full
    M = len(rec_loss)
    if M == 0:  # pragma: no cover - the plan always selects at least one batch
        raise ValueError("no mini-batch was evaluated")

    # -- full-data vectors and per-layer sums ---------------------------------------------------
    g = g_sum / N
    HV = hv_sum / N
    grad_norm_sq = _layer_sum(seg, L, g * g)
    grad_batch = gb_sq / M
    grad_var = (grad_batch - 2 * _layer_sum(seg, L, (gb_sum / M) * g) + grad_norm_sq).clamp_min(0)
    curv_norm = _layer_sum(seg, L, HV * HV)
    curv_batch = hvb_sq / M
    curv_var = (curv_batch - 2 * _layer_sum(seg, L, (hvb_sum / M) * HV) + curv_norm).clamp_min(0)
    rayleigh = _layer_sum(seg, L, V64 * HV)

    # whole model: sums over the layers
    probe_values = {
        "curv_rayleigh": rayleigh.sum(0),
        "curv_norm_sq": curv_norm.sum(0),
        "curv_batch_norm_sq": curv_batch.sum(0),
        "curv_var": curv_var.sum(0),
        "curv_shrinkage": shrinkage_ratio(curv_var.sum(0), curv_batch.sum(0)),
        "curv_trace": P * rayleigh.sum(0),
        "curv_frobenius_sq": P * curv_norm.sum(0),
    }
    per_probe = {name: t.cpu().numpy() for name, t in probe_values.items()}

    # per-sample gradient covariance trace
    sizes = np.asarray(rec_size)
    if plan.drawn:
        per_sample_factor = B * (N - 1) / (N - B) if N > B else math.nan
    else:
        per_sample_factor = float(sizes[0]) if np.all(sizes == sizes[0]) else math.nan

    state, _ = op.functional_state()
    sq_w = {n: float((t.double() ** 2).sum()) for n, t in state.items()}
    inf_w = {n: float(t.abs().max()) if t.numel() else 0.0 for n, t in state.items()}

    losses = np.asarray(rec_loss)
    values: dict[str, float] = {
        "loss": loss_sum / N,
        "accuracy": correct / n_class if classify and n_class else math.nan,
        "loss_batch_mean": float(losses.mean()),
        "loss_batch_var": float(losses.var(ddof=1)) if M > 1 else math.nan,
        "grad_norm_sq": float(grad_norm_sq.sum()),
        "grad_batch_norm_sq": float(grad_batch.sum()),
        "grad_var": float(grad_var.sum()),
    }
    values["grad_var_per_sample"] = values["grad_var"] * per_sample_factor
    for name in PROBE_KEYS:
        values[name], values[f"{name}_se"] = _probe_summary(per_probe[name])
    values["weight_l2"] = math.sqrt(sum(sq_w.values()))
    values["weight_linf"] = max(inf_w.values())

    layers: dict[str, dict[str, float]] = {}
    if per_layer:
        numels = dict(zip(op.layout.names, op.layout.numels, strict=True))
        for j, name in enumerate(layer_names):
            members = groups[name]
            lay: dict[str, float] = {
                "num_params": float(sum(numels[n] for n in members)),
                "weight_l2": math.sqrt(sum(sq_w[n] for n in members)),
                "weight_linf": max(inf_w[n] for n in members),
                "grad_norm_sq": float(grad_norm_sq[j]),
                "grad_batch_norm_sq": float(grad_batch[j]),
                "grad_var": float(grad_var[j]),
            }
            lay["grad_var_per_sample"] = lay["grad_var"] * per_sample_factor
            layer_probe = {
                "curv_rayleigh": rayleigh[j],
                "curv_norm_sq": curv_norm[j],
                "curv_batch_norm_sq": curv_batch[j],
                "curv_var": curv_var[j],
                "curv_shrinkage": shrinkage_ratio(curv_var[j], curv_batch[j]),
                "curv_trace": P * rayleigh[j],
                "curv_frobenius_sq": P * curv_norm[j],
            }
            for key_, t in layer_probe.items():
                lay[key_], lay[f"{key_}_se"] = _probe_summary(t.cpu().numpy())
            layers[name] = lay

    # -- test data: one forward pass ----------------------------------------------------------
    test_passes = 0
    values["test_loss"] = values["test_accuracy"] = math.nan
    if test_data is not None:
        t_loss, t_n, t_correct, t_class, t_classify = 0.0, 0, 0, 0, None
        state, fixed = op.functional_state()
        try:
            with torch.no_grad(), op.evaluation_mode():
                for i, raw in enumerate(_eval_batches(test_data, B, ranks)):
                    batch = prepare_batch(raw, i, dev, op.dtype, op.source.targets_key)
                    out = op.batch_output(state, fixed, batch)
                    value = op.objective(out, batch.targets)
                    if not torch.isfinite(value):
                        raise FloatingPointError(f"the test loss of batch {i} is not finite")
                    t_loss += batch.n * float(value)
                    t_n += batch.n
                    pred = prediction_scores(out, i)
                    if t_classify is None:
                        t_classify = _is_classification(pred, batch.targets)
                    if t_classify and pred is not None:
                        t_correct += int((pred.argmax(dim=1) == batch.targets).sum())
                        t_class += int(batch.targets.numel())
        except Exception as exc:
            if ranks is None:
                raise
            failure = exc
        if ranks is not None:  # one all-reduce of the sums
            local = [t_loss, t_n, t_correct, t_class, float(bool(t_classify))]
            sums_t, _ = reduce_pass(
                ranks, torch.tensor(local, **f64), t_n, failure, "test loss and accuracy"
            )
            t_loss, t_n_f, t_correct_f, t_class_f, any_t = sums_t.tolist()
            t_n, t_correct, t_class = round(t_n_f), round(t_correct_f), round(t_class_f)
            t_classify = any_t > 0
        if t_n == 0:
            raise ValueError("test_data yielded no batches")
        test_passes = 1
        values["test_loss"] = t_loss / t_n
        values["test_accuracy"] = t_correct / t_class if t_classify and t_class else math.nan

    has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    config = {
        "matrix": key,
        "probes": k,
        "probe": probe,
        "seed": used_seed,
        "batch_size": B if plan.drawn else None,
        "batch_sizes": "given" if not plan.drawn else "drawn",
        "num_batches": M,
        "num_samples": N,
        "num_params": P,
        "num_layers": L if per_layer else 0,
        "param_names": op.param_names,
        "bn_mode": bn_mode,
        "has_batchnorm": has_bn,
        "dtype": str(op.dtype).replace("torch.", ""),
        "device": str(dev),
        "loss": op.objective.name,
        "data_passes": n_evaluated / N,
        "test_passes": test_passes,
        "per_sample_factor": per_sample_factor,
        **({"world_size": ranks.world_size} if ranks is not None else {}),
    }
    batches = {
        "loss": losses,
        "grad_norm_sq": np.asarray(rec_gsq),
        "curv_norm_sq": np.stack(rec_hsq),
        "size": sizes,
    }
    return LossStats(values, layers, per_probe, batches, config)
