"""Training-loop overhead: ``dc.train_network`` against a plain PyTorch loop.

Run ``python benchmarks/train.py`` (``--quick`` for a fast check). Prints a table and writes
``benchmarks/results/train.json``.

Workloads: the registry's "mlp" on digits, and its "cnn" on synthetic 3x32x32 data. Each
variant trains the same initial weights on the same loaders with the same SGD optimiser
(lr 0.05, momentum 0.9, constant schedule), evaluating the test set after every epoch, for 20
epochs on digits (``train_network``'s default ``epochs``; its epochs take about 10 ms) and 3 on the
CNN (about 1 s each); ``--epochs`` sets both:

* ``plain``: a lean hand-written loop computing the same statistics (zero_grad, forward, loss,
  backward, step; training loss and accuracy, then test loss and accuracy, accumulated on the
  device and read once per epoch);
* ``train_network``: ``dc.train_network(None, ...)``, no files, no progress bars;
* ``train_network+files``: the same writing checkpoints (start, end) and ``stats.json`` per epoch
  (each file is fsync'ed: a fixed cost of a few milliseconds per file, large only next to the
  ~10 ms epochs of the digits MLP).

Variants are interleaved and repeated, the order rotating between repeats (plain, A, B; A, B,
plain; B, plain, A; ...); each repeat gives time ratios against the plain loop of that repeat.
Times are whole calls divided by the number of epochs, so ``train_network``'s fixed set-up
(seeding every generator -- ``torch.manual_seed`` alone costs about a millisecond --, building
the optimiser, the run description) is included and amortised over the epochs. Per epoch,
``train_network`` also computes the top-5 accuracy and the weight norms (about 0.05 ms each on
the digits MLP, whose epochs take about 10 ms). Reported: median time per epoch, median ratio
and its spread (min-max over repeats). Target: overhead <= 5% (ratio <= 1.05).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import deepcurvature as dc
from deepcurvature.io import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VARIANTS = ("plain", "train_network", "train_network+files")


def plain_loop(model, train_loader, test_loader, epochs: int) -> float:
    """A lean reference loop; returns the final test loss (so the work is not skipped)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    test_loss = float("nan")
    for _ in range(epochs):
        model.train()
        total = torch.zeros((), dtype=torch.float64)
        hits = torch.zeros((), dtype=torch.int64)
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            total += loss.detach() * y.shape[0]
            hits += (out.detach().argmax(1) == y).sum()
        float(total), float(hits)  # one read per epoch, like train_network
        model.eval()
        s = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        n = 0
        with torch.no_grad():
            for x, y in test_loader:
                out = model(x)
                s += loss_fn(out, y).double() * y.shape[0]
                correct += (out.argmax(1) == y).sum()
                n += y.shape[0]
        test_loss = float(s) / n
        float(correct)
    return test_loss


def run_variant(variant: str, model0, loaders, epochs: int) -> float:
    model = copy.deepcopy(model0)
    t0 = time.perf_counter()
    if variant == "plain":
        plain_loop(model, loaders[0], loaders[1], epochs)
    else:
        folder = tempfile.mkdtemp() if variant == "train_network+files" else None
        dc.train_network(
            folder,
            loaders,
            model=model,
            optimizer="SGD",
            optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
            schedule="constant",
            epochs=epochs,
            seed=0,
            verbose=False,
        )
    return (time.perf_counter() - t0) / epochs


def workloads(quick: bool) -> dict:
    digits = dc.load_data("digits", batch_size=128, seed=0)
    n = 512 if quick else 2048
    synth = dc.load_data(
        "synthetic", batch_size=128, seed=0, n_train=n, n_test=n // 4, in_channels=3, input_size=32
    )
    torch.manual_seed(0)
    mlp = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8)
    cnn = dc.get_model("cnn", num_classes=synth.num_classes, in_channels=3, input_size=32)
    return {
        "mlp / digits": (mlp, (digits.train_loader, digits.test_loader)),
        "cnn / synthetic 3x32x32": (cnn, (synth.train_loader, synth.test_loader)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 7)
    default_epochs = {"mlp / digits": 20, "cnn / synthetic 3x32x32": 3}
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {}
    for name, (model0, loaders) in workloads(args.quick).items():
        epochs = args.epochs or (1 if args.quick else default_epochs[name])
        run_variant("plain", model0, loaders, 1)  # warm-up (allocator, first-call costs)
        run_variant("train_network", model0, loaders, 1)
        times = {v: [] for v in VARIANTS}
        for r in range(repeats):  # the order rotates, so no variant always follows another
            for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                times[v].append(run_variant(v, model0, loaders, epochs))
        ratios = {
            v: [t / p for t, p in zip(times[v], times["plain"], strict=True)]
            for v in VARIANTS
            if v != "plain"
        }
        results[name] = {
            "epochs": epochs,
            "seconds_per_epoch": {v: times[v] for v in VARIANTS},
            "median_seconds_per_epoch": {v: statistics.median(times[v]) for v in VARIANTS},
            "ratio_to_plain": {
                v: {"median": statistics.median(r), "min": min(r), "max": max(r), "all": r}
                for v, r in ratios.items()
            },
        }
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"train_network overhead ({repeats} repeats)")
        columns = ("workload", "epochs", "variant", "s/epoch (median)", "ratio (median)", "spread")
        for col in columns:
            table.add_column(col, justify="right")
        for name, res in results.items():
            for v in VARIANTS:
                med = res["median_seconds_per_epoch"][v]
                if v == "plain":
                    table.add_row(name, str(res["epochs"]), v, f"{med:.4f}", "1", "")
                else:
                    r = res["ratio_to_plain"][v]
                    spread = f"{r['min']:.3f} - {r['max']:.3f}"
                    row = (name, str(res["epochs"]), v, f"{med:.4f}", f"{r['median']:.3f}", spread)
                    table.add_row(*row)
        Console(width=110).print(table)
    except ImportError:  # pragma: no cover
        print(json.dumps(results, indent=1))
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "train",
        "quick": args.quick,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "target": "ratio_to_plain <= 1.05",
        "results": results,
    }
    atomic_write_text(RESULTS / "train.json", json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'train.json'}")


if __name__ == "__main__":
    main()
