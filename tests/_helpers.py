"""Small helpers shared by the tests (imported as ``from _helpers import ...``)."""

import numpy as np
import torch


def rotate(d, seed):
    """``U diag(d) U^T`` with ``U`` the Q factor of a Gaussian matrix (float64 tensor)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d.size, d.size)))
    A = (U * d) @ U.T
    return torch.as_tensor((A + A.T) / 2)
