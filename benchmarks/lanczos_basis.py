"""Lanczos basis backends: the slowdown of a host and a disk basis against the in-memory one.

Run ``python benchmarks/lanczos_basis.py`` (``--quick`` for a check in well under a minute).
Prints a table and writes ``benchmarks/results/lanczos_basis.json``.

A cheap synthetic operator (low rank plus diagonal, ``diag(d) + U U^T`` with ``U`` of ``--rank``
columns, as a ``dc.LinearOperator``) of dimension ``--dim`` (10^6) runs ``--steps`` (100) Lanczos
steps with full reorthogonalisation, float32, from one probe, with the basis kept

* ``memory``: on the operator's device;
* ``host``: in host memory (``basis_device="cpu"``; on a CPU-only machine it is the same tensor
  as ``memory``, so the two differ by noise only);
* ``disk``: in a memory-mapped file in ``--basis-dir`` (default: the temporary folder). While the
  basis fits in the page cache this measures the memory map, not the disk itself.

The variants are interleaved (memory host disk memory host disk ...) and repeated; medians and
ranges are reported. The operator times its own products, so each step splits into the product
and the rest (reorthogonalisation: two classical Gram-Schmidt passes over the stored basis, the
scalars, and the transfers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import deepcurvature as dc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


class LowRankPlusDiagonal(dc.LinearOperator):
    """``diag(d) + U U^T`` ``(P, P)``: a product costs ``O(P (rank + 1))``; times its products."""

    def __init__(self, dim: int, rank: int, device: torch.device) -> None:
        super().__init__((dim, dim), torch.float32, device, symmetric=True)
        g = torch.Generator().manual_seed(0)
        self.d = torch.rand(dim, 1, generator=g).to(device)
        self.U = (torch.randn(dim, rank, generator=g) / dim**0.5).to(device)
        self.product_seconds = 0.0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.d * V + self.U @ (self.U.T @ V)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        self.product_seconds += time.perf_counter() - t0
        return out


def variants(basis_dir: str | None) -> dict[str, dict]:
    return {
        "memory": {"basis": "memory"},
        "host": {"basis": "memory", "basis_device": "cpu"},
        "disk": {"basis": "disk", "basis_dir": basis_dir},
    }


def run_once(op: LowRankPlusDiagonal, steps: int, options: dict) -> dict:
    op.product_seconds = 0.0
    t0 = time.perf_counter()
    res = dc.lanczos(op, steps, seed=0, verbose=False, **options)
    total = time.perf_counter() - t0
    return {
        "total": total,
        "product": op.product_seconds,
        "rest": total - op.product_seconds,
        "kind": res.basis_kind,
    }


def _median_range(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    parser.add_argument("--basis-dir", default=None, help="folder of the disk basis")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.dim, args.steps, args.repeats = 200_000, 30, 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    op = LowRankPlusDiagonal(args.dim, args.rank, device)
    basis_dir = args.basis_dir or tempfile.gettempdir()
    options = variants(basis_dir)
    for opts in options.values():  # warm-up: allocator, libraries, page cache of the file
        run_once(op, 3, opts)
    samples: dict[str, list[dict]] = {name: [] for name in options}
    for _ in range(args.repeats):  # interleaved: memory host disk memory host disk ...
        for name, opts in options.items():
            samples[name].append(run_once(op, args.steps, opts))

    basis_mb = args.steps * args.dim * 4 / 2**20
    print(
        f"Lanczos basis backends: low rank ({args.rank}) + diagonal operator, P = {args.dim:,}, "
        f"m = {args.steps}, float32 basis {basis_mb:,.0f} MiB, device {device}, "
        f"{args.repeats} interleaved repeats, {torch.get_num_threads()} threads"
    )
    print(
        f"{'basis':<8} {'kind':<7} {'total s (range)':>22} {'slowdown (range)':>22} "
        f"{'product ms/step':>16} {'reorth+rest ms/step':>20}"
    )
    rows = []
    base = [s["total"] for s in samples["memory"]]
    for name, runs in samples.items():
        totals = [s["total"] for s in runs]
        ratios = [t / b for t, b in zip(totals, base, strict=True)]
        tot, slow = _median_range(totals), _median_range(ratios)
        prod = statistics.median(s["product"] for s in runs) / args.steps
        rest = statistics.median(s["rest"] for s in runs) / args.steps
        row = {
            "basis": name,
            "kind": runs[0]["kind"],
            "dim": args.dim,
            "steps": args.steps,
            "total_seconds": totals,
            "total_seconds_median": tot[0],
            "slowdown_vs_memory_median": slow[0],
            "slowdown_vs_memory_min": slow[1],
            "slowdown_vs_memory_max": slow[2],
            "product_seconds_per_step_median": prod,
            "reorth_and_rest_seconds_per_step_median": rest,
        }
        rows.append(row)
        print(
            f"{name:<8} {row['kind']:<7} {tot[0]:>8.3f} ({tot[1]:.3f}-{tot[2]:.3f}) "
            f"{slow[0]:>10.3f} ({slow[1]:.2f}-{slow[2]:.2f}) "
            f"{1e3 * prod:>16.2f} {1e3 * rest:>20.2f}"
        )
    result = {
        "lanczos_basis": rows,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rank": args.rank,
        "basis_dir": basis_dir,
        "quick": args.quick,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "lanczos_basis.json"
    dc.io.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
