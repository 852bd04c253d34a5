"""Checkpoints: ``checkpoint-00025.pt`` files that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict with the keys

* ``"format"`` (``"deepcurvature-checkpoint"``) and ``"version"`` (1);
* ``"epoch"``: epochs completed (0 for the checkpoint written before training);
* ``"state_dict"``: the model's state dict; ``"optimizer"``: the optimiser's (or ``None``);
* ``"config"``: a JSON-serialisable description of the run (model name and kwargs, dataset,
  ``data_kwargs``, ``num_classes``, ``in_channels``, ``input_size``, the data options
  ``batch_size``, ``subsample``, ``subsample_seed``, ``augment``, ``use_test``,
  ``val_fraction``, ``batchnorm``, optimiser name and kwargs, schedule, seed...); resuming and
  the analysis workflows use these recorded values by default;
* ``"rng"``: the RNG states needed for an exact resume (see :mod:`.rng`);
* ``"swa_state"``: the SWA averaged model's state dict (keys ``module.*`` and ``n_averaged``),
  ``"average_state"``: the model state with Gadam's averaged weights, both when used;
* ``"stats"``: the rows of ``stats.json`` up to this epoch.

Only tensors, dicts, lists, numbers, strings and ``None`` are stored. Files are written atomically.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_bytes, read_failure, unreadable_file
from ..io.errors import one_line

__all__ = [
    "checkpoint_is_finite",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "nonfinite_weights",
    "read_checkpoint",
    "save_checkpoint",
]

FORMAT = "deepcurvature-checkpoint"
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_path(directory: str | os.PathLike, epoch: int) -> Path:
    """``directory/checkpoint-{epoch:05d}.pt``."""
    return Path(directory) / f"checkpoint-{int(epoch):05d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a run folder, sorted by epoch."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epoch: int,
    config: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically (``torch.save`` to memory, then temporary file + rename).

    Args:
        path: the file (see :func:`checkpoint_path`).
        model: its ``state_dict()`` is stored under ``"state_dict"``.
        optimizer: its ``state_dict()`` is stored under ``"optimizer"``.
        epoch: epochs completed.
        config: JSON-serialisable run description.
        **extra: more entries (``rng``, ``swa_state``, ``average_state``, ``stats``...).

    Returns:
        The path written.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "epoch": int(epoch),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "config": dict(config or {}),
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


_FIX_GARBAGE = (
    "give a checkpoint-EEEEE.pt written by deepcurvature (or a state dict saved with torch.save); "
    "a file cut short by an interrupted run or copy must be written again"
)


def _garbage(path: Path, reason: str) -> ValueError:
    return ValueError(
        one_line(
            f"{path} is not a valid deepcurvature checkpoint (truncated or not a torch file): "
            f"{reason}; {_FIX_GARBAGE}"
        )
    )


def _torch_load(path: Path, map_location: str | torch.device | None) -> Any:
    """``torch.load(weights_only=True)``; every failure becomes one line naming the file."""
    try:
        with path.open("rb") as fh:  # a folder or an unreadable file: say so before torch does
            empty = not fh.read(1)
    except OSError as exc:
        raise unreadable_file(path, "checkpoint file", exc) from None
    if empty:
        raise _garbage(path, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about odd pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:
        failure = read_failure(exc)
    if failure.objects:
        raise ValueError(
            f"{path} is not a safe deepcurvature checkpoint: {failure.reason}, and deepcurvature "
            "only loads tensors, dicts, lists, numbers and strings from a checkpoint; re-save the "
            "weights with dc.save_checkpoint (or torch.save(model.state_dict(), path)) where the "
            "file was made; checkpoints are read with torch.load(weights_only=True), which never "
            "runs code from the file"
        )
    raise _garbage(path, failure.reason)


def read_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device | None = None
) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``) without applying it.

    A file holding only a model state dict is accepted and returned as
    ``{"state_dict": ..., "epoch": None, "config": {}}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: it is a folder or unreadable; it is empty,
            truncated or not a torch file (``"PATH is not a valid deepcurvature checkpoint
            (truncated or not a torch file) (REASON): ..."``); it holds pickled Python objects
            (``"PATH is not a safe deepcurvature checkpoint: ..."``); or it holds no state dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.is_dir():
        found = list_checkpoints(path)
        hint = f" (its latest is {found[-1].name})" if found else ""
        raise ValueError(f"{path} is a folder, not a checkpoint file: give a checkpoint file{hint}")
    data = _torch_load(path, map_location)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} holds a {type(data).__name__}, not a checkpoint dict: give a checkpoint "
            "written by deepcurvature or a saved model state dict"
        )
    if "state_dict" not in data:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return {"state_dict": data, "epoch": None, "config": {}, "optimizer": None}
        raise ValueError(
            f"checkpoint {path} has no 'state_dict' entry (keys: {sorted(map(str, data))[:10]})"
        )
    if not isinstance(data["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in data["state_dict"].values()
    ):
        raise ValueError(
            f"checkpoint {path} has a 'state_dict' entry that is not a dict of tensors: the file "
            "is damaged or was not written by deepcurvature"
        )
    data.setdefault("config", {})
    if not isinstance(data["config"], dict):
        data["config"] = {}
    return data


def nonfinite_weights(ckpt: dict[str, Any], weights: str = "model") -> list[str]:
    """The names of a checkpoint's weight tensors that hold NaN or infinite values.

    Args:
        ckpt: as returned by :func:`read_checkpoint`.
        weights: ``"model"``, ``"swa"`` or ``"average"`` (see :func:`load_checkpoint`).
    """
    state = _weights(ckpt, weights, Path("(in memory)"))
    return [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]


def checkpoint_is_finite(ckpt: dict[str, Any], weights: str = "model") -> bool:
    """Whether every weight of a checkpoint is finite (see :func:`nonfinite_weights`)."""
    return not nonfinite_weights(ckpt, weights)


def _made_for(ckpt: dict[str, Any]) -> str:
    cfg = ckpt.get("config") or {}
    if not cfg.get("model"):
        return "an unrecorded model"
    parts = [f"model {cfg['model']!r}"]
    for key in ("model_kwargs", "num_classes", "in_channels", "input_size", "dataset"):
        if cfg.get(key) not in (None, {}):
            parts.append(f"{key}={cfg[key]!r}")
    return ", ".join(parts)


def _short(items: list[str], limit: int = 10) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _check_fits(
    state: dict[str, torch.Tensor], model: nn.Module, path: Path, ckpt: dict[str, Any]
) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [
        f"checkpoint {path} does not fit the given model ({type(model).__name__}); "
        f"it was made for {_made_for(ckpt)}. Build that model (same name, kwargs, classes, "
        f"input channels and size) to load it"
    ]
    if missing:
        lines.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if shapes:
        lines.append(f"shape mismatches ({len(shapes)}): {_short(shapes)}")
    raise ValueError("; ".join(lines))


def _weights(ckpt: dict[str, Any], weights: str, path: Path) -> dict[str, torch.Tensor]:
    if weights == "model":
        state = ckpt["state_dict"]
    elif weights == "swa":
        swa = ckpt.get("swa_state")
        if not swa:
            raise ValueError(f"checkpoint {path} holds no SWA weights (train with swa=True)")
        if not isinstance(swa, dict):
            state = swa
        else:
            state = {
                k[len("module.") :]: v
                for k, v in swa.items()
                if isinstance(k, str) and k.startswith("module.")
            }
    elif weights == "average":
        state = ckpt.get("average_state")
        if not state:
            raise ValueError(
                f"checkpoint {path} holds no averaged weights (train with Gadam/GadamW "
                f"after averaging has started)"
            )
    else:
        raise ValueError(f"weights must be 'model', 'swa' or 'average', got {weights!r}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"checkpoint {path}: its {weights!r} weights are not a dict of tensors; the file is "
            "damaged or was not written by deepcurvature"
        )
    return state


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device | None = None,
    weights: str = "model",
) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``) and optionally apply it to a model and optimiser.

    Args:
        path: a checkpoint written by :func:`save_checkpoint` (or a bare model state dict).
        model: if given, receives the weights (strictly: every key and shape must match).
        optimizer: if given, receives the optimiser state.
        map_location: as for ``torch.load``; by default the model's device when a model is given.
        weights: which weights go into ``model``: ``"model"`` (the trained iterate), ``"swa"``
            (the SWA average) or ``"average"`` (Gadam's average).

    Returns:
        The checkpoint dict (``epoch``, ``config``, ``state_dict``, ...).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the checkpoint does not fit the model; the message lists the missing and
            unexpected keys and the shape mismatches, and names the model it was made for.
    """
    path = Path(path)
    if map_location is None and model is not None:
        first = next(iter(model.parameters()), None)
        map_location = first.device if first is not None else None
    ckpt = read_checkpoint(path, map_location=map_location)
    if model is not None:
        state = _weights(ckpt, weights, path)
        _check_fits(state, model, path, ckpt)
        model.load_state_dict(state)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"checkpoint {path} holds no optimizer state")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
            made = (ckpt.get("config") or {}).get("optimizer", "an unrecorded optimizer")
            raise ValueError(
                one_line(
                    f"the optimizer state in {path} (made by {made!r}) does not fit the given "
                    f"{type(optimizer).__name__}: {exc}"
                )
            ) from exc
    return ckpt
