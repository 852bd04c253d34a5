"""The paper's section 6 examples on random matrices, end to end (``deepcurvature demo``).

For each size ``P`` it draws a Wigner matrix (Fig. 2) and two Marcenko-Pastur matrices with
``q = 0.5`` and ``q = 2`` (Figs. 3-4), learns each spectral density with ``steps`` Lanczos steps
from one random probe, and compares it with the exact eigenvalues and the limiting law; then it
builds the section 6.4 synthetic matrix (Fig. 6) at the largest size and runs 5 and ``steps``
Lanczos steps from the same probe, next to the useless diagonal approximation. Every matrix is
dense and small, so the whole demo takes seconds on a laptop CPU.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .io import atomic_write_text
from .io.results import json_default
from .linalg import SpectralDensity, lanczos
from .plotting import plot_spectrum, save_figure
from .plotting.spectrum import COLORS
from .progress import ProgressBar
from .rmt import (
    kolmogorov_distance,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_edges,
    semicircle_cdf,
    semicircle_density,
    synthetic_spectrum,
    wigner,
    wigner_radius,
    wishart,
)

__all__ = ["DEMO_FILES", "run_demo", "validate_demo_arguments"]

#: The files :func:`run_demo` writes into its output folder.
DEMO_FILES = (
    "wigner.png",
    "marchenko_pastur_q0.5.png",
    "marchenko_pastur_q2.png",
    "synthetic.png",
    "summary.json",
)
MAX_SIZE = 10_000
MAX_PANELS = 4
MIN_SIZE = 20
#: Relative threshold of "zero" eigenvalues and Ritz values: ``|x| <= ZERO_TOL * max|x|``.
ZERO_TOL = 1e-3


def _is_int(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def validate_demo_arguments(sizes: Sequence[int], steps: int, seed: int) -> tuple[int, ...]:
    """Check the demo's arguments before anything is computed or written.

    Returns:
        The sizes, deduplicated and ascending.

    Raises:
        ValueError: naming the bad argument and what would be valid.
    """
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be a positive integer (e.g. --steps 30), got {steps!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(sizes, (int, np.integer)) or len(sizes) == 0:
        raise ValueError("give at least one matrix size (e.g. --sizes 225 1000)")
    if any(not _is_int(p) for p in sizes):
        raise ValueError(f"matrix sizes must be integers, got {list(sizes)!r}")
    clean = tuple(sorted({int(p) for p in sizes}))
    if len(clean) > MAX_PANELS:
        raise ValueError(f"give at most {MAX_PANELS} different sizes (one panel each), got {clean}")
    if clean[0] < MIN_SIZE or clean[-1] > MAX_SIZE:
        raise ValueError(
            f"matrix sizes must lie in [{MIN_SIZE}, {MAX_SIZE}] (the demo builds dense P x P "
            f"matrices and their exact eigenvalues), got {clean}"
        )
    if steps > clean[0] // 2:
        raise ValueError(
            f"steps={steps} is too large for the smallest size P={clean[0]}: Lanczos learns a "
            f"spectral density from m << P steps; use --steps <= {clean[0] // 2} or larger sizes"
        )
    return clean


def _sub_seed(seed: int, *key: int) -> int:
    """A reproducible seed for one experiment, independent of the others."""
    return int(np.random.SeedSequence([seed, *key]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _eigvalsh(matrix: torch.Tensor) -> np.ndarray:
    """Exact eigenvalues, ascending, in float64 (torch's LAPACK, in torch's thread pool)."""
    return torch.linalg.eigvalsh(matrix.to(torch.float64)).cpu().numpy()


def _zero_mass(values: np.ndarray) -> float:
    scale = float(np.abs(values).max())
    return float(np.mean(np.abs(values) <= ZERO_TOL * scale))


def _nearest_zero(density: SpectralDensity) -> tuple[float, float]:
    i = int(np.argmin(np.abs(density.nodes)))
    return float(density.nodes[i]), float(density.weights[i])


def _compare(
    name: str,
    P: int,
    exact: np.ndarray,
    density: SpectralDensity,
    theory_edges: tuple[float, float] | None,
    theory_zero_mass: float | None,
    ks: float | None,
    **extra: Any,
) -> dict[str, Any]:
    node0, weight0 = _nearest_zero(density)
    row: dict[str, Any] = {
        "name": name,
        "P": P,
        "steps": int(density.metadata.get("steps", density.nodes.size)),
        "probe_seed": density.metadata.get("seed"),
        "theory_edges": list(theory_edges) if theory_edges is not None else None,
        "exact_min": float(exact.min()),
        "exact_max": float(exact.max()),
        "ritz_min": density.lambda_min,
        "ritz_max": density.lambda_max,
        "ritz_min_error": density.lambda_min - float(exact.min()),
        "ritz_max_error": density.lambda_max - float(exact.max()),
        "theory_zero_mass": theory_zero_mass,
        "exact_zero_mass": _zero_mass(exact),
        "slq_zero_mass": density.mass_near_zero(ZERO_TOL),
        "slq_node_nearest_zero": node0,
        "slq_weight_nearest_zero": weight0,
        "exact_second_moment": float(np.mean(exact**2)),
        "slq_second_moment": density.moment(2),
        "exact_negative_mass": float(np.mean(exact < -ZERO_TOL * float(np.abs(exact).max()))),
        "slq_negative_mass": density.negative_mass(ZERO_TOL * float(np.abs(density.nodes).max())),
        "ks_exact_vs_law": ks,
    }
    row.update(extra)
    return row


def _panel_figure(n: int) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2 * n, 4.8), layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    return fig, axes


def _bins(P: int) -> int:
    return int(np.clip(round(2 * math.sqrt(P)), 20, 60))


def _synthetic_figure(
    exact: np.ndarray, diag: np.ndarray, d_short: SpectralDensity, d_long: SpectralDensity
) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.8, 9.0), layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    P = exact.size
    lo, hi = float(exact.min()), float(exact.max())
    pad = 0.04 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, 61)
    a.hist(exact, bins=edges, weights=np.full(P, 1.0 / P), color=COLORS["histogram"])
    a.set_yscale("log")
    a.set_xlabel("eigenvalue λ")
    a.set_ylabel("mass per bin (log scale)")
    a.set_title(f"(a) exact eigenvalues, P={P}")
    outliers = exact[(exact > 15.0) | (exact < 0.0)]
    for ax, dens, tag in ((b, d_short, "(b)"), (d, d_long, "(d)")):
        m = dens.metadata.get("steps")
        plot_spectrum(
            dens,
            ax=ax,
            title=f"{tag} Lanczos m={m}, same probe",
            rug=outliers,  # the exact outliers: which ones did Lanczos resolve?
            rug_label="exact outliers",
        )
        ax.set_xlim(lo - pad, hi + pad)
    c.hist(
        diag,
        bins=edges,
        weights=np.full(P, 1.0 / P),
        color=COLORS["extra"],
        label="diagonal elements H_ii",
    )
    c.hist(
        exact,
        bins=edges,
        weights=np.full(P, 1.0 / P),
        histtype="step",
        color=COLORS["histogram"],
        linewidth=1.5,
        label="exact eigenvalues",
    )
    c.set_xlabel("value (eigenvalue λ or diagonal element)")
    c.set_ylabel("mass per bin")
    c.set_title(f"(c) diagonal approximation: H_ii in [{diag.min():.2f}, {diag.max():.2f}]")
    c.set_xlim(lo - pad, hi + pad)
    c.legend(loc="upper right", fontsize="small")
    fig.suptitle("Section 6.4 synthetic spectrum: spike at 0, bulk U[0,15], outliers")
    return fig


def _resolved(outliers: np.ndarray, nodes: np.ndarray, tol: float) -> int:
    if outliers.size == 0:
        return 0
    return int(np.sum(np.min(np.abs(outliers[:, None] - nodes[None, :]), axis=1) <= tol))


def run_demo(
    out_dir: str | os.PathLike,
    *,
    sizes: Sequence[int] = (225, 1000),
    steps: int = 30,
    seed: int = 0,
    verbose: bool = True,
) -> list[Path]:
    """Run the section 6 examples and write their figures and a ``summary.json``.

    Figures (one panel per size): ``wigner.png`` (Fig. 2: stems of ``steps`` Lanczos steps from
    one probe, histogram of the exact eigenvalues, semicircle of radius ``2 sqrt(P)``),
    ``marchenko_pastur_q0.5.png`` and ``marchenko_pastur_q2.png`` (Figs. 3-4, with the atom of
    mass 1/2 at zero for ``q = 2``) and ``synthetic.png`` (Fig. 6 at the largest size: exact
    histogram, Lanczos with 5 and ``steps`` steps from the same probe, the diagonal).
    ``summary.json`` holds, per experiment, the theoretical edges, exact and Ritz extremes,
    the mass at zero (theory, exact, SLQ), second moments and the Kolmogorov distance of the
    exact spectrum to the law.

    Args:
        out_dir: folder to write into (created if missing; files of the same names are replaced).
        sizes: matrix sizes ``P`` (1 to 4 of them, each in ``[20, 10000]``).
        steps: Lanczos steps ``m`` (at most half the smallest size).
        seed: master seed; every matrix and probe seed is derived from it.
        verbose: show a progress bar.

    Returns:
        The paths written: the four PNGs, then ``summary.json``.

    Raises:
        ValueError: a bad argument (checked before anything is written).
    """
    sizes = validate_demo_arguments(sizes, steps, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder: choose another path")
    experiments: list[dict[str, Any]] = []
    written: list[Path] = []
    n_tasks = 3 * len(sizes) + 1 + 4
    with ProgressBar(n_tasks, "demo", verbose=verbose) as bar:
        # -- Wigner (section 6.1, Fig. 2) ------------------------------------------------------
        fig, axes = _panel_figure(len(sizes))
        for k, P in enumerate(sizes):
            bar.set_info(f"Wigner P={P}")
            H = wigner(P, seed=_sub_seed(seed, 1, P))
            exact = _eigvalsh(H)
            dens = lanczos(H, steps, seed=_sub_seed(seed, 2, P), verbose=False).density()
            R = wigner_radius(P)
            ks = kolmogorov_distance(exact, lambda x, R=R: semicircle_cdf(x, R))
            experiments.append(
                _compare("wigner", P, exact, dens, (-R, R), 0.0, ks, radius=R, normalize=False)
            )
            plot_spectrum(
                dens,
                exact_eigenvalues=exact,
                reference=lambda x, R=R: semicircle_density(x, R),
                reference_label="semicircle, radius 2√P (eq. 7)",
                bins=_bins(P),
                ax=axes[k],
                title=f"Wigner P={P}: Lanczos m={steps}, 1 probe",
            )
            bar.advance()
        fig.suptitle("Wigner matrices with N(0,1) entries (section 6.1)")
        written.append(save_figure(fig, out / "wigner.png"))
        bar.advance()

        # -- Marcenko-Pastur (section 6.2, Figs. 3-4) ------------------------------------------
        for q_target, fname in (
            (0.5, "marchenko_pastur_q0.5.png"),
            (2.0, "marchenko_pastur_q2.png"),
        ):
            fig, axes = _panel_figure(len(sizes))
            for k, P in enumerate(sizes):
                bar.set_info(f"Marcenko-Pastur q={q_target:g} P={P}")
                T = max(1, round(P / q_target))
                q = P / T
                Y = wishart(P, T, seed=_sub_seed(seed, 3, P, int(q_target * 10)))
                exact = _eigvalsh(Y)
                exact = np.where(np.abs(exact) <= 1e-9 * np.abs(exact).max(), 0.0, exact)
                dens = lanczos(
                    Y, steps, seed=_sub_seed(seed, 4, P, int(q_target * 10)), verbose=False
                ).density()
                ks = kolmogorov_distance(exact, lambda x, q=q: marchenko_pastur_cdf(x, q))
                atom = marchenko_pastur_atom(q)
                experiments.append(
                    _compare(
                        f"marchenko_pastur_q{q_target:g}",
                        P,
                        exact,
                        dens,
                        marchenko_pastur_edges(q),
                        atom,
                        ks,
                        T=T,
                        q=q,
                    )
                )
                plot_spectrum(
                    dens,
                    exact_eigenvalues=exact,
                    reference=lambda x, q=q: marchenko_pastur_density(x, q),
                    reference_label=f"Marcenko-Pastur, q={q:.3g} (eqs. 8-9)",
                    reference_atoms=[(0.0, atom)] if atom > 0 else None,
                    bins=_bins(P),
                    ax=axes[k],
                    title=f"X Xᵀ/T, P={P}, T={T}: Lanczos m={steps}, 1 probe",
                )
                bar.advance()
            fig.suptitle(f"Marcenko-Pastur, q = P/T = {q_target:g} (section 6.2)")
            written.append(save_figure(fig, out / fname))
            bar.advance()

        # -- synthetic spectrum (section 6.4, Fig. 6) ------------------------------------------
        P = sizes[-1]
        bar.set_info(f"synthetic P={P}")
        syn = synthetic_spectrum(P, seed=_sub_seed(seed, 5, P))
        exact = syn.eigenvalues.numpy()
        diag = torch.diagonal(syn.matrix).numpy().copy()
        probe_seed = _sub_seed(seed, 6, P)
        short = min(5, steps)
        d_short = lanczos(syn.matrix, short, seed=probe_seed, verbose=False).density()
        d_long = lanczos(syn.matrix, steps, seed=probe_seed, verbose=False).density()
        outliers = exact[(exact > 15.0) | (exact < 0.0)]
        tol = 0.01 * float(np.abs(exact).max())
        zero_mass = syn.counts["zero"] / P
        for dens in (d_short, d_long):
            experiments.append(
                _compare(
                    f"synthetic_m{dens.metadata['steps']}",
                    P,
                    exact,
                    dens,
                    None,
                    zero_mass,
                    None,
                    outliers=int(outliers.size),
                    outliers_resolved=_resolved(outliers, dens.nodes, tol),
                    outlier_tolerance=tol,
                    diagonal_min=float(diag.min()),
                    diagonal_max=float(diag.max()),
                    counts=syn.counts,
                )
            )
        bar.advance()
        fig = _synthetic_figure(exact, diag, d_short, d_long)
        written.append(save_figure(fig, out / "synthetic.png"))
        bar.advance()

    summary = {
        "kind": "deepcurvature demo (paper section 6)",
        "version": __version__,
        "seed": seed,
        "steps": steps,
        "sizes": list(sizes),
        "zero_tolerance": ZERO_TOL,
        "experiments": experiments,
        "figures": [p.name for p in written],
    }
    text = json.dumps(summary, indent=2, default=json_default, allow_nan=True)
    summary_path = out / "summary.json"
    atomic_write_text(summary_path, text + "\n")
    written.append(summary_path)
    return written
