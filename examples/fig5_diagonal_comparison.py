"""Figure 5 of the paper: the diagonal of a matrix is not its spectrum; Lanczos is.

Two ``500 x 500`` random matrices (section 6.3): a Marcenko-Pastur matrix ``X X^T / T`` with
``T = 2P`` and an (unnormalised) Wigner matrix. For each, the histogram of the exact eigenvalues,
the Lanczos density (``m = 30``, one probe) and the histogram of the diagonal elements, all as
probability masses on one axis (``dc.plot_comparison``).

Why the diagonal fails (section 6.3): a Wigner diagonal is ``P`` draws of N(0, 1), while the
second moment of the spectrum is ``tr(H^2) / P ~ P`` (equation 10), so the eigenvalues fill
``[-2 sqrt(P), 2 sqrt(P)] = [-44.7, 44.7]``; a Marcenko-Pastur diagonal element is
``chi^2_T / T`` (mean 1, variance ``2 / T``), concentrated near 1, while the eigenvalues fill
``[(1 - sqrt q)^2, (1 + sqrt q)^2] = [0.086, 2.91]``. Both diagonals have the right MEAN
(``tr(H) / P``): only the first moment of the spectrum survives in a diagonal.

Run ``python examples/fig5_diagonal_comparison.py [--small] [--out DIR]`` (a few seconds; the
matrices are already small, so ``--small`` changes nothing).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
P = 500
STEPS = 30


def compare(name: str, H: torch.Tensor, *, seed: int) -> tuple[dict[str, Any], Any, Any, Any]:
    """Exact eigenvalues, Lanczos density and diagonal of ``H``, and numbers comparing them."""
    exact = torch.linalg.eigvalsh(H).numpy()
    dens = dc.lanczos(H, STEPS, seed=seed, verbose=False).density()
    diag = torch.diagonal(H).numpy().copy()
    row = {
        "matrix": name,
        "P": H.shape[0],
        "exact_range": [float(exact.min()), float(exact.max())],
        "lanczos_range": [dens.lambda_min, dens.lambda_max],
        "diagonal_range": [float(diag.min()), float(diag.max())],
        "diagonal_std": float(diag.std()),
        "exact_std": float(exact.std()),
        "mean_exact": float(exact.mean()),
        "mean_lanczos": dens.moment(1),
        "mean_diagonal": float(diag.mean()),
        "second_moment_exact": float(np.mean(exact**2)),
        "second_moment_lanczos": dens.moment(2),
        "second_moment_diagonal": float(np.mean(diag**2)),
        # width of the diagonal's histogram relative to the spectrum's
        "diagonal_width_over_spectrum_width": float(np.ptp(diag) / np.ptp(exact)),
    }
    return row, dens, exact, diag


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Reproduce Figure 5; write ``fig5_diagonal_comparison.png`` and return the numbers.

    ``small`` is accepted for a uniform interface; the example is small already.

    Returns:
        ``{"results": [row for Marcenko-Pastur, row for Wigner], "figure": path}``; each row
        holds the ranges, standard deviations, means and second moments of the exact spectrum,
        the Lanczos density and the diagonal.
    """
    del small
    out = Path(out)
    cases = {
        "Marcenko-Pastur, T=2P": dc.wishart(P, 2 * P, seed=50),
        "Wigner": dc.wigner(P, seed=51),
    }
    # side by side as in the paper: plot_comparison fits its legend and table to each panel
    fig = Figure(figsize=(15.0, 5.6), layout="constrained")
    axes = fig.subplots(1, 2)
    rows = []
    for k, (ax, (name, H)) in enumerate(zip(axes, cases.items(), strict=True)):
        row, dens, exact, diag = compare(name, H, seed=52 + k)
        rows.append(row)
        dc.plot_comparison(
            dens,
            exact_eigenvalues=exact,
            diagonal=diag,
            diagonal_label="diagonal H_ii",
            bins=60,
            ax=ax,
            title=f"({'ab'[k]}) {name}, P={P}: Lanczos m={STEPS}, one probe",
        )
    fig.suptitle("Figure 5: exact eigenvalues vs Lanczos vs the diagonal approximation")
    path = dc.save_figure(fig, out / "fig5_diagonal_comparison.png", dpi=100)

    print(
        f"{'matrix':<22} {'exact range':>17} {'Lanczos range':>17} {'diagonal range':>17} "
        f"{'m2 exact/Lanczos/diag':>24}"
    )
    for r in rows:
        rng = [r["exact_range"], r["lanczos_range"], r["diagonal_range"]]
        print(
            f"{r['matrix']:<22} "
            + " ".join(f"{a:>8.3f}/{b:<8.3f}" for a, b in rng)
            + f" {r['second_moment_exact']:>8.3g}/{r['second_moment_lanczos']:.3g}"
            + f"/{r['second_moment_diagonal']:.3g}"
        )
    print(f"wrote {path}")
    return {"results": rows, "figure": str(path)}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="accepted; the example is small")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
