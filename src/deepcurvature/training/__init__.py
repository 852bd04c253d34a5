"""Training: ``train_network``, learning-rate schedules, checkpoints and per-epoch statistics."""

from .checkpoint import (
    checkpoint_is_finite,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    nonfinite_weights,
    read_checkpoint,
    save_checkpoint,
)
from .rng import get_rng_state, set_rng_state
from .schedules import (
    Schedule,
    constant_schedule,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    list_schedules,
    step_schedule,
)
from .stats import StatsLog, evaluate, weight_norms
from .train import TrainingDivergedError, TrainResult, train_network

__all__ = [
    "Schedule",
    "StatsLog",
    "TrainResult",
    "TrainingDivergedError",
    "checkpoint_is_finite",
    "checkpoint_path",
    "constant_schedule",
    "cosine_schedule",
    "evaluate",
    "get_rng_state",
    "get_schedule",
    "linear_schedule",
    "list_checkpoints",
    "list_schedules",
    "load_checkpoint",
    "nonfinite_weights",
    "read_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "step_schedule",
    "train_network",
    "weight_norms",
]
