"""The registry's networks on the chain route against autograd's route: time and peak memory.

Run ``python benchmarks/registry_models.py`` (``--models VGG16,AllCNN``, ``--n 256``,
``--repeats 3``; ``--quick``: All-CNN on 128 images once, to ``registry_models_quick.json``).
Writes ``benchmarks/results/registry_models.json`` and prints a table.

The registry's MLP, CNN, All-CNN and VGGs are ``nn.Sequential`` chains, so their products take
the layer-by-layer chain route (``product_route == "chain"``); before they were, every product
went through autograd (``chain_route = False`` reproduces that). Per model (float32, 2 threads,
``--n`` random 3x32x32 images in batches of 128, 10 classes, batch norm with running statistics
from one pass in training mode), the variants are interleaved with a plain gradient pass
(``loss.backward()`` over the batches) measured right before each, and reported as the median
ratio (min-max) over ``--repeats``:

* one Hessian-vector product and one GGN-vector product, by each route;
* a 4-column Hessian ``matmat`` (an SLQ step with 4 probes), per column, by each route.

Peak memory: each route's one-column Hessian product runs alone in a fresh subprocess, which
reports the growth of its peak resident set (``VmHWM``) over the model and data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import deepcurvature as dc

RESULTS = Path(__file__).resolve().parent / "results"


def setup(name: str, n: int) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = [(x[i : i + 128], y[i : i + 128]) for i in range(0, n, 128)]
    model = dc.get_model(name, num_classes=10, in_channels=3, input_size=(32, 32))
    model.train()
    with torch.no_grad():
        for xb, _ in data:
            model(xb)  # running statistics of batch norm
    return model.eval(), data


def gradient(model: nn.Module, data: list) -> None:
    model.zero_grad(set_to_none=True)
    for x, y in data:
        (nn.functional.cross_entropy(model(x), y) * len(y)).backward()


def peak_growth(name: str, n: int, route: str) -> float:
    """MiB by which one Hessian-vector product raises a fresh process's peak resident set."""
    here, chain = str(Path(__file__).parent), route == "chain"
    # VmHWM (the peak resident set of this process image): ru_maxrss would carry the parent's
    # peak over the fork and exec of this subprocess
    code = (
        f"import sys, torch; sys.path.insert(0, {here!r}); import registry_models as R\n"
        "torch.set_num_threads(2); import deepcurvature as dc\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024\n"
        f"model, data = R.setup({name!r}, {n})\n"
        "H = dc.hessian(model, torch.nn.functional.cross_entropy, data)\n"
        f"H.chain_route = {chain}\n"
        "v = torch.randn(H.num_params)\n"
        "base = hwm()\n"
        "H.matvec(v)\n"
        "print(hwm() - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_model(name: str, args: argparse.Namespace) -> dict:
    model, data = setup(name, args.n)
    loss = nn.functional.cross_entropy
    ops = {}
    for route in ("chain", "autograd"):
        H, G = dc.hessian(model, loss, data), dc.ggn(model, loss, data)
        H.chain_route = G.chain_route = route == "chain"
        ops[route] = (H, G)
    assert ops["chain"][0].product_route == "chain", f"{name} is not a chain"
    P = ops["chain"][0].num_params
    gen = torch.Generator().manual_seed(1)
    v, V = torch.randn(P, generator=gen), torch.randn(P, 4, generator=gen)
    variants = {}
    for route, (H, G) in ops.items():
        variants[f"HVP, {route}"] = (lambda H=H: H.matvec(v), 1)
        variants[f"GGN-vector product, {route}"] = (lambda G=G: G.matvec(v), 1)
        variants[f"Hessian matmat k=4, {route}, per column"] = (lambda H=H: H.matmat(V), 4)
    for fn, _ in variants.values():  # warm-up (allocator, MKL-DNN primitives)
        fn()
    gradient(model, data)
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    grads: list[float] = []
    for _ in range(args.repeats):
        for key, (fn, k) in variants.items():
            t0 = time.perf_counter()
            gradient(model, data)
            t_grad = time.perf_counter() - t0
            t0 = time.perf_counter()
            fn()
            ratios[key].append((time.perf_counter() - t0) / t_grad / k)
            grads.append(t_grad)
    rows = {
        key: {
            "median": statistics.median(r),
            "min": min(r),
            "max": max(r),
            "ratios": r,
        }
        for key, r in ratios.items()
    }
    memory = {route: peak_growth(name, args.n, route) for route in ("chain", "autograd")}
    return {
        "P": P,
        "N": args.n,
        "gradient_seconds_median": statistics.median(grads),
        "gradient_passes": rows,
        "hvp_peak_growth_mib": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="VGG16,AllCNN")
    parser.add_argument("--n", type=int, default=256, help="images (batches of 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="All-CNN only, 128 images, 1 repeat (results/registry_models_quick.json)",
    )
    args = parser.parse_args()
    if args.quick:
        args.models, args.n, args.repeats = "AllCNN", 128, 1
    torch.set_num_threads(args.threads)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": "gradient passes (time / a plain gradient pass measured right before)",
        "models": {},
    }
    for name in [m for m in args.models.split(",") if m]:
        res = run_model(name, args)
        result["models"][name] = res
        print(f"\n{name}: P = {res['P']:,}, N = {res['N']}, gradient pass "
              f"{res['gradient_seconds_median']:.2f} s")  # fmt: skip
        for key, row in res["gradient_passes"].items():
            print(f"  {key:45s} {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f})")
        mem = res["hvp_peak_growth_mib"]
        print(f"  peak growth of one HVP: chain {mem['chain']:.0f} MiB, "
              f"autograd {mem['autograd']:.0f} MiB")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("registry_models_quick.json" if args.quick else "registry_models.json")
    dc.io.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
