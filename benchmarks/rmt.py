"""Random-matrix analyses benchmark: cost of the MaxEnt fit and of stochastic log-determinants.

Run ``python benchmarks/rmt.py`` (``--quick`` for a fast check). Prints one table per section and
writes ``benchmarks/results/rmt.json`` (``rmt-quick.json`` with ``--quick``). One function per
section, each returning its rows; :func:`main` runs the sections and writes them together.

* ``maxent``: the maximum-entropy fit (``SpectralDensity.maxent``) against the Lanczos run that
  feeds it (``--probes`` probes x ``--steps`` steps on a dense Wishart matrix of dimension
  ``--maxent-dim``), for 5, 10 and 20 moments. Target: fit / Lanczos <= 5 % at 10 moments.
* ``logdet``: ``logdet(method="slq")`` and ``"maxent"`` of ``W / sqrt(P) + 3 I`` (``W`` Wigner,
  eigenvalues in ``[1, 5]``) at ``P = --logdet-dim`` (10^4) against ``slogdet`` of the dense
  matrix (LU, ``O(P^3)``): times, relative error and standard error.
* ``batch_extremes``: one ``batch_hessian_extremes`` run in data passes and seconds
  (``benchmarks/rmt_batch.py``, which also runs on its own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import deepcurvature as dc
from deepcurvature.linalg.logdet import logdet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rmt_batch import bench_batch_extremes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _median_time(fn: Any, repeats: int) -> tuple[float, float, Any]:
    """Median and spread (max - min) of ``repeats`` timings of ``fn()``; its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times) - min(times), out


def bench_maxent(dim: int, steps: int, probes: int, repeats: int) -> list[dict[str, Any]]:
    """MaxEnt fit time against the Lanczos run that produced its moments."""
    A = dc.wishart(dim, 2 * dim, seed=0)
    t_lanczos, spread_l, run = _median_time(
        lambda: dc.lanczos(A, steps, probes=probes, seed=0, verbose=False), repeats
    )
    density = run.density()
    density.maxent(10)  # warm-up (the Gauss-Legendre rule is cached)
    rows = []
    for n in (5, 10, 20):
        t_fit, spread_f, fit = _median_time(lambda n=n: density.maxent(n), repeats)
        rows.append(
            {
                "dim": dim,
                "steps": steps,
                "probes": probes,
                "n_moments": n,
                "lanczos_s": t_lanczos,
                "lanczos_spread_s": spread_l,
                "fit_s": t_fit,
                "fit_spread_s": spread_f,
                "fit_over_lanczos": t_fit / t_lanczos,
                "newton_iterations": int(sum(fit.iterations)),
                "max_moment_error": fit.max_error,
            }
        )
    print(f"MaxEnt fit vs Lanczos: Wishart P = {dim:,}, {probes} probes x {steps} steps")
    print(f"{'moments':>8} {'Lanczos s':>10} {'fit s':>8} {'fit/Lanczos':>12} {'Newton its':>11}")
    for r in rows:
        print(
            f"{r['n_moments']:>8} {r['lanczos_s']:>10.3f} {r['fit_s']:>8.4f} "
            f"{100 * r['fit_over_lanczos']:>11.2f}% {r['newton_iterations']:>11}"
        )
    return rows


def bench_logdet(dim: int, steps: int, probes: int) -> list[dict[str, Any]]:
    """Stochastic log-determinants against dense ``slogdet`` (one timing each: big P)."""
    A = dc.wigner(dim, seed=0, normalize=True)
    shift = 3.0
    t0 = time.perf_counter()
    sign, exact = torch.linalg.slogdet(A + shift * torch.eye(dim, dtype=A.dtype))
    t_dense = time.perf_counter() - t0
    assert float(sign) == 1.0
    exact = float(exact)
    t0 = time.perf_counter()
    run = dc.lanczos(A, steps, probes=probes, seed=0, verbose=False)
    t_lanczos = time.perf_counter() - t0
    rows = [{"method": "slogdet (dense LU)", "dim": dim, "seconds": t_dense, "value": exact}]
    for method in ("slq", "maxent"):
        t0 = time.perf_counter()
        res = logdet(run, shift=shift, method=method)
        t_post = time.perf_counter() - t0
        rows.append(
            {
                "method": f"logdet {method}",
                "dim": dim,
                "steps": steps,
                "probes": probes,
                "products": res.products,
                "seconds": t_lanczos + t_post,
                "lanczos_s": t_lanczos,
                "post_s": t_post,
                "value": res.value,
                "standard_error": res.standard_error,
                "relative_error": (res.value - exact) / abs(exact),
                "speedup_vs_dense": t_dense / (t_lanczos + t_post),
            }
        )
    print(f"log det(W / sqrt(P) + {shift:g} I), P = {dim:,}, {probes} probes x {steps} steps")
    print(
        f"{'method':<20} {'seconds':>8} {'value':>12} {'s.e.':>8} {'rel. error':>11} {'speedup':>8}"
    )
    for r in rows:
        se = f"{r['standard_error']:.2f}" if "standard_error" in r else ""
        rel = f"{r['relative_error']:.2e}" if "relative_error" in r else ""
        sp = f"{r['speedup_vs_dense']:.1f}x" if "speedup_vs_dense" in r else ""
        print(
            f"{r['method']:<20} {r['seconds']:>8.2f} {r['value']:>12.2f} {se:>8} {rel:>11} {sp:>8}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maxent-dim", type=int, default=4000)
    parser.add_argument("--logdet-dim", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.maxent_dim, args.logdet_dim, args.repeats = 1000, 2000, 2

    sections = {
        "maxent": bench_maxent(args.maxent_dim, args.steps, args.probes, args.repeats),
        "logdet": bench_logdet(args.logdet_dim, args.steps, args.probes),
        "batch_extremes": bench_batch_extremes(args.quick),
    }
    print("batch_hessian_extremes:")
    for key, value in sections["batch_extremes"].items():
        print(f"{key:>22}: {value}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("rmt-quick.json" if args.quick else "rmt.json")
    doc = {
        "benchmark": "rmt",
        "quick": args.quick,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "config": vars(args),
        **sections,
    }
    dc.io.atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
