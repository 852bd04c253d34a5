"""GOE local statistics of a trained network's Hessian (seed 002, Baskerville et al.).

A small tanh MLP is trained on scikit-learn's digits (constant pixels dropped, features
standardised, full-batch Adam), its exact Hessian over the training set is built with
``torch.func.hessian`` in float64 and diagonalised. The spacing ratios of the bulk (10 % dropped
at each end) follow the GOE law, not Poisson: ``<r~>`` near 0.53 and a much smaller
Kolmogorov-Smirnov distance to the GOE surmise. For contrast, the diagonal of the same Hessian
(what a diagonal approximation keeps) has independent "levels": Poisson.

Run ``python examples/local_statistics_digits.py [--small] [--out DIR]`` (seconds; ``--small``
uses fewer hidden units and samples).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.func import functional_call, hessian

import deepcurvature as dc
from deepcurvature.analysis.local_statistics import local_statistics
from deepcurvature.plotting.local_statistics import plot_local_statistics

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def digits_features(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits as float64 standardised features (constant pixels dropped) and labels."""
    images, labels = dc.load_digits_arrays()
    x = images.reshape(len(labels), -1).double()
    x = x[:, x.std(0) > 0]
    x = (x - x.mean(0)) / x.std(0)
    return x[:n], labels[:n]


def trained_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int) -> torch.nn.Module:
    """A tanh MLP trained by full-batch Adam (seeded)."""
    torch.manual_seed(0)
    model = dc.MLP(x.shape[1], 10, hidden=[hidden], activation="tanh").double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


def dense_hessian(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact ``(P, P)`` Hessian of the mean cross-entropy over ``(x, y)``."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    H = hessian(loss)(flat)
    return (H + H.T) / 2


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Train, diagonalise the Hessian, compare its spacing ratios with GOE and Poisson.

    Returns:
        ``{"P", "N", "accuracy", "loss", "hessian": summary, "diagonal": summary,
        "hessian_check", "figure"}``: the summaries of :class:`LocalStatistics`, and the largest
        difference between the dense Hessian and ``dc.hessian``'s product with a random vector.
    """
    out = Path(out)
    hidden, n, steps = (8, 400, 150) if small else (16, 1000, 300)
    x, y = digits_features(n)
    model = trained_mlp(x, y, hidden, steps)
    with torch.no_grad():
        logits = model(x)
        accuracy = float((logits.argmax(1) == y).double().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, y))
    H = dense_hessian(model, x, y)
    P = H.shape[0]
    # the dense matrix is the library's Hessian: one product with a random vector agrees
    op = dc.hessian(model, torch.nn.CrossEntropyLoss(), [(x, y)], dtype=torch.float64)
    v = torch.randn(P, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    check = float((op.matvec(v) - H @ v).abs().max() / (H @ v).abs().max())

    eigenvalues = torch.linalg.eigvalsh(H).numpy()
    hess = local_statistics(eigenvalues)
    diag = local_statistics(torch.diagonal(H).numpy())

    fig = Figure(figsize=(13.0, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    plot_local_statistics(
        hess, ax=ax1, title=f"(a) Hessian eigenvalues, MLP on digits (P = {P}): GOE"
    )
    plot_local_statistics(
        diag,
        ax=ax2,
        label="diagonal entries",
        title="(b) the Hessian's diagonal H_ii as levels: Poisson",
    )
    path = dc.save_figure(fig, out / "local_statistics_digits.png", dpi=80)

    for name, res in (("Hessian eigenvalues", hess), ("Hessian diagonal", diag)):
        print(
            f"{name:>20}: <r~> = {res.mean:.4f} ± {res.stderr:.4f} ({res.ratios.size} ratios), "
            f"KS GOE {res.ks_goe:.3f}, Poisson {res.ks_poisson:.3f} -> {res.closer_to}"
        )
    print(f"P = {P}, N = {n}, train accuracy {accuracy:.3f}, loss {loss:.4f}; wrote {path}")
    return {
        "P": P,
        "N": n,
        "accuracy": accuracy,
        "loss": loss,
        "hessian": hess.summary(),
        "diagonal": diag.summary(),
        "hessian_check": check,
        "n_negative": int(np.sum(eigenvalues < 0)),
        "figure": str(path),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="8 hidden units, 400 samples")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
