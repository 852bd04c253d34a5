"""Built-in losses written out in elementary operations, for the derivatives torch lacks.

Second derivatives of a loss need the derivative of its gradient. torch 2.13 has no
forward-mode one for ``mse_loss``, ``huber_loss``, ``soft_margin_loss``, ``multi_margin_loss``
and ``multilabel_margin_loss`` (the Hessian's ``engine="forward"``, ``torch.func.jvp`` of
``torch.func.grad``, and its compiled product), and no reverse-mode one (double backward) for
the last two (every Hessian and GGN product). These losses are differentiated in the form below
instead: the same values and derivatives as torch's, with ``reduction="mean"``. Any other
operation without the derivative a product needs (in a model or a custom loss) gets one clear
error that names it and the fix (:func:`missing_derivative`).

* ``MSELoss``: ``mean((f - y)^2)``;
* ``HuberLoss(delta)``: ``mean(0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta))``,
  ``d = f - y``;
* ``SoftMarginLoss``: ``mean(log(1 + exp(-y f)))``;
* ``MultiMarginLoss(p, margin, weight)``: per sample
  ``sum_{j != y} w_y max(0, margin - f_y + f_j)^p / C`` (``C`` classes), averaged over samples;
* ``MultiLabelMarginLoss``: per sample ``sum_{j in T} sum_{i not in T} max(0, 1 - f_j + f_i) / C``
  over the target classes ``T`` (the target's entries up to its first ``-1``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FUNCTION_FORMS",
    "NO_DOUBLE_BACKWARD",
    "elementary_loss",
    "lacks_forward_mode",
    "missing_derivative",
]

#: losses whose gradient torch cannot differentiate in reverse mode (no double backward)
NO_DOUBLE_BACKWARD: tuple[type[nn.Module], ...] = (nn.MultiMarginLoss, nn.MultiLabelMarginLoss)

#: the functions of the losses above (called with their default arguments, as a loss_fn is) and
#: the modules that compute the same; the operators take the module (``OutputLoss``)
FUNCTION_FORMS: dict[Callable[..., torch.Tensor], type[nn.Module]] = {
    F.huber_loss: nn.HuberLoss,
    F.soft_margin_loss: nn.SoftMarginLoss,
    F.multi_margin_loss: nn.MultiMarginLoss,
    F.multilabel_margin_loss: nn.MultiLabelMarginLoss,
}


def elementary_loss(
    loss_fn: Callable[..., torch.Tensor], output: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """``loss_fn(output, targets)`` written out (see the module), or ``None`` for other losses.

    Only exact instances of the losses above with ``reduction="mean"`` (and ``F.mse_loss``),
    and targets of the layout the written form covers; anything else returns ``None`` (call the
    loss as is).
    """
    kind = nn.MSELoss if loss_fn is F.mse_loss else type(loss_fn)
    if getattr(loss_fn, "reduction", "mean") != "mean":
        return None
    if kind is nn.MSELoss and output.shape == targets.shape:
        return (output - targets).square().mean()
    if kind is nn.HuberLoss and output.shape == targets.shape:
        d = output - targets
        a, delta = d.abs(), loss_fn.delta
        return torch.where(a < delta, 0.5 * d.square(), delta * (a - 0.5 * delta)).mean()
    if kind is nn.SoftMarginLoss and output.shape == targets.shape:
        z = -targets * output
        return torch.logaddexp(torch.zeros_like(z), z).mean()
    if kind is nn.MultiMarginLoss and not targets.is_floating_point():
        return _multi_margin(loss_fn, output, targets)
    if kind is nn.MultiLabelMarginLoss and output.shape == targets.shape:
        return _multilabel_margin(output, targets)
    return None


def _multi_margin(
    loss_fn: nn.MultiMarginLoss, output: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """``MultiMarginLoss`` of ``output`` ``(N, C)`` or ``(C,)``, class indices ``(N,)``/``()``."""
    f = output.unsqueeze(0) if output.dim() == 1 else output
    y = targets.reshape(-1)
    if f.dim() != 2 or y.shape[0] != f.shape[0]:
        return None
    y = y.to(f.device).unsqueeze(1)  # (N, 1)
    z = (loss_fn.margin - f.gather(1, y) + f).clamp_min(0)  # (N, C)
    if loss_fn.p == 2:
        z = z.square()
    if loss_fn.weight is not None:
        z = z * loss_fn.weight.to(f).gather(0, y.squeeze(1)).unsqueeze(1)
    z = z.scatter(1, y, 0.0)  # the target's own term is not counted
    return (z.sum(1) / f.shape[1]).mean()


def _multilabel_margin(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``MultiLabelMarginLoss`` of ``output`` ``(N, C)`` or ``(C,)``, targets of the same shape.

    ``O(N C^2)`` memory: the pairs (target class, other class) of every sample.
    """
    f = output.unsqueeze(0) if output.dim() == 1 else output
    t = targets.reshape(f.shape).to(f.device)
    valid = (t >= 0).long().cumprod(1).bool()  # the entries before the first -1
    index = t.clamp_min(0)
    chosen = F.one_hot(index, f.shape[1]).mul(valid.unsqueeze(-1)).sum(1) > 0  # (N, C)
    z = (1.0 - f.gather(1, index).unsqueeze(2) + f.unsqueeze(1)).clamp_min(0)  # (N, j, i)
    z = z * (valid.unsqueeze(2) & ~chosen.unsqueeze(1))
    return (z.sum((1, 2)) / f.shape[1]).mean()


_FORWARD_AD = re.compile(r"forward AD with (\w+)")
_DOUBLE_BACKWARD = re.compile(r"derivative for (aten::\w+) is not implemented")


def lacks_forward_mode(error: BaseException) -> bool:
    """Whether ``error`` is torch's "Trying to use forward AD with <op>" (no forward mode)."""
    return isinstance(error, NotImplementedError) and _FORWARD_AD.search(str(error)) is not None


def missing_derivative(error: BaseException, curvature: str) -> ValueError | None:
    """A clear error for torch's missing-derivative error ``error``, or ``None`` for any other.

    torch raises ``NotImplementedError("Trying to use forward AD with <op> ...")`` or
    ``RuntimeError("derivative for <op> is not implemented")``; the result names the operation,
    what the ``curvature`` product needed of it and the fix.
    """
    text = str(error)

    def op(found: re.Match) -> str:
        name = found.group(1).removeprefix("aten::")
        return name.removesuffix("_backward").removesuffix("_forward")

    found = _FORWARD_AD.search(text)
    if found is not None:
        return ValueError(
            f"the {curvature} product's engine='forward' needs the forward-mode derivative of "
            f"the gradient, and torch has none for {op(found)} (in the model or the loss): "
            "use engine='reverse' (the default: the same products) or write that part in "
            "elementary torch operations"
        )
    found = _DOUBLE_BACKWARD.search(text)
    if found is not None:
        return ValueError(
            f"the {curvature} needs second derivatives, and torch cannot differentiate "
            f"{op(found)} twice (in the model or the loss): write that part in elementary "
            "torch operations (built-in losses without them, such as MultiMarginLoss, are "
            "rewritten automatically)"
        )
    return None
