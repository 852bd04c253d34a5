"""Figure 2 of the paper: one probe and m = 30 Lanczos steps learn the Wigner semicircle.

A ``P x P`` symmetric matrix with N(0, 1) entries (section 6.1, Definition A.1) has a spectrum
filling ``[-2 sqrt(P), 2 sqrt(P)]`` with the semicircle shape (Theorem 3, equation 7). Lanczos
with ``m = 30`` steps from a single random vector returns a 30-node discrete density whose
extreme Ritz values sit on the edges of the spectrum and whose nodes spread over the whole
support: the 30 Ritz values are NOT the 30 largest eigenvalues (section 4, Theorem 2).

Run ``python examples/fig2_wigner.py [--small] [--out DIR]`` (full size: P = 225 and 10^4,
under a minute, most of it the exact eigenvalues of the big matrix; ``--small``: P = 225 and 1000).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
STEPS = 30
TOP = 30  # compare the Ritz values with the TOP largest eigenvalues


def one_size(P: int, *, seed: int) -> tuple[dict[str, Any], dc.SpectralDensity, np.ndarray]:
    """Draw one Wigner matrix, learn its density with Lanczos and compare it with ``eigvalsh``."""
    t0 = time.perf_counter()
    H = dc.wigner(P, seed=seed)  # (P, P) float64, N(0, 1) diagonal and upper triangle
    dens = dc.lanczos(H, STEPS, seed=seed + 1, verbose=False).density()
    t_lanczos = time.perf_counter() - t0
    exact = torch.linalg.eigvalsh(H).numpy()  # the O(P^3) ground truth Lanczos avoids
    del H
    R = dc.wigner_radius(P)  # 2 sqrt(P): the edge of the semicircle
    top = exact[-TOP:]
    in_top = int(np.sum(dens.nodes >= top.min()))  # Ritz values inside the top-30 range
    row = {
        "P": P,
        "steps": STEPS,
        "radius_2sqrtP": R,
        "exact_min": float(exact.min()),
        "exact_max": float(exact.max()),
        "ritz_min": dens.lambda_min,
        "ritz_max": dens.lambda_max,
        "ritz_min_over_R": dens.lambda_min / R,
        "ritz_max_over_R": dens.lambda_max / R,
        "ritz_max_error": dens.lambda_max - float(exact.max()),
        "ritz_min_error": dens.lambda_min - float(exact.min()),
        "top30_eigenvalue_range": [float(top.min()), float(top.max())],
        "ritz_values_in_top30_range": in_top,
        "ritz_values_negative": int(np.sum(dens.nodes < 0)),
        "second_moment_slq": dens.moment(2),
        "second_moment_exact": float(np.mean(exact**2)),
        "kolmogorov_exact_vs_semicircle": dc.kolmogorov_distance(
            exact, lambda x: dc.semicircle_cdf(x, R)
        ),
        "seconds_lanczos": t_lanczos,
    }
    return row, dens, exact


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Reproduce Figure 2; write ``fig2_wigner.png`` into ``out`` and return the numbers.

    Returns:
        ``{"sizes": [...], "results": [row per size], "figure": path}``; each row holds the
        semicircle radius ``2 sqrt(P)``, the exact and Ritz extremes, how many of the 30 Ritz
        values fall in the range of the 30 largest eigenvalues, and second moments (eq. 10).
    """
    sizes = (225, 1000) if small else (225, 10_000)
    out = Path(out)
    fig = Figure(figsize=(14.0, 5.0), layout="constrained")
    axes = fig.subplots(1, len(sizes))
    rows = []
    for ax, P in zip(axes, sizes, strict=True):
        row, dens, exact = one_size(P, seed=P)
        rows.append(row)
        R = row["radius_2sqrtP"]
        dc.plot_spectrum(
            dens,
            exact_eigenvalues=exact,
            reference=lambda x, R=R: dc.semicircle_density(x, R),
            reference_label="semicircle of radius 2√P (eq. 7)",
            bins=int(np.clip(2 * np.sqrt(P), 20, 60)),
            rug=exact[-TOP:],
            rug_label=f"the {TOP} largest eigenvalues",
            ax=ax,
            title=f"Wigner P={P:,}: Lanczos m={STEPS}, one probe",
        )
    fig.suptitle("Figure 2: Lanczos stems vs exact eigenvalues of Wigner matrices (section 6.1)")
    path = dc.save_figure(fig, out / "fig2_wigner.png", dpi=100)

    print(
        f"{'P':>6} {'2sqrt(P)':>9} {'exact min/max':>18} {'Ritz min/max':>18} "
        f"{'in top-30':>9} {'m2 SLQ':>9} {'m2 exact':>9}"
    )
    for r in rows:
        print(
            f"{r['P']:>6} {r['radius_2sqrtP']:>9.2f} "
            f"{r['exact_min']:>8.2f}/{r['exact_max']:<8.2f} "
            f"{r['ritz_min']:>8.2f}/{r['ritz_max']:<8.2f} "
            f"{r['ritz_values_in_top30_range']:>6}/{STEPS:<2} "
            f"{r['second_moment_slq']:>9.1f} {r['second_moment_exact']:>9.1f}"
        )
    print(f"wrote {path}")
    return {"sizes": list(sizes), "results": rows, "figure": str(path)}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
