"""Curvature matrices of a network over a data set as linear operators: Hessian, GGN, Fisher.

``dc.hessian(model, loss_fn, data)``, ``dc.ggn(...)`` and ``dc.fisher(..., kind="empirical" |
"mc")`` return :class:`~deepcurvature.linalg.LinearOperator` objects over the flattened selected
parameters, ready for ``dc.lanczos``. Inside a ``torch.distributed`` process group they are
data-parallel over the ranks' shards (:mod:`.distributed`).
"""

from .allocator import cpu_allocator_status, tune_cpu_allocator
from .base import CurvatureOperator
from .distributed import DistributedError, process_group_active
from .fisher import FisherOperator, fisher
from .ggn import GGNOperator, ggn
from .hessian import HessianOperator, hessian
from .input_hessian import InputHessianOperator, input_hessian
from .losses import SequenceCrossEntropyLoss
from .params import select_parameters

__all__ = [
    "CurvatureOperator",
    "DistributedError",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "SequenceCrossEntropyLoss",
    "cpu_allocator_status",
    "fisher",
    "ggn",
    "hessian",
    "process_group_active",
    "select_parameters",
    "tune_cpu_allocator",
]
__all__ += ["InputHessianOperator", "input_hessian"]
