"""The model registry: build a network from a (case-insensitive) name.

Names follow the paper's spellings ("VGG16", "VGG16BN", "PreResNet110", "WideResNet28x10"): they
are matched after lower-casing and removing ``-``, ``_``, spaces and dots, so "vgg16_bn",
"VGG-16-BN" and "VGG16BN" are the same model. Every factory is called as
``factory(num_classes, in_channels, input_size, **kwargs)`` with ``input_size`` a ``(H, W)`` pair.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelFactory",
    "count_parameters",
    "get_model",
    "list_models",
    "model_info",
    "normalize_model_name",
    "register_model",
]

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: ModelFactory
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}


def normalize_model_name(name: str) -> str:
    """Lower-case ``name`` and drop ``-``, ``_``, spaces and dots: "VGG-16_BN" -> "vgg16bn"."""
    if not isinstance(name, str):
        raise TypeError(f"a model name must be a string, got {type(name).__name__}")
    return re.sub(r"[-_\s.]", "", name.strip().lower())


def register_model(
    name: str,
    *,
    aliases: tuple[str, ...] | list[str] = (),
    defaults: dict[str, Any] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes, in_channels, input_size, **kwargs)``.

    Args:
        name: the name shown by :func:`list_models` (matched case-insensitively).
        aliases: other accepted spellings.
        defaults: keyword arguments bound for this name (e.g. ``{"depth": 110}``); the caller's
            keyword arguments override them.
        description: one line shown in listings; defaults to the factory's first docstring line.
        overwrite: allow replacing an existing name (otherwise a ValueError).

    Returns:
        The decorator, which returns the factory unchanged.

    Example::

        @register_model("my_linear")
        def my_linear(num_classes, in_channels, input_size, bias=True):
            h, w = input_size
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, num_classes, bias))
    """
    keys = [normalize_model_name(name), *(normalize_model_name(a) for a in aliases)]

    def decorator(factory: ModelFactory) -> ModelFactory:
        if not callable(factory):
            raise TypeError(f"register_model({name!r}) needs a callable factory")
        if not overwrite:
            taken = [k for k in keys if k in _ALIASES]
            if taken:
                raise ValueError(
                    f"model name(s) {taken} already registered (for {_ALIASES[taken[0]]!r}); "
                    "choose another name or pass overwrite=True"
                )
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        entry = _Entry(
            name=name,
            factory=factory,
            aliases=tuple(aliases),
            defaults=dict(defaults or {}),
            description=description or (doc[0] if doc else ""),
        )
        _REGISTRY[keys[0]] = entry
        for k in keys:
            _ALIASES[k] = keys[0]
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of the registered models (one per model; aliases are not listed), sorted."""
    return sorted((e.name for e in _REGISTRY.values()), key=str.lower)


def _lookup(name: str) -> _Entry:
    key = normalize_model_name(name)
    if key not in _ALIASES:
        known = ", ".join(list_models())
        raise ValueError(
            f"unknown model {name!r}. Known models: {known}. Pass an nn.Module to use your own "
            "network, or register a factory with @deepcurvature.register_model('NAME')."
        )
    return _REGISTRY[_ALIASES[key]]


def model_info(name: str) -> dict[str, Any]:
    """Describe a registered model.

    Returns:
        A dict with the canonical ``name``, ``aliases``, bound ``defaults``, the accepted
        keyword arguments ``kwargs`` (with their defaults) and a one-line ``description``.
    """
    entry = _lookup(name)
    sig = inspect.signature(entry.factory)
    kwargs = {
        p.name: (entry.defaults.get(p.name, p.default))
        for p in list(sig.parameters.values())[3:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    return {
        "name": entry.name,
        "aliases": list(entry.aliases),
        "defaults": dict(entry.defaults),
        "kwargs": kwargs,
        "description": entry.description,
    }


def _as_size(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(input_size, bool):
        raise TypeError("input_size must be an int or an (H, W) pair, got a bool")
    if isinstance(input_size, numbers.Integral):
        size = (int(input_size), int(input_size))
    elif isinstance(input_size, (tuple, list, torch.Size)) and len(input_size) == 2:
        size = (int(input_size[0]), int(input_size[1]))
    else:
        raise TypeError(f"input_size must be an int or an (H, W) pair, got {input_size!r}")
    if min(size) < 1:
        raise ValueError(f"input_size must be positive, got {size}")
    return size


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_kwargs(entry: _Entry, kwargs: dict[str, Any]) -> None:
    sig = inspect.signature(entry.factory)
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params[3:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"model {entry.name!r} got unexpected keyword argument(s) {unknown}; "
            f"it accepts: {sorted(accepted) or 'none'}"
        )


def get_model(
    name: str | nn.Module,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 32,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered network, or return a given ``nn.Module`` unchanged.

    Args:
        name: a registered name (see :func:`list_models`; case-insensitive, paper spellings
            accepted) or an ``nn.Module``, which is returned as it is.
        num_classes: number of outputs: the model maps ``(B, in_channels, H, W)`` to
            ``(B, num_classes)`` logits.
        in_channels: channels of the input images (3 for CIFAR, 1 for MNIST and digits).
        input_size: ``H`` (square) or ``(H, W)`` of the inputs; used to size MLP inputs and to
            skip pooling layers that would shrink small inputs (e.g. 8x8 digits) below 1x1.
        seed: if given, the parameters are initialised under ``torch.manual_seed(seed)`` without
            touching the global random state; otherwise the global RNG is used.
        **kwargs: options of the model (e.g. ``hidden=(64, 64)`` for "mlp", ``width`` for "cnn");
            an unknown option raises a TypeError listing the accepted ones.

    Returns:
        The network, in training mode.
    """
    if isinstance(name, nn.Module):
        if kwargs:
            raise TypeError(
                f"model options {sorted(kwargs)} cannot be applied to an existing nn.Module; "
                "pass a registered model name instead, or configure your module yourself"
            )
        return name
    entry = _lookup(name)
    num_classes = _check_positive_int(num_classes, "num_classes")
    in_channels = _check_positive_int(in_channels, "in_channels")
    size = _as_size(input_size)
    options = {**entry.defaults, **kwargs}
    _check_kwargs(entry, options)
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(int(seed))
        try:
            model = entry.factory(num_classes, in_channels, size, **options)
        except (TypeError, ValueError, RuntimeError) as exc:
            given = {k: v for k, v in kwargs.items()}
            raise ValueError(
                f"cannot build model {entry.name!r} with options {given} "
                f"(num_classes={num_classes}, in_channels={in_channels}, input_size={size}): "
                f"{exc}"
            ) from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory of model {entry.name!r} returned {type(model).__name__}")
    return model


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (the dimension P of its curvature matrices).

    Args:
        model: the network.
        trainable_only: count only parameters with ``requires_grad`` (the default).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
