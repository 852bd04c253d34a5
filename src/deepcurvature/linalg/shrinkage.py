"""Linear shrinkage of a noisy curvature estimate (Ledoit & Wolf 2004; Granziol & Baskerville).

A mini-batch curvature ``H_b`` is a noisy estimate of the full-data ``H``. Linear shrinkage
replaces it by ``(1 - rho) H_b + rho T`` with a target ``T`` and the intensity ``rho`` that
minimises ``E_b ||(1 - rho) H_b + rho T - H||_F^2``; with ``E_b H_b = H`` the optimum is

``rho* = E_b ||H_b - H||^2 / E_b ||H_b - T||^2``        (Ledoit & Wolf 2004, Lemma 2.1)

(noise over total spread about the target). Along probe directions ``v`` the Frobenius norms are
replaced by ``||(.) v||^2``: for isotropic unit ``v``, ``E_v ||A v||^2 = ||A||_F^2 / P``.

* :func:`shrinkage_ratio` is that ratio for given noise and spread (per probe or summed), shared
  by :func:`deepcurvature.loss_stats` (target ``T = 0``: ``curv_shrinkage``) and the learner below;
* :class:`ShrinkageDamping` learns ``rho`` online from the batch-to-batch variance of the products
  ``H_b V`` with fixed probes ``V``, with the target ``T = mu_b I``, ``mu_b = tr H_b / P`` (the mean
  eigenvalue, Hutchinson's estimate from the same products), and turns it into a damping.
"""

from __future__ import annotations

import torch

__all__ = ["shrinkage_ratio"]


def shrinkage_ratio(noise: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """``rho = noise / spread`` elementwise, NaN where the spread is not positive.

    Args:
        noise: ``E_b ||(H_b - H) v||^2`` (any shape).
        spread: ``E_b ||(H_b - T) v||^2``, the same shape (``T`` the shrinkage target).

    Returns:
        The shrinkage intensities, same shape, float64 where the inputs are.
    """
    return torch.where(spread > 0, noise / spread.clamp_min(1e-300), torch.nan)
