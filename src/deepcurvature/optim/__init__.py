"""Optimisers beyond PyTorch's: K-FAC, SWATS, Gadam/GadamW, and a registry by name."""

from .gadam import Gadam, GadamW, IterateAveraging
from .kfac import KFAC
from .registry import build_optimizer, list_optimizers, optimizer_defaults, register_optimizer
from .swats import SWATS

__all__ = [
    "KFAC",
    "SWATS",
    "Gadam",
    "GadamW",
    "IterateAveraging",
    "build_optimizer",
    "list_optimizers",
    "optimizer_defaults",
    "register_optimizer",
]
