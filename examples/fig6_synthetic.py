"""Figure 6 of the paper: a network-like spectrum, Lanczos with m = 5, 15, 30, and the diagonal.

The section 6.4 matrix ``H = U D U^T`` (``P = 1000``, ``U`` a random rotation) has a known
spectrum imitating a network's Hessian: 500 exact zeros (the spike), 470 eigenvalues uniform on
``[0, 15]`` (a bulk), 20 uniform on ``[0, 60]`` (positive outliers) and 10 uniform on ``[-10, 0]``
(negative outliers). From ONE random probe, Lanczos with ``m = 5`` steps already learns the
spike at zero and the largest and smallest eigenvalues but misses most outliers; ``m = 30``
resolves the extremes and the bulk's shape. The diagonal of ``H`` (what a diagonal curvature
approximation sees) has no outliers at all and no mass at zero: every ``H_ii`` is a weighted
average of all the eigenvalues.

Run ``python examples/fig6_synthetic.py [--small] [--out DIR]`` (seconds; ``--small`` uses
``P = 500``).
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
STEPS = (5, 15, 30)
BULK_TOP = 15.0  # eigenvalues above this, or below 0, are the outliers


def resolved(outliers: np.ndarray, nodes: np.ndarray, tol: float) -> int:
    """How many ``outliers`` have a Ritz value within ``tol``."""
    if outliers.size == 0:
        return 0
    return int(np.sum(np.min(np.abs(outliers[:, None] - nodes[None, :]), axis=1) <= tol))


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Reproduce Figure 6; write ``fig6_synthetic.png`` into ``out`` and return the numbers.

    Returns:
        ``{"P", "counts", "exact_range", "outliers", "outlier_tolerance", "lanczos": {m: row},
        "diagonal": {...}, "figure"}``: per ``m`` the Ritz extremes, their errors, the weight
        at zero and how many outliers have a Ritz value on them; for the diagonal its range and
        its mass near zero.
    """
    P = 500 if small else 1000
    out = Path(out)
    syn = dc.synthetic_spectrum(P, seed=6)
    H, exact = syn.matrix, syn.eigenvalues.numpy()
    diag = torch.diagonal(H).numpy().copy()
    outliers = exact[(exact > BULK_TOP) | (exact < 0.0)]
    tol = 0.01 * float(np.abs(exact).max())  # "on an outlier": within 1% of the largest |λ|
    zero_tol = 1e-6 * float(np.abs(exact).max())

    densities = {}
    lanczos_rows = {}
    for m in STEPS:
        # the same probe (same seed) for every m: the m-step run is a prefix of the longer ones
        dens = dc.lanczos(H, m, seed=7, verbose=False).density()
        densities[m] = dens
        lanczos_rows[m] = {
            "ritz_min": dens.lambda_min,
            "ritz_max": dens.lambda_max,
            "ritz_min_error": dens.lambda_min - float(exact.min()),
            "ritz_max_error": dens.lambda_max - float(exact.max()),
            "node_nearest_zero": float(dens.nodes[np.argmin(np.abs(dens.nodes))]),
            "weight_nearest_zero": float(dens.weights[np.argmin(np.abs(dens.nodes))]),
            "mass_within_tol_of_zero": float(dens.weights[np.abs(dens.nodes) <= tol].sum()),
            "outliers_resolved": resolved(outliers, dens.nodes, tol),
            "negative_outliers_resolved": resolved(outliers[outliers < 0], dens.nodes, tol),
            "second_moment": dens.moment(2),
        }
    diag_row = {
        "min": float(diag.min()),
        "max": float(diag.max()),
        "mass_near_zero": float(np.mean(np.abs(diag) <= 0.01 * float(np.abs(diag).max()))),
        "outliers_in_range": int(np.sum((outliers >= diag.min()) & (outliers <= diag.max()))),
        "second_moment": float(np.mean(diag**2)),
    }

    fig = Figure(figsize=(17.0, 9.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for k, (ax, m) in enumerate(zip(axes[:3], STEPS, strict=True)):
        row = lanczos_rows[m]
        dc.plot_spectrum(
            densities[m],
            exact_eigenvalues=exact,
            rug=outliers,
            rug_label=f"the {outliers.size} exact outliers",
            ax=ax,
            title=f"({'abc'[k]}) Lanczos m={m}, same probe: "
            f"{row['outliers_resolved']}/{outliers.size} outliers resolved",
        )
    dc.plot_comparison(
        densities[STEPS[-1]],
        exact_eigenvalues=exact,
        diagonal=diag,
        diagonal_label="diagonal H_ii",
        log_scale=True,
        ax=axes[3],
        title=f"(d) the diagonal: H_ii in [{diag.min():.2f}, {diag.max():.2f}], no outliers",
    )
    fig.suptitle(
        f"Figure 6: synthetic spectrum (P={P}: spike at 0, bulk U[0,15], outliers U[0,60] and "
        "U[-10,0])"
    )
    path = dc.save_figure(fig, out / "fig6_synthetic.png", dpi=80)

    print(
        f"exact range [{exact.min():.2f}, {exact.max():.2f}], {outliers.size} outliers, "
        f"zero mass {np.mean(np.abs(exact) <= zero_tol):.3f}"
    )
    print(f"{'m':>4} {'Ritz min/max':>18} {'errors':>18} {'node~0 (weight)':>18} {'outliers':>9}")
    for m, r in lanczos_rows.items():
        print(
            f"{m:>4} {r['ritz_min']:>8.2f}/{r['ritz_max']:<8.2f} "
            f"{r['ritz_min_error']:>8.2g}/{r['ritz_max_error']:<8.2g} "
            f"{r['node_nearest_zero']:>9.2g} ({r['weight_nearest_zero']:.3f}) "
            f"{r['outliers_resolved']:>5}/{outliers.size}"
        )
    print(
        f"diagonal range [{diag_row['min']:.2f}, {diag_row['max']:.2f}] "
        f"(paper: [3.3, 5.3]), mass near zero {diag_row['mass_near_zero']:.3f}"
    )
    print(f"wrote {path}")
    return {
        "P": P,
        "counts": syn.counts,
        "exact_range": [float(exact.min()), float(exact.max())],
        "exact_zero_mass": float(np.mean(np.abs(exact) <= zero_tol)),
        "outliers": int(outliers.size),
        "outlier_tolerance": tol,
        "lanczos": lanczos_rows,
        "diagonal": diag_row,
        "figure": str(path),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="P = 500 instead of 1000")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
