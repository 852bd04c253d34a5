"""Table 1 of the paper (Appendix B.1): Lanczos beats power iteration on the same Krylov space.

After ``m`` products with ``H`` from a start vector ``v``, both methods have the Krylov space
``K_m = span{v, Hv, ..., H^(m-1) v}``. Power iteration estimates ``lambda_1`` by the Rayleigh
quotient of ``H^(m-1) v``; Lanczos by the largest Ritz value, the MAXIMUM of the Rayleigh
quotient over all of ``K_m`` (equation 20), so it can never be worse. The error bounds:

* Lanczos (Theorem 6, eq. 21): ``lambda_1 - theta_1 <= (lambda_1 - lambda_n) tan^2(phi) L``,
  ``L = 1 / c_(m-1)(1 + 2 rho)^2``, ``c_k`` the Chebyshev polynomial,
  ``rho = (lambda_1 - lambda_2) / (lambda_2 - lambda_n)``;
* power iteration (Theorem 7, eq. 22): the same with ``R = (lambda_2 / lambda_1)^(2(m-1))``.

This script prints the paper's Table 1 (``L / R`` for ``lambda_n = 0``), then measures the actual
errors of ``dc.lanczos`` and ``dc.power_iteration`` from the SAME start vector on a matrix with
``lambda_1 / lambda_2`` in {1.5, 1.1, 1.01}, ``lambda_2 = 1``, ``lambda_n = 0`` and the other
eigenvalues uniform on ``[0, 1]``, checks both against their bounds, and plots error against
``m`` (``table1_lanczos_vs_power.png``).

Run ``python examples/table1_lanczos_vs_power.py [--small] [--out DIR]`` (seconds; ``--small``
uses ``P = 200`` instead of 1000).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
RATIOS = (1.5, 1.1, 1.01)
TABLE_STEPS = (5, 10, 15, 20)
MAX_STEPS = 30
#: the paper's Table 1, L_{k-1} / R_{k-1}, rows RATIOS, columns TABLE_STEPS
PAPER_TABLE = {
    1.5: ((1.1e-4, 3.9e-2), (2e-10, 6.8e-4), (3.9e-16, 1.2e-5), (7.4e-22, 2.0e-7)),
    1.1: ((2.7e-2, 4.7e-1), (5.5e-5, 1.8e-1), (1.1e-7, 6.9e-2), (2.1e-10, 2.7e-2)),
    1.01: ((5.6e-1, 9.2e-1), (1.0e-1, 8.4e-1), (1.5e-2, 7.6e-1), (2.0e-3, 6.9e-1)),
}


def chebyshev(k: int, x: float) -> float:
    """The Chebyshev polynomial ``c_k(x)`` for ``x >= 1`` (``cosh(k arccosh x)``)."""
    return float(np.cosh(k * np.arccosh(x)))


def bound_factors(ratio: float, m: int, lam_n: float = 0.0) -> tuple[float, float]:
    """``(L_{m-1}, R_{m-1})`` of equations 21-22 for ``lambda_1 = ratio``, ``lambda_2 = 1``."""
    rho = (ratio - 1.0) / (1.0 - lam_n)
    return 1.0 / chebyshev(m - 1, 1.0 + 2.0 * rho) ** 2, (1.0 / ratio) ** (2 * (m - 1))


def test_matrix(ratio: float, P: int, *, seed: int) -> torch.Tensor:
    """``(P, P)`` diagonal matrix: ``ratio``, 1, ``P - 3`` uniform values in ``(0, 1)``, and 0.

    Krylov methods are invariant under rotations, so a diagonal matrix with a Gaussian start
    vector loses no generality.
    """
    gen = torch.Generator().manual_seed(seed)
    rest = torch.rand(P - 3, generator=gen, dtype=torch.float64)
    eig = torch.cat([torch.tensor([ratio, 1.0, 0.0], dtype=torch.float64), rest])
    return torch.diag(eig)


def errors(ratio: float, P: int, *, seed: int) -> dict[str, Any]:
    """Actual errors ``lambda_1 - theta_1`` of Lanczos and power iteration for m = 1..MAX_STEPS."""
    H = dc.as_operator(test_matrix(ratio, P, seed=seed))  # checked for symmetry once
    gen = torch.Generator().manual_seed(seed + 1)
    v = torch.randn(P, generator=gen, dtype=torch.float64)
    cos2 = float(v[0] ** 2 / (v @ v))  # the top eigenvector is e_1
    tan2 = (1.0 - cos2) / cos2
    # one Lanczos run: its first m steps are the m-step run, T_m is the leading block of T
    res = dc.lanczos(H, MAX_STEPS, start=v, verbose=False)
    a, b = res.alphas[0], res.betas[0]
    steps = np.arange(1, MAX_STEPS + 1)
    lanczos_err, power_err, lanczos_bound, power_bound = [], [], [], []
    for m in steps:
        theta = dc.tridiagonal_eigh(a[:m], b[: m - 1])[0].max()
        lanczos_err.append(ratio - theta)
        with warnings.catch_warnings():  # "did not converge": m products is all we allow
            warnings.simplefilter("ignore")
            pw = dc.power_iteration(H, 1, tol=1e-300, max_iters=int(m), start=v, verbose=False)
        power_err.append(ratio - float(pw.values[0]))
        L, R = bound_factors(ratio, int(m))
        lanczos_bound.append(ratio * tan2 * L)  # (lambda_1 - lambda_n) tan^2(phi) L, lambda_n = 0
        power_bound.append(ratio * tan2 * R)
    return {
        "ratio": ratio,
        "tan2_phi": tan2,
        "steps": steps.tolist(),
        "lanczos_error": lanczos_err,
        "power_error": power_err,
        "lanczos_bound": lanczos_bound,
        "power_bound": power_bound,
    }


def _figure(curves: list[dict[str, Any]], P: int) -> Figure:
    fig = Figure(figsize=(11.0, 5.5), layout="constrained")
    ax = fig.add_subplot()
    colors = dict(zip(RATIOS, ("#0072B2", "#D55E00", "#009E73"), strict=True))
    floor = 1e-16 * max(RATIOS)  # errors at float64 round-off are drawn on this line
    for c in curves:
        col = colors[c["ratio"]]
        s = np.asarray(c["steps"])
        ax.semilogy(
            s,
            np.maximum(c["lanczos_error"], floor),
            "-o",
            color=col,
            ms=3.5,
            label=f"Lanczos, λ₁/λ₂ = {c['ratio']:g}",
        )
        ax.semilogy(
            s,
            np.maximum(c["power_error"], floor),
            "--s",
            color=col,
            ms=3.5,
            mfc="none",
            label=f"power iteration, λ₁/λ₂ = {c['ratio']:g}",
        )
        ax.semilogy(
            s,
            np.maximum(c["lanczos_bound"], floor),
            ":",
            color=col,
            lw=1.0,
            label=f"Lanczos bound (eq. 21), λ₁/λ₂ = {c['ratio']:g}",
        )
    ax.axhline(floor, color="0.5", lw=0.8)
    ax.text(
        1,
        floor * 2,
        "float64 round-off (smaller errors drawn on this line)",
        ha="left",
        va="bottom",
        fontsize="small",
        color="0.35",
    )
    ax.set_ylim(floor / 4, 10.0)
    ax.set_xlim(0.5, MAX_STEPS + 0.5)
    ax.set_xlabel("matrix-vector products m (Krylov dimension)")
    ax.set_ylabel("error λ₁ − θ₁ (log scale)")
    ax.set_title(
        f"Table 1 (Appendix B): largest eigenvalue after m products from the same "
        f"start vector, P={P}"
    )
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Reproduce Table 1 and measure the actual errors; write the PNG and return the numbers.

    Returns:
        ``{"table": {ratio: [(L, R, L/R) per m in TABLE_STEPS]}, "paper_table": ...,
        "curves": [per ratio: errors and bounds for m = 1..MAX_STEPS], "P", "figure"}``.
    """
    P = 200 if small else 1000
    out = Path(out)
    table = {
        r: [
            (*bound_factors(r, m), bound_factors(r, m)[0] / bound_factors(r, m)[1])
            for m in TABLE_STEPS
        ]
        for r in RATIOS
    }
    curves = [errors(r, P, seed=100 + k) for k, r in enumerate(RATIOS)]
    path = dc.save_figure(_figure(curves, P), out / "table1_lanczos_vs_power.png", dpi=100)

    print("Table 1: L_{m-1} / R_{m-1} (Lanczos / power iteration bound factors, lambda_n = 0)")
    print(f"{'λ1/λ2':>6} " + " ".join(f"{'m=' + str(m):>19}" for m in TABLE_STEPS))
    for r in RATIOS:
        print(f"{r:>6g} " + " ".join(f"{L:>9.2g}/{R:<9.2g}" for L, R, _ in table[r]))
    print("\nactual errors λ1 - θ1, Lanczos / power iteration, same start vector")
    print(f"{'λ1/λ2':>6} " + " ".join(f"{'m=' + str(m):>19}" for m in TABLE_STEPS))
    for c in curves:
        cells = [(c["lanczos_error"][m - 1], c["power_error"][m - 1]) for m in TABLE_STEPS]
        print(f"{c['ratio']:>6g} " + " ".join(f"{lz:>9.2g}/{pw:<9.2g}" for lz, pw in cells))
    print(f"wrote {path}")
    return {
        "P": P,
        "table": {str(r): v for r, v in table.items()},
        "paper_table": {str(r): v for r, v in PAPER_TABLE.items()},
        "curves": curves,
        "figure": str(path),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="P = 200 instead of 1000")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
