"""Optimisers beyond PyTorch's: K-FAC, M-FAC, SWATS, Gadam/GadamW, and a registry by name."""

from .gadam import Gadam, GadamW, IterateAveraging
from .kfac import KFAC
from .mfac import MFAC
from .registry import (
    build_optimizer,
    check_optimizer_arguments,
    list_optimizers,
    optimizer_defaults,
    register_optimizer,
    same_optimizer,
)
from .swats import SWATS
from .validation import check_hyperparameters

__all__ = [
    "KFAC",
    "MFAC",
    "SWATS",
    "Gadam",
    "GadamW",
    "IterateAveraging",
    "build_optimizer",
    "check_hyperparameters",
    "check_optimizer_arguments",
    "list_optimizers",
    "optimizer_defaults",
    "register_optimizer",
    "same_optimizer",
]
