"""Lanczos benchmark: cost of full reorthogonalisation against its floor, memory, eigsh counts.

Run ``python benchmarks/lanczos.py`` (``--quick`` for a fast check). Prints tables and writes
``benchmarks/results/lanczos.json``.

* Lanczos with ``--steps`` (100) steps and full reorthogonalisation on a diagonal operator of
  dimension ``--dim`` (10^6), so the operator costs almost nothing: time per step against the floor
  measured in the same run, i.e. the four products with the stored basis that two classical
  Gram-Schmidt passes need (``Q^T w`` and ``Q h``, twice) timed alone on the same sizes. The target
  is total / floor <= 1.5. Variants: float64 operator with float64 and float32 basis storage, and a
  float32 operator. Variants are interleaved and repeated; medians and spread are reported.
* Peak memory (max RSS of a fresh subprocess per variant) against the size of the basis.
* ``dc.eigsh`` operator applications against ARPACK and power iteration (``eigsh_counts.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import deepcurvature as dc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

VARIANTS = {
    "op float64 / basis float64": (torch.float64, torch.float64),
    "op float64 / basis float32": (torch.float64, torch.float32),
    "op float32 / basis float32": (torch.float32, torch.float32),
}


class DiagonalOperator(dc.LinearOperator):
    """``diag(d)``: an operator that costs one elementwise product."""

    def __init__(self, d: torch.Tensor) -> None:
        super().__init__((d.numel(), d.numel()), d.dtype, d.device, symmetric=True)
        self.d = d[:, None]

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d * V


def make_operator(dim: int, dtype: torch.dtype) -> DiagonalOperator:
    g = torch.Generator().manual_seed(0)
    return DiagonalOperator(torch.rand(dim, generator=g, dtype=torch.float64).to(dtype))


def time_lanczos(op, steps: int, basis_dtype: torch.dtype) -> float:
    t0 = time.perf_counter()
    dc.lanczos(op, steps, seed=0, basis_dtype=basis_dtype, verbose=False)
    return time.perf_counter() - t0


def time_floor(dim: int, steps: int, dtype: torch.dtype) -> float:
    """The four basis products of two Gram-Schmidt passes, for every step, timed alone."""
    Q = torch.randn(1, steps, dim, dtype=dtype)
    w = torch.randn(1, dim, 1, dtype=dtype)
    total = 0.0
    for j in range(steps):
        basis = Q[:, : j + 1]
        t0 = time.perf_counter()
        for _ in range(2):
            h = torch.bmm(basis, w)
            torch.bmm(basis.transpose(1, 2), h)
        total += time.perf_counter() - t0
    return total


def peak_memory(variant: str, dim: int, steps: int) -> dict:
    """Run one variant in a fresh process and read its peak RSS."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            variant,
            "--dim",
            str(dim),
            "--steps",
            str(steps),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(variant: str, dim: int, steps: int) -> None:
    op_dtype, basis_dtype = VARIANTS[variant]
    op = make_operator(dim, op_dtype)
    dc.lanczos(op, 2, seed=0, basis_dtype=basis_dtype, verbose=False)  # warm up allocator/libs
    before = current_rss()
    dc.lanczos(op, steps, seed=0, basis_dtype=basis_dtype, verbose=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    itemsize = torch.empty((), dtype=basis_dtype).element_size()
    basis_bytes = steps * dim * itemsize
    print(json.dumps({"peak_increase_bytes": after - before, "basis_bytes": basis_bytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check")
    parser.add_argument("--skip-eigsh", action="store_true")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.dim, args.steps)
        return
    if args.quick:
        args.dim, args.steps, args.repeats = 100_000, 30, 2

    ops = {name: make_operator(args.dim, od) for name, (od, _) in VARIANTS.items()}
    for name, (_, bd) in VARIANTS.items():  # warm-up
        time_lanczos(ops[name], 3, bd)
    samples: dict[str, dict[str, list[float]]] = {n: {"total": [], "floor": []} for n in VARIANTS}
    for _ in range(args.repeats):  # interleave: A-total A-floor B-total B-floor ...
        for name, (_, bd) in VARIANTS.items():
            samples[name]["total"].append(time_lanczos(ops[name], args.steps, bd))
            samples[name]["floor"].append(time_floor(args.dim, args.steps, bd))
    del ops

    rows = []
    print(
        f"Lanczos, diagonal operator, P = {args.dim:,}, m = {args.steps}, "
        f"{args.repeats} repeats, {torch.get_num_threads()} threads"
    )
    print(
        f"{'variant':<28} {'s/step':>9} {'floor s/step':>13} {'total/floor':>12} "
        f"{'ratio spread':>14} {'peak MB':>9} {'basis MB':>9}"
    )
    for name in VARIANTS:
        tot, flo = samples[name]["total"], samples[name]["floor"]
        ratios = [t / f for t, f in zip(tot, flo, strict=True)]
        mem = peak_memory(name, args.dim, args.steps)
        row = {
            "variant": name,
            "dim": args.dim,
            "steps": args.steps,
            "seconds_per_step_median": statistics.median(tot) / args.steps,
            "floor_seconds_per_step_median": statistics.median(flo) / args.steps,
            "total_over_floor_median": statistics.median(ratios),
            "total_over_floor_min": min(ratios),
            "total_over_floor_max": max(ratios),
            "total_seconds": tot,
            "floor_seconds": flo,
            **mem,
        }
        rows.append(row)
        print(
            f"{name:<28} {row['seconds_per_step_median']:>9.4f} "
            f"{row['floor_seconds_per_step_median']:>13.4f} "
            f"{row['total_over_floor_median']:>12.3f} "
            f"{row['total_over_floor_min']:>6.2f}-{row['total_over_floor_max']:<6.2f} "
            f"{mem['peak_increase_bytes'] / 2**20:>9.1f} {mem['basis_bytes'] / 2**20:>9.1f}"
        )

    result = {"lanczos": rows, "threads": torch.get_num_threads(), "quick": args.quick}
    if not args.skip_eigsh:
        sys.path.insert(0, str(HERE))
        import eigsh_counts

        result["eigsh"] = eigsh_counts.run(quick=args.quick)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "lanczos.json"
    dc.io.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
