"""Resumable ``deepcurvature spectrum`` runs: the recorded arguments and the Lanczos state.

A run started with ``--save-state-every N`` writes ``spectrum-args.json`` (its resolved
arguments) into its output folder at the start and ``lanczos-state.pt`` every ``N`` Lanczos
steps. When it stops (Ctrl-C, SIGTERM, a crash, SIGKILL), both stay, with the model it trained
briefly (``train/``); ``deepcurvature spectrum --resume DIR`` reads the arguments back, refuses
options that conflict with them, and continues the Lanczos run bit for bit from the state.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...io.atomic import atomic_write_text
from ...io.outputs import OutputFolder
from ..errors import CommandError

__all__ = [
    "ARGS_FILE",
    "STATE_FILE",
    "apply_recorded_arguments",
    "brief_training_checkpoint",
    "claim_resumed",
    "record_arguments",
    "resume_note",
]

ARGS_FILE = "spectrum-args.json"
STATE_FILE = "lanczos-state.pt"
#: Arguments that define the run (recorded, and compared on --resume).
RECORDED = (
    "model",
    "dataset",
    "data_path",
    "download",
    "checkpoint",
    "train_epochs",
    "matrix",
    "steps",
    "probes",
    "params",
    "bn_mode",
    "batch_size",
    "subsample",
    "subsample_seed",
    "seed",
    "device",
    "float64",
    "save_eigvec",
    "basis",
    "basis_dir",
    "save_state_every",
    "cache",
)
#: Recorded arguments a resumed run may change (they do not change the result).
FREE = ("save_state_every", "cache")
_PATHS = ("data_path", "checkpoint", "basis_dir")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _absolute(name: str, value: Any) -> Any:
    if name in _PATHS and value is not None:
        return str(Path(value).resolve())
    return value


def record_arguments(out: Path, args: argparse.Namespace) -> None:
    """Write the run's resolved arguments to ``out/ARGS_FILE`` (atomically)."""
    recorded = {name: _absolute(name, getattr(args, name)) for name in RECORDED}
    if args.checkpoint is not None:  # no brief training (its default is filled in anyway)
        recorded["train_epochs"] = None
    text = json.dumps({"command": "spectrum", "arguments": recorded}, indent=1)
    atomic_write_text(out / ARGS_FILE, text + "\n")


def apply_recorded_arguments(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Set ``args`` to the arguments recorded in ``args.resume``; refuse conflicting ones.

    An option left at its default takes the recorded value; one given with another value is
    refused (``--save-state-every`` may change). ``--out``, if given, must be the folder.

    Raises:
        CommandError: no recorded run in the folder, or conflicting options (one line).
    """
    folder = Path(args.resume)
    path = folder / ARGS_FILE
    if not path.is_file():
        raise CommandError(
            f"--resume {folder}: there is no {ARGS_FILE} in it: resume the folder of a run "
            "started with --save-state-every N"
        )
    try:
        recorded = json.loads(path.read_text())["arguments"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CommandError(f"--resume {folder}: {path} is not a valid argument file") from None
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise CommandError(
            f"--resume {folder} continues the run in that folder: leave out --out {args.out}"
        )
    conflicts = []
    for name in RECORDED:
        if name not in recorded:
            continue
        then, now = recorded[name], getattr(args, name)
        if now == defaults.get(name) or _absolute(name, now) == then:
            setattr(args, name, then)
        elif name not in FREE:
            conflicts.append(f"{_flag(name)} {now} (the run has {then})")
    if conflicts:
        raise CommandError(
            f"--resume {folder}: {', '.join(conflicts)} conflicts with the run's arguments in "
            f"{path}: leave it out to continue the run, or start a new run with another --out"
        )
    args.out = str(folder)


def brief_training_checkpoint(folder: Path, epochs: int | None) -> Path | None:
    """The checkpoint the recorded run trained briefly in ``folder/train``, if complete."""
    from ...training import list_checkpoints

    found = list_checkpoints(folder / "train")
    if found and epochs is not None and found[-1].name == f"checkpoint-{epochs:05d}.pt":
        return found[-1]
    return None


def claim_resumed(args: argparse.Namespace, outputs: Sequence[str]) -> OutputFolder:
    """The existing folder of a resumed run, refused when it already holds the results."""
    from ._common import claim_output

    folder = Path(args.out)
    if not folder.is_dir():
        raise CommandError(f"--resume {folder}: no such folder")
    return claim_output(args, "spectrum", outputs)


def resume_note(state: Path, out: Path) -> str:
    """What an interrupted run kept, and the command that continues it (one line)."""
    from ...linalg.lanczos_state import load_state

    try:
        st = load_state(state)
        done = f"after step {int(st['done'])} of {int(st['run']['steps'])} "
    except (ValueError, KeyError, TypeError, OSError):
        done = ""
    return (
        f"the Lanczos state {done}is kept in {state}; resume with: deepcurvature spectrum "
        f"--resume {shlex.quote(str(out))}"
    )
