"""Benchmark against the peer libraries: top eigenvalue, top-5 eigenpairs, trace, SLQ.

Run ``/work/peers-venv/bin/python benchmarks/peers.py [--quick] [--workload cnn-bn|mlp-digits]``
(``benchmarks/peers_venv.sh`` builds that venv). Prints a table and writes
``benchmarks/results/peers.json`` (``peers-mlp-digits.json`` for that workload). Run with a
python where a peer is not installed, that peer is skipped with a line saying so.

The workloads are those of ``benchmarks/hvp.py`` (same builders: same model, data, batches of
128, float32, ``torch.set_num_threads(--threads)``). Each row times ours and every installed peer
in the same process, interleaved (A B C A B C ...) and repeated; the table gives medians and the
min-max spread, the time ratio peer / ours (median of per-repeat ratios, so that slow phases of a
shared machine largely cancel), the same ratio of process CPU time (robust to other jobs taking
the cores; threads that spin count too), the number of full passes over the data (counted by
the data iterable), the relative error of the eigenvalues against a tight reference computed once
(``dc.eigsh(..., tol=1e-9, accuracy="value")`` on the float64 Hessian, verified) and the
standard errors of the trace estimates.

``--quick`` (256 samples, 2 repeats, 25 trace probes, m = 8) writes
``benchmarks/results/peers-quick.json`` (``peers-mlp-digits-quick.json``) instead. A full
``cnn-bn`` run takes about half an hour on a quiet 2-core machine (PyHessian's 100-probe trace
and 120-pass SLQ, ARPACK's ~60 passes, three repeats each; ``--repeats 1``: 17 minutes);
``--rows`` selects rows (``costs,top1,top5,trace,slq``).

The ``costs`` row times one pass of each product against a plain gradient pass measured right
before it (the method of ``benchmarks/hvp.py``): the most load-robust figure of the run.

Rows (peer calls as their documentation gives them):

* top-1: ours ``dc.eigsh(H, 1, tol=1e-6, accuracy="value", verify=False)``, cold and with
  ``warm_start="batch"`` (first solved to 1e-2 on the Hessian of the first batch only: those
  products cost 1/num_batches of a pass each, are not counted as passes, and are timed); PyHessian
  ``hessian(model, criterion, dataloader=..., cuda=False).eigenvalues(top_n=1)``;
  hessian-eigenthings ``power_iteration_one(HessianOperator(...))``.
* top-1 and top-5: ours also on an operator built in the run with ``cache="forward"``.
* top-5: ours ``dc.eigsh(H, 5, tol=1e-6, accuracy="value", verify=False)``, cold and with
  ``warm_start="batch"``; curvlinops
  ``HessianLinearOperator(...).to_scipy()`` with ``scipy.sparse.linalg.eigsh(k=5, which="LA")``
  (ARPACK, default tol: machine precision).
* trace: ours Hutchinson with ``--trace-probes`` probes in blocks of ``--block`` columns (on a
  layer chain such as ``cnn-bn`` its quadratic forms are Taylor-mode, ``route: "taylor"``), the
  same through the products ``z^T (H z)`` only (the route of any other network); ours
  Hutch++ with the budget ``--hutchpp-probes``; ours exact (``cnn-bn`` only: the network is
  piecewise linear in every parameter, so ``dc.hessian_diagonal`` is the GGN diagonal from
  per-sample Jacobians, and its sum is ``tr(H)`` with no variance); PyHessian
  ``trace(maxIter=--trace-probes)`` (its default ``tol=1e-3`` stops it early) and with ``tol=0``
  (all the probes: the equal-accuracy comparison, printed as a ratio to the exact route).
  BackPACK has no trace or eigen solvers; its exact ``DiagHessian`` does not cover this network's
  batch norm layers, so it is not used.
* SLQ: ours ``dc.lanczos(H, m, probes=4)``, and the same on an operator built in the run with
  ``cache="forward"`` (each batch's forward pass kept after the first product: the data
  iterable is then read once, so its ``passes`` column shows 1); PyHessian
  ``density(iter=m, n_v=4)`` (PyHessian 0.1 calls ``torch.eig``, removed from torch; the
  benchmark supplies it, by ``eigh``, during the call). PyHessian's ``trace`` stops early when the
  running mean changes by less than its ``tol`` (1e-3): the ``cols`` column gives the probes it
  used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import deepcurvature as dc
from deepcurvature.linalg.operator import LinearOperator

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from hvp import make_setup, plain_gradient, timed  # noqa: E402  (benchmarks/hvp.py)

PEERS = {
    "pyhessian": "pyhessian",
    "hessian-eigenthings": "hessian_eigenthings",
    "curvlinops": "curvlinops",
    "backpack": "backpack",
}


class CountingData(list):
    """A list of batches that counts full passes (``__iter__`` calls) over it."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def available_peers() -> dict[str, Any]:
    """Import every peer; print a line for each one that is not importable."""
    found = {}
    for name, module in PEERS.items():
        try:
            found[name] = importlib.import_module(module)
        except Exception as err:
            print(f"skipping {name}: not importable ({type(err).__name__}: {err})")
    return found


# -- the contenders: each returns a dict with at least "value" ----------------------------------


def ours_top1(H: Any, seed: int, tol: float) -> dict:
    r = dc.eigsh(H, 1, tol=tol, accuracy="value", verify=False, seed=seed, verbose=False)
    return {"value": float(r.values[-1]), "columns": r.n_matvec}


def ours_warm(H: Any, k: int, seed: int, tol: float) -> dict:
    """``dc.eigsh(..., warm_start="batch")``: first solved on one batch (1/num_batches passes)."""
    r = dc.eigsh(
        H, k, tol=tol, accuracy="value", verify=False, seed=seed, warm_start="batch", verbose=False
    )
    return {
        "values": sorted(r.values.tolist(), reverse=True),
        "columns": r.n_matvec,
        "warm_columns": r.warm_matvec,
    }


def ours_top5(H: Any, seed: int, tol: float) -> dict:
    r = dc.eigsh(H, 5, tol=tol, accuracy="value", verify=False, seed=seed, verbose=False)
    return {"values": sorted(r.values.tolist(), reverse=True), "columns": r.n_matvec}


def pyhessian_top1(peer: Any, model: nn.Module, data: list, seed: int) -> dict:
    torch.manual_seed(seed)
    hc = peer.hessian(model, nn.CrossEntropyLoss(), dataloader=data, cuda=False)
    values, _ = hc.eigenvalues(top_n=1)
    return {"value": float(values[0])}


def eigenthings_top1(peer: Any, model: nn.Module, data: list, seed: int) -> dict:
    op = peer.HessianOperator(model, data, peer.supervised_loss(nn.CrossEntropyLoss()))
    value, _, _, iters, _ = peer.power_iteration_one(op, seed=seed)
    return {"value": float(value), "iterations": int(iters)}


def curvlinops_top5(peer: Any, model: nn.Module, data: list, seed: int) -> dict:
    import scipy.sparse.linalg

    params = [p for p in model.parameters() if p.requires_grad]
    op = peer.HessianLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        data,
        check_deterministic=False,
        num_data=sum(len(y) for _, y in data),
    ).to_scipy()
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0]).astype(op.dtype)
    values = scipy.sparse.linalg.eigsh(op, k=5, which="LA", v0=v0, return_eigenvectors=False)
    return {"values": sorted(np.asarray(values, dtype=float).tolist(), reverse=True)}


def ours_hutchinson(H: Any, seed: int, probes: int, block: int) -> dict:
    t = dc.trace(H, probes, seed=seed, block_size=block, verbose=False)
    return {"value": t.value, "std_error": t.std_error, "columns": t.n_matvec, "route": t.route}


class ProductsOnly(LinearOperator):
    """The operator ``H`` seen through its products only: Hutchinson forms ``z^T (H z)``."""

    def __init__(self, H: Any) -> None:
        super().__init__(H.shape, H.dtype, H.device, symmetric=True)
        self.H = H

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.H.matmat(V)


def ours_hutchpp(H: Any, seed: int, probes: int, block: int) -> dict:
    t = dc.trace(H, probes, method="hutch++", seed=seed, block_size=block, verbose=False)
    return {"value": t.value, "std_error": t.std_error, "columns": t.n_matvec}


def ours_exact_trace(model: nn.Module, data: list) -> dict:
    """``dc.hessian_diagonal(...).trace``: exact for this piecewise-linear network (no variance)."""
    d = dc.hessian_diagonal(model, nn.CrossEntropyLoss(), data, verbose=False)
    assert d.metadata["method"].startswith("gauss-newton"), d.metadata["method"]
    return {"value": d.trace, "std_error": 0.0, "columns": 0}


def pyhessian_trace(
    peer: Any, model: nn.Module, data: list, seed: int, probes: int, tol: float = 1e-3
) -> dict:
    torch.manual_seed(seed)
    hc = peer.hessian(model, nn.CrossEntropyLoss(), dataloader=data, cuda=False)
    samples = np.asarray(hc.trace(maxIter=probes, tol=tol))
    se = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return {"value": float(samples.mean()), "std_error": se, "columns": len(samples)}


def ours_slq(H: Any, seed: int, steps: int) -> dict:
    r = dc.lanczos(H, steps, probes=4, seed=seed, verbose=False)
    return {"value": float(r.density().moment(1))}


def legacy_torch_eig(A: torch.Tensor, eigenvectors: bool = False) -> tuple:
    """``torch.eig`` (removed in torch 1.9+), which PyHessian's ``density`` still calls.

    Only for the symmetric tridiagonal matrices it passes: eigenvalues as ``(n, 2)`` (real,
    imaginary = 0) and the eigenvectors ``(n, n)`` (empty without ``eigenvectors``), by ``eigh``.
    """
    L, V = torch.linalg.eigh(A)
    values = torch.stack([L, torch.zeros_like(L)], dim=1)
    return values, (V if eigenvectors else torch.empty(0, dtype=A.dtype))


def pyhessian_slq(peer: Any, model: nn.Module, data: list, seed: int, steps: int) -> dict:
    torch.manual_seed(seed)
    hc = peer.hessian(model, nn.CrossEntropyLoss(), dataloader=data, cuda=False)
    saved = torch.eig
    torch.eig = legacy_torch_eig  # PyHessian 0.1 calls the removed torch.eig: a shim, no patch
    try:
        eigs, weights = hc.density(iter=steps, n_v=4)
    finally:
        torch.eig = saved
    return {"value": float(np.mean([np.dot(e, w) for e, w in zip(eigs, weights, strict=True)]))}


# -- timing ---------------------------------------------------------------------------------


def run_row(
    title: str,
    contenders: dict[str, Callable[[int], dict]],
    data: CountingData,
    repeats: int,
) -> dict:
    """Time the contenders interleaved ``repeats`` times; ratios are to the first (ours)."""
    out: dict[str, dict] = {
        name: {"seconds": [], "cpu_seconds": [], "passes": [], "runs": []} for name in contenders
    }
    for r in range(repeats):
        for name, fn in contenders.items():
            data.passes = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0, c0 = time.perf_counter(), time.process_time()
                res = fn(r)
                seconds = time.perf_counter() - t0
                cpu = time.process_time() - c0
            out[name]["seconds"].append(seconds)
            out[name]["cpu_seconds"].append(cpu)
            out[name]["passes"].append(data.passes)
            out[name]["runs"].append(res)
            print(
                f"  [{title}] repeat {r + 1}/{repeats} {name}: {seconds:.2f} s "
                f"(CPU {cpu:.2f} s, {data.passes} passes)",
                flush=True,
            )
    base = next(iter(contenders))
    for row in out.values():
        s = row["seconds"]
        ratios = [a / b for a, b in zip(s, out[base]["seconds"], strict=True)]
        cpu_ratios = [
            a / b for a, b in zip(row["cpu_seconds"], out[base]["cpu_seconds"], strict=True)
        ]
        row.update(
            cpu_seconds_median=statistics.median(row["cpu_seconds"]),
            cpu_ratio_to_first_median=statistics.median(cpu_ratios),
            cpu_ratio_to_first_min=min(cpu_ratios),
            cpu_ratio_to_first_max=max(cpu_ratios),
            seconds_median=statistics.median(s),
            seconds_min=min(s),
            seconds_max=max(s),
            ratio_to_first_median=statistics.median(ratios),
            ratio_to_first_min=min(ratios),
            ratio_to_first_max=max(ratios),
            passes_median=statistics.median(row["passes"]),
        )
    return out


def add_accuracy(row: dict, ref: np.ndarray, top: int) -> None:
    """Relative eigenvalue errors against the reference (max over the ``top`` values)."""
    for res in row.values():
        errs = []
        for run in res["runs"]:
            vals = [run["value"]] if "value" in run else run["values"]
            errs.append(max(abs(v - ref[i]) / abs(ref[i]) for i, v in enumerate(vals[:top])))
        res["rel_error_median"] = statistics.median(errs)
        res["rel_error_max"] = max(errs)


def add_std_error(row: dict) -> None:
    for res in row.values():
        se = [run["std_error"] for run in res["runs"]]
        res["std_error_median"] = statistics.median(se)
        res["value_median"] = statistics.median(run["value"] for run in res["runs"])


def print_row(title: str, row: dict, extra: str) -> None:
    print(f"\n{title}")
    print(
        f"{'method':<50} {'seconds':>7} {'(min-max)':>13} {'x ours':>6} "
        f"{'CPU x ours (min-max)':>21} {'passes':>6} {'cols':>5} {extra:>9}"
    )
    for name, r in row.items():
        cols = r["runs"][0].get("columns", "")
        if extra == "rel.error":
            acc = f"{r['rel_error_median']:.1e}"
        elif extra == "std.error":
            acc = f"{r['std_error_median']:.3g}"
        else:
            acc = f"{r['runs'][0]['value']:.4g}"
        cpu = (
            f"{r['cpu_ratio_to_first_median']:.2f} ({r['cpu_ratio_to_first_min']:.2f}-"
            f"{r['cpu_ratio_to_first_max']:.2f})"
        )
        print(
            f"{name:<50} {r['seconds_median']:>7.2f} "
            f"{r['seconds_min']:>6.2f}-{r['seconds_max']:<6.2f} "
            f"{r['ratio_to_first_median']:>6.2f} {cpu:>21} {r['passes_median']:>6.0f} "
            f"{cols!s:>5} {acc:>9}"
        )


def pass_costs(
    H: Any, model: nn.Module, data: list, peers: dict[str, Any], repeats: int, block: int
) -> dict[str, dict]:
    """Seconds per pass of each product, over a plain gradient pass measured right before it.

    Ratios to the adjacent gradient pass are robust to other jobs slowing the machine; with the
    pass counts of the rows they give a modelled time ratio (see ``docs/performance.md``).
    """
    loss_fn = nn.CrossEntropyLoss()
    P = H.shape[0]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(P, generator=gen)
    blocks = {k: torch.randn(P, k, generator=gen) for k in (4, block)}
    variants: dict[str, Callable[[], object]] = {
        "ours HVP (1 column)": lambda: H.matvec(v),
        "ours matmat 4 columns": lambda: H.matmat(blocks[4]),
        f"ours matmat {block} columns": lambda: H.matmat(blocks[block]),
    }
    if "pyhessian" in peers:
        hc = peers["pyhessian"].hessian(model, loss_fn, dataloader=data, cuda=False)
        vl = list(torch.split(v, [p.numel() for p in hc.params]))
        vl = [t.reshape(p.shape) for t, p in zip(vl, hc.params, strict=True)]
        variants["PyHessian dataloader_hv_product"] = lambda: hc.dataloader_hv_product(vl)
    if "curvlinops" in peers:
        params = [p for p in model.parameters() if p.requires_grad]
        op = (
            peers["curvlinops"]
            .HessianLinearOperator(
                model,
                loss_fn,
                params,
                data,
                check_deterministic=False,
                num_data=sum(len(y) for _, y in data),
            )
            .to_scipy()
        )
        vn = v.numpy()
        variants["curvlinops HVP (scipy matvec)"] = lambda: op @ vn
    if "hessian-eigenthings" in peers:
        et = peers["hessian-eigenthings"]
        eop = et.HessianOperator(model, data, et.supervised_loss(loss_fn))
        variants["hessian-eigenthings HVP"] = lambda: eop.matvec(v)
    cols = {
        k: (block if f" {block} columns" in k else 4 if " 4 columns" in k else 1) for k in variants
    }
    gradient = lambda: plain_gradient(model, loss_fn, data)  # noqa: E731
    gradient()
    for fn in variants.values():
        fn()
    out: dict[str, dict] = {k: {"ratios": []} for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            tg = timed(gradient)
            out[key]["ratios"].append(timed(fn) / tg)
    for key, row in out.items():
        r = row["ratios"]
        row.update(
            columns=cols[key],
            grads_per_pass=statistics.median(r),
            grads_per_pass_min=min(r),
            grads_per_pass_max=max(r),
            grads_per_column=statistics.median(r) / cols[key],
        )
    print("\ncost of one pass, in plain gradient passes measured right before it (median, min-max)")
    for key, row in out.items():
        print(
            f"{key:<40} {row['grads_per_pass']:>6.2f} ({row['grads_per_pass_min']:.2f}-"
            f"{row['grads_per_pass_max']:.2f}) per pass, {row['grads_per_column']:.2f} per column"
        )
    return out


def keep_other_rows(path: Path, result: dict) -> None:
    """Carry over the rows of an earlier run at ``path`` that this run did not measure.

    ``result["row_dates"]`` gives the date of every row (and of ``pass_costs``), so a table
    assembled from several runs says which figure comes from when.
    """
    measured = set(result["rows"])
    dates = {row: result["date_utc"] for row in measured}
    if "pass_costs" in result:
        dates["pass_costs"] = result["date_utc"]
    if path.exists():
        old = json.loads(path.read_text())
        old_dates = old.get("row_dates", {})
        for row, value in old.get("rows", {}).items():
            if row not in result["rows"]:
                result["rows"][row] = value
                dates[row] = old_dates.get(row, old.get("date_utc"))
        if "pass_costs" not in result and "pass_costs" in old:
            result["pass_costs"] = old["pass_costs"]
            dates["pass_costs"] = old_dates.get("pass_costs", old.get("date_utc"))
        if "trace" not in measured and "equal_accuracy_trace_ratio" in old:
            result["equal_accuracy_trace_ratio"] = old["equal_accuracy_trace_ratio"]
    result["row_dates"] = dates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="cnn-bn", choices=["cnn-bn", "mlp-digits"])
    parser.add_argument("--quick", action="store_true", help="small data, short runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-6, help="eigenvalue accuracy (ours)")
    parser.add_argument("--trace-probes", type=int, default=100)
    parser.add_argument("--hutchpp-probes", type=int, default=48)
    parser.add_argument("--block", type=int, default=25, help="probes per matmat (ours)")
    parser.add_argument("--slq-steps", type=int, default=30)
    parser.add_argument("--rows", default="costs,top1,top5,trace,slq")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.trace_probes, args.hutchpp_probes, args.slq_steps = 2, 25, 12, 8
    torch.set_num_threads(args.threads)
    rows = set(args.rows.split(","))
    peers = available_peers()

    model, batches, n = make_setup(args.workload, args.quick)
    data = CountingData(batches)
    loss_fn = nn.CrossEntropyLoss()
    H = dc.hessian(model, loss_fn, data)
    P = H.shape[0]
    print(f"{args.workload}: P = {P:,}, N = {n}, {len(batches)} batches, {args.threads} threads")
    t0 = time.perf_counter()
    # float64 products for the reference (float32 with --quick: accurate to ~4 eps ||H|| only)
    H_ref = dc.hessian(model, loss_fn, batches, dtype=None if args.quick else torch.float64)
    ref = dc.eigsh(H_ref, 6, tol=1e-9, accuracy="value", seed=12345, verbose=False)
    ref_values = np.sort(ref.values)[::-1]
    print(f"reference eigenvalues {np.round(ref_values[:5], 6)} ({time.perf_counter() - t0:.1f} s)")
    result: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "workload": args.workload,
        "quick": args.quick,
        "threads": args.threads,
        "repeats": args.repeats,
        "num_params": P,
        "num_samples": n,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "peers": {k: getattr(v, "__version__", "?") for k, v in peers.items()},
        "reference_eigenvalues": ref_values.tolist(),
        "args": vars(args),
        "rows": {},
    }
    ph, et, cl = (peers.get(k) for k in ("pyhessian", "hessian-eigenthings", "curvlinops"))

    if "costs" in rows:
        result["pass_costs"] = pass_costs(H, model, batches, peers, args.repeats + 2, args.block)
    if "top1" in rows:
        c: dict[str, Callable[[int], dict]] = {
            'ours warm_start="batch"': lambda r: ours_warm(H, 1, r, args.tol),
            f"ours eigsh k=1 tol={args.tol:g} (value)": lambda r: ours_top1(H, r, args.tol),
            'ours warm_start="batch", cache="forward"': lambda r: ours_warm(
                dc.hessian(model, loss_fn, data, cache="forward"), 1, r, args.tol
            ),
        }
        if ph is not None:
            c["PyHessian eigenvalues(top_n=1)"] = lambda r: pyhessian_top1(ph, model, data, r)
        if et is not None:
            c["hessian-eigenthings power_iteration_one"] = lambda r: eigenthings_top1(
                et, model, data, r
            )
        row = run_row("top-1", c, data, args.repeats)
        add_accuracy(row, ref_values, 1)
        result["rows"]["top1"] = row
        print_row("top-1 eigenvalue", row, "rel.error")
    if "top5" in rows:
        c = {
            f"ours eigsh k=5 tol={args.tol:g} (value)": lambda r: ours_top5(H, r, args.tol),
            'ours k=5 warm_start="batch"': lambda r: ours_warm(H, 5, r, args.tol),
            'ours eigsh k=5, cache="forward"': lambda r: ours_top5(
                dc.hessian(model, loss_fn, data, cache="forward"), r, args.tol
            ),
        }
        if cl is not None:
            c["curvlinops HessianLinearOperator + scipy eigsh"] = lambda r: curvlinops_top5(
                cl, model, data, r
            )
        row = run_row("top-5", c, data, args.repeats)
        add_accuracy(row, ref_values, 5)
        result["rows"]["top5"] = row
        print_row("top-5 eigenvalues", row, "rel.error")
    if "trace" in rows:
        m, b = args.trace_probes, args.block
        c = {
            f"ours Hutchinson {m} probes, blocks of {b}": lambda r: ours_hutchinson(H, r, m, b),
            f"ours Hutchinson {m} probes by products": lambda r: ours_hutchinson(
                ProductsOnly(H), r, m, b
            ),
            f"ours Hutch++ {args.hutchpp_probes} products": lambda r: ours_hutchpp(
                H, r, args.hutchpp_probes, b
            ),
        }
        if args.workload == "cnn-bn":  # piecewise linear: the exact route applies
            c["ours exact: hessian_diagonal(...).trace"] = lambda r: ours_exact_trace(model, data)
        if ph is not None:
            c[f"PyHessian trace(maxIter={m})"] = lambda r: pyhessian_trace(ph, model, data, r, m)
            c[f"PyHessian trace(maxIter={m}, tol=0)"] = lambda r: pyhessian_trace(
                ph, model, data, r, m, tol=0.0
            )
        row = run_row("trace", c, data, args.repeats)
        add_std_error(row)
        result["rows"]["trace"] = row
        print_row("trace", row, "std.error")
        exact = "ours exact: hessian_diagonal(...).trace"
        full = f"PyHessian trace(maxIter={m}, tol=0)"
        if exact in row and full in row:  # equal accuracy: PyHessian's 100 probes against exact
            ratios = [
                a / b for a, b in zip(row[full]["seconds"], row[exact]["seconds"], strict=True)
            ]
            result["equal_accuracy_trace_ratio"] = {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
                "pyhessian_std_error": row[full]["std_error_median"],
            }
            print(
                f"equal accuracy: PyHessian's {m} probes (std.error "
                f"{row[full]['std_error_median']:.3g}) take {statistics.median(ratios):.1f}x "
                f"({min(ratios):.1f}-{max(ratios):.1f}) the exact trace's time"
            )
    if "slq" in rows:
        s = args.slq_steps
        c = {
            f"ours lanczos(m={s}, probes=4)": lambda r: ours_slq(H, r, s),
            f'ours lanczos(m={s}, probes=4), cache="forward"': lambda r: ours_slq(
                dc.hessian(model, loss_fn, data, cache="forward"), r, s
            ),
        }
        if ph is not None:
            c[f"PyHessian density(iter={s}, n_v=4)"] = lambda r: pyhessian_slq(
                ph, model, data, r, s
            )
        row = run_row("slq", c, data, args.repeats)
        result["rows"]["slq"] = row
        print_row("SLQ (value column: mean of the density)", row, "mean")

    RESULTS.mkdir(exist_ok=True)
    stem = "peers" if args.workload == "cnn-bn" else f"peers-{args.workload}"
    out = RESULTS / (f"{stem}-quick.json" if args.quick else f"{stem}.json")
    keep_other_rows(out, result)
    dc.io.atomic_write_text(out, json.dumps(result, indent=2, default=float) + "\n")
    print(f"\nwrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
