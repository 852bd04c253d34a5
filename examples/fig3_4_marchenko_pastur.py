"""Figures 3 and 4 of the paper: Lanczos learns the Marcenko-Pastur law, atom at zero included.

``H = X X^T / T`` with ``X`` a ``P x T`` matrix of N(0, 1) entries (section 6.2) has, as
``P / T -> q``, the Marcenko-Pastur spectrum (Theorem 4, equations 8-9): a continuous part on
``[(1 - sqrt q)^2, (1 + sqrt q)^2]`` and, for ``q > 1``, a fraction ``1 - 1/q`` of exact zeros.

* Figure 4: ``T = 2P`` (``q = P/T = 0.5``), ``P = 225`` and ``5000`` (the paper: ``10^4``; the
  exact ``eigvalsh`` of ``X X^T / T`` for the comparison would take minutes on a laptop CPU);
* Figure 3: ``T = P/2`` (``q = 2``), ``P = 10^4``: half of the eigenvalues are exactly zero.

(The paper's captions name the ratio the other way round, ``k = T`` over ``P``.) Lanczos never
forms ``H``: it runs on the matrix-free operator ``v -> X (X^T v) / T`` with one random probe and
``m = 30`` steps. The exact eigenvalues, for comparison only, come from the smaller of the two
Gram matrices (``X^T X / T`` has the same non-zero eigenvalues).

Run ``python examples/fig3_4_marchenko_pastur.py [--small] [--out DIR]`` (full size takes
about a minute, most of it the exact eigenvalues; ``--small`` uses ``P = 1000`` for both
large panels).
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


def gram_operator(X: torch.Tensor) -> dc.LinearOperator:
    """The ``(P, P)`` operator ``V -> X (X^T V) / T`` of ``X`` ``(P, T)``, never formed."""
    P, T = X.shape
    return dc.as_operator(lambda V: X @ (X.T @ V) / T, shape=(P, P), batched=True, symmetric=True)


def exact_eigenvalues(X: torch.Tensor) -> np.ndarray:
    """``(P,)`` eigenvalues of ``X X^T / T`` ascending, from the smaller Gram matrix."""
    P, T = X.shape
    if T < P:  # rank T: the other P - T eigenvalues are exactly zero
        nonzero = torch.linalg.eigvalsh(X.T @ X / T).numpy()
        return np.sort(np.concatenate([np.zeros(P - T), nonzero]))
    return torch.linalg.eigvalsh(X @ X.T / T).numpy()


def one_case(
    P: int, q: float, *, seed: int
) -> tuple[dict[str, Any], dc.SpectralDensity, np.ndarray]:
    """Draw ``X`` ``(P, P/q)``, learn the density of ``X X^T / T``, compare with the exact one."""
    T = round(P / q)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn((P, T), generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    dens = dc.lanczos(gram_operator(X), STEPS, seed=seed + 1, verbose=False).density()
    t_lanczos = time.perf_counter() - t0
    exact = exact_eigenvalues(X)
    del X
    q = P / T
    lo, hi = dc.marchenko_pastur_edges(q)
    atom = dc.marchenko_pastur_atom(q)
    # the Ritz value at zero (q > 1) is excluded from the edges of the continuous part
    zero_tol = 1e-6 * float(np.abs(exact).max())
    nodes = dens.nodes[np.abs(dens.nodes) > zero_tol]
    bulk = exact[np.abs(exact) > zero_tol]
    row = {
        "P": P,
        "T": T,
        "q": q,
        "steps": STEPS,
        "law_edges": [lo, hi],
        "exact_bulk_edges": [float(bulk.min()), float(bulk.max())],
        "ritz_bulk_edges": [float(nodes.min()), float(nodes.max())],
        "law_zero_mass": atom,
        "exact_zero_mass": float(np.mean(np.abs(exact) <= zero_tol)),
        "slq_zero_mass": float(dens.weights[np.abs(dens.nodes) <= zero_tol].sum()),
        "mean_slq": dens.moment(1),
        "mean_exact": float(exact.mean()),
        "second_moment_slq": dens.moment(2),
        "second_moment_exact": float(np.mean(exact**2)),
        "kolmogorov_exact_vs_law": dc.kolmogorov_distance(
            exact, lambda x, q=q: dc.marchenko_pastur_cdf(x, q)
        ),
        "seconds_lanczos": t_lanczos,
    }
    return row, dens, exact


def _panel(
    ax: Any, row: dict[str, Any], dens: dc.SpectralDensity, exact: np.ndarray, **kwargs: Any
) -> None:
    q, atom = row["q"], row["law_zero_mass"]
    kwargs.setdefault(
        "title", f"X Xᵀ/T, P={row['P']:,}, T={row['T']:,}: Lanczos m={STEPS}, one probe"
    )
    dc.plot_spectrum(
        dens,
        exact_eigenvalues=exact,
        reference=lambda x, q=q: dc.marchenko_pastur_density(x, q),
        reference_label=f"Marcenko-Pastur law, q={q:g} (eqs. 8-9)",
        reference_atoms=[(0.0, atom)] if atom > 0 else None,
        bins=int(np.clip(2 * np.sqrt(row["P"]), 20, 60)),
        ax=ax,
        **kwargs,
    )


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'P':>6} {'T':>6} {'q':>4} {'law edges':>15} {'exact edges':>15} "
        f"{'Ritz edges':>15} {'zero mass law/exact/SLQ':>24}"
    )
    for r in rows:
        e = r["law_edges"], r["exact_bulk_edges"], r["ritz_bulk_edges"]
        print(
            f"{r['P']:>6} {r['T']:>6} {r['q']:>4g} "
            + " ".join(f"{a:>7.3f}/{b:<7.3f}" for a, b in e)
            + f" {r['law_zero_mass']:>7.3f}/{r['exact_zero_mass']:.3f}/{r['slq_zero_mass']:.3f}"
        )


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Reproduce Figures 3 and 4; write two PNGs into ``out`` and return the numbers.

    Returns:
        ``{"q2": [row], "q0.5": [rows], "figures": [paths]}``; each row holds the law's edges,
        the exact and Ritz edges of the continuous part, the mass at zero (law, exact, Lanczos),
        the first two moments and the Kolmogorov distance of the exact spectrum to the law.
    """
    big = 1000 if small else 10_000  # q = 2: the exact eigenvalues come from a (P/2)^2 matrix
    big_q05 = 1000 if small else 5000  # q = 0.5: they need the P x P matrix X X^T / T
    out = Path(out)
    results: dict[str, Any] = {"q2": [], "q0.5": [], "figures": []}

    # -- Figure 3: q = 2, half of the eigenvalues are zero ---------------------------------------
    row, dens, exact = one_case(big, 2.0, seed=3)
    results["q2"].append(row)
    fig = Figure(figsize=(14.0, 5.0), layout="constrained")
    full, zoom = fig.subplots(1, 2)
    # left: a logarithmic mass axis shows the atom and the continuous part at once; right: the
    # default linear axis, clipped to the continuous part, the atom's bar cut and labelled
    _panel(full, row, dens, exact, mass_scale="log")
    _panel(
        zoom,
        row,
        dens,
        exact,
        title=f"the same, linear mass axis: the bar at 0 (mass {row['exact_zero_mass']:.2f}) "
        "is clipped",
    )
    fig.suptitle("Figure 3: Marcenko-Pastur with T = P/2 (q = 2): mass 1/2 at zero")
    results["figures"].append(
        str(dc.save_figure(fig, out / "fig3_marchenko_pastur_q2.png", dpi=100))
    )

    # -- Figure 4: q = 0.5 ------------------------------------------------------------------------
    fig = Figure(figsize=(14.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, P in zip(axes, (225, big_q05), strict=True):
        row, dens, exact = one_case(P, 0.5, seed=4 + P)
        results["q0.5"].append(row)
        _panel(ax, row, dens, exact)
    fig.suptitle("Figure 4: Marcenko-Pastur with T = 2P (q = 0.5)")
    results["figures"].append(
        str(dc.save_figure(fig, out / "fig4_marchenko_pastur_q05.png", dpi=100))
    )

    _print(results["q2"] + results["q0.5"])
    for path in results["figures"]:
        print(f"wrote {path}")
    return results


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="P = 1000 for the large panels")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNGs")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
