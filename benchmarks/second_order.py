"""Second-order linear algebra: ``dc.solve`` against scipy, and M-FAC products against dot products.

Run ``python benchmarks/second_order.py`` (``--quick`` for a fast check). Prints a table and writes
``benchmarks/results/second_order.json``.

* **Solve.** The damped GGN ``G + lambda I`` of the registry's MLP on a digits subsample
  (whole-data products, float64, ``lambda = 1e-3 lambda_max``), right-hand sides ``b`` of k = 1 and
  4 random columns, tolerance 1e-6: ``dc.solve(method="cg")`` (the k columns share one ``matmat``
  per step, one pass over the data) against ``scipy.sparse.linalg.cg`` on ``op.to_scipy()`` plus
  the damping (one column at a time, one pass per product). Reported: operator columns, data
  passes, wall time and the true relative residual each reached. Variants interleaved per repeat;
  medians and spread, after one untimed warm-up of each.
* **Optimiser steps.** One step of ``LanczosNewton`` and ``LanczosGGN`` (k = 10, 20 Lanczos steps)
  on a batch of 128, in units of an SGD step (forward, backward, update; about one gradient); per
  Lanczos step: (step - SGD step) / k, in SGD steps. Two setups: the registry's MLP on digits and
  the CNN with batch norm of ``benchmarks/hvp.py`` (3x32x32 inputs, about 95k parameters). The
  curvature takes the batch statistics (``bn_mode="train"``, as the gradient) except in the
  ``bn eval`` row (running statistics: batch norm is an affine map folded into the convolution).
* **M-FAC.** One ``mfac_inverse`` product (``P = 1e6``, m = 32, float32) in units of the m
  gradient-vector dot products ``G @ v`` it generalises (a product reads ``G`` twice).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn

import deepcurvature as dc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOL = 1e-6


def _damped_ggn(n: int) -> tuple[dc.LinearOperator, float]:
    bundle = dc.load_data("digits", batch_size=128, augment=False, shuffle_train=False, subsample=n)
    torch.manual_seed(0)
    model = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(32,)).double()
    data = [(x.double(), y) for x, y in bundle.train_loader]
    op = dc.ggn(model, nn.CrossEntropyLoss(), data, dtype=torch.float64)
    top = dc.eigsh(op, k=1, which="LA", tol=1e-4, verbose=False).values[0]
    return op, 1e-3 * float(top)


class _Counting(scipy.sparse.linalg.LinearOperator):
    def __init__(self, op: dc.LinearOperator, damping: float) -> None:
        super().__init__(dtype=np.float64, shape=op.shape)
        self.op, self.damping, self.calls = op, damping, 0

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        v = torch.as_tensor(np.ascontiguousarray(x).ravel(), dtype=torch.float64)
        return (self.op.matvec(v) + self.damping * v).numpy()


def _ours(op: dc.LinearOperator, b: torch.Tensor, damping: float) -> dict:
    t0 = time.perf_counter()
    res = dc.solve(op, b, damping=damping, method="cg", tol=TOL, verbose=False)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "columns": int(res.n_products),
        "passes": int(res.n_matmat),
        "residual": float(np.max(res.residual_norms)),
    }


def _scipy(op: dc.LinearOperator, b: torch.Tensor, damping: float) -> dict:
    A = _Counting(op, damping)
    B = b.reshape(b.shape[0], -1)
    t0 = time.perf_counter()
    worst = 0.0
    for j in range(B.shape[1]):
        x, _ = scipy.sparse.linalg.cg(A, B[:, j].numpy(), rtol=TOL, maxiter=10 * B.shape[0])
        xt = torch.as_tensor(x)
        r = op.matvec(xt) + damping * xt - B[:, j]
        worst = max(worst, float(r.norm() / B[:, j].norm()))
    seconds = time.perf_counter() - t0
    # scipy's products, plus one product per column for the same final residual check as ours
    return {"seconds": seconds, "columns": A.calls + B.shape[1],
            "passes": A.calls + B.shape[1], "residual": worst}  # fmt: skip


def bench_solve(repeats: int, n: int) -> dict:
    op, damping = _damped_ggn(n)
    out: dict = {"P": op.shape[0], "N": n, "damping": damping, "tol": TOL, "cases": {}}
    for k in (1, 4):
        g = torch.Generator().manual_seed(k)
        b = torch.randn(op.shape[0], k, generator=g, dtype=torch.float64)
        b = b[:, 0] if k == 1 else b
        runs: dict[str, list[dict]] = {"dc.solve": [], "scipy cg": []}
        _ours(op, b, damping), _scipy(op, b, damping)  # warm-up (first-call set-up of both)
        for r in range(repeats):
            order = [("dc.solve", _ours), ("scipy cg", _scipy)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                runs[name].append(fn(op, b, damping))
        case = {}
        for name, rs in runs.items():
            secs = [x["seconds"] for x in rs]
            case[name] = {**rs[-1], "seconds": statistics.median(secs),
                          "seconds_range": [min(secs), max(secs)]}  # fmt: skip
        ours, theirs = case["dc.solve"], case["scipy cg"]
        case["time_ratio"] = ours["seconds"] / theirs["seconds"]
        case["pass_ratio"] = ours["passes"] / theirs["passes"]
        out["cases"][f"k={k}"] = case
    return out


def bench_mfac(repeats: int, P: int, m: int) -> dict:
    g = torch.Generator().manual_seed(0)
    G = torch.randn(m, P, generator=g)
    inv = dc.mfac_inverse(G, 1e-6)
    v = torch.randn(P, generator=g)
    prod, dots = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        inv.matvec(v)
        t1 = time.perf_counter()
        _ = G @ v
        t2 = time.perf_counter()
        prod.append(t1 - t0)
        dots.append(t2 - t1)
    ratios = [a / b for a, b in zip(prod, dots, strict=True)]
    return {
        "P": P,
        "m": m,
        "product_seconds": statistics.median(prod),
        "dots_seconds": statistics.median(dots),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def _step_seconds(model: nn.Module, opt: torch.optim.Optimizer, x, y, repeats: int) -> float:
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _step_setup(name: str) -> tuple[Callable[[], nn.Module], torch.Tensor, torch.Tensor]:
    """A model factory and one batch of 128: the digits MLP, or the CNN with BN of hvp.py."""
    if name == "mlp-digits":
        bundle = dc.load_data("digits", batch_size=128, augment=False, shuffle_train=False)
        x, y = next(iter(bundle.train_loader))
        return lambda: dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8), x, y
    import sys

    sys.path.insert(0, str(HERE))
    from hvp import cnn

    g = torch.Generator().manual_seed(0)
    return cnn, torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)


def bench_steps(setup: str, repeats: int, steps: int) -> dict:
    """Seconds per optimiser step (batch 128) in SGD steps; variants interleaved A B C C B A."""
    factory, x, y = _step_setup(setup)
    variants = {"SGD": {}, "LanczosNewton k=10": {"lanczos_steps": 10},
                "LanczosNewton k=20": {"lanczos_steps": 20},
                "LanczosNewton k=20 bn eval": {"lanczos_steps": 20, "bn_mode": "eval"},
                "LanczosGGN k=10": {"lanczos_steps": 10},
                "LanczosGGN k=20": {"lanczos_steps": 20}}  # fmt: skip
    secs: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in names:
            torch.manual_seed(0)
            model = factory()
            opt = dc.build_optimizer(name.split()[0], model, **variants[name])
            secs[name].append(_step_seconds(model, opt, x, y, steps))
            if hasattr(opt, "remove_hooks"):
                opt.remove_hooks()
    sgd = statistics.median(secs["SGD"])
    out = {}
    for name, ts in secs.items():
        k = variants[name].get("lanczos_steps")
        med = statistics.median(ts)
        per = (med - sgd) / sgd / k if k else None
        out[name] = {
            "seconds": med,
            "seconds_range": [min(ts), max(ts)],
            "sgd_steps": med / sgd,
            "sgd_steps_per_lanczos_step": per,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    repeats = 2 if args.quick else 5
    solve = bench_solve(repeats, 200 if args.quick else 600)
    mfac = bench_mfac(3 if args.quick else 9, 100_000 if args.quick else 1_000_000, 32)
    steps = {
        "mlp-digits": bench_steps("mlp-digits", 2 if args.quick else 7, 3),
        "cnn-bn": bench_steps("cnn-bn", 1 if args.quick else 5, 1 if args.quick else 2),
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dc.solve vs scipy cg: damped GGN, P={solve['P']:,}, tol {TOL:g}")
    for col in ("b", "method", "columns", "data passes", "s (median)", "spread", "true residual"):
        table.add_column(col, justify="right")
    for k, case in solve["cases"].items():
        for name in ("dc.solve", "scipy cg"):
            c = case[name]
            lo, hi = c["seconds_range"]
            table.add_row(k, name, str(c["columns"]), str(c["passes"]), f"{c['seconds']:.3f}",
                          f"{lo:.3f}-{hi:.3f}", f"{c['residual']:.1e}")  # fmt: skip
        table.add_row(k, "ratio", "", f"{case['pass_ratio']:.2f}", f"{case['time_ratio']:.2f}",
                      "", "")  # fmt: skip
    console = Console()
    console.print(table)
    lo, hi = mfac["ratio_range"]
    console.print(
        f"M-FAC product (P={mfac['P']:,}, m={mfac['m']}): {mfac['product_seconds'] * 1e3:.2f} ms = "
        f"{mfac['ratio']:.2f} x the m dot products ({lo:.2f}-{hi:.2f})"
    )
    table = Table(title="optimiser steps, batch 128, in SGD steps (forward, backward, update)")
    for col in ("setup", "optimiser", "ms (median)", "spread", "SGD steps", "per Lanczos step"):
        table.add_column(col, justify="right")
    for setup, rows in steps.items():
        for name, st in rows.items():
            per = st["sgd_steps_per_lanczos_step"]
            lo, hi = st["seconds_range"]
            table.add_row(setup, name, f"{st['seconds'] * 1e3:.1f}",
                          f"{lo * 1e3:.1f}-{hi * 1e3:.1f}", f"{st['sgd_steps']:.1f}",
                          "" if per is None else f"{per:.2f}")  # fmt: skip
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("second_order-quick.json" if args.quick else "second_order.json")
    doc = {"benchmark": "second_order", "quick": args.quick, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "solve": solve, "mfac": mfac,
           "steps": steps}  # fmt: skip
    dc.io.atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
