"""SWATS: switch from Adam to SGD.

Keskar & Socher, 2017, "Improving Generalization Performance by Switching from Adam to SGD",
Algorithm 1.

Adam phase, step ``k`` (per parameter group, all its tensors flattened into one vector):
``p_k = -lr sqrt(1 - beta2^k) / (1 - beta1^k) m_k / (sqrt(v_k) + eps)`` is applied; when
``p_k . g_k != 0`` the projected SGD learning rate ``gamma_k = (p_k . p_k) / (-p_k . g_k)`` updates
``lambda_k = beta2 lambda_{k-1} + (1 - beta2) gamma_k``, and the group switches to SGD when
``k > 1`` and ``|lambda_k / (1 - beta2^k) - gamma_k| < switch_tol``. SGD phase: ``v = beta1 v + g``,
``w -= (1 - beta1) Lambda v`` with ``Lambda = lambda_k / (1 - beta2^k)`` frozen at the switch
(scaled by ``lr / lr_at_switch`` so that a learning-rate schedule keeps acting).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from .validation import check_hyperparameters

__all__ = ["SWATS"]


class SWATS(torch.optim.Optimizer):
    """Adam that switches to SGD with momentum once its projected learning rate has converged.

    Args:
        params: parameters or parameter groups.
        lr: Adam learning rate.
        betas: ``(beta1, beta2)``; ``beta1`` is also the SGD momentum after the switch.
        eps: Adam's denominator term.
        weight_decay: L2 penalty added to the gradient (both phases).
        switch_tol: the switching tolerance epsilon of the paper (1e-9).

    Each group records ``phase`` (``"adam"`` or ``"sgd"``), ``switch_step`` (the step at which
    it switched, or ``None``) and ``sgd_lr`` (``Lambda``).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        switch_tol: float = 1e-9,
    ) -> None:
        check_hyperparameters(
            "SWATS",
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, switch_tol=switch_tol),
        )
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"SWATS: betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0 or switch_tol < 0:
            raise ValueError("SWATS: eps, weight_decay and switch_tol must be non-negative")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            switch_tol=switch_tol,
            phase="adam",
            step=0,
            lambda_avg=0.0,
            sgd_lr=None,
            lr_at_switch=None,
            switch_step=None,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every group (Adam or SGD according to its phase)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = []
            for p in params:
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("SWATS does not support sparse gradients")
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                grads.append(g)
            group["step"] += 1
            if group["phase"] == "adam":
                self._adam_step(group, params, grads)
            else:
                self._sgd_step(group, params, grads)
        return loss

    def _adam_step(self, group: dict, params: list, grads: list) -> None:
        beta1, beta2 = group["betas"]
        k = group["step"]
        bc1, bc2 = 1 - beta1**k, 1 - beta2**k
        step_size = group["lr"] * math.sqrt(bc2) / bc1
        pg = torch.zeros((), dtype=torch.float64, device=params[0].device)
        pp = torch.zeros((), dtype=torch.float64, device=params[0].device)
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            update = m / (v.sqrt() + group["eps"]) * (-step_size)
            p.add_(update)
            pg += (update * g).sum(dtype=torch.float64)
            pp += (update * update).sum(dtype=torch.float64)
        pg_val = float(pg)  # one host sync per step: the switch test needs the scalars
        if pg_val != 0.0:
            gamma = float(pp) / -pg_val
            group["lambda_avg"] = beta2 * group["lambda_avg"] + (1 - beta2) * gamma
            corrected = group["lambda_avg"] / bc2
            if k > 1 and abs(corrected - gamma) < group["switch_tol"]:
                group["phase"] = "sgd"
                group["sgd_lr"] = corrected
                group["lr_at_switch"] = group["lr"]
                group["switch_step"] = k

    def _sgd_step(self, group: dict, params: list, grads: list) -> None:
        beta1 = group["betas"][0]
        lr = group["sgd_lr"] * group["lr"] / group["lr_at_switch"]
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(beta1).add_(g)
            p.add_(buf, alpha=-(1 - beta1) * lr)
