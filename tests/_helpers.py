"""Small helpers shared by the tests (imported as ``from _helpers import ...``)."""

import numpy as np
import torch


def rotate(d, seed):
    """``U diag(d) U^T`` with ``U`` the Q factor of a Gaussian matrix (float64 tensor)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d.size, d.size)))
    A = (U * d) @ U.T
    return torch.as_tensor((A + A.T) / 2)


def cli(*args, cwd=None, env=None, timeout=600):
    """Run ``deepcurvature ARGS...`` for real, as a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "deepcurvature.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
