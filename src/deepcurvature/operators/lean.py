"""Derivative rules for reverse-over-reverse Hessian products without terms known to be zero.

A Hessian column ``H v = d (g . v) / d theta`` differentiates the gradient's graph once more.
PyTorch's second-derivative formulas for three common layers do work whose result is known in
advance:

* ReLU: the backward ``threshold_backward(g, y)`` is differentiated with respect to ``y`` too,
  which returns a freshly zero-filled tensor of the activation's size, then added into the
  activation's gradient (ReLU is piecewise linear: that derivative is zero);
* 2-D max pooling: the same with ``zeros_like(x)`` for the pooled input;
* a convolution of inputs that need no gradient (the first layer, on the data): the weight
  gradient ``conv_backward(g, x, W)`` is differentiated with a transposed convolution that
  computes the gradient for the data as well, which is then thrown away.

Inside :func:`lean_derivatives`, ``F.relu``/``torch.relu``/``Tensor.relu`` (not in place),
``F.max_pool2d``/``torch.max_pool2d`` (without ``return_indices``) and ``torch.conv1d/2d/3d``
(batched, numeric or ``"valid"`` padding) of inputs that do not require grad are evaluated by
``autograd.Function`` s with the same forward and the same first derivatives, whose backward
uses the saved activations as constants. Their second derivatives are PyTorch's own minus those
zero terms: the same numbers (tests compare with dense references), less memory traffic. On the
CNN of ``benchmarks/hvp.py`` (16 MiB activations) a Hessian column took about 10% less time.
Any other call, and tensor subclasses, go through unchanged. The Hessian operator enters the
mode for models with such layers (:func:`has_lean_layers`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["LEAN_MODULES", "has_lean_layers", "lean_derivatives"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _convolution(x: torch.Tensor, weight: torch.Tensor, bias: Any, conf: tuple) -> torch.Tensor:
    """``conv(x, W, b)`` with ``conf = (stride, padding, dilation, groups)`` (not transposed)."""
    stride, padding, dilation, groups = conf
    zeros = [0] * len(stride)
    return torch.ops.aten.convolution(
        x, weight, bias, stride, padding, dilation, False, zeros, groups
    )


class _ReLU(torch.autograd.Function):
    """``relu(x)``; backward ``threshold_backward(g, y, 0)`` with ``y`` a constant."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        ctx.save_for_backward(y.detach())
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, y, 0)


def _pool_with_indices(x: torch.Tensor, config: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_pool2d_with_indices(x, *config)``; on the CPU through a channels-last copy.

    PyTorch's CPU kernel for contiguous ``(N, C, H, W)`` inputs is several times slower than its
    channels-last kernel (20 against 4 ms for ``(128, 32, 32, 32)`` in float32 on one thread,
    copies included); both return the same values and indices (the first maximum of a window,
    ties and NaN included).
    """
    if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous():
        cl = x.contiguous(memory_format=torch.channels_last)
        y, indices = torch.ops.aten.max_pool2d_with_indices(cl, *config)
        return y.contiguous(), indices.contiguous()
    return torch.ops.aten.max_pool2d_with_indices(x, *config)


class _MaxPool2d(torch.autograd.Function):
    """``max_pool2d(x)``; backward routes ``g`` by the saved indices (``x`` a constant)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *config: Any) -> torch.Tensor:
        y, indices = _pool_with_indices(x, config)
        ctx.save_for_backward(x.detach(), indices)
        ctx.config = config
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, indices = ctx.saved_tensors
        grad = torch.ops.aten.max_pool2d_with_indices_backward(g, x, *ctx.config, indices)
        return (grad, *([None] * len(ctx.config)))


class _WeightGrad(torch.autograd.Function):
    """``dL/dW`` of ``conv(x, W)`` from ``g = dL/dy``, linear in ``g`` (``x`` a constant).

    Its derivative along ``dW`` is the convolution ``conv(x, dW)``; nothing for ``x``.
    """

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conf: tuple):
        ctx.save_for_backward(x)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        zeros = [0] * len(stride)
        mask = [False, True, False]
        return torch.ops.aten.convolution_backward(
            g, x, weight, None, stride, padding, dilation, False, zeros, groups, mask
        )[1]

    @staticmethod
    def backward(ctx: Any, dW: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return _convolution(x, dW, None, ctx.conf), None, None, None


class _DataConv(torch.autograd.Function):
    """``conv(x, W, b)`` of an input ``x`` that needs no gradient; weight and bias gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any, conf: tuple):
        ctx.save_for_backward(x, weight.detach())
        ctx.conf = conf
        return _convolution(x, weight, bias, conf)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dW = _WeightGrad.apply(g, x, weight, ctx.conf) if ctx.needs_input_grad[1] else None
        db = g.sum([d for d in range(g.dim()) if d != 1]) if ctx.needs_input_grad[2] else None
        return None, dW, db, None


def _ints(value: Any, n: int) -> list[int] | None:
    """``value`` as ``n`` ints (an int is repeated), or ``None`` if it is not numeric."""
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, Sequence) and len(value) == n and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _bind(names: Sequence[str], defaults: dict, args: tuple, kwargs: dict) -> dict | None:
    """Positional and keyword arguments by name (``None`` when they do not fit ``names``)."""
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = {**defaults, **dict(zip(names, args, strict=False)), **kwargs}
    return bound if all(n in bound for n in names) else None


_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_POOL = {F.max_pool2d, torch.max_pool2d}
_CONV = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _relu(args: tuple, kwargs: dict) -> torch.Tensor | None:
    b = _bind(("input", "inplace"), {"inplace": False}, args, kwargs)
    if b is None or b["inplace"] or type(b["input"]) not in _PLAIN:
        return None
    return _ReLU.apply(b["input"])


def _max_pool2d(args: tuple, kwargs: dict) -> torch.Tensor | None:
    defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
    kwargs = dict(kwargs)
    if kwargs.pop("return_indices", False):
        return None
    b = _bind(_POOL_ARGS, defaults, args, kwargs)
    if b is None or type(b["input"]) not in _PLAIN or b["input"].dim() not in (3, 4):
        return None
    kernel = _ints(b["kernel_size"], 2)
    stride = kernel if b["stride"] in (None, ()) else _ints(b["stride"], 2)
    padding, dilation = _ints(b["padding"], 2), _ints(b["dilation"], 2)
    if None in (kernel, stride, padding, dilation) or not isinstance(b["ceil_mode"], bool):
        return None
    return _MaxPool2d.apply(b["input"], kernel, stride, padding, dilation, b["ceil_mode"])


def _conv(d: int, args: tuple, kwargs: dict) -> torch.Tensor | None:
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    b = _bind(_CONV_ARGS, defaults, args, kwargs)
    if b is None:
        return None
    x, weight, bias = b["input"], b["weight"], b["bias"]
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(type(t) not in _PLAIN for t in tensors) or x.requires_grad or x.dim() != d + 2:
        return None
    if not (weight.requires_grad or (bias is not None and bias.requires_grad)):
        return None
    padding = [0] * d if b["padding"] == "valid" else _ints(b["padding"], d)
    stride, dilation = _ints(b["stride"], d), _ints(b["dilation"], d)
    if None in (stride, padding, dilation) or not isinstance(b["groups"], int):
        return None
    return _DataConv.apply(x, weight, bias, (stride, padding, dilation, b["groups"]))


class _LeanMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = None
        if func in _RELU:
            out = _relu(args, kwargs)
        elif func in _POOL:
            out = _max_pool2d(args, kwargs)
        elif func in _CONV:
            out = _conv(_CONV[func], args, kwargs)
        return func(*args, **kwargs) if out is None else out


#: module types whose forward calls what the lean rules cover
LEAN_MODULES = (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.modules.conv._ConvNd)


def has_lean_layers(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a ReLU, 2-D max-pooling or convolution module.

    The operators enter :func:`lean_derivatives` only then: the mode intercepts every torch call
    of the forward pass, which costs a few per cent on a small MLP without such layers
    (``benchmarks/hvp.py``) and saves nothing there.
    """
    return any(isinstance(m, LEAN_MODULES) for m in model.modules())


@contextmanager
def lean_derivatives() -> Iterator[None]:
    """Context: ReLU, 2-D max pooling and convolutions of the data with lean second derivatives.

    For the forward pass of a reverse-over-reverse product through plain ``torch.autograd``
    (not ``torch.func``): the function and its gradient are unchanged; see the module docstring.
    """
    with _LeanMode():
        yield
