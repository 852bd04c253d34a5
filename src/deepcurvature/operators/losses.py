"""Losses seen from the network's output: output Hessians, output gradients and predictive samples.

The GGN and the Fisher of a network (paper section 5) only need the loss as a function of the
network output ``f`` (shape ``(B, ...)``) for one batch with targets ``y``:

* ``H_out U``: products with the Hessian of ``loss_fn(f, y)`` with respect to ``f``, in closed form
  for the built-in losses (exactly as torch reduces them with ``reduction="mean"``):

  - cross-entropy: ``c_t (diag(p_t) - p_t p_t^T)`` per position ``t`` over the class dimension,
    ``p_t = softmax(f_t)``, ``c_t = w_t / sum_t w_t`` (``w_t`` the class weight of the target, 0 for
    ``ignore_index``); for probability targets ``c_t = sum(q_t) / T``;
  - mean squared error: ``2 / numel(f) * I``;
  - BCE with logits: ``c_e sigma(f_e) (1 - sigma(f_e))`` per element,
    ``c_e = weight_e (1 + (pos_weight - 1) y_e) / numel(f)``;

  and by automatic differentiation (a Hessian-vector product with respect to ``f``) for any other
  loss or target layout;
* ``grad_f loss``: for the empirical Fisher;
* Monte Carlo factors ``R_s`` with ``E[R R^T] = H_out`` (block-diagonal over positions), drawn from
  the model's predictive distribution: categorical for cross-entropy, Bernoulli for BCE, Gaussian
  for MSE. Their per-sample outer products average to the GGN: the Monte Carlo Fisher.

Model outputs that are not tensors (a dict or a HuggingFace ``ModelOutput``): a user's own loss
function gets the model's output unchanged (``loss_fn(output, targets)``, e.g.
``lambda o, y: F.cross_entropy(o["logits"], y)``), which is all the Hessian needs. The built-in
losses above are applied to the output's *logits*: its ``logits`` attribute, else its ``"logits"``
key (:func:`output_logits`). The GGN and the Fisher apply the loss's Hessian and gradient in output
space, so they need the loss as a function of a tensor: with a non-tensor output they take a
built-in loss (of the logits); a custom loss of a non-tensor output raises a ``TypeError`` there
(wrap the model so that it returns the tensor the loss takes).

Every loss must be *separable over samples* (a sum of terms each depending on one sample's output),
which holds for all mean-reduced losses; losses coupling samples (contrastive losses) are not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vjp, vmap

from .missing_derivatives import FUNCTION_FORMS, NO_DOUBLE_BACKWARD, elementary_loss

__all__ = ["OutputLoss", "SequenceCrossEntropyLoss", "output_logits", "prediction_scores"]


def output_logits(result: Any, index: int) -> torch.Tensor:
    """The logits tensor of a model output that is not a tensor.

    The ``logits`` attribute (a HuggingFace ``ModelOutput``), else the ``"logits"`` key of a dict.

    Raises:
        TypeError: ``result`` has neither (the message names the batch and the fix).
    """
    logits = getattr(result, "logits", None)
    if logits is None and isinstance(result, Mapping):
        logits = result.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    keys = f" with keys {sorted(map(str, result))}" if isinstance(result, Mapping) else ""
    raise TypeError(
        f"the model returned a {type(result).__name__}{keys} on batch {index}; the built-in losses "
        "and the GGN/Fisher need a tensor output (or one with a .logits attribute or 'logits' "
        "key): pass your own loss_fn(output, targets) of this output (Hessian only) or wrap the "
        "model so that it returns the tensor the loss takes"
    )


def prediction_scores(out: Any, index: int) -> torch.Tensor | None:
    """The tensor whose arg-max is the prediction: the output, or the logits of a non-tensor one.

    ``None`` (no accuracy) for a non-tensor output without logits.
    """
    if isinstance(out, torch.Tensor):
        return out
    try:
        return output_logits(out, index)
    except TypeError:
        return None


class SequenceCrossEntropyLoss(nn.CrossEntropyLoss):
    """Cross-entropy over the LAST dimension of logits ``(B, ..., C)``.

    For sequence outputs ``(B, T, C)`` with targets ``(B, T)``: the logits are flattened to
    ``(B * T, C)`` and the loss is the mean over all (non-ignored) positions. Takes the arguments of
    ``nn.CrossEntropyLoss``.

    The curvature operators recognise it and use the closed-form output Hessian
    ``diag(p) - p p^T`` per position.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``input`` ``(B, ..., C)`` against ``target``.

        ``target`` holds class indices ``(B, ...)`` or probabilities ``(B, ..., C)``.
        """
        c = input.shape[-1]
        logits = input.reshape(-1, c)
        tgt = target.reshape(-1, c) if target.is_floating_point() else target.reshape(-1)
        return F.cross_entropy(
            logits,
            tgt,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


_FUNCTIONAL = (
    (F.cross_entropy, "cross_entropy"),
    (F.mse_loss, "mse"),
    (F.binary_cross_entropy_with_logits, "bce_with_logits"),
)
_MODULES = {
    nn.CrossEntropyLoss: "cross_entropy",
    SequenceCrossEntropyLoss: "cross_entropy",
    nn.MSELoss: "mse",
    nn.BCEWithLogitsLoss: "bce_with_logits",
}
MC_KINDS = ("cross_entropy", "mse", "bce_with_logits")


class OutputLoss:
    """A loss function with what the GGN and Fisher operators need from it.

    Args:
        loss_fn: a callable ``loss_fn(output, targets) -> scalar`` with mean reduction. Instances of
            ``nn.CrossEntropyLoss``, ``SequenceCrossEntropyLoss``, ``nn.MSELoss`` and
            ``nn.BCEWithLogitsLoss`` (exact types) and the functions ``F.cross_entropy``,
            ``F.mse_loss``, ``F.binary_cross_entropy_with_logits`` get closed forms; anything
            else is differentiated automatically. The functions ``F.huber_loss``,
            ``F.soft_margin_loss``, ``F.multi_margin_loss`` and ``F.multilabel_margin_loss`` are
            taken as their modules with default arguments (the same loss), whose missing
            derivatives are supplied (:mod:`.missing_derivatives`).

    Attributes:
        kind: ``"cross_entropy"``, ``"mse"``, ``"bce_with_logits"`` or ``"generic"``.

    Raises:
        TypeError: ``loss_fn`` is not callable.
        ValueError: a built-in loss has a reduction other than ``"mean"`` (``KLDivLoss`` also
            takes ``"batchmean"``).
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor]) -> None:
        if not callable(loss_fn):
            raise TypeError(
                "loss_fn must be callable as loss_fn(output, targets), "
                f"got {type(loss_fn).__name__}"
            )
        form = next((m for f, m in FUNCTION_FORMS.items() if loss_fn is f), None)
        self.loss_fn = loss_fn = form() if form is not None else loss_fn
        functional = next((k for f, k in _FUNCTIONAL if loss_fn is f), None)
        self.kind = _MODULES.get(type(loss_fn)) or functional or "generic"
        self.class_dim = -1 if type(loss_fn) is SequenceCrossEntropyLoss else 1
        reduction = (
            getattr(loss_fn, "reduction", "mean") if isinstance(loss_fn, nn.Module) else "mean"
        )
        # KLDivLoss's "batchmean" (the sum over a sample's elements, averaged over samples) is a
        # mean over samples too: batches combine by their sample counts either way
        batchmean = reduction == "batchmean" and isinstance(loss_fn, nn.KLDivLoss)
        if reduction != "mean" and not batchmean:
            raise ValueError(
                f"loss_fn has reduction={reduction!r}, but curvature is defined for the MEAN loss "
                f"over samples; use {type(loss_fn).__name__}(reduction='mean') (the default)"
            )
        self.ignore_index: int = int(getattr(loss_fn, "ignore_index", -100))
        self.label_smoothing: float = float(getattr(loss_fn, "label_smoothing", 0.0))

    @property
    def weight(self) -> torch.Tensor | None:
        """The loss module's class/element weights (read at use, so ``.to()`` moves count)."""
        return getattr(self.loss_fn, "weight", None)

    @property
    def pos_weight(self) -> torch.Tensor | None:
        """The positive-class weights of ``BCEWithLogitsLoss``."""
        return getattr(self.loss_fn, "pos_weight", None)

    @property
    def name(self) -> str:
        """A readable name of the loss."""
        fn = self.loss_fn
        return type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, "__name__", "loss")

    def __call__(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """``loss_fn(output, targets)``.

        ``output`` is what :meth:`loss_input` made of the model's output. Losses whose gradient
        torch cannot differentiate (``MultiMarginLoss``, ``MultiLabelMarginLoss``) are evaluated
        in elementary operations (:mod:`.missing_derivatives`), so that their curvature exists.
        """
        if isinstance(self.loss_fn, NO_DOUBLE_BACKWARD):
            written = elementary_loss(self.loss_fn, output, targets)
            if written is not None:
                return written
        return self.loss_fn(output, targets)

    def loss_input(self, result: Any, index: int) -> Any:
        """What the loss takes of a model output ``result`` that is not a tensor.

        A custom loss gets ``result`` unchanged; a built-in loss its logits
        (:func:`output_logits`).
        """
        if self.kind == "generic":
            return result
        return output_logits(result, index)

    def check_tensor(self, out: Any, index: int | None = None) -> torch.Tensor:
        """``out`` if it is a tensor; else a ``TypeError`` (GGN/Fisher need a tensor output)."""
        if isinstance(out, torch.Tensor):
            return out
        where = "" if index is None else f" on batch {index}"
        raise TypeError(
            f"the GGN and the Fisher need the loss as a function of a tensor output (they apply "
            f"its Hessian/gradient in output space), but the model returned a {type(out).__name__}"
            f"{where} and loss_fn ({self.name}) is a custom function of it: use a built-in loss "
            "(nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss or their functional forms), "
            "which is applied to the output's logits, or wrap the model so that it returns the "
            "tensor your loss takes (dc.hessian accepts any loss of any output)"
        )

    def forward_ad_safe(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The same loss, written so that forward-mode AD of its gradient works.

        ``MSELoss``, ``HuberLoss``, ``SoftMarginLoss``, ``MultiMarginLoss`` and
        ``MultiLabelMarginLoss`` (whose backward torch 2.13 cannot differentiate in forward
        mode) and ``F.mse_loss`` in elementary operations
        (:func:`~.missing_derivatives.elementary_loss`); every other loss is called as is.
        """
        written = elementary_loss(self.loss_fn, output, targets)
        return self.loss_fn(output, targets) if written is None else written

    # -- which closed form applies to this batch ---------------------------------------------------
    def _mode(self, out: torch.Tensor, y: torch.Tensor) -> str:
        if self.kind == "cross_entropy":
            if out.ndim < 2:
                return "generic"
            cd = self.class_dim % out.ndim
            pos_shape = out.shape[:cd] + out.shape[cd + 1 :]
            if not y.is_floating_point() and y.shape == pos_shape:
                if self.weight is not None and self.label_smoothing > 0:
                    return "generic"
                return "ce_index"
            if y.is_floating_point() and y.shape == out.shape and self.weight is None:
                return "ce_prob"
            return "generic"
        if self.kind in ("mse", "bce_with_logits"):
            return self.kind if y.shape == out.shape else "generic"
        return "generic"

    def _weight(self, t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        return None if t is None else t.to(device=like.device, dtype=like.dtype)

    def _ce_parts(self, out: torch.Tensor, y: torch.Tensor, mode: str):
        """Probabilities ``(..., C)`` (class dim last) and position coefficients ``(...)``."""
        logits = out.movedim(self.class_dim, -1)
        p = torch.softmax(logits, dim=-1)
        if mode == "ce_index":
            valid = y != self.ignore_index
            w = self._weight(self.weight, p)
            if w is None:
                c = valid.to(p.dtype)
            else:
                c = w[torch.where(valid, y, torch.zeros_like(y))] * valid.to(p.dtype)
            c = c / c.sum()
        else:
            q = y.movedim(self.class_dim, -1)
            mass = q.sum(-1)
            if self.label_smoothing > 0:
                mass = (1 - self.label_smoothing) * mass + self.label_smoothing
            c = mass / mass.numel()
        return p, c

    def _bce_coefficients(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = torch.ones_like(out)
        pw = self._weight(self.pos_weight, out)
        if pw is not None:
            c = c * (1 + (pw - 1) * y)
        w = self._weight(self.weight, out)
        if w is not None:
            c = c * w
        return c / out.numel()

    # -- products with the output Hessian ---------------------------------------------------------
    def hessian_product(self, out: torch.Tensor, y: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """``H_out U`` for ``U`` of shape ``(k, *out.shape)``.

        ``H_out`` is the Hessian of ``loss_fn(out, y)`` with respect to ``out``.
        """
        out = self.check_tensor(out)
        mode = self._mode(out, y)
        if mode in ("ce_index", "ce_prob"):
            p, c = self._ce_parts(out, y, mode)
            u = U.movedim(self.class_dim % out.ndim + 1, -1)
            pu = p * u
            hu = pu - p * pu.sum(-1, keepdim=True)
            return (c.unsqueeze(-1) * hu).movedim(-1, self.class_dim % out.ndim + 1)
        if mode == "mse":
            return U * (2.0 / out.numel())
        if mode == "bce_with_logits":
            s = torch.sigmoid(out)
            return U * (self._bce_coefficients(out, y) * s * (1 - s))

        # reverse-over-reverse: H symmetric, so H u is the VJP of the output gradient with u
        loss = self._differentiable()
        _, vjp_fn = vjp(grad(lambda z: loss(z, y)), out)
        return vmap(lambda u: vjp_fn(u)[0])(U)

    def output_gradient(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``grad_out loss_fn(out, y)``, same shape as ``out`` (row ``i`` is sample ``i``'s)."""
        out = self.check_tensor(out)
        loss = self._differentiable()
        return grad(lambda z: loss(z, y))(out)

    def _differentiable(self) -> Callable[..., torch.Tensor]:
        """The loss as ``torch.func`` differentiates it twice.

        Without module hooks, and in elementary operations where torch has no double backward
        (see :meth:`__call__`).
        """
        if isinstance(self.loss_fn, NO_DOUBLE_BACKWARD):
            return self
        return _unhooked(self.loss_fn)

    # -- Monte Carlo Fisher -----------------------------------------------------------------------
    def check_mc(self) -> None:
        """Raise unless the loss has a known predictive distribution."""
        if self.kind not in MC_KINDS:
            raise ValueError(
                "kind='mc' samples targets from the model's predictive distribution, which is "
                f"known for CrossEntropyLoss, MSELoss and BCEWithLogitsLoss only (got "
                f"{self.name}); use kind='empirical' or the GGN (dc.ggn) instead"
            )

    def draw_samples(
        self, out: torch.Tensor, y: torch.Tensor, count: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Draw ``count`` targets per sample from the predictive distribution at ``out``.

        Returns:
            Class indices ``(count, *positions)`` (int64) for cross-entropy, Bernoulli draws
            ``(count, *out.shape)`` (uint8) for BCE, standard normal noise ``(count, *out.shape)``
            for MSE (the sampled target is ``out + sqrt(numel / 2) * noise``).
        """
        mode = self._mode(out, y)
        if mode in ("ce_index", "ce_prob"):
            p, _ = self._ce_parts(out, y, mode)
            flat = p.reshape(-1, p.shape[-1])
            idx = torch.multinomial(flat, count, replacement=True, generator=generator)
            return idx.T.reshape(count, *p.shape[:-1]).contiguous()
        if mode == "bce_with_logits":
            s = torch.sigmoid(out).expand(count, *out.shape)
            return torch.bernoulli(s, generator=generator).to(torch.uint8)
        if mode == "mse":
            return torch.randn(
                (count, *out.shape), generator=generator, dtype=out.dtype, device=out.device
            )
        raise ValueError(
            f"kind='mc' needs targets of the same layout as the output for {self.name}; got output "
            f"{tuple(out.shape)} and targets {tuple(y.shape)}"
        )

    def mc_factors(self, out: torch.Tensor, y: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Factors ``R`` ``(count, *out.shape)`` with ``E[R_s R_s^T] = H_out`` for each position.

        ``R_s = sqrt(c) * (grad of the negative log-likelihood at the sampled target)``:
        ``sqrt(c_t) (p_t - e_{y_t})`` for cross-entropy, ``sqrt(c_e) (sigma_e - y_e)`` for BCE and
        ``sqrt(2 / numel) * noise`` for MSE.
        """
        mode = self._mode(out, y)
        if mode in ("ce_index", "ce_prob"):
            p, c = self._ce_parts(out, y, mode)
            onehot = F.one_hot(samples, p.shape[-1]).to(p.dtype)
            R = c.sqrt().unsqueeze(-1) * (p - onehot)
            return R.movedim(-1, self.class_dim % out.ndim + 1)
        if mode == "bce_with_logits":
            s = torch.sigmoid(out)
            return self._bce_coefficients(out, y).sqrt() * (s - samples.to(out.dtype))
        if mode == "mse":
            return samples * (2.0 / out.numel()) ** 0.5
        raise ValueError(
            f"no Monte Carlo factors for {self.name} with these shapes"
        )  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (for result metadata)."""
        return {"loss": self.name, "loss_kind": self.kind}


def _unhooked(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn``, or a module's ``forward``: called inside ``torch.func`` transforms without hooks.

    Global module hooks (``torch.utils.flop_counter.FlopCounterMode`` registers some) put
    gradient hooks on the module's output that fail inside ``torch.func.grad``.
    """
    return fn.forward if isinstance(fn, nn.Module) else fn
