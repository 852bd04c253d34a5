"""``deepcurvature plot``: the figure of a result file (spectrum, training run, landscape...)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...io.outputs import OutputFolder
from ..errors import CommandError
from ._common import check_dpi

NAME = "plot"
HELP = "draw the figure of a result file: spectrum, training, landscape or an analysis"
DESCRIPTION = (
    "Detect what RESULT_FILE holds and write the matching figure as PNG (and PDF with --pdf), "
    "atomically, printing the paths written. A spectrum (.npz/.json written by "
    "SpectrumResult.save or SpectralDensity.save) gives the paper's stem plot (--mode smooth adds "
    "a kernel-smoothed curve, --mode cdf draws the cumulative spectral mass); a training run's "
    "stats.json, or its folder, gives the loss, accuracy and learning-rate curves; a loss "
    "landscape file (LandscapeResult) gives the loss (with --metric accuracy: the accuracy) "
    "along each direction; loss statistics (loss_stats.json of 'deepcurvature stats') give the "
    "gradient noise, curvature noise and shrinkage coefficient per layer over the checkpoints. "
    "The results of the random-matrix analyses are drawn by their plot "
    "functions: a maximum-entropy density (MaxEntResult, over the stems of its spectrum when "
    "the file it came from is still there), outliers (OutlierResult), spacing-ratio statistics "
    "(LocalStatistics) and batch-size extremes (BatchExtremesResult). The figure goes next to "
    "the file (same name, .png) unless --out is given."
)

MODES = ("lanczos", "smooth", "cdf")
_NOUN = {
    "training": "training run",
    "spectrum": "spectrum",
    "landscape": "loss landscape",
    "loss-stats": "loss statistics file",
    "maxent": "maximum-entropy density",
    "outliers": "outlier result",
    "local-statistics": "local-statistics result",
    "batch-extremes": "batch-size extremes result",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result_file", metavar="RESULT_FILE", help="result file or run folder")
    parser.add_argument(
        "--out", default=None, help="PNG file to write (default: beside the file)%(default).0s"
    )
    parser.add_argument("--pdf", action="store_true", help="also write a PDF beside the PNG")
    parser.add_argument(
        "--mode", choices=MODES, default="lanczos", help="spectrum figure (spectra only)"
    )
    parser.add_argument(
        "--metric",
        choices=("loss", "accuracy"),
        default="loss",
        help="landscape figure (landscapes only)",
    )
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing figure (refused otherwise)"
    )


def _default_out(kind: str, file: Path, mode: str) -> Path:
    if kind == "training":
        return file.parent / "training.png"
    stem = file.with_suffix("").name
    if kind == "spectrum" and mode != "lanczos":
        stem += f"-{mode}"
    if kind == "landscape" and mode != "loss":
        stem += f"-{mode}"
    return file.parent / f"{stem}.png"


def run(args: argparse.Namespace) -> int:
    from ...plotting import save_figure
    from ...plotting.style import close_figure
    from ...report import detect_result, plot_result

    source = Path(args.result_file)
    kind, file = detect_result(source)  # FileNotFoundError / ValueError name the problem
    if kind == "checkpoint":
        raise CommandError(
            f"{source} is a checkpoint, which has no figure of its own: plot its run's "
            f"stats.json (or the run folder), or a spectrum computed from it"
        )
    if args.mode != "lanczos" and kind != "spectrum":
        raise CommandError(
            f"--mode {args.mode} applies to spectra only; {source} is a {_NOUN[kind]}"
        )
    if args.metric != "loss" and kind != "landscape":
        raise CommandError(
            f"--metric {args.metric} applies to landscapes only; {source} is a {_NOUN[kind]}"
        )
    check_dpi(args.dpi)
    variant = args.metric if kind == "landscape" else args.mode
    out = Path(args.out) if args.out else _default_out(kind, file, variant)
    if out.suffix.lower() != ".png":
        raise CommandError(f"--out must end with .png (got {out.name!r}); add --pdf for a PDF")
    if out.is_dir():
        raise CommandError(f"--out {out} is a folder: give the PNG file to write")
    extra = {"mode": args.mode} if kind == "spectrum" else {}
    if kind == "landscape":
        extra = {"metric": args.metric}
    names = [out.name] + ([out.with_suffix(".pdf").name] if args.pdf else [])
    with OutputFolder.claim(
        out.parent, kind="plot", outputs=names, overwrite=args.overwrite, fix="pass --overwrite"
    ):
        _, fig = plot_result(file, **extra)
        try:
            print(save_figure(fig, out, dpi=args.dpi))
            if args.pdf:
                print(save_figure(fig, out.with_suffix(".pdf")))
        finally:
            close_figure(fig)  # written: nothing stays open in pyplot
    return 0
