"""Curvature-product benchmark: Hessian/GGN products over a whole data set, in gradient units.

Run ``python benchmarks/hvp.py`` (``--quick`` for a fast check, ``--profile`` to print where the
time goes). Prints a table per setup and writes ``benchmarks/results/hvp.json``
(``hvp_quick.json`` with ``--quick``); the setups a run does not measure (``--setups``) keep
their recorded results there.

Setups (float32, ``torch.set_num_threads(--threads)``, batch size 128, the whole data set per
product):

* ``mlp-digits``: an MLP 64-128-128-10 (tanh) on scikit-learn's digits (1797 samples);
* ``cnn-bn``: a CNN with batch norm (about 95k parameters) on 1024 random 3x32x32 samples
  (batch norm in eval mode).

The full run takes about 5 minutes on 2 quiet cores (5 repeats on the MLP, ``--cnn-repeats`` 3 on
the CNN). Every variant is one pass over the data (repeated and averaged when shorter than
0.25 s); its time
is divided by the time of a plain gradient pass (``loss.backward()`` over the batches) measured
right before it in the same repeat, so slow-downs caused by other jobs largely cancel. Variants
are interleaved (gradient, A, gradient, B, ...) and repeated; the table gives the median ratio and
its spread (min-max):

* HVP: ours (``dc.hessian(...).matvec``: for these ``nn.Sequential`` chains the products
  written out layer by layer, ``product_route == "chain"``), ours by autograd's
  reverse-over-reverse (``chain_route = False``: the route of any other model), ours with
  ``compile=True``, and a plain double-backward HVP written here; on the MLP also ours with the
  forward-over-reverse engine and a plain ``torch.func`` jvp-of-grad HVP;
* on chains, the Hessian's one-column and 4-column products of an operator with
  ``cache="forward"`` (each batch's forward pass kept after the first product, which the
  warm-up runs: the products of a Lanczos run after its first step);
* GGN- and (empirical) Fisher-vector products (``dc.ggn(...).matvec``, ``dc.fisher``);
* ``matmat`` with 4 and 16 columns, time PER COLUMN, for the Hessian, the GGN and (16) the Fisher,
  the Hessian (4, 16) and GGN (16) also by the autograd route;
  on the MLP also the compiled Hessian ``matmat`` (16) and GGN product;
* the rows of issue #15 with their targets (``targets`` in the JSON, printed per setup);
* SLQ on the MLP: ``dc.lanczos(op, 30, probes=4)`` against 4 separate one-probe runs;
* the flop count (``torch.utils.flop_counter``) of one Hessian column through the shared graph,
  in gradients: the per-column floor of any exact ``matmat`` that runs its operations at the
  gradient pass's speed; and of our own products per column (1, 4, 16 columns), with the flop
  rate at which the timed products ran them, relative to the gradient pass's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

import deepcurvature as dc
from deepcurvature.operators import chain_products

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )


def cnn() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def make_setup(name: str, quick: bool) -> tuple[nn.Module, list, int]:
    torch.manual_seed(0)
    if name == "mlp-digits":
        from sklearn.datasets import load_digits

        X, Y = load_digits(return_X_y=True)
        x = torch.tensor(X, dtype=torch.float32) / 16.0
        y = torch.tensor(Y, dtype=torch.long)
        if quick:
            x, y = x[:512], y[:512]
        model = mlp()
    else:
        n = 256 if quick else 1024
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        model = cnn()
        model.train()
        with torch.no_grad():  # realistic running statistics
            for xb, _ in batches(x, y, 128):
                model(xb)
    model.eval()
    return model, batches(x, y, 128), len(y)


# -- plain baselines written here (no deepcurvature) -----------------------------------------


def plain_gradient(model: nn.Module, loss_fn: nn.Module, data: list) -> None:
    model.zero_grad(set_to_none=True)
    for x, y in data:
        loss_fn(model(x), y).backward()


def plain_double_backward_hvp(model: nn.Module, loss_fn: nn.Module, data: list, v: list) -> list:
    """Sum over batches of (n_b / N) * Hessian-vector product by double backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = [torch.zeros_like(p) for p in params]
    n = sum(len(y) for _, y in data)
    for x, y in data:
        loss = loss_fn(model(x), y) * (len(y) / n)
        g = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
        for o, h in zip(out, torch.autograd.grad(dot, params), strict=True):
            o.add_(h)
    return out


def plain_torch_func_hvp(model: nn.Module, loss_fn: nn.Module, data: list, v: dict) -> dict:
    """Sum over batches of (n_b / N) * Hessian-vector product by torch.func jvp of grad."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    total = sum(len(y) for _, y in data)
    for x, y in data:

        def loss(p: dict, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            return loss_fn(functional_call(model, p, (x,)), y) * (len(y) / total)

        hv = jvp(grad(loss), (params,), (v,))[1]
        for n in out:
            out[n].add_(hv[n])
    return out


def flop_ratios(model: nn.Module, loss_fn: nn.Module, data: list) -> dict:
    """Floating-point operations of one batch, in units of its gradient pass (flop counter).

    ``hessian_column``: the backward pass through the gradient's graph that gives one Hessian
    column once the graph is built (the per-column cost of a shared ``matmat`` by autograd);
    ``primal_with_graph``: the forward and backward pass that build it. ``ours_per_column``:
    the operators' ``matmat`` per column at 1, 4 and 16 columns (Hessian, GGN; the route each
    takes in ``ours_route``), the shared forward pass included: the operations they run, so the
    time per column can be read against them (:func:`flop_rates`).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x, y = data[0]
    params = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False) as fc:
        torch.autograd.grad(loss_fn(model(x), y), params)
    gradient = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    primal = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        torch.autograd.grad(g, params, [torch.randn_like(p) for p in params])
    column = fc.get_total_flops()
    ours, routes = {}, {}
    for label, build in (("hessian", dc.hessian), ("ggn", dc.ggn)):
        op = build(model, loss_fn, [(x, y)])
        for k in (1, 4, 16):
            V = torch.randn(op.num_params, k, generator=torch.Generator().manual_seed(k))
            with FlopCounterMode(display=False) as fc:
                op.matmat(V)
            ours[f"{label} k={k}"] = fc.get_total_flops() / gradient / k
            routes[f"{label} k={k}"] = pass_route(op, k)
    return {
        "gradient_flops_per_batch": gradient,
        "primal_with_graph": primal / gradient,
        "hessian_column": column / gradient,
        "ours_per_column": ours,
        "ours_route": routes,
    }


def pass_route(op: dc.CurvatureOperator, k: int) -> str:
    """The route a pass of ``k`` columns takes."""
    if op.product_route != "chain":
        return op.product_route
    second_order = isinstance(op, dc.HessianOperator)
    minimum = chain_products.min_columns(chain_products.chain_of(op), second_order)
    return "chain" if k >= minimum else "autograd"


#: timed variants (per column) and their flop counts in ``flop_ratios()["ours_per_column"]``
FLOP_RATE_ROWS = {
    "HVP ours": "hessian k=1",
    "Hessian matmat k=4, per column": "hessian k=4",
    "Hessian matmat k=16, per column": "hessian k=16",
    "GGN-vector product ours": "ggn k=1",
    "GGN matmat k=16, per column": "ggn k=16",
}


def flop_rates(flops: dict, rows: dict) -> dict:
    """Per timed variant: its flops per column and its flop rate against the gradient pass's.

    ``rate`` = (flops per column / time per column), both in gradients: 1.0 runs its
    operations as fast as the gradient pass runs its own; a time per column of 1.0 needs
    ``rate`` = flops per column.
    """
    out = {}
    for key, count in FLOP_RATE_ROWS.items():
        if key in rows and count in flops["ours_per_column"]:
            f = flops["ours_per_column"][count]
            out[key] = {"flops_per_column": f, "rate": f / rows[key]["ratio_median"]}
    return out


# -- timing -------------------------------------------------------------------------------------


MIN_TIME = 0.25  # seconds: short passes are repeated and averaged, against timer noise


def timed(fn: Callable[[], object]) -> float:
    """Mean wall-clock seconds of ``fn()``, repeated until ``MIN_TIME`` has passed."""
    count, t0 = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_TIME:
            return elapsed / count


def summarise(ratios: list[float], seconds: list[float]) -> dict:
    return {
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "seconds_median": statistics.median(seconds),
        "ratios": ratios,
        "seconds": seconds,
    }


#: the rows of issue #15 (variant, what it is compared with, target in gradients per column)
TARGETS = {
    "mlp-digits": [
        ("HVP ours", "HVP plain double backward", None),
        ("HVP ours, compile=True", "HVP ours", None),
    ],
    "cnn-bn": [
        ("HVP ours", None, 2.0),
        ("Hessian matmat k=16, per column", None, 1.0),
        ("Hessian matmat k=4, per column", "Hessian matmat k=16, per column", None),
        ("GGN-vector product ours", None, 1.5),
        ("GGN matmat k=16, per column", None, 1.0),
        ("Fisher-vector product ours", None, 1.5),
        ("Fisher matmat k=16, per column", None, 1.0),
        ("HVP ours, compile=True", "HVP ours", None),
        ("HVP ours", "HVP ours, autograd route", None),
        (
            "Hessian matmat k=16, per column",
            "Hessian matmat k=16, autograd route, per column",
            None,
        ),
        ("GGN matmat k=16, per column", "GGN matmat k=16, autograd route, per column", None),
    ],
}


def run_setup(name: str, args: argparse.Namespace) -> dict:
    model, data, n = make_setup(name, args.quick)
    small = name == "mlp-digits"
    loss_fn = nn.CrossEntropyLoss()
    H = dc.hessian(model, loss_fn, data)
    Hf = dc.hessian(model, loss_fn, data, engine="forward")
    Hc = dc.hessian(model, loss_fn, data, compile=True)
    G = dc.ggn(model, loss_fn, data)
    F = dc.fisher(model, loss_fn, data)
    Ha, Ga = dc.hessian(model, loss_fn, data), dc.ggn(model, loss_fn, data)
    Ha.chain_route = Ga.chain_route = False  # autograd's products, for comparison
    P = H.num_params
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(P, generator=gen)
    v_list = H.unflatten(v)
    v_dict = dict(zip(H.param_names, v_list, strict=True))
    blocks = {k: torch.randn(P, k, generator=gen) for k in (4, 16)}

    variants: dict[str, tuple[Callable[[], object], int]] = {
        "HVP ours": (lambda: H.matvec(v), 1),
        "HVP plain double backward": (
            lambda: plain_double_backward_hvp(model, loss_fn, data, v_list),
            1,
        ),
        "HVP ours, compile=True": (lambda: Hc.matvec(v), 1),
        "Hessian matmat k=4, per column": (lambda: H.matmat(blocks[4]), 4),
        "Hessian matmat k=16, per column": (lambda: H.matmat(blocks[16]), 16),
        "GGN-vector product ours": (lambda: G.matvec(v), 1),
        "GGN matmat k=16, per column": (lambda: G.matmat(blocks[16]), 16),
        "Fisher-vector product ours": (lambda: F.matvec(v), 1),
        "Fisher matmat k=16, per column": (lambda: F.matmat(blocks[16]), 16),
    }
    if H.product_route == "chain":  # the same products by autograd (the route of other models)
        variants["HVP ours, autograd route"] = (lambda: Ha.matvec(v), 1)
        variants["Hessian matmat k=4, autograd route, per column"] = (
            lambda: Ha.matmat(blocks[4]),
            4,
        )
        variants["Hessian matmat k=16, autograd route, per column"] = (
            lambda: Ha.matmat(blocks[16]),
            16,
        )
        variants["GGN matmat k=16, autograd route, per column"] = (
            lambda: Ga.matmat(blocks[16]),
            16,
        )
        # each batch's forward pass kept after the first product (the warm-up builds it)
        Hk = dc.hessian(model, loss_fn, data, cache="forward")
        variants['HVP ours, cache="forward"'] = (lambda: Hk.matvec(v), 1)
        variants['Hessian matmat k=4, cache="forward", per column'] = (
            lambda: Hk.matmat(blocks[4]),
            4,
        )
    if small:  # cheap on the MLP only
        variants["GGN matmat k=4, per column"] = (lambda: G.matmat(blocks[4]), 4)
        variants["HVP ours, forward-over-reverse engine"] = (lambda: Hf.matvec(v), 1)
        variants["HVP plain torch.func jvp(grad)"] = (
            lambda: plain_torch_func_hvp(model, loss_fn, data, v_dict),
            1,
        )
        Gc = dc.ggn(model, loss_fn, data, compile=True)
        variants["Hessian matmat k=16 compile=True, per column"] = (
            lambda: Hc.matmat(blocks[16]),
            16,
        )
        variants["GGN-vector product compile=True"] = (lambda: Gc.matvec(v), 1)
    # every HVP computes the same vector (float32 round-off); the first compiled call compiles
    t0 = time.perf_counter()
    compiled = Hc.matvec(v)
    compile_seconds = time.perf_counter() - t0
    ref = H.matvec(v)
    others = {
        "double backward": H.flatten(plain_double_backward_hvp(model, loss_fn, data, v_list)),
        "compiled": compiled,
    }
    if small:
        others["torch.func"] = H.flatten(plain_torch_func_hvp(model, loss_fn, data, v_dict))
        others["forward engine"] = Hf.matvec(v)
    for label, other in others.items():
        err = float((other - ref).norm() / ref.norm())
        if not err < 1e-3:
            raise RuntimeError(f"the {label} HVP differs from ours: relative error {err:.2e}")
    gradient = lambda: plain_gradient(model, loss_fn, data)  # noqa: E731
    gradient()  # warm-up (and compilation of the other compiled variants)
    for fn, _ in variants.values():
        fn()
    repeats = args.repeats if small or args.quick else args.cnn_repeats
    samples = {k: ([], []) for k in variants}
    grad_times: list[float] = []
    for _ in range(repeats):  # interleaved: gradient, A, gradient, B, ...
        for key, (fn, cols) in variants.items():
            tg = timed(gradient)
            tv = timed(fn) / cols
            grad_times.append(tg)
            samples[key][0].append(tv / tg)
            samples[key][1].append(tv)
    rows = {
        key: {**summarise(*samples[key]), "columns": cols} for key, (_, cols) in variants.items()
    }

    # SLQ end to end (on the MLP): one 4-probe run against 4 one-probe runs (interleaved)
    steps = 5 if args.quick else 30
    slq4, slq1, slq_grad = [], [], []
    for r in range(args.slq_repeats if small else 0):
        slq_grad.append(timed(gradient))
        slq4.append(timed(lambda r=r: dc.lanczos(H, steps, probes=4, seed=r, verbose=False)))
        slq1.append(
            timed(
                lambda r=r: [
                    dc.lanczos(H, steps, probes=1, seed=100 * r + i, verbose=False)
                    for i in range(4)
                ]
            )
        )
    slq = (
        {}
        if not slq4
        else {
            "steps": steps,
            "probes": 4,
            "seconds_4_probes": slq4,
            "seconds_4_separate": slq1,
            "speedup_median": statistics.median(b / a for a, b in zip(slq4, slq1, strict=True)),
            "speedup_min": min(b / a for a, b in zip(slq4, slq1, strict=True)),
            "speedup_max": max(b / a for a, b in zip(slq4, slq1, strict=True)),
            "gradients_4_probes_median": statistics.median(
                a / g for a, g in zip(slq4, slq_grad, strict=True)
            ),
            "gradients_4_separate_median": statistics.median(
                b / g for b, g in zip(slq1, slq_grad, strict=True)
            ),
        }
    )
    targets = []
    for key, versus, target in TARGETS.get(name, []):
        value = rows[key]["ratio_median"]
        entry: dict = {"row": key, "gradients": value}
        if versus is not None:
            entry["versus"] = versus
            entry["versus_gradients"] = rows[versus]["ratio_median"]
            entry["ratio_to_versus"] = value / rows[versus]["ratio_median"]
        if target is not None:
            entry["target"] = target
            entry["met"] = value <= target
        targets.append(entry)
    flops = flop_ratios(model, loss_fn, data)
    flops["rates"] = flop_rates(flops, rows)
    return {
        "num_params": P,
        "num_samples": n,
        "flops": flops,
        "batch_size": 128,
        "num_batches": len(data),
        "repeats": repeats,
        "gradient_seconds_median": statistics.median(grad_times),
        "compile_seconds_first_product": compile_seconds,
        "variants": rows,
        "targets": targets,
        "slq": slq,
    }


def print_setup(name: str, res: dict) -> None:
    print(
        f"\n{name}: P = {res['num_params']:,}, N = {res['num_samples']}, "
        f"{res['num_batches']} batches of {res['batch_size']}, "
        f"gradient pass {res['gradient_seconds_median']:.3f} s (median)"
    )
    print(f"{'variant':<40} {'x gradient':>10} {'spread':>13} {'seconds':>9}")
    for key, row in res["variants"].items():
        print(
            f"{key:<40} {row['ratio_median']:>10.2f} "
            f"{row['ratio_min']:>6.2f}-{row['ratio_max']:<6.2f} {row['seconds_median']:>9.3f}"
        )
    for t in res["targets"]:
        text = f"  {t['row']}: {t['gradients']:.2f} gradients"
        if "target" in t:
            text += f" (target <= {t['target']}: {'met' if t['met'] else 'NOT met'})"
        if "versus" in t:
            text += f"; {t['ratio_to_versus']:.2f}x '{t['versus']}'"
        print(text)
    print(f"compile=True: first product (compilation) {res['compile_seconds_first_product']:.1f} s")
    f = res["flops"]
    print(
        f"flop count: one Hessian column through the shared graph = {f['hessian_column']:.2f} "
        f"gradients (the floor of 'matmat per column' at equal speed per operation)"
    )
    for key, r in f.get("rates", {}).items():
        print(
            f"  {key}: {r['flops_per_column']:.2f} gradients of flops per column, run at "
            f"{r['rate']:.2f}x the gradient pass's flop rate"
        )
    s = res["slq"]
    if not s:
        return
    print(
        f"SLQ m={s['steps']}, 4 probes: one run {statistics.median(s['seconds_4_probes']):.2f} s "
        f"({s['gradients_4_probes_median']:.1f} gradients), 4 one-probe runs "
        f"{statistics.median(s['seconds_4_separate']):.2f} s "
        f"({s['gradients_4_separate_median']:.1f} gradients): speed-up "
        f"{s['speedup_median']:.2f} ({s['speedup_min']:.2f}-{s['speedup_max']:.2f})"
    )


def profile(name: str, quick: bool) -> None:
    """Print the operators that take the time in one HVP, one GGN product and one gradient."""
    from torch.profiler import profile as torch_profile

    model, data, _ = make_setup(name, quick)
    loss_fn = nn.CrossEntropyLoss()
    H, G = dc.hessian(model, loss_fn, data), dc.ggn(model, loss_fn, data)
    v = torch.randn(H.num_params)
    V = torch.randn(H.num_params, 16)
    for label, fn in (
        ("gradient", lambda: plain_gradient(model, loss_fn, data)),
        (
            "HVP plain double backward",
            lambda: plain_double_backward_hvp(model, loss_fn, data, H.unflatten(v)),
        ),
        ("HVP ours", lambda: H.matvec(v)),
        ("GGN ours", lambda: G.matvec(v)),
        ("Hessian matmat k=16", lambda: H.matmat(V)),
        ("GGN matmat k=16", lambda: G.matmat(V)),
    ):
        fn()
        with torch_profile() as prof:
            fn()
        print(f"\n--- {name}: {label}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cnn-repeats", type=int, default=3, help="repeats on cnn-bn")
    parser.add_argument("--slq-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setups", default="mlp-digits,cnn-bn")
    parser.add_argument("--quick", action="store_true", help="small data, 2 repeats, m = 5")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.slq_repeats = 2, 1
    names = [s for s in args.setups.split(",") if s]
    if args.profile:
        for name in names:
            profile(name, args.quick)
        return
    result = {
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": "ratios are times over a plain gradient pass measured right before, same run",
        "setups": {},
    }
    for name in names:
        t0 = time.perf_counter()
        res = run_setup(name, args)
        res["wall_seconds"] = time.perf_counter() - t0
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        result["setups"][name] = res
        print_setup(name, res)
        print(f"({name}: {res['wall_seconds']:.0f} s)", flush=True)
    # glibc's allocator as the products left it (and the gradient passes measured after them)
    result["cpu_allocator"] = dc.cpu_allocator_status()
    print(f"\nCPU allocator: {result['cpu_allocator']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("hvp_quick.json" if args.quick else "hvp.json")
    if out.exists():  # the setups this run did not measure keep their recorded results
        try:
            kept = json.loads(out.read_text())["setups"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            out = out.with_name(f"{out.stem}-{time.strftime('%Y%m%d-%H%M%S')}.json")
            print(f"could not read the recorded results ({error}): writing {out.name} instead")
        else:
            others = {k: v for k, v in kept.items() if k not in names}
            result["setups"] = {**others, **result["setups"]}
    dc.io.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
