"""Cost of ``dc.batch_hessian_extremes`` in data passes and seconds.

Run ``python benchmarks/rmt_batch.py`` (``--quick`` for a small check); prints the row and
writes ``benchmarks/results/rmt_batch[-quick].json``. ``bench_batch_extremes(quick)`` returns
the row (``benchmarks/rmt.py`` calls it).

Workload: the registry's "mlp" (two hidden layers of 64, P = 8,970) at its seeded initialisation
on the digits training set (N = 1,437), the Hessian, batch sizes 16, 64, 256 with 4 mini-batches
each (quick: 16 and 64, 2 each), ``eigsh`` tolerance 1e-3. The samples the model evaluates are
counted by a forward pre-hook, so ``data_passes_counted`` (samples evaluated / N) is measured,
not assumed; it is compared with the result's own count ``data_passes`` (products x B / N) and
with the time of one full-data gradient (the unit). Timings are indicative on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import deepcurvature as dc
from deepcurvature.analysis.batch_extremes import batch_hessian_extremes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def bench_batch_extremes(quick: bool) -> dict[str, Any]:
    """Measure one ``batch_hessian_extremes`` run: data passes (counted and reported), seconds."""
    bundle = dc.load_data("digits", batch_size=512, augment=False, shuffle_train=False)
    X = torch.cat([x for x, _ in bundle.train_loader])
    y = torch.cat([t for _, t in bundle.train_loader])
    torch.manual_seed(0)
    model = dc.get_model("mlp", **bundle.model_kwargs())
    loss_fn = nn.CrossEntropyLoss()
    sizes = [16, 64] if quick else [16, 64, 256]
    per_size = 2 if quick else 4
    evaluated = [0]

    def count(_module: nn.Module, args: tuple[Any, ...]) -> None:
        evaluated[0] += int(args[0].shape[0])

    # the unit: one full-data gradient (median of 3)
    grad_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        dc.hessian(model, loss_fn, [(X, y)]).gradient()
        grad_times.append(time.perf_counter() - t0)
    gradient_seconds = sorted(grad_times)[1]

    handle = model.register_forward_pre_hook(count)
    try:
        t0 = time.perf_counter()
        res = batch_hessian_extremes(
            model, loss_fn, (X, y), sizes, batches_per_size=per_size, seed=0, tol=1e-3,
            verbose=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    finally:
        handle.remove()
    n = len(X)
    return {
        "quick": quick,
        "P": res.info["P"],
        "N": n,
        "batch_sizes": sizes,
        "batches_per_size": per_size,
        "products": res.info["n_matvec"],
        "data_passes": res.info["data_passes"],
        "data_passes_batches": res.info["data_passes_batches"],
        "data_passes_full": res.info["data_passes_full"],
        "data_passes_counted": evaluated[0] / n,
        "seconds": seconds,
        "gradient_seconds": gradient_seconds,
        "seconds_in_gradients": seconds / gradient_seconds,
        "converged": res.info["converged"],
        "lambda_max_mean": res.lambda_max_mean.tolist(),
        "full_lambda_max": res.full_lambda_max,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check")
    args = parser.parse_args()
    row = bench_batch_extremes(args.quick)
    for key, value in row.items():
        print(f"{key:>22}: {value}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"rmt_batch{'-quick' if args.quick else ''}.json"
    dc.io.atomic_write_text(out, json.dumps(row, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
