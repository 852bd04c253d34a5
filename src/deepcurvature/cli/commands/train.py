"""``deepcurvature train``: train a network, writing checkpoints and ``stats.json``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ...io.outputs import OutputFolder
from ..errors import CommandError
from ..launch import claim_on_rank0

NAME = "train"
HELP = "train a network (checkpoints + per-epoch statistics for curvature analysis)"
DESCRIPTION = (
    "Train a model on a data set and write checkpoint-EEEEE.pt files (epoch 0, every "
    "--save-freq epochs and the last) and stats.json (one row per epoch) into --dir. With no "
    "arguments it trains the default MLP on the bundled digits data set (offline, well under a "
    "minute) into a new folder runs/train-YYYYmmdd-HHMMSS. With --resume CHECKPOINT the options "
    "not given are taken from the checkpoint's recorded configuration, and the continued run "
    "matches an uninterrupted one exactly."
)

# options whose unset value (None) is filled from a resumed checkpoint's configuration
_FROM_CONFIG = {
    "model": "model",
    "model_kwargs": "model_kwargs",
    "dataset": "dataset",
    "data_path": "data_path",
    "optimizer": "optimizer",
    "batch_size": "batch_size",
    "epochs": "epochs",
    "eval_freq": "eval_freq",
    "save_freq": "save_freq",
    "seed": "seed",
    "swa_start": "swa_start",
    "swa_lr": "swa_lr",
    "swa_c_epochs": "swa_c_epochs",
}
_DEFAULTS = {
    "model": "mlp",
    "dataset": "digits",
    "optimizer": "SGD",
    "batch_size": 128,
    "epochs": 20,
    "eval_freq": 1,
    "seed": 0,
    "swa_c_epochs": 1,
    "schedule": "linear",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--dir", help="run folder (default: a new runs/train-YYYYmmdd-HHMMSS)")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue from this checkpoint")
    g.add_argument("--overwrite", action="store_true", help="allow a folder holding a run")
    g.add_argument("--epochs", type=int, help="number of epochs (default 20)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: CUDA if available)")
    g.add_argument("--save-freq", type=int, help="checkpoint every this many epochs")
    g.add_argument("--eval-freq", type=int, help="evaluate every this many epochs (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or summary table")

    g = parser.add_argument_group("model and data")
    g.add_argument("--model", help="model name, see deepcurvature.list_models() (default mlp)")
    g.add_argument("--model-kwargs", metavar="JSON", help="e.g. '{\"hidden\": [128, 128]}'")
    g.add_argument("--dataset", help="data set name (default digits, offline)")
    g.add_argument("--data-path", help="folder holding the data set's files")
    g.add_argument(
        "--data-kwargs", metavar="JSON", help="data set options, e.g. '{\"n_train\": 256}'"
    )
    g.add_argument("--download", action="store_true", help="download the data set if missing")
    g.add_argument("--batch-size", type=int, help="batch size (default 128)")
    g.add_argument("--subsample", type=int, help="use a seeded subset of this many samples")
    g.add_argument("--no-augment", action="store_true", help="no data augmentation")
    g.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    split = g.add_mutually_exclusive_group()
    split.add_argument(
        "--use-test", dest="use_test", action="store_true", default=None, help="test set (default)"
    )
    split.add_argument(
        "--validation",
        dest="use_test",
        action="store_false",
        default=None,
        help="evaluate on a validation split of the training set instead of the test set",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument(
        "--optimizer",
        help="SGD, Adam, AdamW, KFAC, MFAC, LanczosNewton, LanczosGGN, SWATS, Gadam, GadamW",
    )
    g.add_argument("--lr", type=float, help="initial learning rate")
    g.add_argument("--momentum", type=float, help="momentum")
    g.add_argument("--weight-decay", type=float, help="weight decay")
    g.add_argument("--optimizer-kwargs", metavar="JSON", help="e.g. '{\"nesterov\": true}'")
    g.add_argument("--schedule", help="linear (equation 11), constant, step, cosine")
    g.add_argument("--schedule-kwargs", metavar="JSON", help="e.g. '{\"r\": 0.01}'")
    g.add_argument("--swa", action="store_true", help="stochastic weight averaging")
    g.add_argument("--swa-start", type=int, help="epoch from which to average (default 0.75 T)")
    g.add_argument("--swa-lr", type=float, help="learning rate during SWA")
    g.add_argument("--swa-c-epochs", type=int, help="average every this many epochs")


def _json_dict(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option} is not valid JSON ({exc}): e.g. '{{\"lr\": 0.1}}'") from exc
    if not isinstance(value, dict):
        raise CommandError(f"{option} must be a JSON object like '{{\"key\": value}}'")
    return value


def _check_conflicts(args: argparse.Namespace) -> None:
    """Refuse options that would be silently ignored, and non-finite hyper-parameters."""
    if not args.swa:
        given = [
            flag
            for flag, value in (
                ("--swa-start", args.swa_start),
                ("--swa-lr", args.swa_lr),
                ("--swa-c-epochs", args.swa_c_epochs),
            )
            if value is not None
        ]
        if given and args.resume is None:
            raise CommandError(f"{' and '.join(given)} only apply with --swa: add --swa")
    for flag, value in (
        ("--lr", args.lr),
        ("--momentum", args.momentum),
        ("--weight-decay", args.weight_decay),
        ("--swa-lr", args.swa_lr),
    ):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise CommandError(f"{flag} must be a finite non-negative number, got {value}")
    if args.lr is not None and args.lr == 0:
        raise CommandError("--lr must be positive, got 0")


def run(args: argparse.Namespace) -> int:
    from ...training import read_checkpoint, train_network

    opt_kwargs = _json_dict(args.optimizer_kwargs, "--optimizer-kwargs")
    model_kwargs = _json_dict(args.model_kwargs, "--model-kwargs")
    sched_kwargs = _json_dict(args.schedule_kwargs, "--schedule-kwargs")
    data_kwargs = _json_dict(args.data_kwargs, "--data-kwargs")
    _check_conflicts(args)
    values = {k: getattr(args, k) for k in _FROM_CONFIG}
    values["model_kwargs"] = model_kwargs
    schedule, use_test, swa = args.schedule, args.use_test, args.swa
    run_dir = args.dir
    if args.resume is not None:
        ckpt = read_checkpoint(args.resume, map_location="cpu")
        cfg = ckpt.get("config") or {}
        for key, cfg_key in _FROM_CONFIG.items():
            if values[key] is None and cfg.get(cfg_key) is not None:
                values[key] = cfg[cfg_key]
        if opt_kwargs is None:
            opt_kwargs = dict(cfg.get("optimizer_kwargs") or {})
        if schedule is None and cfg.get("schedule"):
            schedule = cfg["schedule"]["name"]
            if sched_kwargs is None:
                sched_kwargs = dict(cfg["schedule"].get("kwargs") or {})
        if data_kwargs is None:
            data_kwargs = cfg.get("data_kwargs") or None
        if use_test is None and cfg.get("use_test") is not None:
            use_test = bool(cfg["use_test"])
        swa = swa or bool(cfg.get("swa"))
        if run_dir is None:
            run_dir = str(Path(args.resume).parent)
    for key, default in _DEFAULTS.items():
        if key in values and values[key] is None:
            values[key] = default
    schedule = schedule or _DEFAULTS["schedule"]
    if schedule == "custom":
        raise CommandError("the checkpoint used a custom schedule: give --schedule")
    opt_kwargs = dict(opt_kwargs or {})
    for name in ("lr", "momentum", "weight_decay"):
        if getattr(args, name) is not None:
            opt_kwargs[name] = getattr(args, name)
    # a new default folder is made atomically; the checkpoints are train_network's to manage
    # (a failed run keeps them for --resume), so only folders made here are removed on failure
    # under torchrun rank 0 makes it and the other ranks follow (train_network writes on rank 0)
    folder = claim_on_rank0(
        lambda: OutputFolder.claim(run_dir, kind="train", outputs=(), overwrite=True), ()
    )
    run_dir = str(folder.path)
    with folder:
        result = train_network(
            run_dir,
            values["dataset"],
            values["data_path"],
            model=values["model"],
            optimizer=values["optimizer"],
            optimizer_kwargs=opt_kwargs,
            epochs=values["epochs"],
            batch_size=values["batch_size"],
            schedule=schedule,
            schedule_kwargs=sched_kwargs,
            save_freq=values["save_freq"],
            eval_freq=values["eval_freq"],
            use_test=True if use_test is None else use_test,
            resume=args.resume,
            swa=swa,
            swa_start=values["swa_start"],
            swa_lr=values["swa_lr"],
            swa_c_epochs=values["swa_c_epochs"],
            seed=values["seed"],
            device=args.device,
            model_kwargs=values["model_kwargs"],
            verbose=not args.quiet,
            download=args.download,
            augment=not args.no_augment,
            subsample=args.subsample,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            data_kwargs=data_kwargs,
        )
    last = result.stats[-1] if result.stats else {}
    acc = last.get("test_accuracy")
    tail = f", final test accuracy {acc:.4f}" if acc is not None else ""
    print(
        f"wrote {len(result.checkpoints)} checkpoint(s) and stats.json to {run_dir}{tail}",
        flush=True,
    )
    return 0
