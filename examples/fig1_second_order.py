"""Figure 1 of the paper: stochastic Lanczos Newton optimisers against Adam and SGD.

The paper (section 2.2) trains VGG-16 on CIFAR-100 with its two stochastic Lanczos optimisers,
``LanczosNewton`` (saddle-free Newton on the mini-batch Hessian in a Krylov space) and
``LanczosGGN`` (the same on the generalised Gauss-Newton), at learning rates
``alpha in {1, 0.1, 0.01, 0.001}`` with damping ``delta = 10 alpha`` and a batch of 128 for both
the gradient and the curvature, and reports that they reach a lower training error per epoch
than Adam and train more stably than SGD (learning rate 0.05, momentum 0.9).

This script runs the same comparison at laptop size: a small CNN (``cnn``, batch norm, first
block ``width`` channels) on the bundled digits (1,437 training images, 8x8), every optimiser
through ``dc.train_network`` (real run folders, a constant learning rate so that
``delta = 10 alpha`` holds throughout), and plots the training error ``1 - train_accuracy``
against the epoch and against the cumulative training (wall-clock) time with
``dc.plot_training``. The optimisers keep the registry defaults otherwise (momentum 0.9 for the
Lanczos methods and SGD, 20 Lanczos steps per update, the curvature on the gradient's batch).

Run ``python examples/fig1_second_order.py [--small] [--out DIR] [--runs DIR]`` (a few minutes;
``--small``: 2 epochs, learning rates 1 and 0.1, about 25 s). The paper's full size (VGG-16 on
CIFAR-100, a GPU and hours; the paper does not state its number of epochs) is::

    python examples/fig1_second_order.py --model VGG16 --dataset cifar100 --download --epochs 100

(add ``--runs DIR`` to keep the eleven run folders, ``--out DIR`` for the figure).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
NEWTON = ("LanczosNewton", "LanczosGGN")
LEARNING_RATES = (1.0, 0.1, 0.01, 0.001)  # the paper's grid (it also lists 1e-4)
SMALL_LEARNING_RATES = (1.0, 0.1)
ADAM_LEARNING_RATES = (1e-3, 1e-4)  # the paper shows "different learning rates of Adam"
SGD_ARGS = {"lr": 0.05, "momentum": 0.9}  # the paper's SGD
DAMPING_RATIO = 10.0  # delta = 10 alpha
BATCH_SIZE = 128  # gradient and curvature


def run_plan(learning_rates: tuple[float, ...]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, optimiser, optimizer_kwargs)`` of every run, Lanczos methods first."""
    plan = [
        (f"{name} lr={lr:g}", name, {"lr": lr, "damping_ratio": DAMPING_RATIO})
        for name in NEWTON
        for lr in learning_rates
    ]
    plan += [(f"Adam lr={lr:g}", "Adam", {"lr": lr}) for lr in ADAM_LEARNING_RATES]
    plan.append((f"SGD lr={SGD_ARGS['lr']:g}", "SGD", dict(SGD_ARGS)))
    return plan


def _folder_name(label: str) -> str:
    return label.replace(" ", "-").replace("=", "")


def _family_styles(ax: Any) -> None:
    """Colour by learning rate, line style by family (Newton solid, GGN dashed, Adam dotted)."""
    colours = dict(zip(LEARNING_RATES, dc.PALETTE, strict=False))
    adam = dict(zip(ADAM_LEARNING_RATES, dc.PALETTE[len(LEARNING_RATES) :], strict=False))
    for line in ax.get_lines():
        family, _, lr = str(line.get_label()).partition(" lr=")
        if family in NEWTON:
            line.set_color(colours.get(float(lr), "grey"))
            line.set_linestyle("-" if family == "LanczosNewton" else "--")
        elif family == "Adam":
            line.set_color(adam.get(float(lr), "grey"))
            line.set_linestyle(":")
        elif family == "SGD":
            line.set_color("black")
            line.set_linestyle("-.")


def main(
    small: bool = False,
    out: Path = DEFAULT_OUT,
    *,
    runs: Path | None = None,
    model: str = "cnn",
    model_kwargs: dict[str, Any] | None = None,
    dataset: str = "digits",
    epochs: int | None = None,
    seed: int = 0,
    download: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train every optimiser, write ``fig1_second_order.png`` into ``out``, return the numbers.

    Args:
        small: 2 epochs and learning rates {1, 0.1} for the Lanczos methods (the test's size).
        out: folder of the figure.
        runs: folder of the run folders (default: a temporary folder, removed at the end).
        model: a model name (default the small ``cnn``; ``VGG16`` for the paper's size).
        model_kwargs: its arguments (default for ``cnn``: ``{"width": 8}``, 6.3k parameters).
        dataset: a data-set name (default the bundled ``digits``; ``cifar100`` for the paper).
        epochs: epochs per run (default 2 with ``small``, else 10).
        seed: the seed of every run (same initial weights and batch order for all).
        download: fetch a missing data set.
        threads: torch's CPU threads during the runs (restored afterwards); default 1 with
            ``small`` (a 6k-parameter network is fastest on one thread, and a busy second core
            would otherwise slow every step), else unchanged.

    Returns:
        ``{"settings", "runs": {label: row}, "figure"}``; each row holds the optimiser, its
        arguments, ``train_error`` and ``cumulative_time`` per epoch and ``time_per_epoch``.
    """
    out = Path(out)
    learning_rates = SMALL_LEARNING_RATES if small else LEARNING_RATES
    epochs = (2 if small else 10) if epochs is None else int(epochs)
    if model_kwargs is None:
        model_kwargs = {"width": 8} if model == "cnn" else {}
    plan = run_plan(learning_rates)
    tmp = tempfile.TemporaryDirectory(prefix="fig1-") if runs is None else None
    root = Path(tmp.name if tmp is not None else runs)
    results: dict[str, dict[str, Any]] = {}
    stats: dict[str, Any] = {}
    threads = (1 if small else None) if threads is None else threads
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for label, name, kwargs in plan:
            run = dc.train_network(
                root / _folder_name(label),
                dataset,
                model=model,
                model_kwargs=model_kwargs,
                optimizer=name,
                optimizer_kwargs=kwargs,
                epochs=epochs,
                batch_size=BATCH_SIZE,
                schedule="constant",
                seed=seed,
                download=download,
                overwrite=True,
                verbose=False,
            )
            stats[label] = dc.read_training_stats(run.dir)  # what the run folder holds
            rows = stats[label]["rows"]
            times = [float(r["time"]) for r in rows]
            results[label] = {
                "optimizer": name,
                "optimizer_kwargs": kwargs,
                "train_error": [1.0 - float(r["train_accuracy"]) for r in rows],
                "train_loss": [float(r["train_loss"]) for r in rows],
                "cumulative_time": [sum(times[: i + 1]) for i in range(len(times))],
                "time_per_epoch": sum(times) / len(times),
            }
            print(
                f"{label:<22} training error per epoch "
                + " ".join(f"{e:.3f}" for e in results[label]["train_error"])
                + f"   {results[label]['time_per_epoch']:.2f} s/epoch",
                flush=True,
            )
        fig = Figure(figsize=(13.0, 5.6), layout="constrained")
        by_epoch, by_time = fig.subplots(1, 2)
        dc.plot_training(stats, ax=by_epoch, title="(a) against the epoch")
        dc.plot_training(stats, x="time", ax=by_time, title="(b) against training time")
        for ax in (by_epoch, by_time):
            _family_styles(ax)
            ax.get_legend().remove()  # one legend for both panels, below them
        by_time.set_xscale("log")
        by_time.set_xlabel("training time (s, cumulative, log scale)")
        handles, names = by_epoch.get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=6, fontsize="small")
        size = dc.count_parameters(run.model)
        fig.suptitle(
            f"Figure 1: stochastic Lanczos Newton / GGN (δ = 10α, batch {BATCH_SIZE}) against "
            f"Adam and SGD: {model}"
            + (f" ({size:,} parameters)" if size else "")
            + f" on {dataset}"
        )
        path = dc.save_figure(fig, out / "fig1_second_order.png", dpi=80)
    finally:
        torch.set_num_threads(saved_threads)
        if tmp is not None:
            tmp.cleanup()

    final = {label: row["train_error"][-1] for label, row in results.items()}
    best_adam = min(v for k, v in final.items() if k.startswith("Adam"))
    print(f"\nafter {epochs} epochs (best Adam: {best_adam:.3f})")
    print(f"{'run':<22} {'train error':>11} {'vs best Adam':>13} {'s/epoch':>8}")
    for label, row in results.items():
        err = row["train_error"][-1]
        print(f"{label:<22} {err:>11.3f} {err - best_adam:>+13.3f} {row['time_per_epoch']:>8.2f}")
    print(f"wrote {path}")
    return {
        "settings": {
            "threads": threads,
            "model": model,
            "model_kwargs": model_kwargs,
            "dataset": dataset,
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "damping_ratio": DAMPING_RATIO,
            "learning_rates": list(learning_rates),
            "seed": seed,
        },
        "runs": results,
        "figure": str(path),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 epochs, learning rates 1, 0.1")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    parser.add_argument("--runs", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--model", default="cnn", help="model name (VGG16 for the paper)")
    parser.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON")
    parser.add_argument("--dataset", default="digits", help="data set (cifar100 for the paper)")
    parser.add_argument("--epochs", type=int, default=None, help="default 2 (--small) or 10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--download", action="store_true", help="fetch a missing data set")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(
        small=args.small,
        out=args.out,
        runs=args.runs,
        model=args.model,
        model_kwargs=args.model_kwargs,
        dataset=args.dataset,
        epochs=args.epochs,
        seed=args.seed,
        download=args.download,
        threads=args.threads,
    )
