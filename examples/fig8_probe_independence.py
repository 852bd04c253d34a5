"""Figure 8 of the paper: two random probes give (nearly) the same spectrum of a network.

A network trained on the digits data set (offline, 1437 training images of 8x8 pixels), then
the spectrum of its Hessian over the whole training set with ``m`` Lanczos steps, twice, from
two different random probe vectors (section 8). The two stem plots are nearly
indistinguishable: the extreme Ritz values agree to many digits (they converge first), and the
moments agree within the spread Lemma 1 predicts for one probe (``Var[v^T H v] <= 2 tr(H^2)``
for Rademacher probes).

The workflow is the paper's (Appendix C): ``dc.train_network`` writes checkpoints into a run
folder, ``dc.compute_eigenspectrum`` reads a checkpoint and saves each spectrum as
``.npz`` + ``.json``, and ``dc.plot_spectrum`` draws the saved files. The run folder is a
temporary directory unless ``--work DIR`` is given.

Run ``python examples/fig8_probe_independence.py [--small] [--out DIR] [--work DIR]``
(full size: an MLP with hidden layers (64, 64), P = 8,970, 20 epochs, m = 60: about ten seconds
on an idle CPU; ``--small``: one hidden layer of 32, 500 training images, 5 epochs, m = 30).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import deepcurvature as dc

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
PROBE_SEEDS = (2, 3)  # the paper's "vector 2" and "vector 3"


def config(small: bool) -> dict[str, Any]:
    """Network, data and Lanczos sizes of the full and the small run."""
    if small:
        return {"hidden": (32,), "subsample": 500, "epochs": 5, "steps": 30}
    return {"hidden": (64, 64), "subsample": None, "epochs": 20, "steps": 60}


def train(run_dir: Path, cfg: dict[str, Any]) -> dc.TrainResult:
    """Train the MLP on digits with the paper's recipe (SGD, momentum 0.9, linear schedule)."""
    res = dc.train_network(
        run_dir,
        "digits",
        model="mlp",
        model_kwargs={"hidden": cfg["hidden"]},
        optimizer="SGD",
        optimizer_kwargs={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        epochs=cfg["epochs"],
        schedule="linear",
        subsample=cfg["subsample"],
        augment=False,
        seed=0,
        device="cpu",
        verbose=False,
    )
    return res


def spectra(run_dir: Path, checkpoint: Path, cfg: dict[str, Any]) -> list[Path]:
    """The Hessian spectrum at ``checkpoint`` from each probe seed, saved next to the run."""
    paths = []
    for seed in PROBE_SEEDS:
        path = run_dir / "spectra" / f"spectrum-hessian-probe{seed}"
        dc.compute_eigenspectrum(
            dataset="digits",
            model="mlp",
            model_kwargs={"hidden": cfg["hidden"]},
            checkpoint_path=checkpoint,
            curvature_matrix="hessian_lanczos",
            lanczos_iters=cfg["steps"],
            save_spectrum_path=path,
            num_subsamples=cfg["subsample"],
            seed=seed,
            device="cpu",
            verbose=False,
        )
        paths.append(path)
    return paths


def compare(a: dc.SpectralDensity, b: dc.SpectralDensity, P: int) -> dict[str, Any]:
    """Extreme Ritz values and moments of two densities, with Lemma 1's spread of a moment."""
    out: dict[str, Any] = {
        "lambda_max": [a.lambda_max, b.lambda_max],
        "lambda_min": [a.lambda_min, b.lambda_min],
        "lambda_max_rel_diff": abs(a.lambda_max - b.lambda_max) / abs(a.lambda_max),
        "lambda_min_diff_over_lambda_max": abs(a.lambda_min - b.lambda_min) / abs(a.lambda_max),
        "top3": [np.sort(a.nodes)[-3:].tolist(), np.sort(b.nodes)[-3:].tolist()],
    }
    for k in (1, 2):
        ma, mb = a.moment(k), b.moment(k)
        # Lemma 1: one probe's estimate of tr(H^k)/P has variance <= 2 tr(H^2k) / P^2
        m2k = (a.moment(2 * k) + b.moment(2 * k)) / 2
        out[f"moment{k}"] = [ma, mb]
        out[f"moment{k}_diff"] = abs(ma - mb)
        out[f"moment{k}_lemma1_sd_of_diff"] = float(np.sqrt(2 * 2 * m2k / P))
    return out


def main(small: bool = False, out: Path = DEFAULT_OUT, work: Path | None = None) -> dict[str, Any]:
    """Reproduce Figure 8; write ``fig8_probe_independence.png`` and return the numbers.

    Args:
        small: the small configuration (seconds).
        out: folder of the PNG.
        work: folder of the run (checkpoints, spectra); a temporary one when ``None``.

    Returns:
        ``{"config", "P", "N", "comparison", "train_loss", "test_accuracy", "seconds",
        "figure"}``; ``comparison`` holds the extreme Ritz values and the first two moments from
        both probes, their differences, and Lemma 1's standard deviation of a difference.
    """
    cfg = config(small)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(work) if work is not None else Path(tmp)
        t0 = time.perf_counter()
        trained = train(run_dir / "run", cfg)
        checkpoint = trained.final_checkpoint
        t_train = time.perf_counter() - t0
        paths = spectra(run_dir, checkpoint, cfg)
        t_spectra = time.perf_counter() - t0 - t_train
        results = [dc.SpectrumResult.load(p) for p in paths]

        fig = Figure(figsize=(14.0, 5.0), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, path, seed in zip(axes, paths, PROBE_SEEDS, strict=True):
            # draw from the saved file, as in the paper's Appendix D
            dc.plot_spectrum(
                path.with_suffix(".npz"),
                ax=ax,
                title=f"Hessian, Lanczos m={cfg['steps']}, probe seed {seed}",
            )
        P, N = results[0].info["P"], results[0].info["N"]
        fig.suptitle(
            f"Figure 8: the same network spectrum from two random vectors "
            f"(MLP {'-'.join(map(str, cfg['hidden']))} on digits, P={P:,}, N={N:,})"
        )
        path = dc.save_figure(fig, out / "fig8_probe_independence.png", dpi=100)

    cmp = compare(results[0].density, results[1].density, P)
    print(f"P={P}, N={N}, m={cfg['steps']}; train {t_train:.1f} s, two spectra {t_spectra:.1f} s")
    print(f"{'':>10} {'probe ' + str(PROBE_SEEDS[0]):>14} {'probe ' + str(PROBE_SEEDS[1]):>14}")
    for key in ("lambda_max", "lambda_min", "moment1", "moment2"):
        print(f"{key:>10} {cmp[key][0]:>14.6g} {cmp[key][1]:>14.6g}")
    print(f"top 3 Ritz values: {np.round(cmp['top3'][0], 4)} vs {np.round(cmp['top3'][1], 4)}")
    for k in (1, 2):
        print(
            f"moment {k}: |difference| {cmp[f'moment{k}_diff']:.3g}, Lemma 1 standard "
            f"deviation of a difference <= {cmp[f'moment{k}_lemma1_sd_of_diff']:.3g}"
        )
    print(f"wrote {path}")
    return {
        "config": cfg,
        "P": P,
        "N": N,
        "comparison": cmp,
        "train_loss": trained.stats[-1]["train_loss"],
        "test_accuracy": trained.stats[-1]["test_accuracy"],
        "seconds": {"train": t_train, "spectra": t_spectra},
        "figure": str(path),
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smaller network and data set")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNG")
    parser.add_argument("--work", type=Path, default=None, help="keep the run folder here")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(small=args.small, out=args.out, work=args.work)
