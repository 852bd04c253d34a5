"""Data-parallel curvature benchmark: 1 against 2 gloo processes (one torch thread each).

Run ``python benchmarks/distributed.py`` on a quiet machine (``--quick`` for a fast check). Prints
a table per section and writes ``benchmarks/results/distributed.json``
(``distributed-quick.json`` with ``--quick``).

Two processes are started once (``torch.multiprocessing``, gloo over TCP on 127.0.0.1, one torch
thread each). In every repeat the variants run interleaved: the single-process variant on rank 0
alone (its operator built with ``local_evaluation``, over the whole data set; rank 1 waits in a
barrier), then the 2-process variants (each rank its half of the data). Medians and spread
(min-max) over the repeats are reported.

Sections:

* ``matmat``: the CNN of ``benchmarks/hvp.py`` (float32, batch norm in eval mode, batches of 128),
  seconds per 16-column Hessian ``matmat`` over the whole data set; the time spent inside the
  product's one all-reduce (wrapped :func:`all_reduce_sum`: includes waiting for the slower rank)
  and a same-size all-reduce timed on its own right after (the pure communication; bytes moved =
  ``P * k * 4`` per product plus a few status numbers).
* ``landscape``: 21 points (2 random directions x 11 steps, shared origin) of a loss landscape on
  the digits MLP (1797 samples) and the CNN, evaluated (a) by one process, (b) by both ranks over
  their halves of the data with one all-reduce per pass (what ``loss_landscape`` does) and (c) by
  splitting the points over the ranks, each evaluating its points over the whole data set,
  followed by one all-reduce gathering the values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import deepcurvature as dc
from deepcurvature.analysis.landscape_points import PointEvaluator
from deepcurvature.operators import distributed as dcdist

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from hvp import batches, cnn, mlp  # noqa: E402

WORLD = 2
BATCH = 128


def cnn_data(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The CNN of ``benchmarks/hvp.py`` with realistic running statistics, on ``n`` samples."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    model = cnn()
    model.train()
    with torch.no_grad():
        for xb, _ in batches(x, y, BATCH):
            model(xb)
    return model.eval(), x, y


def digits_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    X, Y = load_digits(return_X_y=True)
    return mlp(), torch.tensor(X, dtype=torch.float32) / 16.0, torch.tensor(Y, dtype=torch.long)


def halves(x: torch.Tensor, y: torch.Tensor, rank: int) -> list:
    """Rank ``rank``'s half of the data (whole batches of 128, as a sampler would deal them)."""
    nb = -(-len(y) // BATCH)
    cut = -(-nb // WORLD) * BATCH  # rank 0 the first ceil(nb / 2) batches
    lo, hi = (0, cut) if rank == 0 else (cut, len(y))
    return batches(x[lo:hi], y[lo:hi], BATCH)


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


class TimedCollective:
    """Wraps :func:`all_reduce_sum` (the package's one collective) and sums the time in it."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.numel = 0.0, 0, 0
        inner = dcdist.all_reduce_sum

        def timed(t: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            out = inner(t)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            self.numel = t.numel()
            return out

        dcdist.all_reduce_sum = timed

    def reset(self) -> None:
        """Start counting again."""
        self.seconds, self.calls = 0.0, 0


def alone(rank: int, fn: Callable[[], object]) -> float:
    """Seconds of ``fn()`` on rank 0 while rank 1 waits (both return the time)."""
    dist.barrier()
    seconds = 0.0
    if rank == 0:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    dist.barrier()
    return seconds


def together(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()`` on both ranks from a common start (the slower rank's time)."""
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def bench_matmat(rank: int, args: argparse.Namespace, collective: TimedCollective) -> dict:
    n = 256 if args.quick else 1024
    model, x, y = cnn_data(n)
    loss = nn.CrossEntropyLoss()
    k = 16
    with dcdist.local_evaluation():
        one = dc.hessian(model, loss, batches(x, y, BATCH))
    two = dc.hessian(model, loss, halves(x, y, rank))
    P = two.num_params
    V = torch.randn(P, k, generator=torch.Generator().manual_seed(1))
    one.matmat(V)  # warm-up
    two.matmat(V)
    rows: dict[str, list[float]] = {"one": [], "two": [], "inside": [], "standalone": []}
    buf = torch.zeros(collective.numel or P * k)
    for _ in range(args.repeats):
        rows["one"].append(alone(rank, lambda: one.matmat(V)))
        collective.reset()
        rows["two"].append(together(lambda: two.matmat(V)))
        assert collective.calls == 1
        rows["inside"].append(collective.seconds)
        times = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t0)
        rows["standalone"].append(statistics.median(times))
    return {
        "model": "cnn of benchmarks/hvp.py (float32, BN eval)",
        "num_params": P,
        "num_samples": n,
        "columns": k,
        "bytes_per_product": P * k * 4,
        "buffer_numel": collective.numel,
        "seconds_one_process": spread(rows["one"]),
        "seconds_two_processes": spread(rows["two"]),
        "seconds_all_reduce_inside": spread(rows["inside"]),
        "seconds_all_reduce_standalone": spread(rows["standalone"]),
        "speedup": spread([a / b for a, b in zip(rows["one"], rows["two"], strict=True)]),
        "all_reduce_share": spread(
            [c / b for c, b in zip(rows["inside"], rows["two"], strict=True)]
        ),
        "standalone_share": spread(
            [c / b for c, b in zip(rows["standalone"], rows["two"], strict=True)]
        ),
    }


def bench_landscape(rank: int, name: str, args: argparse.Namespace) -> dict:
    if name == "mlp-digits":
        model, x, y = digits_data()
    else:
        model, x, y = cnn_data(256 if args.quick else 1024)
    loss = nn.CrossEntropyLoss()
    steps = 5 if args.quick else 11
    t = np.linspace(-1.0, 1.0, steps)
    t = t[t != 0]
    coeffs = np.zeros((1 + 2 * t.size, 2))
    coeffs[1 : 1 + t.size, 0] = t
    coeffs[1 + t.size :, 1] = t
    K = coeffs.shape[0]
    with dcdist.local_evaluation():
        whole = dc.hessian(model, loss, batches(x, y, BATCH))
    shard = dc.hessian(model, loss, halves(x, y, rank))
    U = torch.stack(
        [dc.filter_normalized_direction(model, seed=s) for s in (1, 2)], dim=1
    )  # (P, 2)
    kw = {"bn_recompute": False, "points_per_pass": None, "verbose": False}
    one = PointEvaluator(whole, None, **kw)
    split_data = PointEvaluator(shard, None, **kw)
    split_points = PointEvaluator(whole, None, **kw)
    mine = coeffs[rank::WORLD]

    def by_points() -> np.ndarray:
        values = split_points.evaluate(mine, U, recompute=False, description="")["train_loss"]
        out = torch.zeros(K, dtype=torch.float64)
        out[rank::WORLD] = torch.as_tensor(values)
        dist.all_reduce(out)  # the gather: every rank holds every value
        return out.numpy()

    reference = one.evaluate(coeffs, U, recompute=False, description="")["train_loss"]
    for check in (by_points(), split_data.evaluate(coeffs, U, recompute=False, description="")):
        values = check if isinstance(check, np.ndarray) else check["train_loss"]
        assert np.allclose(values, reference, rtol=1e-4), "the variants disagree"
    inner = 20 if name == "mlp-digits" else 1  # the MLP's landscape takes milliseconds

    def times(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                fn()

        return run

    def every_point(ev: PointEvaluator) -> Callable[[], object]:
        return lambda: ev.evaluate(coeffs, U, recompute=False, description="")

    rows: dict[str, list[float]] = {"one": [], "data": [], "points": []}
    for _ in range(args.repeats):
        rows["one"].append(alone(rank, times(every_point(one))) / inner)
        rows["data"].append(together(times(every_point(split_data))) / inner)
        rows["points"].append(together(times(by_points)) / inner)
    return {
        "num_params": whole.num_params,
        "num_samples": len(y),
        "points": K,
        "timed_landscapes_per_sample": inner,
        "seconds_one_process": spread(rows["one"]),
        "seconds_split_data": spread(rows["data"]),
        "seconds_split_points": spread(rows["points"]),
        "speedup_split_data": spread(
            [a / b for a, b in zip(rows["one"], rows["data"], strict=True)]
        ),
        "speedup_split_points": spread(
            [a / b for a, b in zip(rows["one"], rows["points"], strict=True)]
        ),
    }


def worker(rank: int, port: int, out: str, argv: list[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(minutes=30),
    )
    try:
        collective = TimedCollective()
        sections = args.sections.split(",")
        result: dict = {"matmat": None, "landscape": {}}
        if "matmat" in sections:
            result["matmat"] = bench_matmat(rank, args, collective)
        if "landscape" in sections:
            for name in ("mlp-digits", "cnn"):
                result["landscape"][name] = bench_landscape(rank, name, args)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _cell(s: dict, fmt: str) -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def _table(rows: list[tuple[str, dict, str]]) -> None:
    print(f"{'':<44} {'median (min-max)':>26}")
    for label, s, fmt in rows:
        print(f"{label:<44} {_cell(s, fmt):>26}")


def _print_matmat(m: dict) -> None:
    print(
        f"\nmatmat: {m['model']}, P = {m['num_params']:,}, N = {m['num_samples']}, "
        f"k = {m['columns']} columns, {m['bytes_per_product'] / 2**20:.2f} MiB all-reduced per "
        "product"
    )
    _table(
        [
            ("seconds per matmat, 1 process", m["seconds_one_process"], ".3f"),
            ("seconds per matmat, 2 processes", m["seconds_two_processes"], ".3f"),
            ("speed-up", m["speedup"], ".2f"),
            ("seconds in the all-reduce (incl. waiting)", m["seconds_all_reduce_inside"], ".4f"),
            ("  share of the 2-process matmat", m["all_reduce_share"], ".3f"),
            ("seconds, same-size all-reduce alone", m["seconds_all_reduce_standalone"], ".4f"),
            ("  share of the 2-process matmat", m["standalone_share"], ".3f"),
        ]
    )


def print_result(res: dict) -> None:
    if res["matmat"]:
        _print_matmat(res["matmat"])
    for name, r in res["landscape"].items():
        print(
            f"\nlandscape {name}: P = {r['num_params']:,}, N = {r['num_samples']}, "
            f"{r['points']} points, seconds"
        )
        _table(
            [
                ("1 process", r["seconds_one_process"], ".3f"),
                ("2 processes, split data (loss_landscape)", r["seconds_split_data"], ".3f"),
                ("2 processes, split points", r["seconds_split_points"], ".3f"),
                ("  speed-up, split data", r["speedup_split_data"], ".2f"),
                ("  speed-up, split points", r["speedup_split_points"], ".2f"),
            ]
        )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small data, 2 repeats")
    parser.add_argument("--sections", default="matmat,landscape", help="comma-separated")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 2
    return args


def main() -> None:
    argv = sys.argv[1:]
    args = parse(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(worker, args=(port, out, argv), nprocs=WORLD, join=True)
        res = json.loads(Path(out).read_text())
    res.update(
        {
            "processes": WORLD,
            "threads_per_process": 1,
            "backend": "gloo",
            "quick": args.quick,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        }
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("distributed-quick.json" if args.quick else "distributed.json")
    if args.out:
        path = Path(args.out)
    dc.io.atomic_write_text(path, json.dumps(res, indent=2) + "\n")
    print_result(res)
    print(f"\nwrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
