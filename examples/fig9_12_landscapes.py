"""Figures 9-12 of the paper: the loss and accuracy along the Hessian's extreme eigenvectors.

A network trained on the digits data set (offline), the Hessian spectrum at the end of training
with its Ritz vectors saved (``save_eigvec=True``), then the train and test loss and accuracy at
``w* + t u`` along the eigenvectors of the three largest and the three smallest Ritz values and
of the Ritz value nearest zero (section 9; Figures 9 and 10 are the loss and the accuracy,
Figures 11 and 12 the same plots for a second data set).

What the figures show: along the top eigenvector the training loss rises fastest near ``t = 0``,
as the quadratic model ``L + t g.u + theta t^2 / 2`` says (its curvature ``theta`` IS the Ritz
value), but only locally: the quadratic model holds in a small neighbourhood only (for the
well-trained full-size network the measured curvature at ``t = 0.1`` is already well above
``theta``), and further out other directions overtake the top one (the paper's observation for
VGG-16). Directions of (near-)zero curvature stay flat.

The workflow is the paper's (Appendix C.2): ``dc.train_network`` -> ``dc.compute_eigenspectrum``
(``save_eigvec=True``) -> ``dc.build_loss_landscape`` (saves ``.npz`` + ``.json``) ->
``dc.plot_loss_landscape``. The run folder is a temporary directory unless ``--work DIR``.

Run ``python examples/fig9_12_landscapes.py [--small] [--out DIR] [--work DIR]`` (full size: an
MLP with hidden layers (64, 64) on the 1437 training images, m = 60: seconds on an idle CPU;
``--small``: one hidden layer of 32, 500 images: seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
DIRECTIONS = ["extremes:3", "eigenvalue:0"]  # 3 largest, 3 smallest, the flattest


def config(small: bool) -> dict[str, Any]:
    """Network, data, Lanczos and landscape sizes of the full and the small run."""
    if small:
        return {"hidden": (32,), "subsample": 500, "epochs": 5, "steps": 30, "dist": 1.0}
    return {"hidden": (64, 64), "subsample": None, "epochs": 20, "steps": 60, "dist": 1.0}


def curvature_along(res: dc.LandscapeResult, d: int, i: int) -> float:
    """Symmetric second difference ``(L(t) + L(-t) - 2 L(0)) / t^2`` of the train loss at ``t_i``.

    The linear term ``t g.u`` cancels, so for small ``t`` this is ``u^T H u`` (the Ritz value of
    an eigen-direction) up to ``O(t^2)``.
    """
    t, L = res.t, res.train_loss[d]
    j = int(np.argmin(np.abs(t + t[i])))  # the mirror point -t_i
    c = int(np.argmin(np.abs(t)))
    return float((L[i] + L[j] - 2 * L[c]) / t[i] ** 2)


def analyse(res: dc.LandscapeResult) -> dict[str, Any]:
    """Numbers behind the figure: curvatures near 0, loss rises, the flattest direction."""
    t = res.t
    c = int(np.argmin(np.abs(t)))
    near = c + 1  # the smallest t > 0
    top = int(np.nanargmax(res.eigenvalues))
    flat = int(np.nanargmin(np.abs(res.eigenvalues)))
    rows = []
    pm = [2 * c - near, near]  # the points -t_1 and t_1
    for d, label in enumerate(res.labels):
        L = res.train_loss[d]
        rows.append(
            {
                "label": label,
                "ritz_value": float(res.eigenvalues[d]),
                "theta_uHu": float(res.thetas[d]),
                "slope_g_u": float(res.slopes[d]),
                "curvature_near_0": curvature_along(res, d, near),
                "rise_near_0": float((L[near] + L[2 * c - near]) / 2 - L[c]),
                "max_rise": float(np.max(L) - L[c]),
                "train_loss_at_ends": [float(L[0]), float(L[-1])],
                "test_loss_at_ends": [float(res.test_loss[d][0]), float(res.test_loss[d][-1])],
                # error of the quadratic model at t = +-t_1, relative to the loss change there
                "quadratic_rel_error_near_0": float(
                    np.max(np.abs(L[pm] - res.quadratic[d][pm])) / np.max(np.abs(L[pm] - L[c]))
                ),
            }
        )
    return {
        "t_near_0": float(t[near]),
        "train_loss_at_0": float(res.train_loss[0][c]),
        "top": top,
        "flat": flat,
        "directions": rows,
        "largest_loss_at_dist": res.labels[int(np.argmax(res.train_loss[:, [0, -1]].max(axis=1)))],
    }


def main(small: bool = False, out: Path = DEFAULT_OUT, work: Path | None = None) -> dict[str, Any]:
    """Reproduce Figures 9-10 (loss, accuracy); write two PNGs and return the numbers.

    Args:
        small: the small configuration (seconds).
        out: folder of the PNGs.
        work: folder of the run (checkpoint, spectrum, landscape); temporary when ``None``.

    Returns:
        ``{"config", "P", "N", "analysis", "seconds", "figures"}``; ``analysis`` holds, per
        direction, its Ritz value, ``u^T H u``, the slope ``g.u``, the symmetric second
        difference of the train loss at the smallest ``t`` (``~ u^T H u``), the loss rise there
        and over the whole range, and the error of the quadratic model near 0.
    """
    cfg = config(small)
    out = Path(out)
    mk = {"hidden": cfg["hidden"]}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(work) if work is not None else Path(tmp)
        t0 = time.perf_counter()
        trained = dc.train_network(
            run_dir / "run",
            "digits",
            model="mlp",
            model_kwargs=mk,
            optimizer="SGD",
            optimizer_kwargs={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            epochs=cfg["epochs"],
            subsample=cfg["subsample"],
            augment=False,
            seed=0,
            device="cpu",
            verbose=False,
        )
        t_train = time.perf_counter() - t0
        spectrum_path = run_dir / "spectra" / "spectrum-hessian"
        spec = dc.compute_eigenspectrum(
            dataset="digits",
            model="mlp",
            model_kwargs=mk,
            checkpoint_path=trained.final_checkpoint,
            curvature_matrix="hessian_lanczos",
            lanczos_iters=cfg["steps"],
            save_spectrum_path=spectrum_path,
            save_eigvec=True,
            num_subsamples=cfg["subsample"],
            seed=1,
            device="cpu",
            verbose=False,
        )
        t_spectrum = time.perf_counter() - t0 - t_train
        landscape_path = run_dir / "losslandscape"
        dc.build_loss_landscape(
            dataset="digits",
            model="mlp",
            dist=cfg["dist"],
            n_points=21,
            spectrum_path=spectrum_path,
            checkpoint_path=trained.final_checkpoint,
            save_path=landscape_path,
            directions=DIRECTIONS,
            device="cpu",
            verbose=False,
        )
        t_landscape = time.perf_counter() - t0 - t_train - t_spectrum
        # plot from the saved file, as in the paper's Appendix D
        res = dc.LandscapeResult.load(landscape_path.with_suffix(".npz"))
        net = f"MLP {'-'.join(map(str, cfg['hidden']))} on digits (P={spec.info['P']:,})"
        title = net + f": {{}} along the Hessian's extreme Ritz vectors (m={cfg['steps']})"
        figures = []
        for metric, name, fig_no in (
            ("loss", "fig9_landscape_loss.png", 9),
            ("accuracy", "fig10_landscape_accuracy.png", 10),
        ):
            fig = dc.plot_loss_landscape(
                landscape_path.with_suffix(".npz"),
                metric=metric,
                title=f"Figure {fig_no}: " + title.format(metric),
            )
            figures.append(str(dc.save_figure(fig, out / name, dpi=100)))

    ana = analyse(res)
    print(
        f"P={spec.info['P']}, N={spec.info['N']}, m={cfg['steps']}; train {t_train:.1f} s, "
        f"spectrum {t_spectrum:.1f} s, landscape {t_landscape:.1f} s"
    )
    print(f"train loss at w*: {ana['train_loss_at_0']:.4f}; t near 0 = {ana['t_near_0']:g}")
    print(
        f"{'direction':>10} {'Ritz value':>11} {'u^T H u':>10} {'g.u':>9} "
        f"{'2nd diff':>10} {'rise near 0':>12} {'max rise':>9} {'quad. err':>9}"
    )
    for r in ana["directions"]:
        print(
            f"{r['label']:>10} {r['ritz_value']:>11.4g} {r['theta_uHu']:>10.4g} "
            f"{r['slope_g_u']:>9.2g} {r['curvature_near_0']:>10.4g} {r['rise_near_0']:>12.3g} "
            f"{r['max_rise']:>9.3g} {r['quadratic_rel_error_near_0']:>9.2g}"
        )
    print(f"largest train loss at |t| = dist: {ana['largest_loss_at_dist']}")
    for path in figures:
        print(f"wrote {path}")
    return {
        "config": cfg,
        "P": spec.info["P"],
        "N": spec.info["N"],
        "train_loss": trained.stats[-1]["train_loss"],
        "test_accuracy": trained.stats[-1]["test_accuracy"],
        "analysis": ana,
        "seconds": {"train": t_train, "spectrum": t_spectrum, "landscape": t_landscape},
        "figures": figures,
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smaller network and data set")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNGs")
    parser.add_argument("--work", type=Path, default=None, help="keep the run folder here")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out, work=args.work)
