"""The run folder of a training run: resuming safely, and cleaning up after a failed call.

Resuming checks the checkpoint, the folder and the hyper-parameters; a failed call removes what
it wrote, and nothing else.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch

from ..optim import same_optimizer
from .checkpoint import list_checkpoints, load_checkpoint
from .setup import optimizer_name

__all__ = [
    "check_run_dir",
    "keep_asked_hyperparameters",
    "missing_folders",
    "read_resume",
    "remove_partial_run",
]


def keep_asked_hyperparameters(
    opt: torch.optim.Optimizer,
    asked: list[dict[str, Any]],
    kwargs: dict[str, Any],
    resume: Any,
) -> None:
    """After a resume, the hyper-parameters given in ``kwargs`` win over the checkpoint's.

    ``load_state_dict`` restores the checkpoint's ``lr``, ``momentum``... into the parameter
    groups; a value the caller gave that differs is put back, with a warning that the continued
    run is no longer the uninterrupted one.
    """
    changed: dict[str, tuple[Any, Any]] = {}
    for group, want in zip(opt.param_groups, asked, strict=True):
        for key in kwargs:
            if key == "params" or key not in group or key not in want:
                continue
            if group[key] != want[key]:
                changed.setdefault(key, (group[key], want[key]))
                group[key] = want[key]
                if key == "lr":
                    group["initial_lr"] = want.get("initial_lr", want["lr"])
    if changed:
        text = ", ".join(f"{k}={new!r} (checkpoint: {old!r})" for k, (old, new) in changed.items())
        warnings.warn(
            f"resuming {resume} with {text}: the continued run uses the new values, so it no "
            "longer matches an uninterrupted run",
            RuntimeWarning,
            stacklevel=3,
        )


def read_resume(resume: Any, optimizer: Any, epochs: int) -> dict[str, Any]:
    """Read the checkpoint to resume from and refuse what cannot continue it."""
    ckpt = load_checkpoint(resume, map_location="cpu")  # read (and check) it first
    if ckpt.get("optimizer") is None or ckpt.get("epoch") is None:
        raise ValueError(f"{resume} is not a training checkpoint (no optimizer state / epoch)")
    at = int(ckpt["epoch"])
    if epochs < at:
        raise ValueError(
            f"checkpoint {resume} is at epoch {at}, epochs={epochs} is below it: give epochs > "
            f"{at} to continue training, or use the checkpoint as it is (dc.load_checkpoint) "
            "without training"
        )
    if epochs == at:
        raise ValueError(
            f"checkpoint {resume} is already at epoch {at}, so epochs={epochs} leaves nothing to "
            f"train: give epochs > {at} to continue training"
        )
    made = (ckpt.get("config") or {}).get("optimizer")
    given = optimizer_name(optimizer)
    if made and given and not same_optimizer(str(made), given):
        raise ValueError(
            f"checkpoint {resume} was trained with {made!r}, not {given!r}: resume with "
            f"optimizer={made!r} (or start a new run without resume)"
        )
    return ckpt


def check_run_dir(run_dir: Path, resume: Any, resume_epoch: int, overwrite: bool) -> None:
    """Refuse a run folder whose run would be overwritten or orphaned (unless ``overwrite``)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"dir {run_dir} exists and is not a folder: choose another dir")
    found = list_checkpoints(run_dir)
    if overwrite or not ((run_dir / "stats.json").exists() or found):
        return
    if resume is None:
        raise ValueError(
            f"{run_dir} already holds a training run: choose a new dir, continue it with "
            f"resume=<checkpoint>, or pass overwrite=True"
        )
    source = Path(resume).resolve()
    if source.parent != run_dir.resolve():
        raise ValueError(
            f"{run_dir} already holds another training run than the one of {resume}: choose a "
            f"new dir (or {source.parent} itself), or pass overwrite=True"
        )
    later = [p for p in found if int(p.stem.split("-")[1]) > resume_epoch]
    if later:
        names = ", ".join(p.name for p in later)
        raise ValueError(
            f"{resume} is not the latest checkpoint of {run_dir} (later: {names}): resuming into "
            f"the same folder would overwrite or orphan them; resume from {later[-1].name}, "
            "choose another dir, or pass overwrite=True"
        )


def missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _is_ours(name: str, written: set[str]) -> bool:
    """A run file (or an atomic-write temporary ``.NAME.XXXX.tmp`` of one) this call writes."""
    if name in written or name == "stats.json":
        return True
    return name.endswith(".tmp") and name.startswith((".stats.json.", ".checkpoint-"))


def remove_partial_run(
    run_dir: Path, created: list[Path], before: set[str], written: set[str]
) -> None:
    """Remove the files a failed call created in ``run_dir``, then the folders it created.

    Only run files (``stats.json``, the checkpoints it wrote, their temporaries) that did not
    exist before the call are removed, and only folders this call created that are then empty.
    """
    if run_dir.is_dir():
        for entry in run_dir.iterdir():
            if entry.name not in before and _is_ours(entry.name, written):
                with contextlib.suppress(OSError):
                    entry.unlink()
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # fails (and is kept) when something else is in it
