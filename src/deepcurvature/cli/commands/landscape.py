"""``deepcurvature landscape``: loss and accuracy along eigenvectors or random directions."""

from __future__ import annotations

import argparse
import math
import os
import warnings
from pathlib import Path

from ..errors import CommandError
from ..launch import is_rank0
from ._common import (
    add_checkpoint_data_options,
    add_output_options,
    checkpoint_file,
    claim_output,
    positive,
)

NAME = "landscape"
#: Largest --n-points: each point costs a pass over the data set (two with test data).
MAX_POINTS_LINE = 2001
MAX_POINTS_PLANE = 401
#: The files a run writes into --out.
LANDSCAPE_FILES = ("landscape.npz", "landscape.json", "landscape.png", "landscape-accuracy.png")
HELP = "loss/accuracy along eigenvectors of a saved spectrum or random directions (1-D, 2-D)"
DESCRIPTION = (
    "Evaluate the training and test loss and accuracy of a trained network at w* + t u for "
    "t in [-dist, dist] along directions u: Ritz vectors of a spectrum saved with --save-eigvec "
    "(unit norm, so t is the distance in parameter space), filter-normalised random directions "
    "(Li et al. 2017) or random unit vectors; or over a plane (--plane). The model, data set and "
    "checkpoint are read from the spectrum's metadata unless given. The quadratic model "
    "L + t g.u + (u^T H u) t^2 / 2 is stored beside the training loss. Writes landscape.npz, "
    "landscape.json, landscape.png (and landscape-accuracy.png) into --out. Direction specs: "
    "largest[:k], smallest[:k], most-negative[:k], extremes[:k], all, index:i, eigenvalue:x, "
    "random[:k], gaussian[:k]."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spectrum",
        default=None,
        help="spectrum file (.npz/.json or its stem, or a folder with spectrum.npz) "
        "written with --save-eigvec",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint with the weights w* (default: the spectrum's)",
    )
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's)")
    p.add_argument("--dataset", default=None, help="data set name (default: the checkpoint's)")
    p.add_argument("--data-path", default=None, help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="allow downloading the data set")
    p.add_argument(
        "--directions",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="1-D directions (default: extremes:3 with a spectrum, random:2 without)",
    )
    p.add_argument(
        "--plane",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="a 2-D landscape over the plane of two directions, e.g. 'random:2' "
        "(Li et al.) or 'largest:2' or 'index:-1 smallest'",
    )
    p.add_argument("--dist", type=float, default=1.0, help="largest |t|")
    p.add_argument("--n-points", type=int, default=21, help="points per direction (per axis)")
    p.add_argument(
        "--bn-recompute",
        action="store_true",
        help="recompute batch-norm statistics at every point (one more data pass)",
    )
    p.add_argument(
        "--theta",
        choices=["rayleigh", "ritz"],
        default="rayleigh",
        help="curvature of the quadratic model: u^T H u computed, or the Ritz value",
    )
    p.add_argument("--no-quadratic", action="store_true", help="skip the quadratic model")
    p.add_argument(
        "--bias-bn",
        choices=["zero", "filter"],
        default="zero",
        help="filter normalisation of biases/BN parameters (random directions)",
    )
    add_checkpoint_data_options(p, subsample_default="the checkpoint's or the spectrum's")
    p.add_argument(
        "--use-validation",
        action="store_true",
        help="evaluate on a validation split of the training set, not the test set",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="size of that split (default: the checkpoint's run's split, with its seed, or 0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random directions")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--float64", action="store_true", help="evaluate in float64")
    add_output_options(p, "landscape")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _spectrum_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "spectrum.npz"
    npz = p if p.suffix == ".npz" else p.with_suffix(".npz") if p.suffix == ".json" else None
    if npz is None:
        npz = p.with_name(p.name + ".npz")
    if not npz.is_file():
        raise CommandError(
            f"no spectrum file at {npz}: pass the .npz written by 'deepcurvature spectrum "
            "--save-eigvec' (or its folder)"
        )
    return npz


def _specs(values: list[str] | None) -> list[str | int] | None:
    from ...analysis.landscape import SPEC_HELP, _parse_spec

    if values is None:
        return None
    out: list[str | int] = []
    for v in values:
        try:
            out.append(int(v))
            continue
        except ValueError:
            pass
        try:
            _parse_spec(v)
        except ValueError:
            raise CommandError(f"unknown direction {v!r}; {SPEC_HELP}") from None
        out.append(v)
    return out


def _validate(args: argparse.Namespace) -> dict:
    """Check every argument before anything is written; return the resolved settings."""
    from ...analysis.landscape import _parse_spec
    from ...analysis.spectrum import SpectrumResult
    from ...data.registry import dataset_description
    from ...models import model_info
    from ...suite._network import check_recorded_names, recorded_path
    from ...training import read_checkpoint

    if not (math.isfinite(args.dist) and args.dist > 0):
        raise CommandError(f"--dist must be a positive number, got {args.dist}")
    if args.n_points < 2:
        raise CommandError(f"--n-points must be at least 2, got {args.n_points}")
    limit = MAX_POINTS_PLANE if args.plane is not None else MAX_POINTS_LINE
    if args.n_points > limit:
        what = "per axis of a plane" if args.plane is not None else "per direction"
        raise CommandError(
            f"--n-points {args.n_points} {what} is above the limit of {limit} (each point is a "
            "pass over the whole data set): lower --n-points"
        )
    positive("--batch-size", args.batch_size, allow_none=True)
    positive("--subsample", args.subsample, allow_none=True)
    if args.directions is not None and args.plane is not None:
        raise CommandError("give either --directions (1-D) or --plane (2-D), not both")
    directions, plane = _specs(args.directions), _specs(args.plane)
    spectrum_path, spec_cfg, has_vectors = None, {}, False
    if args.spectrum is not None:
        spectrum_path = _spectrum_file(args.spectrum)
        try:
            spec = SpectrumResult.load(spectrum_path)
        except (ValueError, KeyError, OSError) as exc:
            raise CommandError(f"cannot read the spectrum {spectrum_path}: {exc}") from None
        spec_cfg, has_vectors = spec.config or {}, spec.ritz_vectors is not None
    wanted = directions if plane is None else plane
    eigen = wanted is None and spectrum_path is not None
    for s in wanted or []:
        eigen = eigen or isinstance(s, int) or _parse_spec(s)[0] not in ("random", "gaussian")
    if eigen and spectrum_path is None:
        raise CommandError(
            "eigen-directions need --spectrum (a spectrum saved with --save-eigvec); without one "
            "use --directions random:2 or gaussian:2, or --plane random:2"
        )
    if eigen and not has_vectors:
        raise CommandError(
            f"the spectrum {spectrum_path} has no eigenvectors: recompute it with "
            "'deepcurvature spectrum --save-eigvec', or use random directions"
        )
    recorded = recorded_path(spec_cfg.get("checkpoint_path"), spectrum_path or ".")
    checkpoint = args.checkpoint or recorded
    if (
        args.checkpoint is not None
        and recorded is not None
        and not _same_file(args.checkpoint, recorded)
    ):
        warnings.warn(
            f"the spectrum {spectrum_path} was computed at {recorded}, not at --checkpoint "
            f"{args.checkpoint}: its eigenvectors are those of another point in weight space",
            stacklevel=1,
        )
    if checkpoint is None:
        raise CommandError(
            "no weights to analyse: pass --checkpoint (a checkpoint written by 'deepcurvature "
            "train') or a --spectrum that records one"
        )
    checkpoint_file(checkpoint)
    ckpt_cfg = read_checkpoint(checkpoint, map_location="cpu").get("config") or {}
    model = args.model or ckpt_cfg.get("model") or spec_cfg.get("model")
    dataset = args.dataset or ckpt_cfg.get("dataset") or spec_cfg.get("dataset")
    if model is None or dataset is None:
        raise CommandError(
            "the checkpoint does not record its model and data set: pass --model and --dataset"
        )
    try:
        model_info(model)
        dataset_description(dataset)
    except (ValueError, KeyError) as exc:
        raise CommandError(str(exc.args[0] if exc.args else exc)) from None
    try:
        check_recorded_names(checkpoint, ckpt_cfg, dataset=args.dataset, model=args.model, cli=True)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.val_fraction is not None and not args.use_validation:
        raise CommandError("--val-fraction sets the split of --use-validation: pass both")
    return {
        "spectrum": spectrum_path,
        "checkpoint": checkpoint,
        "model": model,
        "dataset": dataset,
        "directions": directions,
        "plane": plane,
        "data_path": args.data_path or spec_cfg.get("data_path"),
    }


def run(args: argparse.Namespace) -> int:
    import torch
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ...plotting import plot_loss_landscape, save_figure
    from ...suite import build_loss_landscape

    s = _validate(args)
    folder = claim_output(args, "landscape", LANDSCAPE_FILES)
    out = folder.path
    console = Console()
    console = Console(width=max(100, console.width))  # the table needs ~95 columns
    written: list[Path] = []
    with folder:  # on any failure or interrupt: remove this run's files, and only those
        result = build_loss_landscape(
            s["dataset"],
            s["data_path"],
            s["model"],
            args.dist,
            args.n_points,
            s["spectrum"],
            s["checkpoint"],
            None,
            directions=s["directions"],
            plane=s["plane"],
            batch_size=args.batch_size,
            bn_recompute=args.bn_recompute,
            use_test=not args.use_validation,
            val_fraction=args.val_fraction,
            device=args.device,
            num_subsamples=args.subsample,
            subsample_seed=args.subsample_seed,
            seed=args.seed,
            quadratic=not args.no_quadratic,
            theta=args.theta,
            bias_bn=args.bias_bn,
            dtype=torch.float64 if args.float64 else None,
            download=args.download,
            verbose=not args.quiet,
        )
        if is_rank0():  # under torchrun only rank 0 writes
            written.append(result.save(out / "landscape"))
            written.append(out / "landscape.json")
            written.append(save_figure(plot_loss_landscape(result), out / "landscape.png"))
        if result.train_accuracy is not None and is_rank0():
            fig = plot_loss_landscape(result, metric="accuracy")
            written.append(save_figure(fig, out / "landscape-accuracy.png"))
        if args.overwrite:
            folder.remove_stale()

    table = Table(
        title=f"loss landscape of {s['model']} on {s['dataset']}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    rows = result.summary()
    if result.ndim == 1:
        cols = ["direction", "λ", "uᵀHu", "g·u", "train -d", "train +d"]
        if result.test_loss is not None:
            cols += ["test -d", "test +d"]
        for col in cols:
            table.add_column(col, justify="left" if col == "direction" else "right", no_wrap=True)
        for row in rows:
            name = row["direction"].split(" (")[0]
            cells = [name, _fmt(row["eigenvalue"]), _fmt(row["rayleigh"])]
            cells += [
                _fmt(row["slope"]),
                _fmt(row["train_loss_left"]),
                _fmt(row["train_loss_right"]),
            ]
            if result.test_loss is not None:
                cells += [_fmt(row["test_loss_left"]), _fmt(row["test_loss_right"])]
            table.add_row(*cells)
        at = f"λ: Ritz value, uᵀHu per ‖u‖², d = {result.dist:g}; "
        at += f"loss at w*: train {result.origin['train_loss']:.4g}"
        if result.origin.get("test_loss") is not None:
            at += f", test {result.origin['test_loss']:.4g}"
        table.caption = at
    else:
        table.add_column("plane")
        table.add_column("train loss at w*", justify="right")
        table.add_column("min", justify="right")
        table.add_column("max", justify="right")
        row = rows[0]
        table.add_row(
            row["direction"],
            f"{row['train_loss_origin']:.4g}",
            f"{row['train_loss_min']:.4g}",
            f"{row['train_loss_max']:.4g}",
        )
    console.print(table)
    taken = result.config.get("from_checkpoint") or {}
    if taken:
        text = ", ".join(f"{k}={v}" for k, v in taken.items())
        console.print(f"from the checkpoint: {text}")
    elif result.config.get("checkpoint_note"):
        console.print(f"note: {result.config['checkpoint_note']}")
    console.print(f"results in {out}/ ({', '.join(p.name for p in written)})")
    return 0


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).absolute() == Path(b).absolute()


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"
