"""Analyses that loop over the data themselves, in real gloo process groups (2 processes).

The exact diagonals (GGN, empirical Fisher), the Monte Carlo GGN diagonal and the loss landscape
reduce their own sums over the ranks (one all-reduce per pass). On a float64 MLP and CNN+BN with
unequal shards (7 and 4 samples) every rank must return the single-process result on the union of
the shards (to 1e-12), bitwise identical on both ranks; a rank whose data fails makes every rank
raise (the failing rank its own error, the other one naming it), bounded by a deadline. One spawn
runs every check (workers use one torch thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _distributed import DT, REL, Counter, FailsLater, N, close, setup, shard_of, spawn, to_batches
from deepcurvature.analysis.landscape_points import _join_finite, _split_finite
from deepcurvature.operators import distributed as dcdist

SHARDS = [7, 4]  # samples per rank: unequal
assert sum(SHARDS) == N


def _shard(x: torch.Tensor, y: torch.Tensor, rank: int) -> list:
    return shard_of(x, y, SHARDS, rank)


# ------------------------------------------------------------------------------------------------
# the worker


def _diagonals(rank: int, counter: Counter, results: dict) -> None:
    loss = nn.CrossEntropyLoss()
    kw = {"verbose": False}
    for kind in ("mlp", "cnn"):
        model, x, y = setup(kind)
        shard, full = _shard(x, y, rank), to_batches(x, y)
        for fn in (dc.ggn_diagonal, dc.empirical_fisher_diagonal):
            before = counter.wrapped
            got = fn(model, loss, shard, sample_chunk=2, **kw)
            assert counter.wrapped - before == 2  # the operator's construction check, the pass
            with dcdist.local_evaluation():
                want = fn(model, loss, full, **kw)
            close(got.value.numpy(), want.value.numpy())
            assert got.metadata["per_sample_vjps"] == want.metadata["per_sample_vjps"]
            results[f"{fn.__name__}_{kind}"] = got.value.numpy()
    # Monte Carlo: each rank its own stream; the diagonal of the MC Fisher with the same seed
    model, x, y = setup("mlp")
    shard = _shard(x, y, rank)
    got = dc.mc_ggn_diagonal(model, loss, shard, mc_samples=2, seed=7, **kw)
    F = dc.fisher(model, loss, shard, kind="mc", mc_samples=2, seed=7)
    want = torch.diagonal(F.matmat(torch.eye(F.num_params, dtype=DT)))
    close(got.value.numpy(), want.numpy())
    results["mc_ggn_diagonal"] = got.value.numpy()
    unseeded = dc.mc_ggn_diagonal(model, loss, shard, **kw)  # rank 0's fresh seed everywhere
    results["mc_seed"] = np.array([unseeded.metadata["seed"]])
    results["mc_unseeded"] = unseeded.value.numpy()


def _landscapes(rank: int, counter: Counter, results: dict) -> None:
    loss = nn.CrossEntropyLoss()
    cases = (
        ("mlp", {"directions": ["random:1", "gaussian:1"], "n_points": 5}, 3),
        ("cnn", {"directions": "random:1", "n_points": 4, "bn_recompute": True}, 2),
        ("mlp", {"plane": "gaussian:2", "n_points": 3, "quadratic": False}, 4),
    )
    for i, (kind, kw, per_pass) in enumerate(cases):
        model, x, y = setup(kind)
        xt, yt = x.flip(0) * 0.5, y.flip(0)  # a test set, sharded the same way
        args = {"dist": 0.7, "seed": 3, "points_per_pass": per_pass, "verbose": False, **kw}
        before = counter.wrapped
        got = dc.loss_landscape(model, loss, _shard(x, y, rank), _shard(xt, yt, rank), **args)
        union = [b for r in range(2) for b in _shard(x, y, r)]  # the same batches (batch norm)
        test_union = [b for r in range(2) for b in _shard(xt, yt, r)]
        with dcdist.local_evaluation():
            want = dc.loss_landscape(model, loss, union, test_union, **args)
        passes = -(-got.info["points"] // per_pass) * (2 if kw.get("bn_recompute") else 1)
        if kw.get("bn_recompute"):
            passes += 1  # the origin with the model's own statistics
        quadratic = 2 if kw.get("quadratic", True) else 0
        checks = 2  # the operator's construction check, the landscape's settings check
        calls = counter.wrapped - before
        assert calls == checks + passes + quadratic, (i, calls)
        for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "quadratic"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None) == (b is None), name
            if a is not None:
                close(a, b)
                results[f"landscape_{i}_{name}"] = a
        if kw.get("bn_recompute"):  # other batches, other batch statistics
            with dcdist.local_evaluation():
                other = dc.loss_landscape(model, loss, to_batches(x, y), to_batches(xt, yt), **args)
            assert np.abs(other.train_loss - got.train_loss).max() > 1e-6
        for name in ("slopes", "uhu"):
            a, b = getattr(got, name), getattr(want, name)
            np.testing.assert_allclose(a, b, rtol=REL, atol=1e-14)
        assert got.origin == pytest.approx(want.origin, rel=REL)
        assert got.info["N_train"] == want.info["N_train"] == N
        assert got.info["N_test"] == want.info["N_test"] == N
        assert got.info["passes"] == want.info["passes"]


def _failures(rank: int) -> None:
    loss = nn.CrossEntropyLoss()
    model, x, y = setup("mlp")
    shard = _shard(x, y, rank)

    def run(fn, what: str, **kw) -> None:
        data = FailsLater(shard) if rank == 1 else shard
        if rank == 1:
            with pytest.raises(RuntimeError, match="corrupt record 7") as info:
                fn(model, loss, data, verbose=False, **kw)
            assert "rank 1 of 2" in "".join(getattr(info.value, "__notes__", []))
        else:
            with pytest.raises(dcdist.DistributedError, match=f"rank 1 failed during the {what}"):
                fn(model, loss, data, verbose=False, **kw)

    run(dc.ggn_diagonal, "GGN diagonal")
    run(dc.mc_ggn_diagonal, "MC GGN diagonal", seed=0)
    run(dc.empirical_fisher_diagonal, "empirical Fisher diagonal")
    run(dc.loss_landscape, "loss landscape", n_points=3, seed=0, quadratic=False)
    # the batch-norm statistics pass of bn_recompute
    model, x, y = setup("cnn")
    shard = _shard(x, y, rank)
    run(dc.loss_landscape, "batch-norm statistics", n_points=3, seed=0, bn_recompute=True)
    # a non-finite input on rank 1: every rank raises FloatingPointError
    bad = [(b[0].clone(), b[1]) for b in _shard(*setup("mlp")[1:], rank)]
    if rank == 1:
        bad[0][0][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        dc.empirical_fisher_diagonal(setup("mlp")[0], loss, bad, verbose=False)


def _mismatches(rank: int, results: dict) -> None:
    """Settings that differ across ranks are one clear error on every rank; seed=None agrees."""
    loss = nn.CrossEntropyLoss()
    model, x, y = setup("mlp")
    shard = _shard(x, y, rank)
    kw = {"n_points": 3, "quadratic": False, "verbose": False}
    with pytest.raises(ValueError, match="rank 1 differs from rank 0 in points_per_pass"):
        dc.loss_landscape(model, loss, shard, points_per_pass=2 + rank, seed=0, **kw)
    with pytest.raises(ValueError, match="rank 1 differs from rank 0 in directions"):
        dc.loss_landscape(model, loss, shard, seed=rank, **kw)
    with pytest.raises(ValueError, match="rank 1 differs from rank 0 in test data given"):
        dc.loss_landscape(model, loss, shard, shard if rank == 0 else None, seed=0, **kw)
    unseeded = dc.loss_landscape(model, loss, shard, **kw)  # rank 0's seed on every rank
    results["landscape_unseeded"] = unseeded.train_loss
    results["landscape_unseeded_seed"] = np.array([unseeded.config["seed"]])


def _analyses(rank: int, world: int, tmp: Path) -> None:
    counter = Counter()
    results: dict[str, np.ndarray] = {}
    _diagonals(rank, counter, results)
    _landscapes(rank, counter, results)
    _mismatches(rank, results)
    _failures(rank)
    # the group is still usable after the failures
    model, x, y = setup("mlp")
    got = dc.ggn_diagonal(model, nn.CrossEntropyLoss(), _shard(x, y, rank), verbose=False)
    close(got.value.numpy(), results["ggn_diagonal_mlp"])
    np.savez(tmp / f"rank{rank}.npz", **results)


# ------------------------------------------------------------------------------------------------
# tests


def test_diagonals_and_landscapes_match_one_process_and_failures_raise_everywhere(tmp_path):
    spawn(2, _analyses, tmp_path)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in range(2))
    assert sorted(r0.files) == sorted(r1.files)
    for key in r0.files:  # bitwise identical on every rank
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)


def test_non_finite_landscape_sums_survive_the_reduction():
    sums = torch.tensor([1.5, float("nan"), float("inf"), float("-inf"), 2.0], dtype=DT)
    other = torch.tensor([0.5, 1.0, float("-inf"), float("-inf"), float("inf")], dtype=DT)
    reduced = _split_finite(sums) + _split_finite(other)  # what the all-reduce does
    got = _join_finite(reduced)
    want = sums + other
    np.testing.assert_array_equal(got.numpy(), want.numpy())
