"""``deepcurvature batch-lr``: mini-batch curvature extremes and learning rates per batch size."""

from __future__ import annotations

import argparse

from ..errors import CommandError
from ..failures import cli_wording
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

NAME = "batch-lr"
HELP = "lambda_max of mini-batch Hessians/GGNs per batch size and the maximal learning rates"
DESCRIPTION = (
    "Measure the extreme eigenvalues of the Hessian (or GGN) of random mini-batches at several "
    "batch sizes B and of the whole training set, fit lambda_max(B) = a + c (1/B - 1/N) and "
    "predict the maximal stable learning rate per batch size: 2 / lambda_max(B) for SGD (linear "
    "scaling) and the relative Adam rate (square-root scaling), after Granziol, Zohren & Roberts. "
    "With no arguments it runs offline: a small MLP is trained briefly on scikit-learn's digits "
    "first. With --checkpoint it loads a checkpoint written by 'deepcurvature train'. Writes "
    "batch_lr.npz, batch_lr.json and batch_lr.png into --out."
)

TRAIN_EPOCHS = 5
BATCH_LR_FILES = ("batch_lr.npz", "batch_lr.json", "batch_lr.png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's, or mlp)")
    p.add_argument(
        "--dataset", default=None, help="data set name (default: the checkpoint's, or digits)"
    )
    p.add_argument("--data-path", default=None, help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="allow downloading the data set")
    p.add_argument("--checkpoint", default=None, help="checkpoint to analyse (else train briefly)")
    add_brief_training_option(p, TRAIN_EPOCHS)
    p.add_argument("--matrix", choices=["hessian", "ggn"], default="hessian", help="matrix")
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[16, 32, 64, 128, 256],
        metavar="B",
        help="mini-batch sizes (each at most the number of training samples)",
    )
    p.add_argument("--batches-per-size", type=int, default=5, help="mini-batches per batch size")
    p.add_argument(
        "--intercept",
        choices=["full", "fit"],
        default="full",
        help="a of the law: the measured full-data lambda_max (full) or fitted (fit)",
    )
    p.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance of eigsh")
    add_curvature_options(p)
    add_checkpoint_data_options(p, batch_size=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the mini-batches (and training)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--float64", action="store_true", help="evaluate the products in float64")
    add_output_options(p, "batch-lr")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _validate(args: argparse.Namespace) -> dict:
    """Check every argument (batch sizes against the data set) before anything is written."""
    from ...analysis.batch_extremes import check_batch_sizes
    from ...suite._network import checkpoint_options, describe_taken, evaluation_data

    for b in args.batch_sizes:
        positive("--batch-sizes", b)
    positive("--batches-per-size", args.batches_per_size)
    positive("--subsample", args.subsample, allow_none=True)
    if not (args.tol > 0):
        raise CommandError(f"--tol must be a positive number, got {args.tol}")
    resolve_brief_training(args, TRAIN_EPOCHS)
    if args.checkpoint is not None:
        checkpoint_file(args.checkpoint)
    ckpt_cfg, model, dataset = recorded_names(args, args.checkpoint)
    given = {"num_subsamples": args.subsample, "subsample_seed": args.subsample_seed}
    try:  # the checkpoint's run's subsample, seed and validation split (left out)
        chosen, taken, note = checkpoint_options(args.checkpoint, {**given, "data_kwargs": None})
    except ValueError as exc:
        raise CommandError(cli_wording(NAME, str(exc))) from None
    bundle = evaluation_data(
        dataset,
        args.data_path,
        batch_size=max(args.batch_sizes),
        num_subsamples=chosen["num_subsamples"],
        subsample_seed=chosen["subsample_seed"],
        download=args.download,
        data_kwargs=chosen["data_kwargs"],
        within=chosen.get("within"),
        holdout=chosen.get("holdout"),
    )
    try:
        check_batch_sizes(args.batch_sizes, len(bundle.train_set))
    except ValueError as exc:
        raise CommandError(f"--batch-sizes: {exc}") from None
    model_kwargs = ckpt_cfg.get("model_kwargs") or {} if args.model is None else {}
    return {
        "model": model,
        "dataset": dataset,
        "model_kwargs": model_kwargs,
        "bundle": bundle,
        "announce": f"note: {note}" if note else taken and f"using {describe_taken(taken)}",
    }


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch import nn

    from ...analysis.batch_extremes import batch_hessian_extremes
    from ...plotting import save_figure
    from ...plotting.batch_extremes import plot_batch_extremes
    from ...suite._network import build_network
    from ...suite.eigenspectrum import resolve_device

    settings = _validate(args)
    device = resolve_device(args.device)
    training = args.checkpoint is None
    folder = claim_output(args, "batch-lr", BATCH_LR_FILES + (BRIEF_TRAINING_FILES * training))
    out = folder.path
    console = Console()
    verbose = not args.quiet
    if settings["announce"]:
        print(settings["announce"], flush=True)
    with folder:  # on any failure or interrupt: remove this run's files, and only those
        checkpoint = args.checkpoint
        if training:
            trained = train_briefly(
                out, settings["model"], settings["dataset"], args, console, verbose
            )
            checkpoint = trained.final_checkpoint
        bundle = settings["bundle"]
        net = build_network(
            settings["model"],
            bundle,
            model_kwargs=settings["model_kwargs"],
            checkpoint_path=checkpoint,
            device=device,
        )
        result = batch_hessian_extremes(
            net,
            nn.CrossEntropyLoss(),
            bundle.train_loader,
            args.batch_sizes,
            matrix=args.matrix,
            batches_per_size=args.batches_per_size,
            seed=args.seed,
            intercept=args.intercept,
            tol=args.tol,
            params=args.params,
            bn_mode=args.bn_mode,
            dtype=torch.float64 if args.float64 else None,
            device=device,
            verbose=verbose,
        )
        result.config.update(
            model=settings["model"], dataset=settings["dataset"], checkpoint=str(checkpoint)
        )
        result.save(out / "batch_lr")
        fig = plot_batch_extremes(result, show_min=True)
        save_figure(fig, out / "batch_lr.png")
        if args.overwrite:
            folder.remove_stale()

    s = result.summary()
    table = Table(title=f"{args.matrix} of {settings['model']} on {settings['dataset']}")
    for col in ("B", "λ_max mean", "± std", "λ_min mean", "fit λ_max", "SGD lr", "Adam lr (rel.)"):
        table.add_column(col, justify="right")
    for i, b in enumerate(s["batch_sizes"]):
        table.add_row(
            str(b),
            f"{s['lambda_max_mean'][i]:.5g}",
            f"{s['lambda_max_std'][i]:.2g}",
            f"{s['lambda_min_mean'][i]:.4g}",
            f"{float(result.predicted_lambda_max(b)):.5g}",
            f"{s['sgd_lr'][i]:.4g}",
            f"{s['adam_lr_relative'][i]:.3g}",
        )
    table.add_row(f"N={s['N']}", f"{s['full_lambda_max']:.5g}", "", "", "", "", "")
    console.print(table)
    console.print(
        f"law: lambda_max(B) = {s['fit_intercept']:.5g} + {s['fit_c']:.5g} (1/B - 1/N); "
        f"{s['data_passes']:.3g} data passes, {s['seconds']:.1f} s; results in {out}/ "
        f"({', '.join(BATCH_LR_FILES)})"
    )
    return 0
