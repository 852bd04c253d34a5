"""Data-parallel curvature operators in real gloo process groups (``torch.multiprocessing.spawn``).

Every rank holds a replica of a float64 MLP or CNN+BN and an unequal shard of 11 samples; its
products, gradient and loss must equal those of one process on the union of the data, with one
all-reduce per product, and Lanczos / eigsh / trace must run identically on every rank. The
failure tests check that every rank raises a clear error (and none hangs). Workers run with one
torch thread; several checks share one spawn to keep the file fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import deepcurvature as dc
from _distributed import DT, REL, Counter, FailsLater, N, close, setup, shard_of, spawn, to_batches
from deepcurvature.operators import distributed as dcdist

SHARDS = {2: [7, 4], 3: [5, 4, 2]}  # samples per rank: 11 in all, unequal


def _shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> list:
    return shard_of(x, y, SHARDS[world], rank)


def _operator(matrix: str, model: nn.Module, data: list, **kwargs) -> dc.CurvatureOperator:
    loss = nn.CrossEntropyLoss()
    if matrix == "fisher":
        return dc.fisher(model, loss, data, kind="empirical", **kwargs)
    return getattr(dc, matrix)(model, loss, data, **kwargs)


def _local(matrix: str, model: nn.Module, data: list, **kwargs) -> dc.CurvatureOperator:
    """The single-process operator on the whole data set (built outside the process group)."""
    with dcdist.local_evaluation():
        return _operator(matrix, model, data, **kwargs)


# ------------------------------------------------------------------------------------------------
# workers (run in the spawned processes)


def _products(rank: int, world: int, tmp: Path) -> None:
    counter = Counter()
    for kind in ("mlp", "cnn") if world == 2 else ("mlp",):
        model, x, y = setup(kind)
        shard, full = _shard(x, y, rank, world), to_batches(x, y)
        for matrix in ("hessian", "ggn", "fisher"):
            op, ref = _operator(matrix, model, shard), _local(matrix, model, full)
            assert op.ranks is not None and ref.ranks is None
            assert op.num_samples == N
            V = torch.randn(op.num_params, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
            for product, args in (("matmat", (V,)), ("matvec", (V[:, 0],))):
                before = counter.calls()
                out = getattr(op, product)(*args)
                after = counter.calls()
                assert (after[0] - before[0], after[1] - before[1]) == (1, 1), (product, after)
                close(out, getattr(ref, product)(*args))
            before = counter.calls()
            close(op.gradient(), ref.gradient())
            assert np.isclose(op.loss(), ref.loss(), rtol=REL, atol=0)
            assert counter.wrapped - before[0] == 2
    # weight decay is added once, after the reduction
    model, x, y = setup("mlp")
    op = _operator("hessian", model, _shard(x, y, rank, world), weight_decay=0.1)
    ref = _local("hessian", model, to_batches(x, y), weight_decay=0.1)
    V = torch.randn(op.num_params, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
    close(op.matmat(V), ref.matmat(V))
    close(op.gradient(), ref.gradient())
    # algorithms on the products: identical on every rank and as in one process
    op = _operator("hessian", model, _shard(x, y, rank, world))
    ref = _local("hessian", model, to_batches(x, y))
    res = {}
    for name, o in (("dist", op), ("ref", ref)):
        lz = dc.lanczos(o, 30, seed=3, verbose=False)
        eig = dc.eigsh(o, 3, seed=4)
        tr = dc.trace(o, probes=6, seed=5)
        diag = dc.diagonal(o, probes=4, seed=6).value.numpy()
        x_solve = dc.solve(o, V[:, :1], damping=1.0, max_steps=20, verbose=False).x.numpy()
        res[name] = (lz.ritz_values[0], eig.values, np.array([tr.value]), diag, x_solve)
    np.testing.assert_allclose(res["dist"][0], res["ref"][0], rtol=1e-10, atol=1e-12)
    for got, want in zip(res["dist"][1:], res["ref"][1:], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    torch.save(res["dist"], tmp / f"algorithms_{rank}.pt")
    # Hutchinson on a layer chain: Taylor-mode quadratic forms, one all-reduce per block
    chain = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    chain_op = _operator("hessian", chain, _shard(x, y, rank, world), weight_decay=0.1)
    chain_ref = _local("hessian", chain, to_batches(x, y), weight_decay=0.1)
    assert chain_op.quadratic_route == "taylor" and chain_op.product_route == "chain"
    W = torch.randn(chain_op.num_params, 3, dtype=DT, generator=torch.Generator().manual_seed(7))
    before = counter.calls()
    close(chain_op.quadratic_forms(W), (W * chain_ref.matmat(W)).sum(0))
    assert counter.calls()[0] - before[0] == 1
    close(chain_op.matmat(W), chain_ref.matmat(W))  # products written out layer by layer
    tr_dist, tr_ref = dc.trace(chain_op, probes=6, seed=5), dc.trace(chain_ref, probes=6, seed=5)
    assert tr_dist.route == "taylor"
    np.testing.assert_allclose(tr_dist.samples, tr_ref.samples, rtol=1e-10, atol=1e-13)
    # a warm start in a group: every rank's first batch, reduced like any product
    warm = dc.eigsh(op, 1, tol=1e-10, seed=4, warm_start="batch", verbose=False)
    assert warm.warm_matvec > 0 and warm.converged
    np.testing.assert_allclose(warm.values, res["ref"][1][-1:], rtol=1e-8)
    # Monte Carlo Fisher: each rank draws its own targets (a stream per rank), one all-reduce
    mc = dc.fisher(model, nn.CrossEntropyLoss(), _shard(x, y, rank, world), kind="mc", seed=0)
    before = counter.calls()
    assert bool(torch.isfinite(mc.matmat(V)).all())
    assert counter.calls()[0] - before[0] == 1
    _loss_stats(model, x, y, rank, world)
    if world == 3:  # a DataLoader over a DistributedSampler (12 samples: no padding)
        gen = torch.Generator().manual_seed(12)
        x12, y12 = (
            torch.randn(12, 4, dtype=DT, generator=gen),
            torch.randint(0, 3, (12,), generator=gen),
        )
        dataset = torch.utils.data.TensorDataset(x12, y12)
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler)
        op = _operator("ggn", model, loader)
        ref = _local("ggn", model, to_batches(x12, y12))
        assert op.num_samples == 12
        close(op.matmat(V), ref.matmat(V))


def _same_stats(a: dc.LossStats, b: dc.LossStats) -> None:
    keys = set(a.values) | set(b.values)
    got = np.array([a.values[k] for k in sorted(keys)])
    want = np.array([b.values[k] for k in sorted(keys)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14, equal_nan=True)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        got = np.array([a.layers[name][k] for k in sorted(a.layers[name])])
        want = np.array([b.layers[name][k] for k in sorted(a.layers[name])])
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14, equal_nan=True)
    for key in b.batches:
        np.testing.assert_allclose(a.batches[key], b.batches[key], rtol=1e-10, atol=1e-14)
    assert a.config["num_samples"] == b.config["num_samples"]
    assert a.config["data_passes"] == b.config["data_passes"]


def _loss_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> None:
    """loss_stats over a Dataset (whole on every rank) and over shards given as lists."""
    loss = nn.CrossEntropyLoss()
    dataset = torch.utils.data.TensorDataset(x, y)
    kw = {"batch_size": 3, "probes": 2, "verbose": False}
    for num_batches, matrix in ((None, "hessian"), (5, "ggn")):  # 5 > 11 // 3: a second draw
        got = dc.loss_stats(
            model,
            loss,
            dataset,
            num_batches=num_batches,
            matrix=matrix,
            seed=7,
            test_data=dataset,
            **kw,
        )
        with dcdist.local_evaluation():
            want = dc.loss_stats(
                model,
                loss,
                dataset,
                num_batches=num_batches,
                matrix=matrix,
                seed=7,
                test_data=dataset,
                **kw,
            )
        _same_stats(got, want)
    # lists: each rank's shard, mini-batches chosen among all ranks' batches; seed=None: rank 0's
    got = dc.loss_stats(model, loss, _shard(x, y, rank, world), num_batches=3, **kw)
    concatenated = [b for r in range(world) for b in _shard(x, y, r, world)]
    with dcdist.local_evaluation():
        want = dc.loss_stats(
            model, loss, concatenated, num_batches=3, seed=got.config["seed"], **kw
        )
    _same_stats(got, want)


def _failures(rank: int, world: int, tmp: Path) -> None:
    model, x, y = setup("mlp")
    shard = _shard(x, y, rank, world)
    loss = nn.CrossEntropyLoss()
    V = torch.randn(51, 2, dtype=DT, generator=torch.Generator().manual_seed(1))

    # a rank whose data raises: it raises its own error, every other rank names it
    data = FailsLater(shard) if rank == 1 else shard
    op = dc.hessian(model, loss, data)
    if rank == 1:
        with pytest.raises(RuntimeError, match="corrupt record 7") as info:
            op.matmat(V)
        assert "rank 1 of 2" in "".join(getattr(info.value, "__notes__", []))
    else:
        with pytest.raises(dcdist.DistributedError, match="rank 1 failed during the hessian"):
            op.matmat(V)

    # a non-finite loss on one rank: every rank raises FloatingPointError
    bad = [(b[0].clone(), b[1]) for b in shard]
    if rank == 1:
        bad[1][0][0, 0] = float("nan")
    op = dc.ggn(model, loss, bad)
    match = "loss on batch 1 is not finite" if rank == 1 else "on rank 1 is not finite"
    with pytest.raises(FloatingPointError, match=match):
        op.matvec(V[:, 0])
    with pytest.raises(FloatingPointError, match=match):
        op.gradient()

    # different vectors on the ranks (e.g. unseeded probes)
    op = dc.hessian(model, loss, shard)
    W = torch.randn(51, 2, dtype=DT, generator=torch.Generator().manual_seed(10 + rank))
    with pytest.raises(dcdist.DistributedError, match="differ across ranks"):
        op.matmat(W)
    with pytest.raises(dcdist.DistributedError, match="differ across ranks"):
        dc.lanczos(op, 5, verbose=False)  # no seed: each rank draws its own start vector

    # mismatched replicas and settings
    other, _, _ = setup("mlp")
    if rank == 1:
        with torch.no_grad():
            other.fc1.weight[0, 0] += 1e-6
    with pytest.raises(
        ValueError, match="model replicas differ.*rank 1 differs from rank 0 in parameters"
    ):
        dc.hessian(other, loss, shard)
    with pytest.raises(ValueError, match="model replicas differ.*weight_decay"):
        dc.hessian(model, loss, shard, weight_decay=0.1 * rank)

    # loss_stats: a non-finite batch on one rank, an empty shard
    match = "batch 1 is not finite" if rank == 1 else "loss statistics.*on rank 1 is not finite"
    with pytest.raises(FloatingPointError, match=match):
        dc.loss_stats(model, loss, bad, probes=1, seed=0, verbose=False)
    with pytest.raises(ValueError, match=r"rank\(s\) 1 have an empty list of batches"):
        dc.loss_stats(model, loss, [] if rank == 1 else shard, probes=1, verbose=False)

    # a rank without samples
    with pytest.raises(ValueError, match=r"rank\(s\) 1 have no samples"):
        dc.fisher(model, loss, [] if rank == 1 else shard)

    # a backend that cannot reduce the operator's tensors (nccl with CPU tensors)
    backend = dist.get_backend
    dist.get_backend = lambda *a, **k: "nccl"
    try:
        with pytest.raises(ValueError, match="backend 'nccl' cannot all-reduce cpu tensors"):
            dc.hessian(model, loss, shard)
    finally:
        dist.get_backend = backend

    # the group is still usable after all of that
    op, ref = dc.hessian(model, loss, shard), _local("hessian", model, to_batches(x, y))
    close(op.matmat(V), ref.matmat(V))
    (tmp / f"done_{rank}").write_text("ok")

    # last (it breaks the group): a rank that never joins makes the others time out clearly
    if rank == 1:
        deadline = time.monotonic() + 15  # stuck: never joins the product
        while not (tmp / "elapsed").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    else:
        start = time.monotonic()
        with pytest.raises(dcdist.DistributedError, match="rank 0 timed out waiting"):
            op.matvec(V[:, 0])
        (tmp / "elapsed").write_text(str(time.monotonic() - start))
    # A group whose collective timed out is left in an undefined state: tearing it down
    # (destroy_process_group, or gloo's destructors at exit) sometimes aborts the process
    # ("terminate called without an active exception", SIGABRT), so the ranks end here.
    os._exit(0)


# ------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("world", [2, 3])
def test_products_and_algorithms_match_one_process(world, tmp_path):
    spawn(world, _products, tmp_path)
    results = [
        torch.load(tmp_path / f"algorithms_{r}.pt", weights_only=False) for r in range(world)
    ]
    for other in results[1:]:  # bitwise identical on every rank
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_failures_raise_on_every_rank_and_never_hang(tmp_path):
    spawn(2, _failures, tmp_path, pg_timeout=5.0, limit=60)
    assert (tmp_path / "done_0").exists() and (tmp_path / "done_1").exists()
    assert float((tmp_path / "elapsed").read_text()) < 10  # the 5 s timeout, not a hang


def test_single_process_has_no_collective(monkeypatch):
    def forbidden(t):
        raise AssertionError("a collective outside a process group")

    monkeypatch.setattr(dcdist, "all_reduce_sum", forbidden)
    model, x, y = setup("mlp")
    op = dc.hessian(model, nn.CrossEntropyLoss(), to_batches(x, y))
    assert op.ranks is None and not dcdist.process_group_active()
    op.matmat(torch.ones(op.num_params, 2, dtype=DT))
    op.gradient()
    op.loss()
    assert "world_size" not in op.metadata
