"""Loss-landscape throughput: ``dc.loss_landscape`` against a plain loop of parameter updates.

Run ``python benchmarks/landscape.py`` (``--quick`` for a fast check). Prints a table and writes
``benchmarks/results/landscape.json``; then prints the cost of the loss statistics in data passes
(``benchmarks/stats_cost.py``'s ``run(quick)``), when that file exists.

Workloads: the registry's "mlp" on digits (1,437 training images), and its "cnn" on synthetic
3x32x32 data. Both variants compute the training loss at ``w* + t u`` for ``--n-points`` values
``t`` in [-1, 1] along ``--directions`` random unit directions, over the same loader:

* ``plain``: for each point, copy the weights, add ``t u`` in place, evaluate the mean training
  loss over the data in eval mode (``torch.no_grad``, accumulated on the device), restore the
  weights -- the loop one would write by hand;
* ``loss_landscape``: ``dc.loss_landscape(model, loss, loader, directions=[...],
  quadratic=False, verbose=False)``, which evaluates the model functionally (the user's model is
  never modified) and shares each pass over the data between up to 256 MiB worth of points:
  every batch is loaded once and evaluated at each of them. It also computes the accuracy.

The same points are evaluated (the origin once); the values agree to float32 round-off (checked).
Variants are interleaved (plain, landscape, plain, landscape, ...) and repeated; each repeat gives
the ratio of the two throughputs (points per second). Reported: median points per second, median
ratio and its spread (min-max). Target: ratio >= 1 (ours no slower).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import deepcurvature as dc
from deepcurvature.io import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VARIANTS = ("plain", "loss_landscape")


def workloads(quick: bool) -> dict:
    """``{name: (model, train_loader)}`` with fixed initial weights."""
    torch.manual_seed(0)
    digits = dc.load_data("digits", batch_size=128, augment=False, shuffle_train=False)
    mlp = dc.get_model("mlp", **digits.model_kwargs()).eval()
    n = 256 if quick else 1024
    synth = dc.load_data("synthetic", batch_size=128, augment=False, shuffle_train=False,
                         n_train=n, n_test=64)  # fmt: skip
    cnn = dc.get_model("cnn", width=16, **synth.model_kwargs()).eval()
    return {
        "mlp / digits": (mlp, digits.train_loader),
        f"cnn / synthetic 3x32x32 (N={n})": (cnn, synth.train_loader),
    }


def directions(model: nn.Module, count: int) -> torch.Tensor:
    """``(P, count)`` seeded random unit directions."""
    P = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    U = torch.randn(P, count, generator=g, dtype=torch.float64)
    return (U / U.norm(dim=0)).to(next(model.parameters()).dtype)


def plain_loop(model: nn.Module, loader, U: torch.Tensor, t: np.ndarray) -> np.ndarray:
    """Copy weights, add t*u, evaluate the train loss over the data, restore; per point."""
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    out = np.empty((U.shape[1], t.size))
    model.eval()
    with torch.no_grad():
        for d in range(U.shape[1]):
            parts = [c.view_as(p) for c, p in zip(U[:, d].split(sizes), params, strict=True)]
            for j, tj in enumerate(t):
                saved = [p.detach().clone() for p in params]
                for p, c in zip(params, parts, strict=True):
                    p.add_(c, alpha=float(tj))
                total = torch.zeros((), dtype=torch.float64)
                n = 0
                for x, y in loader:
                    total += loss_fn(model(x), y).double() * y.shape[0]
                    n += y.shape[0]
                out[d, j] = float(total) / n
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
    return out


def ours(model: nn.Module, loader, U: torch.Tensor, n_points: int) -> np.ndarray:
    res = dc.loss_landscape(model, nn.CrossEntropyLoss(), loader,
                            directions=[U[:, d] for d in range(U.shape[1])], dist=1.0,
                            n_points=n_points, quadratic=False, verbose=False)  # fmt: skip
    return res.train_loss


def time_variant(variant: str, model, loader, U, t) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    if variant == "plain":
        values = plain_loop(model, loader, U, t)
    else:
        values = ours(model, loader, U, t.size)
    return time.perf_counter() - t0, values


def run_stats_cost(quick: bool) -> list[dict] | None:
    """Run ``benchmarks/stats_cost.py``'s ``run(quick)`` and print its table, if it exists."""
    path = HERE / "stats_cost.py"
    if not path.is_file():
        print("benchmarks/stats_cost.py is not there (yet): skipping the statistics' cost")
        return None
    spec = importlib.util.spec_from_file_location("stats_cost", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["stats_cost"] = module
    spec.loader.exec_module(module)
    rows = module.run(quick)
    printer = getattr(module, "print_table", None)
    if callable(printer):
        printer(rows)
    else:
        _print_rows("loss statistics: cost in data passes (benchmarks/stats_cost.py)", rows)
    return rows


def _print_rows(title: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = list(dict.fromkeys(k for row in rows for k in row))
    for col in cols:
        table.add_column(str(col), justify="right")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in cols])
    Console(width=140).print(table)


def _cell(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--n-points", type=int, default=None, help="points per direction")
    parser.add_argument("--directions", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--skip-stats", action="store_true", help="do not run stats_cost.py")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 7)
    n_points = args.n_points or (7 if args.quick else 21)
    if args.threads:
        torch.set_num_threads(args.threads)
    t = np.linspace(-1.0, 1.0, n_points)
    points = args.directions * n_points

    results = {}
    for name, (model0, loader) in workloads(args.quick).items():
        model = copy.deepcopy(model0)
        U = directions(model, args.directions)
        time_variant("plain", model, loader, U, t[:2])  # warm-up (first-call costs)
        time_variant("loss_landscape", model, loader, U, t[:3])
        times = {v: [] for v in VARIANTS}
        values = {}
        for _ in range(repeats):
            for v in VARIANTS:
                seconds, values[v] = time_variant(v, model, loader, U, t)
                times[v].append(seconds)
        diff = float(np.abs(values["plain"] - values["loss_landscape"]).max())
        rate = {v: [points / s for s in times[v]] for v in VARIANTS}
        ratio = [a / b for a, b in zip(rate["loss_landscape"], rate["plain"], strict=True)]
        results[name] = {
            "P": sum(p.numel() for p in model.parameters()),
            "N": len(loader.dataset),
            "points": points,
            "seconds": times,
            "points_per_second_median": {v: statistics.median(rate[v]) for v in VARIANTS},
            "ratio": {
                "median": statistics.median(ratio),
                "min": min(ratio),
                "max": max(ratio),
                "all": ratio,
            },
            "max_abs_difference": diff,
        }
        assert torch.equal(
            torch.cat([p.reshape(-1) for p in model.parameters()]),
            torch.cat([p.reshape(-1) for p in model0.parameters()]),
        ), "the plain loop did not restore the weights"

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"1-D loss landscape throughput ({args.directions} directions x {n_points} points, "
        f"{repeats} repeats)"
    )
    for col in ("workload", "P", "plain pts/s", "ours pts/s", "ratio (median)", "spread",
                "max |diff|"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, r in results.items():
        pps = r["points_per_second_median"]
        table.add_row(
            name,
            f"{r['P']:,}",
            f"{pps['plain']:.1f}",
            f"{pps['loss_landscape']:.1f}",
            f"{r['ratio']['median']:.2f}",
            f"{r['ratio']['min']:.2f} - {r['ratio']['max']:.2f}",
            f"{r['max_abs_difference']:.1e}",
        )
    Console(width=120).print(table)

    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "landscape",
        "quick": args.quick,
        "repeats": repeats,
        "n_points": n_points,
        "directions": args.directions,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": results,
    }
    if not args.skip_stats:
        out["stats_cost"] = run_stats_cost(args.quick)
    path = RESULTS / "landscape.json"
    atomic_write_text(path, json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
