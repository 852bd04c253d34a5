"""VGG-16 Lanczos runs by the command line: time per step (product and reorthogonalisation), memory.

Run ``python benchmarks/vgg16_spectrum.py`` (``--steps 100``, ``--subsample 512``,
``--repeats 3``; ``--quick``: 3 steps on 128 images, written to ``vgg16_spectrum_quick.json``).
It runs, alone on the machine and one after the other,

* ``deepcurvature spectrum --model VGG16 --dataset synthetic --subsample N --matrix ggn
  --steps S`` (10 epochs of brief training first), and
* ``deepcurvature spectrum --checkpoint <that run's trained model> --subsample N --matrix hessian
  --steps S`` (the brief training used the whole synthetic set, 512 images, so the checkpoint
  holds no subsample),

into a fresh folder (``--work DIR``, kept), or reads two such runs (``--runs-from DIR`` with
``DIR/ggn`` and ``DIR/hessian``). From each run's ``spectrum.json`` it fits ``t_j = a + b j``
to the step times (``a``: the product, ``b j``: the reorthogonalisation against ``j`` stored
vectors) and reports the peak resident memory per step against the memory model (basis + 4
vectors + one batch's workspace: the peak should grow by one float32 vector of ``P`` numbers per
step). Then it times, interleaved in this process (``--repeats``, a plain gradient pass before
each), one GGN- and one Hessian-vector product of VGG-16 by each route (chain, autograd) on
``--subsample`` random images, to turn seconds into gradient passes. Writes
``benchmarks/results/vgg16_spectrum.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import deepcurvature as dc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import registry_models  # noqa: E402  (the registry networks' setup and gradient pass)

MIB = 2**20


def cli(*args: str) -> None:
    """Run ``deepcurvature`` with ``args`` (its output to the console)."""
    exe = shutil.which("deepcurvature")
    command = [exe] if exe else [sys.executable, "-m", "deepcurvature"]
    print("$ deepcurvature " + " ".join(args), flush=True)
    status = subprocess.run([*command, *args, "--quiet"]).returncode
    if status != 0:  # its own line (e.g. an existing result refused) is above
        raise SystemExit(f"deepcurvature {args[0]} ended with status {status}: see its line above")


def run_both(work: Path, steps: int, subsample: int, epochs: int) -> None:
    """The GGN run (with its brief training) and the Hessian run of its trained model."""
    cli(
        "spectrum", "--model", "VGG16", "--dataset", "synthetic",
        "--subsample", str(subsample), "--train-epochs", str(epochs),
        "--matrix", "ggn", "--steps", str(steps), "--out", str(work / "ggn"),
    )  # fmt: skip
    checkpoints = sorted((work / "ggn" / "train").glob("checkpoint-*.pt"))
    if not checkpoints:
        raise SystemExit(f"the GGN run left no checkpoint in {work / 'ggn' / 'train'}")
    cli(
        "spectrum", "--checkpoint", str(checkpoints[-1]), "--subsample", str(subsample),
        "--matrix", "hessian", "--steps", str(steps), "--out", str(work / "hessian"),
    )  # fmt: skip


def analyse(folder: Path) -> dict:
    """Step times split into product and reorthogonalisation, and the peak memory per step."""
    path = folder / "spectrum.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: --runs-from needs a folder with ggn/ and "
                         "hessian/ runs of deepcurvature spectrum")  # fmt: skip
    info = json.loads(path.read_text())["info"]
    t = np.asarray(info["seconds_per_step"], dtype=float)
    mem = np.asarray(info["peak_memory_per_step"], dtype=float) / MIB
    j = np.arange(1, len(t) + 1)
    a, b = np.polynomial.polynomial.polyfit(j, t, 1)
    P = int(info["P"])
    vector = P * 4 / MIB  # one float32 vector
    growth = float(mem[-1] - mem[0])
    return {
        "route": info.get("product_route"),
        "P": P,
        "N": int(info["N"]),
        "steps": len(t),
        "seconds_per_step": t.tolist(),
        "median": float(np.median(t)),
        "min": float(t.min()),
        "max": float(t.max()),
        "product_seconds": float(a),
        "reorth_seconds_per_stored_vector": float(b),
        "reorth_seconds_total": float((b * j).sum()),
        "seconds_total": float(t.sum()),
        "memory_kind": info.get("memory_kind"),
        "peak_memory_mib_per_step": mem.tolist(),
        "peak_memory_mib_first_step": float(mem[0]),
        "peak_memory_mib_last_step": float(mem[-1]),
        "peak_growth_mib": growth,
        "added_basis_vectors_mib": (len(t) - 1) * vector,
        "growth_over_added_basis": growth / ((len(t) - 1) * vector) if len(t) > 1 else None,
    }


def route_ratios(n: int, repeats: int) -> dict:
    """One GGN and one Hessian product by each route, in gradient passes (interleaved)."""
    model, data = registry_models.setup("VGG16", n)
    loss = torch.nn.functional.cross_entropy
    v = torch.randn(sum(p.numel() for p in model.parameters()),
                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    variants = {}
    for label, build in (("GGN", dc.ggn), ("Hessian", dc.hessian)):
        for route in ("chain", "autograd"):
            op = build(model, loss, data)
            op.chain_route = route == "chain"
            variants[f"{label}, {route}"] = op
    for op in variants.values():  # warm-up (allocator, oneDNN primitives)
        op.matvec(v)
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    grads: list[float] = []
    for _ in range(repeats):
        for key, op in variants.items():
            t0 = time.perf_counter()
            registry_models.gradient(model, data)
            t_grad = time.perf_counter() - t0
            t0 = time.perf_counter()
            op.matvec(v)
            ratios[key].append((time.perf_counter() - t0) / t_grad)
            grads.append(t_grad)
    return {
        "N": n,
        "gradient_seconds": grads,
        "gradient_seconds_median": statistics.median(grads),
        "gradient_passes": {
            k: {"median": statistics.median(r), "min": min(r), "max": max(r), "ratios": r}
            for k, r in ratios.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--subsample", type=int, default=512)
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="of the interleaved products")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for the two runs (default: a new one)")
    parser.add_argument("--runs-from", type=Path, help="analyse DIR/ggn and DIR/hessian instead")
    parser.add_argument("--output", type=Path, help="default: results/vgg16_spectrum.json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 steps on 128 images after 1 epoch, 1 repeat (results/vgg16_spectrum_quick.json)",
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.subsample, args.train_epochs, args.repeats = 3, 128, 1, 1
    if args.output is None:
        name = "vgg16_spectrum_quick.json" if args.quick else "vgg16_spectrum.json"
        args.output = RESULTS / name
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.runs_from is not None:
        work = args.runs_from
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="vgg16-spectrum-"))
        run_both(work, args.steps, args.subsample, args.train_epochs)
    runs = {name: analyse(work / name) for name in ("ggn", "hessian")}
    ratios = route_ratios(runs["ggn"]["N"], args.repeats)
    t_grad = ratios["gradient_seconds_median"]
    result = {
        "date": started,
        "runs_from": str(work),
        "threads": args.threads,
        "torch": torch.__version__,
        "note": "product_seconds / gradient_seconds_median: gradient passes per product "
        "(the gradient pass measured after the runs, with the interleaved products)",
        "runs": runs,
        "route_ratios": ratios,
    }
    print(f"\nVGG-16, P = {runs['ggn']['P']:,}, N = {runs['ggn']['N']}, one gradient pass "
          f"{t_grad:.2f} s (median after the runs)")  # fmt: skip
    header = ["matrix".ljust(8), "route".ljust(8), "step median (min-max)".ljust(24)]
    header += ["product a".rjust(10), "reorth b".rjust(11), "grads/product".rjust(14)]
    header += ["peak MiB".rjust(9), "growth/basis".rjust(12)]
    print(" ".join(header))
    for name, r in runs.items():
        span = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) s"
        growth = r["growth_over_added_basis"]
        ratio = "-" if growth is None else f"{growth:.3f}"
        print(f"{name:8s} {r['route'] or '?':8s} {span:24s} {r['product_seconds']:9.2f}s "
              f"{1e3 * r['reorth_seconds_per_stored_vector']:7.1f}ms/j "
              f"{r['product_seconds'] / t_grad:14.2f} {r['peak_memory_mib_last_step']:9.0f} "
              f"{ratio:>12}")  # fmt: skip
    print("\none product, gradient passes (interleaved):")
    for key, row in ratios["gradient_passes"].items():
        print(f"  {key:18s} {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    dc.io.atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(args.output)}")


if __name__ == "__main__":
    main()
