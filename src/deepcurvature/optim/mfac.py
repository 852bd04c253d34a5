"""M-FAC: SGD preconditioned by the inverse empirical Fisher of a sliding window of gradients.

Frantar, Kurtic & Alistarh 2021, the optimisation setting. At every step the gradient ``g`` of
all trainable parameters (flattened, in ``param_groups`` order) replaces the oldest of the last
``m`` gradients, and the direction is ``F^{-1} g`` with ``F = λ I + (1/m) Σ_i g_i g_iᵀ`` over the
window (:class:`deepcurvature.linalg.mfac.MFACWindow`: ``O(m P + m³)`` per step). Weight decay
is added to the preconditioned direction, then each parameter takes an SGD-with-momentum step
``buf = momentum buf + (F^{-1} g + weight_decay p)``, ``p -= lr buf``.

The window starts with ``m`` zero gradients, which add nothing to ``F``: after ``k < m`` steps it
is ``λ I + (1/m) Σ`` over the ``k`` gradients seen. It lives in ``self.state`` (of the first
parameter), so ``state_dict()`` / ``load_state_dict()`` checkpoint and resume it exactly.

Defaults: ``m = 32``, ``damping = 1e-6``, ``lr = 1e-4``. The damping and learning rate are the
authors' published M-FAC settings (BERT fine-tuning, model cards of huggingface.co/M-FAC), which
use ``m = 512`` or ``1024`` on GPUs; the window costs ``m P`` numbers of memory (128 MB in float32
for a million parameters at ``m = 32``, 4 GB at ``m = 1024``) and ``O(m³)`` per step, and this
library targets laptop CPUs too, hence the smaller window. The current gradient is in the window,
so the direction ``F^{-1} g`` stays in the span of the window's gradients, where its size is
about ``m g / |g|²`` (not ``g / λ``): learning rates are much smaller than SGD's.

A non-finite gradient, or one whose dot products overflow (both checked before it enters the
window, which is then left intact), or a non-finite update (the parameters and momentum buffers
are then left unchanged) raises ``FloatingPointError`` naming the fix. The checks read two numbers
per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..linalg.mfac import MFACWindow
from .validation import check_hyperparameters

__all__ = ["MFAC"]

_WINDOW_KEYS = ("gradients", "gram", "coefficients", "denominators")


class MFAC(torch.optim.Optimizer):
    """M-FAC preconditioned SGD with momentum (see the module docstring).

    Args:
        params: the parameters (or parameter groups; ``lr``, ``momentum`` and ``weight_decay``
            may differ between groups, ``m`` and ``damping`` may not: one window covers all).
        lr: learning rate.
        momentum: SGD momentum on the preconditioned direction.
        weight_decay: L2 coefficient added to the preconditioned direction.
        m: the number of past gradients in the window.
        damping: the ``λ`` of ``λ I + GᵀG / m``.

    Raises:
        ValueError: a non-finite or wrongly signed hyper-parameter, ``m < 1``, no trainable
            parameters, parameters of several dtypes or devices, or groups with different ``m``
            or ``damping``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        m: int = 32,
        damping: float = 1e-6,
    ) -> None:
        check_hyperparameters(
            "MFAC", dict(lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping)
        )
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(
                f"MFAC: m (the number of gradients in the window) must be an int >= 1, got {m!r}"
            )
        if momentum >= 1:
            raise ValueError(f"MFAC: momentum must be < 1, got {momentum!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, m=m, damping=damping)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_hyperparameters("MFAC", {k: group[k] for k in ("lr", "momentum", "weight_decay")})
            for key in ("m", "damping"):
                if group[key] != defaults[key]:
                    raise ValueError(
                        f"MFAC: every parameter group must use the same {key} (one window covers "
                        f"all parameters), got {group[key]!r} and {defaults[key]!r}; set {key} "
                        "once, as an argument of MFAC"
                    )
        params_ = self._params()
        if not params_:
            raise ValueError("MFAC: no parameter requires grad: pass trainable parameters")
        if len({(p.dtype, p.device) for p in params_}) > 1:
            raise ValueError(
                "MFAC: all parameters must share one dtype and device (one window of flattened "
                "gradients covers them); convert the model with model.to(dtype, device)"
            )

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _window(self, params: list[torch.Tensor]) -> MFACWindow:
        state = self.state[params[0]]
        damping = self.defaults["damping"]
        P = sum(p.numel() for p in params)
        if "mfac_gradients" in state:
            shape = tuple(state["mfac_gradients"].shape)
            if shape != (self.defaults["m"], P):
                raise ValueError(
                    f"MFAC: the saved window holds gradients of shape {shape}, but this optimiser "
                    f"has m={self.defaults['m']} and {P} trainable parameters; load a state_dict "
                    "saved by an MFAC with the same m for the same model"
                )
        else:
            window = MFACWindow(
                self.defaults["m"], P, damping, dtype=params[0].dtype, device=params[0].device
            )
            for key, value in window.state().items():
                state[f"mfac_{key}"] = value
        return MFACWindow.from_state(
            {key: state[f"mfac_{key}"] for key in (*_WINDOW_KEYS, "next")}, damping
        )

    def _failure(self, what: str) -> FloatingPointError:
        group = self.param_groups[0]
        return FloatingPointError(
            f"MFAC: {what}; lower the learning rate (lr={group['lr']:.3g}), raise damping "
            f"(damping={self.defaults['damping']:.3g}) or check the data and the loss"
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Add the gradient to the window, precondition it, and take a momentum-SGD step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
        ]
        g = torch.cat(grads).to(params[0].dtype)
        if not bool(torch.isfinite(g).all()):
            raise self._failure("the gradient is not finite (it was not added to the window)")
        window = self._window(params)
        try:
            window.update(g)
        except ValueError as exc:
            raise self._failure(f"the gradient cannot enter the window ({exc})") from exc
        self.state[params[0]]["mfac_next"] = window.next
        direction = window.matvec(g)
        pending = []  # (parameter, new value, new momentum buffer): nothing changes until checked
        offset = 0
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                n = p.numel()
                d_p = direction[offset : offset + n].view_as(p)
                offset += n
                if group["weight_decay"]:
                    d_p = d_p + group["weight_decay"] * p
                buf = None
                if group["momentum"]:
                    old = self.state[p].get("momentum_buffer")
                    buf = d_p.clone() if old is None else old * group["momentum"] + d_p
                    d_p = buf
                pending.append((p, torch.add(p, d_p, alpha=-group["lr"]), buf))
        if not bool(torch.stack([torch.isfinite(new).all() for _, new, _ in pending]).all()):
            raise self._failure(
                "the update is not finite (the parameters and momentum buffers are unchanged)"
            )
        for p, new, buf in pending:
            p.copy_(new)
            if buf is not None:
                self.state[p]["momentum_buffer"] = buf
        return loss
