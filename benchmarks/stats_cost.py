"""Cost of ``dc.loss_stats``: passes over the data and time relative to one full gradient.

Run ``python benchmarks/stats_cost.py`` (``--quick`` for a small check). Prints a table and writes
``benchmarks/results/stats_cost.json``. ``run(quick)`` returns the rows (``print_table(rows)``
prints them); ``benchmarks/landscape.py`` calls both.

Workload: the registry's "mlp" (two hidden layers of 64, P = 8,970) on the digits training set
(1,437 images; quick: a 256-image subsample), mini-batches of 128 (quick: 64). The training data
is wrapped in a counting Dataset, so every sample fetched by any loader is counted: ``data passes``
is the number of samples fetched divided by ``N``, measured, not assumed.

Variants (interleaved: gradient, H/1, H/4, GGN/1, GGN/4, gradient, ... repeated):

* ``gradient``: ``dc.hessian(model, loss, loader).gradient()``, one mean-loss gradient over the
  data set (the unit of time);
* ``loss_stats`` with ``matrix`` in {hessian, ggn} and ``probes`` in {1, 4}: every statistic of
  :func:`deepcurvature.loss_stats` (loss and gradient noise, ``k`` curvature products per batch,
  per-layer values), no test set.

Reported per variant: measured data passes (expected 1: the full-data values are assembled from
the per-batch results), the median time ratio to the gradient of the same repeat and its spread
(min-max). Timings are indicative on a shared machine; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import deepcurvature as dc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


class CountingDataset(Dataset):
    """A Dataset that counts the samples fetched from it (``__getitem__`` and ``__getitems__``)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.fetched = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        self.fetched += 1
        return self.base[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        self.fetched += len(indices)
        getitems = getattr(self.base, "__getitems__", None)
        if getitems is not None:
            return getitems(indices)
        return [self.base[i] for i in indices]


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run(quick: bool = False, repeats: int | None = None) -> list[dict]:
    """Measure the passes and time ratios; one row per ``loss_stats`` variant (no printing)."""
    repeats = repeats or (2 if quick else 5)
    B = 64 if quick else 128
    bundle = dc.load_data(
        "digits",
        augment=False,
        shuffle_train=False,
        subsample=256 if quick else None,
        batch_size=B,
    )
    data = CountingDataset(bundle.train_set)
    N = len(data)
    torch.manual_seed(0)
    model = dc.get_model("mlp", **bundle.model_kwargs())
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(data, batch_size=B, shuffle=False)

    def gradient() -> dict[str, Any]:
        dc.hessian(model, loss_fn, loader).gradient()
        return {}

    def stats(matrix: str, probes: int):
        def f() -> dict[str, Any]:
            st = dc.loss_stats(
                model, loss_fn, data, batch_size=B, matrix=matrix, probes=probes, seed=0,
                verbose=False,
            )  # fmt: skip
            return {
                "reported_passes": st.config["data_passes"],
                "num_batches": st.config["num_batches"],
            }

        return f

    variants = {"gradient": gradient}
    for matrix in ("hessian", "ggn"):
        for k in (1, 4):
            variants[f"{matrix}/{k}"] = stats(matrix, k)
    for f in variants.values():  # warm-up: one-off costs (torch.func set-up) outside the timings
        f()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    passes: dict[str, list[float]] = {name: [] for name in variants}
    info: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, f in variants.items():
            data.fetched = 0
            t0 = time.perf_counter()
            info[name] = f()
            seconds[name].append(time.perf_counter() - t0)
            passes[name].append(data.fetched / N)

    P = sum(p.numel() for p in model.parameters())
    rows = []
    for name in variants:
        if name == "gradient":
            continue
        matrix, k = name.split("/")
        ratios = [s / g for s, g in zip(seconds[name], seconds["gradient"], strict=True)]
        rows.append(
            {
                "workload": f"mlp on digits (N={N}, P={P})",
                "matrix": matrix,
                "probes": int(k),
                "batch_size": B,
                "num_batches": info[name]["num_batches"],
                "data_passes": statistics.median(passes[name]),
                "reported_passes": info[name]["reported_passes"],
                "gradient_passes": statistics.median(passes["gradient"]),
                "time_over_gradient": _summary(ratios),
                "seconds": _summary(seconds[name]),
                "gradient_seconds": _summary(seconds["gradient"]),
                "repeats": repeats,
                "threads": torch.get_num_threads(),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    """Print the rows as a table (rich)."""
    from rich.console import Console
    from rich.table import Table

    title = f"dc.loss_stats cost, {rows[0]['workload']}, B={rows[0]['batch_size']}" if rows else ""
    table = Table(title=title)
    for col in ("matrix", "probes", "batches", "data passes", "gradient passes",
                "time / gradient", "spread", "seconds"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        t = r["time_over_gradient"]
        table.add_row(
            r["matrix"],
            str(r["probes"]),
            str(r["num_batches"]),
            f"{r['data_passes']:.3g}",
            f"{r['gradient_passes']:.3g}",
            f"{t['median']:.2f}",
            f"{t['min']:.2f}-{t['max']:.2f}",
            f"{r['seconds']['median']:.3f}",
        )
    Console(width=120).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(quick=args.quick, repeats=args.repeats)
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "stats_cost.json"
    dc.io.atomic_write_text(out, json.dumps({"rows": rows, "quick": args.quick}, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
