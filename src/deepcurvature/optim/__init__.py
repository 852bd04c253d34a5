"""Optimisers beyond PyTorch's and a registry by name.

K-FAC, M-FAC, the stochastic Lanczos Newton optimisers, SWATS and Gadam/GadamW.
"""

from .gadam import Gadam, GadamW, IterateAveraging
from .kfac import KFAC
from .lanczos_newton import LanczosGGN, LanczosNewton
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
    "LanczosGGN",
    "LanczosNewton",
    "build_optimizer",
    "check_hyperparameters",
    "check_optimizer_arguments",
    "list_optimizers",
    "optimizer_defaults",
    "register_optimizer",
    "same_optimizer",
]
