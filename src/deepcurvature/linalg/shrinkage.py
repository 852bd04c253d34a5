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

import math
from dataclasses import dataclass

import torch

from .probes import draw_probes

__all__ = ["ShrinkageDamping", "ShrinkageEstimate", "shrinkage_ratio"]

#: the names of the running sums a :class:`ShrinkageDamping` keeps (its ``state``)
STATE_KEYS = ("weights", "sum_products", "sum_sq", "sum_spread", "sum_mean")


def shrinkage_ratio(noise: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """``rho = noise / spread`` elementwise, NaN where the spread is not positive.

    Args:
        noise: ``E_b ||(H_b - H) v||^2`` (any shape).
        spread: ``E_b ||(H_b - T) v||^2``, the same shape (``T`` the shrinkage target).

    Returns:
        The shrinkage intensities, same shape, float64 where the inputs are.
    """
    return torch.where(spread > 0, noise / spread.clamp_min(1e-300), torch.nan)


@dataclass(frozen=True)
class ShrinkageEstimate:
    """What :meth:`ShrinkageDamping.estimate` learned.

    Attributes:
        rho: the shrinkage intensity in ``[0, rho_max]`` (``noise_scale * noise / (signal +
            noise_scale * noise)``; ``noise / spread`` for ``noise_scale = 1``).
        mean_eigenvalue: ``mu``, the running mean of ``tr H_b / P``.
        damping: ``rho / (1 - rho) * max(mu, 0)``: ``(H_b + damping I)^{-1} =
            (1 - rho) ((1 - rho) H_b + rho mu I)^{-1}``, the shrunk inverse with the learning rate
            reduced by ``1 - rho``.
        noise: ``E_b ||(H_b - H) v||^2`` summed over the probes (unbiased weighted variance).
        spread: ``E_b ||(H_b - mu_b I) v||^2`` summed over the probes.
        batches: the number of batch products seen.
    """

    rho: float
    mean_eigenvalue: float
    damping: float
    noise: float
    spread: float
    batches: int


class ShrinkageDamping:
    """Online linear-shrinkage intensity and damping from batch curvature products.

    Granziol & Baskerville's random-matrix damping learner: the batch curvature ``H_b`` is shrunk
    towards its mean eigenvalue, ``(1 - rho) H_b + rho (tr H_b / P) I``, with the Ledoit-Wolf
    intensity ``rho = E_b ||H_b - H||^2 / E_b ||H_b - mu_b I||^2`` measured along ``k`` fixed
    unit probes ``v_j`` (Rademacher, seeded): each :meth:`update` takes ``H_b V`` (``(P, k)``) and
    folds into running sums (weights ``decay^age``; ``decay=1`` is the plain mean) the product,
    ``||H_b v_j||^2``, ``mu_b = mean_j v_j^T H_b v_j`` (Hutchinson's ``tr H_b / P``) and
    ``||(H_b - mu_b I) v_j||^2``. The noise is the unbiased weighted batch-to-batch variance
    ``(sum w ||H_b v||^2 - W ||mean||^2) / (W - sum w^2 / W)`` (the numerator of
    :func:`deepcurvature.loss_stats`' ``curv_shrinkage``); ``rho`` is :func:`shrinkage_ratio` of
    the sums over the probes.

    A consumer that shrinks an average of batch curvatures (K-FAC's running factors) passes
    ``noise_scale`` = the variance reduction of its average (``(1 - b) / (1 + b)`` for an
    exponential average with decay ``b``). With a moving ``H`` (training) the variance also holds
    the drift of ``H`` over the window, so ``rho`` is an upper estimate; ``decay`` sets the window.

    The running sums live in :attr:`state` (tensors only), so an optimiser keeps them in its
    ``state_dict`` and resumes exactly; the probes are redrawn from the seed.
    """

    def __init__(
        self,
        num_params: int,
        *,
        probes: int = 4,
        decay: float = 0.9,
        seed: int = 0,
        rho_max: float = 0.99,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        for name, value in (("num_params", num_params), ("probes", probes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ShrinkageDamping: {name} must be a positive integer, got {value!r}"
                )
        if not (isinstance(decay, (int, float)) and 0 < decay <= 1):
            raise ValueError(f"ShrinkageDamping: decay must be in (0, 1], got {decay!r}")
        if not (isinstance(rho_max, (int, float)) and 0 < rho_max < 1):
            raise ValueError(f"ShrinkageDamping: rho_max must be in (0, 1), got {rho_max!r}")
        self.num_params, self.k = int(num_params), int(probes)
        self.decay, self.rho_max, self.seed = float(decay), float(rho_max), int(seed)
        V = draw_probes(self.num_params, self.k, seed=self.seed, dtype=torch.float64).T
        self.probes = (V / math.sqrt(self.num_params)).to(dtype=dtype, device=device)  # (P, k)
        self.state: dict[str, torch.Tensor] = state if state is not None else {}
        if not self.state:
            self.reset()
        elif tuple(self.state["sum_products"].shape) != (self.num_params, self.k):
            raise ValueError(
                f"ShrinkageDamping: the stored sums have shape "
                f"{tuple(self.state['sum_products'].shape)}, expected {(self.num_params, self.k)}"
            )

    def reset(self) -> None:
        """Forget every batch seen."""
        kw = {"dtype": self.probes.dtype, "device": self.probes.device}
        self.state.update(
            weights=torch.zeros(3, **kw),  # sum w, sum w^2, number of batches
            sum_products=torch.zeros(self.num_params, self.k, **kw),
            sum_sq=torch.zeros(self.k, **kw),
            sum_spread=torch.zeros(self.k, **kw),
            sum_mean=torch.zeros((), **kw),
        )

    @property
    def batches(self) -> int:
        """The number of batch products folded in."""
        return int(self.state["weights"][2])

    def update(self, products: torch.Tensor) -> None:
        """Fold in ``products = H_b @ self.probes`` of one batch, shape ``(P, k)``."""
        if tuple(products.shape) != (self.num_params, self.k):
            raise ValueError(
                f"ShrinkageDamping.update: products must have shape {(self.num_params, self.k)} "
                f"(H_b @ probes), got {tuple(products.shape)}"
            )
        X = products.to(self.probes)
        if not bool(torch.isfinite(X).all()):
            raise FloatingPointError("ShrinkageDamping.update: the batch products are not finite")
        st, b = self.state, self.decay
        rayleigh = (self.probes * X).sum(0)  # (k,) v_j^T H_b v_j
        mu = rayleigh.mean()
        sq = (X * X).sum(0)
        spread = sq - 2 * mu * rayleigh + mu * mu  # ||(H_b - mu I) v_j||^2, ||v_j|| = 1
        w = st["weights"]
        w[0].mul_(b).add_(1.0)
        w[1].mul_(b * b).add_(1.0)
        w[2].add_(1.0)
        for key, value in (("sum_products", X), ("sum_sq", sq), ("sum_spread", spread)):
            st[key].mul_(b).add_(value)
        st["sum_mean"].mul_(b).add_(mu)

    def mean_variance_scale(self) -> float:
        """``sum w^2 / (sum w)^2``: the variance of the running weighted mean over that of a batch.

        Pass it as ``noise_scale`` to :meth:`estimate` to shrink the running mean of the batch
        curvatures (K-FAC's factors) instead of a single batch's.
        """
        W, W2 = float(self.state["weights"][0]), float(self.state["weights"][1])
        return W2 / (W * W) if W > 0 else 1.0

    def estimate(self, noise_scale: float = 1.0) -> ShrinkageEstimate | None:
        """The learned intensity and damping; ``None`` before two batches (no variance yet)."""
        st = self.state
        W, W2, n = (float(x) for x in st["weights"].double())
        if n < 2:
            return None
        mean = st["sum_products"].double() / W
        var_sum = st["sum_sq"].double().sum() - W * (mean * mean).sum()
        noise = max(float(var_sum) / (W - W2 / W), 0.0)
        spread = float(st["sum_spread"].double().sum()) / W
        mu = float(st["sum_mean"]) / W
        signal = max(spread - noise, 0.0)
        scaled = noise_scale * noise
        ratio = shrinkage_ratio(*torch.tensor([scaled, signal + scaled], dtype=torch.float64))
        rho = float(ratio)
        rho = 0.0 if math.isnan(rho) else min(rho, self.rho_max)
        damping = rho / (1.0 - rho) * max(mu, 0.0)
        return ShrinkageEstimate(rho, mu, damping, noise, spread, int(n))
