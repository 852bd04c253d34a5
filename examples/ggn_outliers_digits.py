"""Outliers of the Gauss-Newton spectrum against the number of classes (Papyan's observation).

Papyan (2019, 2020) found that the generalised Gauss-Newton matrix of a classifier with ``C``
classes has ``C`` (or ``C - 1``) outliers standing out of its bulk, produced by the class means
of the logit gradients. This example builds the exact GGN ``G = (1/N) sum_n J_n^T H_n J_n``
(``H_n = diag(p_n) - p_n p_n^T``) as ``A^T A`` from per-sample Jacobians, computes its top 40
eigenvalues (ARPACK on ``v -> A^T A v``) of a one-hidden-layer ReLU MLP (64 units) on scikit-learn's
digits, for all 10 classes and for the 3-class subset {0, 1, 2}, at initialisation and (full
size) after 10 full-batch Adam steps, over three initialisation seeds, and counts the outliers by
the gap rule of :func:`deepcurvature.outliers`. The matrix is checked against ``dc.ggn``'s
product. At this scale the count is near ``C`` or ``C - 1`` for 10 classes but not reliably
for 3: the returned rows say what holds for each seed.

Run ``python examples/ggn_outliers_digits.py [--small] [--out DIR]`` (a minute; ``--small``
analyses the initialisation of one seed, seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call, jacrev, vmap

import deepcurvature as dc
from deepcurvature.analysis.outliers import outliers
from deepcurvature.plotting.style import OKABE_ITO

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
HIDDEN = 64
N_SAMPLES = 600
TOP_K = 40  # top eigenvalues computed (the gap rule looks at the top third)
SHOWN = 25  # top eigenvalues drawn per panel
SEEDS = (0, 1, 2)


def digits_subset(classes: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits of ``classes``: standardised float64 features, labels 0..C-1."""
    images, labels = dc.load_digits_arrays()
    x = images.reshape(len(labels), -1).double()
    x = x[:, x.std(0) > 0]
    x = (x - x.mean(0)) / x.std(0)
    keep = torch.isin(labels, torch.tensor(classes))
    y = torch.searchsorted(torch.tensor(classes), labels[keep])
    return x[keep][:n], y[:n]


def ggn_factor(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``A`` ``(N C, P)`` with ``A^T A = G = (1/N) sum_n J_n^T (diag p_n - p_n p_n^T) J_n``."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logits(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi[None],))[0]

    jac = vmap(jacrev(logits), in_dims=(None, 0))(params, x)
    J = torch.cat([jac[k].reshape(x.shape[0], -1, params[k].numel()) for k in params], dim=2)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    evals, U = torch.linalg.eigh(H)  # H_n = U diag(e) U^T = A_n^T A_n, A_n = diag(sqrt e) U^T
    A = (U.transpose(1, 2) * evals.clamp(min=0).sqrt()[:, :, None]) @ J
    return A.reshape(-1, J.shape[2]) / x.shape[0] ** 0.5


def top_eigenvalues(A: torch.Tensor, k: int) -> np.ndarray:
    """The ``k`` largest eigenvalues of ``A^T A``, descending, by ARPACK on ``v -> A^T (A v)``."""
    a = A.numpy()
    op = LinearOperator((a.shape[1],) * 2, matvec=lambda v: a.T @ (a @ v), dtype=np.float64)
    values = eigsh(op, k=k, which="LA", tol=1e-10, v0=np.ones(a.shape[1]))[0]
    return np.sort(values)[::-1]


def analyse(classes: list[int], steps: list[int], seed: int) -> list[dict[str, Any]]:
    """Outliers of the GGN at each number of Adam steps in ``steps`` (ascending)."""
    x, y = digits_subset(classes, N_SAMPLES)
    torch.manual_seed(seed)
    model = dc.MLP(x.shape[1], len(classes), hidden=[HIDDEN], activation="relu").double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    rows, done = [], 0
    for target in steps:
        while done < target:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            done += 1
        A = ggn_factor(model, x)
        op = dc.ggn(model, loss_fn, [(x, y)], dtype=torch.float64)
        v = torch.randn(A.shape[1], generator=torch.Generator().manual_seed(2), dtype=A.dtype)
        Gv = A.T @ (A @ v)
        check = float((op.matvec(v) - Gv).abs().max() / Gv.abs().max())
        top = top_eigenvalues(A, TOP_K)
        res = outliers(top, "gap")  # the top of the spectrum: its bulk edge and outliers
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == y).double().mean())
        rows.append(
            {
                "C": len(classes),
                "seed": seed,
                "steps": target,
                "P": int(A.shape[1]),
                "N": int(x.shape[0]),
                "accuracy": accuracy,
                "outliers": res.count,
                "outlier_values": res.values.tolist(),
                "bulk_edge": res.upper_edge,
                "gap_ratio": res.fit.get("gap_ratio_right"),
                "top": top[:SHOWN].tolist(),
                "ggn_check": check,
            }
        )
    return rows


def _panel(ax: Any, row: dict[str, Any], label: str) -> None:
    top = np.array(row["top"])
    k = row["outliers"]
    rank = np.arange(1, top.size + 1)
    ax.semilogy(rank[k:], top[k:], "o", color=OKABE_ITO["sky_blue"], label="bulk")
    ax.semilogy(rank[:k], top[:k], "D", color=OKABE_ITO["reddish_purple"], label=f"{k} outliers")
    ax.axhline(row["bulk_edge"], color=OKABE_ITO["bluish_green"], linestyle="--", label="edge")
    ax.axvline(row["C"] + 0.5, color=OKABE_ITO["black"], linestyle=":", label="C")
    ax.axvline(row["C"] - 0.5, color=OKABE_ITO["orange"], linestyle=":", label="C − 1")
    ax.set_xlabel("rank")
    ax.set_ylabel("GGN eigenvalue")
    ax.set_title(
        f"({label}) C = {row['C']}, {row['steps']} Adam steps "
        f"(train acc {row['accuracy']:.2f}): {k} outliers"
    )
    ax.legend(fontsize="small", loc="upper right")


def main(small: bool = False, out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Count the GGN outliers for 10 and 3 classes; write ``ggn_outliers_digits.png``.

    Returns:
        ``{"rows": [...], "figure"}``: per (classes, steps) the size, accuracy, outlier count
        and values, bulk edge, gap ratio, the top eigenvalues and the check against ``dc.ggn``.
    """
    out = Path(out)
    steps = [0] if small else [0, 10]
    seeds = SEEDS[:1] if small else SEEDS
    rows = [
        row
        for classes in (list(range(10)), [0, 1, 2])
        for seed in seeds
        for row in analyse(classes, steps, seed)
    ]
    shown = [r for r in rows if r["seed"] == seeds[0]]
    fig = Figure(figsize=(6.5 * len(steps), 9.0), layout="constrained")
    axes = fig.subplots(2, len(steps), squeeze=False)
    for i, (ax, row) in enumerate(zip(axes.ravel(), shown, strict=True)):
        _panel(ax, row, "abcd"[i])
    fig.suptitle(f"Outliers of the GGN of a ReLU MLP ({HIDDEN} hidden units) on digits: gap rule")
    path = dc.save_figure(fig, out / "ggn_outliers_digits.png", dpi=80)
    for r in rows:
        print(
            f"C = {r['C']:>2}, seed {r['seed']}, {r['steps']:>2} steps, P = {r['P']}: "
            f"{r['outliers']} outliers "
            f"(gap ratio {r['gap_ratio']:.1f}), edge {r['bulk_edge']:.3g}, "
            f"top {np.round(r['top'][:12], 3).tolist()}"
        )
    print(f"wrote {path}")
    return {"rows": rows, "figure": str(path)}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="initialisation only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out)
