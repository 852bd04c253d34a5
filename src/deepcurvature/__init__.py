"""deepcurvature: the curvature of neural-network loss surfaces, learned with Lanczos.

Layers (imports point downward only): ``cli`` -> ``suite`` -> ``analysis`` -> ``operators`` ->
``linalg`` -> ``io``. Every public name of the subpackages is re-exported here, so
``import deepcurvature as dc`` gives ``dc.lanczos``, ``dc.hessian``, ``dc.train_network``...
"""

from ._version import __version__
from .analysis import *  # noqa: F403
from .analysis import __all__ as _analysis_all
from .data import *  # noqa: F403
from .data import __all__ as _data_all
from .demo import run_demo
from .linalg import *  # noqa: F403
from .linalg import __all__ as _linalg_all
from .models import *  # noqa: F403
from .models import __all__ as _models_all
from .operators import *  # noqa: F403
from .operators import __all__ as _operators_all
from .optim import *  # noqa: F403
from .optim import __all__ as _optim_all
from .plotting import *  # noqa: F403
from .plotting import __all__ as _plotting_all
from .report import write_report
from .rmt import *  # noqa: F403
from .rmt import __all__ as _rmt_all
from .suite import *  # noqa: F403
from .suite import __all__ as _suite_all
from .training import *  # noqa: F403
from .training import __all__ as _training_all

__all__ = [
    "__version__",
    "run_demo",
    "write_report",
    *_linalg_all,
    *_rmt_all,
    *_operators_all,
    *_models_all,
    *_data_all,
    *_optim_all,
    *_training_all,
    *_plotting_all,
    *_analysis_all,
    *_suite_all,
]
