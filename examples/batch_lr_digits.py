"""Learning rate against batch size on digits: the predicted SGD limit against real training runs.

Granziol, Zohren & Roberts derive the maximal stable learning rate from the extreme eigenvalues
of the mini-batch Hessian: ``alpha_sgd(B) = 2 / lambda_max(B)`` with ``lambda_max(B) = a + c (1/B
- 1/N)`` (linear scaling where ``c / B`` dominates). Here an MLP (one hidden layer of 32) at its
seeded initialisation on scikit-learn's digits:

1. ``dc.batch_hessian_extremes`` measures ``lambda_max`` of mini-batch Hessians at several batch
   sizes, fits the law and predicts ``alpha_sgd(B)``;
2. plain SGD (no momentum, no weight decay) from the same initialisation runs for two epochs at a
   geometric grid of learning rates around the prediction, for each batch size. A run
   *diverges* when its final training loss is not finite or not 10 % below the initial loss; the
   largest learning rate below the first divergence on the grid is compared with the prediction
   (the ratio).

Run ``python examples/batch_lr_digits.py [--small] [--out DIR]`` (seconds).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import deepcurvature as dc
from deepcurvature.analysis.batch_extremes import batch_hessian_extremes
from deepcurvature.plotting.batch_extremes import plot_batch_extremes

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
EPOCHS = 2
#: a run that does not bring the training loss below this fraction of its start has diverged
DIVERGED_ABOVE = 0.9


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The digits training set as ``(X (N, 1, 8, 8), y (N,))`` and the model's shape arguments."""
    bundle = dc.load_data("digits", batch_size=512, augment=False, shuffle_train=False)
    X = torch.cat([x for x, _ in bundle.train_loader])
    y = torch.cat([t for _, t in bundle.train_loader])
    return X, y, bundle.model_kwargs()


def new_model(shape: dict[str, Any]) -> nn.Module:
    """The seeded initial MLP (the same weights every call)."""
    torch.manual_seed(0)
    return dc.get_model("mlp", hidden=[32], **shape)


def final_loss(shape: dict[str, Any], X: torch.Tensor, y: torch.Tensor, lr: float, B: int) -> float:
    """Training loss after ``EPOCHS`` epochs of plain SGD at ``lr`` with batches of ``B``."""
    model, loss_fn = new_model(shape), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X) - B + 1, B):
            idx = perm[i : i + B]
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float(loss_fn(model(X), y))


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Predict and measure the maximal SGD learning rate per batch size; write the figure.

    Returns:
        ``{"batch_sizes", "predicted_lr", "empirical_lr", "ratio", "initial_loss", "runs",
        "fit", "full_lambda_max", "lambda_max_mean", "data_passes", "figure"}``; ``ratio`` is
        empirical / predicted per batch size; ``runs[B]`` lists ``(lr, final loss, diverged)``.
    """
    out = Path(out)
    X, y, shape = digits_tensors()
    sizes = [8, 32, 128] if small else [8, 16, 32, 64, 128, 256]
    res = batch_hessian_extremes(
        new_model(shape),
        nn.CrossEntropyLoss(),
        (X, y),
        sizes,
        batches_per_size=3 if small else 6,
        seed=0,
        tol=1e-3,
        verbose=False,
    )
    predicted = res.sgd_lr()
    with torch.no_grad():
        initial = float(nn.CrossEntropyLoss()(new_model(shape)(X), y))
    factors = 2.0 ** (np.arange(-2, 9) / 4)  # 0.71 ... 4.8 times the prediction
    runs: dict[int, list[tuple[float, float, bool]]] = {}
    empirical = []
    for B, lr0 in zip(res.batch_sizes.tolist(), predicted, strict=True):
        rows = []
        for f in factors:
            loss = final_loss(shape, X, y, float(lr0 * f), B)
            rows.append(
                (
                    float(lr0 * f),
                    loss,
                    not (math.isfinite(loss) and loss < DIVERGED_ABOVE * initial),
                )
            )
        runs[B] = rows
        first_bad = next((i for i, row in enumerate(rows) if row[2]), len(rows))
        # the largest learning rate below the first divergence (nan: the smallest diverged)
        empirical.append(rows[first_bad - 1][0] if first_bad > 0 else float("nan"))
    empirical_arr = np.asarray(empirical)
    ratio = empirical_arr / predicted

    fig = Figure(figsize=(13.0, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    plot_batch_extremes(res, ax=ax1, title="(a) λ_max of mini-batch Hessians, MLP on digits")
    curve = np.geomspace(sizes[0], sizes[-1], 100)
    ax2.plot(curve, res.sgd_lr(curve), "-", color=dc.OKABE_ITO["vermillion"], label="2 / λ_max(B)")
    for B, rows in runs.items():
        ok = [lr for lr, _, bad in rows if not bad]
        bad = [lr for lr, _, bad in rows if bad]
        ax2.scatter([B] * len(ok), ok, marker="o", color=dc.OKABE_ITO["bluish_green"], s=18)
        ax2.scatter([B] * len(bad), bad, marker="x", color=dc.OKABE_ITO["black"], s=18)
    ax2.plot(
        res.batch_sizes, empirical_arr, "s--", color=dc.OKABE_ITO["blue"], label="largest stable lr"
    )
    ax2.scatter([], [], marker="o", color=dc.OKABE_ITO["bluish_green"], label="trains")
    ax2.scatter([], [], marker="x", color=dc.OKABE_ITO["black"], label="diverges")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("batch size B")
    ax2.set_ylabel("SGD learning rate")
    ax2.set_title(f"(b) predicted vs observed: ratio {np.nanmin(ratio):.2f}-{np.nanmax(ratio):.2f}")
    ax2.legend(fontsize="small")
    path = dc.save_figure(fig, out / "batch_lr_digits.png", dpi=80)

    print(f"law: lambda_max(B) = {res.fit_max[0]:.4g} + {res.fit_max[1]:.4g} (1/B - 1/N)")
    print(f"{'B':>5} {'lambda_max':>11} {'predicted lr':>13} {'largest stable':>15} {'ratio':>6}")
    for i, B in enumerate(res.batch_sizes):
        print(
            f"{B:>5} {res.lambda_max_mean[i]:>11.4g} {predicted[i]:>13.4g} "
            f"{empirical_arr[i]:>15.4g} {ratio[i]:>6.2f}"
        )
    print(f"{res.info['data_passes']:.1f} data passes for the curvature; wrote {path}")
    return {
        "batch_sizes": res.batch_sizes.tolist(),
        "predicted_lr": predicted.tolist(),
        "empirical_lr": empirical_arr.tolist(),
        "ratio": ratio.tolist(),
        "initial_loss": initial,
        "runs": runs,
        "fit": list(res.fit_max),
        "full_lambda_max": res.full_lambda_max,
        "lambda_max_mean": res.lambda_max_mean.tolist(),
        "data_passes": res.info["data_passes"],
        "figure": str(path),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="three batch sizes, fewer batches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
