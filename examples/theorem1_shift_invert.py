"""Theorem 1 of the paper: Lanczos on ``-H + mu I`` learns nothing that Lanczos on ``H`` did not.

A common recipe for the most negative eigenvalue (section 4, first misconception) runs Lanczos
on ``-H + mu I`` with ``mu`` near ``lambda_max``, so that the bottom of the spectrum becomes the
top. But the Krylov space of ``-H + mu I`` is that of ``H``: from the same start vector the
tridiagonal matrix is exactly ``-T + mu I`` (equation 4), the Ritz values are ``mu - theta_i``
and the quadrature weights are unchanged. The estimate of ``lambda_min`` from the shifted run is
the one the plain run already gave, to round-off. (To converge to the extreme eigenpairs, use a
method built for it: ``dc.eigsh``, restarted Lanczos with residuals.)

The matrix is the section 6.4 synthetic spectrum (``P = 1000``, with negative outliers),
``mu = lambda_max`` of ``H`` estimated by the first Lanczos run, ``m = 30`` steps, one probe.

Run ``python examples/theorem1_shift_invert.py [--small] [--out DIR]`` (seconds; ``--small``
uses ``P = 300``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
STEPS = 30


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Run Lanczos on ``H`` and on ``-H + mu I`` from the same probe; compare; write the PNG.

    Returns:
        The shift ``mu``, the largest differences between ``mu - theta~`` and ``theta`` (Ritz
        values), between the weights, and between ``T~`` and ``-T + mu I``; the exact and
        estimated ``lambda_min`` from both runs, and the ``dc.eigsh`` value for contrast.
    """
    P = 300 if small else 1000
    out = Path(out)
    syn = dc.synthetic_spectrum(P, seed=11)
    op = dc.as_operator(syn.matrix)
    exact = syn.eigenvalues.numpy()

    plain = dc.lanczos(op, STEPS, seed=12, verbose=False)
    mu = float(plain.ritz_values[0].max())  # the usual choice: the top of the spectrum
    shifted = dc.lanczos(
        dc.ShiftedOperator(op, scale=-1.0, shift=mu), STEPS, seed=12, verbose=False
    )
    theta, w = plain.ritz_values[0], plain.weights[0]
    theta_s, w_s = shifted.ritz_values[0], shifted.weights[0]
    mapped = np.sort(mu - theta_s)  # back to the eigenvalues of H, ascending
    w_mapped = w_s[::-1]  # mu - theta~ reverses the order
    scale = float(np.abs(theta).max())
    smallest = dc.eigsh(op, 1, which="SA", seed=13, verbose=False)

    numbers = {
        "P": P,
        "steps": STEPS,
        "mu": mu,
        "max_ritz_difference": float(np.max(np.abs(mapped - theta))),
        "max_ritz_difference_relative": float(np.max(np.abs(mapped - theta)) / scale),
        "max_weight_difference": float(np.max(np.abs(w_mapped - w))),
        "max_alpha_difference": float(np.max(np.abs(shifted.alphas[0] - (mu - plain.alphas[0])))),
        "max_beta_difference": float(np.max(np.abs(shifted.betas[0] - plain.betas[0]))),
        "exact_lambda_min": float(exact.min()),
        "lambda_min_plain_run": float(theta.min()),
        "lambda_min_shifted_run": float(mu - theta_s.max()),
        "lambda_min_eigsh": float(smallest.values[0]),
        "eigsh_residual": float(smallest.residual_norms[0]),
        "eigsh_matvecs": int(smallest.n_matvec),
    }

    fig = Figure(figsize=(15.0, 5.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    dc.plot_spectrum(
        plain.density(),
        exact_eigenvalues=exact,
        ax=a,
        title=f"(a) Lanczos on H: m={STEPS}, one probe",
    )
    dc.plot_spectrum(
        shifted.density(),
        exact_eigenvalues=mu - exact,
        ax=b,
        title=f"(b) Lanczos on −H + μI, μ={mu:.4g}, same probe: Ritz values μ − θ",
    )
    fig.suptitle(
        "Theorem 1: the shifted run is the mirror image of the plain one "
        f"(max |(μ − θ̃) − θ| = {numbers['max_ritz_difference']:.1e}, "
        f"max |w̃ − w| = {numbers['max_weight_difference']:.1e})"
    )
    path = dc.save_figure(fig, out / "theorem1_shift_invert.png", dpi=100)
    numbers["figure"] = str(path)

    print(f"P={P}, m={STEPS}, mu={mu:.6g}")
    print(
        f"max |(mu - theta~) - theta| = {numbers['max_ritz_difference']:.2e} "
        f"(relative {numbers['max_ritz_difference_relative']:.1e}); "
        f"max |w~ - w| = {numbers['max_weight_difference']:.1e}"
    )
    print(
        f"max |alpha~ - (mu - alpha)| = {numbers['max_alpha_difference']:.1e}, "
        f"max |beta~ - beta| = {numbers['max_beta_difference']:.1e}"
    )
    print(
        f"lambda_min: exact {numbers['exact_lambda_min']:.6f}, plain run "
        f"{numbers['lambda_min_plain_run']:.6f}, shifted run "
        f"{numbers['lambda_min_shifted_run']:.6f}, dc.eigsh {numbers['lambda_min_eigsh']:.6f} "
        f"(residual {numbers['eigsh_residual']:.1e}, {numbers['eigsh_matvecs']} products)"
    )
    print(f"wrote {path}")
    return numbers


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="P = 300 instead of 1000")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
