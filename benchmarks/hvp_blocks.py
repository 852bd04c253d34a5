"""Hessian ``matmat`` block width against activation size (the reverse engine on the CPU).

Run ``python benchmarks/hvp_blocks.py`` (``--quick`` for a fast check). Prints a table and writes
``benchmarks/results/hvp_blocks.json``.

For networks whose largest activation ranges from 64 KiB to 16 MiB (the MLP of
``benchmarks/hvp.py`` with hidden widths 128 and 512, its CNN with batches of 4, 16 and 128), a
16-column Hessian ``matmat`` is timed with fixed block widths 1, 4 and 16 and with the automatic
choice, in gradient passes per column (each time divided by a plain gradient pass measured right
before it; variants interleaved, median and min-max over repeats). The automatic width keeps a
block's tensors below 4 MiB (``HessianOperator._auto_block_width``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import deepcurvature as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hvp import batches, cnn, plain_gradient, timed

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (1, 4, 16, None)  # None: automatic


def workloads(quick: bool) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    out = {}
    for hidden in (128, 512):
        model = nn.Sequential(
            nn.Linear(64, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 10),
        )
        n = 512 if quick else 2048
        x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
        out[f"mlp 64-{hidden}-{hidden}-10, batch 128"] = (model, batches(x, y, 128))
    n = 64 if quick else 256
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    for bs in (4, 16, 128):
        model = cnn().eval()
        out[f"cnn-bn, batch {bs}"] = (model, batches(x, y, bs))
    return out


def run(model: nn.Module, data: list, repeats: int) -> dict:
    loss_fn = nn.CrossEntropyLoss()
    ops = {}
    for w in WIDTHS:
        op = dc.hessian(model, loss_fn, data)
        op.block_size = w
        ops["auto" if w is None else str(w)] = op
    V = torch.randn(ops["1"].num_params, 16)
    ref = ops["1"].matmat(V)
    for key, op in ops.items():  # warm-up, and every width computes the same product
        err = float((op.matmat(V) - ref).norm() / ref.norm())
        if not err < 1e-4:
            raise RuntimeError(f"block width {key} differs: relative error {err:.1e}")
    auto = ops["auto"]
    auto_width = auto._block_width(16, None, None, None)
    ratios: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(repeats):
        for key, op in ops.items():
            tg = timed(lambda: plain_gradient(model, loss_fn, data))
            ratios[key].append(timed(lambda op=op: op.matmat(V)) / 16 / tg)
    return {
        "activation_bytes": auto._activation_bytes,
        "auto_width": auto_width,
        "gradients_per_column": {
            k: {"median": statistics.median(r), "min": min(r), "max": max(r), "all": r}
            for k, r in ratios.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    results = {}
    print(
        f"{'workload':<34} {'activation':>10} {'auto':>4}  gradients per column (median, min-max)"
    )
    print(
        f"{'':<34} {'':>10} {'':>4}  " + "  ".join(f"{'w=' + str(w or 'auto'):>16}" for w in WIDTHS)
    )
    for name, (model, data) in workloads(args.quick).items():
        res = run(model, data, repeats)
        results[name] = res
        cells = "  ".join(
            f"{r['median']:>5.2f} ({r['min']:.2f}-{r['max']:.2f})"
            for r in res["gradients_per_column"].values()
        )
        act = res["activation_bytes"] / 2**20
        print(f"{name:<34} {act:>7.2f} MiB {res['auto_width']:>4}  {cells}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "hvp_blocks.json"
    doc = {
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": repeats,
        "torch": torch.__version__,
        "workloads": results,
    }
    dc.io.atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
