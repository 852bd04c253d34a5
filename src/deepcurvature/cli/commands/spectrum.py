"""``deepcurvature spectrum``: the main job -- the curvature spectrum of a trained network."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...io.outputs import OutputFolder
from ..errors import CommandError
from ..failures import interruption
from ..launch import is_rank0
from ._common import (
    BRIEF_TRAINING_FILES,
    add_brief_training_option,
    add_checkpoint_data_options,
    add_curvature_options,
    add_output_options,
    checkpoint_file,
    claim_output,
    positive,
    recorded_names,
    resolve_brief_training,
    train_briefly,
)
from ._resume import (
    ARGS_FILE,
    STATE_FILE,
    apply_recorded_arguments,
    brief_training_checkpoint,
    claim_resumed,
    record_arguments,
    resume_note,
)

NAME = "spectrum"
HELP = "learn the Hessian/GGN/Fisher spectrum of a network with Lanczos (the main job)"
DESCRIPTION = (
    "Learn the spectral density of the curvature matrix (Hessian, generalised Gauss-Newton or "
    "Fisher) of a network over its training set with stochastic Lanczos quadrature. With no "
    "arguments it runs offline: a small MLP is trained briefly on scikit-learn's digits and the "
    "Hessian spectrum is learned. With --checkpoint it loads a checkpoint written by "
    "'deepcurvature train' (the model and data set are read from it unless given). Writes "
    "spectrum.npz, spectrum.json and spectrum.png into --out. A long run started with "
    "--save-state-every N keeps its Lanczos state in --out and, when stopped (Ctrl-C, SIGTERM, "
    "a crash), continues with --resume DIR."
)

TRAIN_EPOCHS = 10
#: The files a run writes into --out (with BRIEF_TRAINING_FILES when it trains first).
SPECTRUM_FILES = ("spectrum.npz", "spectrum.json", "spectrum.png")
BASIS_CHOICES = ("memory", "host", "disk")
#: --cache: what the operator keeps between the Lanczos steps (its ``cache`` argument)
CACHE_CHOICES = {"none": False, "data": True, "forward": "forward"}
MATRIX_CHOICES = {
    "hessian": "hessian_lanczos",
    "ggn": "ggn_lanczos",
    "fisher": "fisher_lanczos",
    "fisher-mc": "fisher_mc_lanczos",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's, or mlp)")
    p.add_argument(
        "--dataset", default=None, help="data set name (default: the checkpoint's, or digits)"
    )
    p.add_argument("--data-path", default=None, help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="allow downloading the data set")
    p.add_argument("--checkpoint", default=None, help="checkpoint to analyse (else train briefly)")
    add_brief_training_option(p, TRAIN_EPOCHS)
    p.add_argument(
        "--matrix", choices=sorted(MATRIX_CHOICES), default="hessian", help="curvature matrix"
    )
    p.add_argument("--steps", type=int, default=100, help="Lanczos steps m")
    p.add_argument("--probes", type=int, default=1, help="random probe vectors")
    add_curvature_options(p)
    add_checkpoint_data_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the probes (and the training)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--float64", action="store_true", help="evaluate the products in float64")
    p.add_argument("--save-eigvec", action="store_true", help="also save the Ritz vectors")
    p.add_argument(
        "--basis",
        choices=BASIS_CHOICES,
        default="memory",
        help=(
            "where the Lanczos basis (probes x steps x P numbers) is kept: memory (on --device), "
            "host (host memory while the products run on a GPU) or disk (a memory-mapped file)"
        ),
    )
    p.add_argument(
        "--cache",
        choices=list(CACHE_CHOICES),
        default="none",
        help=(
            "what is kept between the Lanczos steps: none (the data set is read at every "
            "step), data (the prepared batches, on --device) or forward (also each batch's "
            "forward pass, about one gradient pass's activations for every batch: faster "
            "steps with several --probes); the results are the same"
        ),
    )
    p.add_argument(
        "--basis-dir",
        default=None,
        help=(
            "folder of the disk basis file (default: --out with --save-state-every, else a "
            "temporary folder)%(default).0s"
        ),
    )
    p.add_argument(
        "--save-state-every",
        type=int,
        default=None,
        metavar="N",
        help=(
            f"write the Lanczos state ({STATE_FILE}) into --out every N steps, so that a stopped "
            "run continues with --resume (default: never)%(default).0s"
        ),
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help=(
            "continue the run stopped in DIR (started with --save-state-every) with the "
            "arguments recorded there; options given must agree with them"
        ),
    )
    add_output_options(p, "spectrum")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _validate(args: argparse.Namespace) -> dict:
    """Check every argument before anything is written; return the resolved settings."""
    if args.resume is not None:
        apply_recorded_arguments(args, _defaults())
    positive("--save-state-every", args.save_state_every, allow_none=True)
    if args.basis_dir is not None and args.basis != "disk":
        raise CommandError("--basis-dir is the folder of a disk basis: add --basis disk")
    positive("--steps", args.steps)
    positive("--probes", args.probes)
    positive("--batch-size", args.batch_size, allow_none=True)
    positive("--subsample", args.subsample, allow_none=True)
    resolve_brief_training(args, TRAIN_EPOCHS)
    if args.checkpoint is not None:
        checkpoint_file(args.checkpoint)
    _, model, dataset = recorded_names(args, args.checkpoint)
    # None: compute_eigenspectrum reads the checkpoint's model_kwargs (for its model name)
    return {"model": model, "dataset": dataset, "model_kwargs": None}


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ...plotting import plot_spectrum, save_figure
    from ...suite import compute_eigenspectrum

    settings = _validate(args)
    resumable = args.save_state_every is not None
    trained_before = None
    if args.resume is not None and args.checkpoint is None:
        trained_before = brief_training_checkpoint(Path(args.resume), args.train_epochs)
    training = args.checkpoint is None and trained_before is None
    if args.resume is not None:
        folder = claim_resumed(args, SPECTRUM_FILES)
    else:
        extra = (ARGS_FILE,) if resumable else ()
        folder = claim_output(
            args, "spectrum", SPECTRUM_FILES + extra + (BRIEF_TRAINING_FILES * training)
        )
    out = folder.path
    # the spectrum's own files: all that is removed on failure once a Lanczos state is kept
    results_part = OutputFolder(out, SPECTRUM_FILES, (), owned=folder.owned)
    state = out / STATE_FILE if resumable else None
    console = Console(stderr=False)
    verbose = not args.quiet
    try:
        if resumable and args.resume is None and is_rank0():
            record_arguments(out, args)
        checkpoint = args.checkpoint or trained_before
        if training:
            trained = train_briefly(
                out, settings["model"], settings["dataset"], args, console, verbose
            )
            checkpoint = trained.final_checkpoint
        result = compute_eigenspectrum(
            settings["dataset"],
            args.data_path,
            model=settings["model"],
            checkpoint_path=checkpoint,
            curvature_matrix=MATRIX_CHOICES[args.matrix],
            lanczos_iters=args.steps,
            save_spectrum_path=out / "spectrum",
            save_eigvec=args.save_eigvec,
            batch_size=args.batch_size,
            bn_train_mode=args.bn_mode == "train",
            num_subsamples=args.subsample,
            subsample_seed=args.subsample_seed,
            seed=args.seed,
            device=args.device,
            probes=args.probes,
            params=args.params,
            dtype=torch.float64 if args.float64 else None,
            model_kwargs=settings["model_kwargs"],
            download=args.download,
            verbose=verbose,
            basis=args.basis,
            cache=CACHE_CHOICES[args.cache],
            basis_dir=args.basis_dir,
            lanczos_state_path=state,
            lanczos_state_every=args.save_state_every or 10,
        )
        s = result.summary()
        title = (
            f"{args.matrix} spectrum of {settings['model']} on {settings['dataset']} "
            f"(m={s['steps']}, probes={s['probes']})"
        )
        if is_rank0():  # under torchrun only rank 0 writes
            save_figure(plot_spectrum(result.density, title=title), out / "spectrum.png")
        if args.overwrite:
            folder.remove_stale()
        if resumable and is_rank0():
            (out / ARGS_FILE).unlink(missing_ok=True)  # the run is complete
    except BaseException as exc:
        kept = state is not None and state.is_file()
        if kept:  # keep the state, its arguments and model: remove only the spectrum's files
            results_part.cleanup()
            stop = interruption(exc)
            if stop is not None:
                stop.cli_note = resume_note(state, out)  # type: ignore[union-attr]
        else:
            folder.cleanup()
        raise

    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("P (parameters)", f"{s['P']:,}"),
        ("N (samples)", f"{s['N']:,}" if s["N"] is not None else "-"),
        ("Lanczos steps", _steps_text(s)),
        ("lambda_max", f"{s['lambda_max']:.6g}"),
        ("lambda_min", f"{s['lambda_min']:.6g}"),
        _negative_mass_row(s),
        ("mass near zero", f"{s['mass_near_zero']:.4f}"),
        ("trace estimate", f"{s['trace_estimate']:.6g}"),
        ("time (s)", f"{s['seconds']:.2f}"),
        ("peak memory (MiB)", _memory_text(s, result.info.get("memory_kind"))),
    ]
    taken = result.config.get("from_checkpoint") or {}
    if taken:
        rows.append(("from the checkpoint", ", ".join(f"{k}={v}" for k, v in taken.items())))
    elif result.config.get("checkpoint_note"):
        rows.append(("from the checkpoint", "nothing (older checkpoint: no data options)"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print(f"results in {out}/ (spectrum.npz, spectrum.json, spectrum.png)")
    json.dumps(s, default=str)  # the summary is JSON-ready (also stored in spectrum.json)
    sys.stdout.flush()
    return 0


def _defaults() -> dict:
    """The parser's default of every option of this command."""
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return vars(p.parse_args([]))


def _memory_text(s: dict, kind: str | None) -> str:
    """The run's peak memory and what it measures (host RSS, or CUDA allocated)."""
    if s.get("peak_memory_mb") is None:
        return "-"
    what = {"host_max_rss": "host RSS", "cuda_max_allocated": "CUDA allocated"}.get(kind or "")
    return f"{s['peak_memory_mb']:,.0f}" + (f" ({what})" if what else "")


def _steps_text(s: dict) -> str:
    asked = s.get("steps_requested")
    if asked is not None and asked != s["steps"]:
        return f"{s['steps']} (asked for {asked}; clamped to P)"
    return str(s["steps"])


def _negative_mass_row(s: dict) -> tuple[str, str]:
    """The negative mass as counted below the round-off tolerance, saying which tolerance."""
    if s.get("psd_by_construction"):
        return ("negative mass", "0 (PSD by construction)")
    tol = s.get("negative_mass_tol")
    if tol is None:
        return ("negative mass", f"{s['negative_mass']:.4f}")
    return (f"negative mass (below -{tol:.2g})", f"{s['negative_mass']:.4f}")
