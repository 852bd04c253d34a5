"""The set-up of a training run: data, model, optimiser and device from names.

The checks of every argument here run before anything is written.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..optim import build_optimizer, check_hyperparameters, check_optimizer_arguments

__all__ = [
    "check_args",
    "check_config",
    "check_optimizer",
    "has_batchnorm",
    "jsonable",
    "optimizer_name",
    "resolve_data",
    "resolve_device",
    "resolve_model",
    "resolve_optimizer",
    "resume_options",
    "seed_everything",
]


def _as_loader(obj: Any, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    if isinstance(obj, DataLoader):
        return obj
    if isinstance(obj, Dataset):
        return DataLoader(obj, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
    raise TypeError(
        f"expected a Dataset or DataLoader, got {type(obj).__name__}: pass a data set name, a "
        f"Dataset, a DataLoader or a (train, test) pair of them"
    )


def _num_classes_of(loader: DataLoader) -> int:
    ds = loader.dataset
    for attr in ("num_classes",):
        if isinstance(getattr(ds, attr, None), int):
            return int(getattr(ds, attr))
    if hasattr(ds, "classes"):
        return len(ds.classes)
    top = -1
    for _, y in loader:
        if y.is_floating_point():
            raise ValueError(
                "cannot infer num_classes from floating-point targets: pass num_classes="
            )
        top = max(top, int(y.max()))
    return top + 1


def resolve_data(dataset: Any, data_path: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """The train and test loaders of ``dataset`` (a name or loaders) and the input sizes."""
    if isinstance(dataset, (tuple, list)):
        if opts["data_kwargs"]:
            raise ValueError("data_kwargs only apply to a data set given by name")
        if len(dataset) != 2:
            raise ValueError(
                f"dataset as a sequence must be a (train, test) pair, got {len(dataset)} items"
            )
        train = _as_loader(dataset[0], opts["batch_size"], True, opts["num_workers"])
        test = _as_loader(dataset[1], opts["batch_size"], False, opts["num_workers"])
        x, _ = next(iter(test))
        return {
            "train_loader": train,
            "test_loader": test,
            "name": type(train.dataset).__name__,
            "num_classes": opts["num_classes"],
            "in_channels": int(x.shape[1]) if x.dim() == 4 else None,
            "input_size": [int(s) for s in x.shape[-2:]] if x.dim() == 4 else None,
        }
    try:
        from ..data import load_data
    except ImportError as exc:  # pragma: no cover - the data registry is part of the package
        raise ValueError(
            "the data-set registry (deepcurvature.data.load_data) is not available: pass a "
            "(train_loader, test_loader) pair instead"
        ) from exc
    bundle = load_data(
        dataset,
        data_path,
        batch_size=opts["batch_size"],
        use_test=opts["use_test"],
        val_fraction=opts["val_fraction"],
        augment=opts["augment"],
        download=opts["download"],
        num_workers=opts["num_workers"],
        subsample=opts["subsample"],
        seed=opts["seed"],
        **opts["data_kwargs"],
    )
    size = bundle.input_size
    return {
        "train_loader": bundle.train_loader,
        "test_loader": bundle.test_loader,
        "name": dataset if isinstance(dataset, str) else bundle.name,
        "num_classes": opts["num_classes"] or bundle.num_classes,
        "in_channels": bundle.in_channels,
        "input_size": list(size) if isinstance(size, (tuple, list)) else size,
    }


def resolve_model(model: Any, model_kwargs: dict | None, data: dict) -> tuple[nn.Module, str]:
    """The network (a registry name built for the data, or the given module) and its name."""
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError("model_kwargs is only used with a model name, not an nn.Module")
        return model, type(model).__name__
    if not isinstance(model, str):
        raise TypeError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    from ..models import get_model

    if data["num_classes"] is None:
        data["num_classes"] = _num_classes_of(data["train_loader"])
    kwargs: dict[str, Any] = {"num_classes": data["num_classes"]}
    if data["in_channels"] is not None:
        kwargs["in_channels"] = data["in_channels"]
    if data["input_size"] is not None:
        kwargs["input_size"] = tuple(data["input_size"])
    return get_model(model, **kwargs, **(model_kwargs or {})), model


def resolve_optimizer(
    optimizer: Any, model: nn.Module, kwargs: dict[str, Any]
) -> tuple[torch.optim.Optimizer, str]:
    """The optimiser (a registered name or a ``torch.optim.Optimizer`` class) and its name."""
    if isinstance(optimizer, str):
        return build_optimizer(optimizer, model, **kwargs), optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        params = [p for p in model.parameters() if p.requires_grad]
        try:
            return optimizer(params, **kwargs), optimizer.__name__
        except TypeError as exc:
            raise ValueError(f"could not build {optimizer.__name__} with {kwargs}: {exc}") from exc
    raise TypeError(
        f"optimizer must be a name or a torch.optim.Optimizer subclass, got {optimizer!r}"
    )


def resolve_device(device: Any, model: Any) -> torch.device:
    """The device asked for (checked), else the model's, else CUDA when available."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:1'") from exc
        if dev.type == "meta":
            raise ValueError(f"cannot train on device {device!r} (it holds no data): use 'cpu'")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} is not available here: use device='cpu'")
        try:
            torch.empty(1, device=dev)  # an unavailable backend or device index fails here
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(f"device {device!r} is not available here: use device='cpu'") from exc
        return dev
    if isinstance(model, nn.Module):
        first = next(iter(model.parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds code that uses the global generator)
    random.seed(seed)


def jsonable(value: Any) -> Any:
    """``value`` with its dict keys as strings and numpy scalars as numbers (others as str)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch-norm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_args(
    epochs: int,
    batch_size: int,
    save_freq: int | None,
    eval_freq: int,
    swa: bool,
    swa_start: int | None,
    swa_lr: float | None,
    swa_c_epochs: int,
    schedule_unit: str,
) -> None:
    """Refuse bad loop arguments (counts, SWA settings) with one line naming each."""

    def positive_int(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be 0 or a positive integer, got {epochs!r}")
    positive_int("batch_size", batch_size)
    positive_int("eval_freq", eval_freq)
    if save_freq is not None:
        positive_int("save_freq", save_freq)
    if schedule_unit not in ("epoch", "iteration"):
        raise ValueError(f"schedule_unit must be 'epoch' or 'iteration', got {schedule_unit!r}")
    if swa:
        positive_int("swa_c_epochs", swa_c_epochs)
        if swa_start is not None and not (0 <= swa_start <= epochs):
            raise ValueError(f"swa_start must be in [0, epochs={epochs}], got {swa_start}")
        if swa_lr is not None and not (math.isfinite(swa_lr) and swa_lr > 0):
            raise ValueError(f"swa_lr must be a finite positive number, got {swa_lr}")


def check_optimizer(optimizer: Any, kwargs: dict[str, Any]) -> None:
    """Fail fast on an unknown name, an unknown argument or a non-finite / wrongly signed one."""
    if isinstance(optimizer, str):
        check_optimizer_arguments(optimizer, kwargs)
    elif isinstance(optimizer, type):
        check_hyperparameters(f"optimizer {optimizer.__name__!r}", kwargs)


def optimizer_name(optimizer: Any) -> str | None:
    """The name of an optimiser given by name or class, else ``None``."""
    if isinstance(optimizer, str):
        return optimizer
    return getattr(optimizer, "__name__", None)


def _nonfinite_entry(value: Any, where: str = "") -> str | None:
    """The path (``optimizer_kwargs.lr``) of a non-finite float in a JSON-like value."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "value")
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nonfinite_entry(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def check_config(config: dict[str, Any]) -> None:
    """The run description must be valid JSON (no NaN or infinity) before the folder is made."""
    try:
        json.dumps(config, allow_nan=False)
    except ValueError:
        where = _nonfinite_entry(config) or "an argument"
        if where.startswith("schedule.kwargs."):  # stored as the schedule's config
            where = "schedule_kwargs." + where[len("schedule.kwargs.") :]
        raise ValueError(
            f"{where} is not a finite number: give finite values (the run's configuration is "
            "stored as JSON)"
        ) from None


#: The options of ``train_network`` that define the data and the model of a run: argument ->
#: its default in ``train_network``. On a resume each takes the checkpoint's recorded value
#: unless given with another value, which is refused.
RUN_DEFINING = {
    "model_kwargs": None,
    "data_kwargs": None,
    "batch_size": 128,
    "subsample": None,
    "augment": True,
    "use_test": True,
    "val_fraction": 0.1,
}


def resume_options(
    cfg: dict[str, Any], given: dict[str, Any], resume: Any, *, by_name: bool, model_by_name: bool
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The data and model options of a resumed run: the checkpoint's unless given otherwise.

    Args:
        cfg: the checkpoint's recorded config.
        given: the values passed to ``train_network`` (keys of :data:`RUN_DEFINING`, and
            ``seed``).
        resume: the checkpoint path (for messages).
        by_name: the data set is given by name (data options apply).
        model_by_name: the model is given by name (``model_kwargs`` applies).

    Returns:
        ``(values, from_checkpoint, note)``; ``note`` is set for an older checkpoint that
        records no data options (the given values are then used, as before).

    Raises:
        ValueError: one line naming an option given with a value other than the recorded one
            (the continued run would not be the run of the checkpoint) and the fix.
    """
    values = dict(given)
    taken: dict[str, Any] = {}
    if "subsample" not in cfg:
        note = (
            f"{resume} records no data options (written by an older deepcurvature): the given "
            "or default subsample, augmentation and batch size are used"
        )
        return values, taken, (note if by_name else None)
    for arg, default in RUN_DEFINING.items():
        if arg not in cfg or arg not in values:
            continue
        if arg == "model_kwargs" and not model_by_name:
            continue
        if arg in ("data_kwargs", "subsample", "augment", "val_fraction") and not by_name:
            continue
        recorded = cfg[arg]
        if arg in ("model_kwargs", "data_kwargs"):
            recorded = recorded or None
            value = values[arg] or None
        else:
            value = values[arg]
        if arg == "val_fraction" and cfg.get("use_test", True):
            continue  # no validation split was drawn
        if value == default:
            if recorded != default:
                taken[arg] = recorded
            values[arg] = recorded if recorded is not None else default
        elif value != recorded:
            raise _conflict(arg, value, recorded, resume)
    seed, recorded_seed = values.get("seed"), cfg.get("seed")
    depends = cfg.get("subsample") is not None or not cfg.get("use_test", True)
    if by_name and depends and seed is not None and recorded_seed is not None:
        if int(seed) != int(recorded_seed):
            raise _conflict("seed", seed, recorded_seed, resume, "it draws the subsample")
    return values, taken, None


def _conflict(arg: str, value: Any, recorded: Any, resume: Any, why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(
        f"{arg}={value!r} conflicts with the value {recorded!r} recorded in {resume}{reason}: "
        "leave it out to resume the same run, or start a new run without resume"
    )
