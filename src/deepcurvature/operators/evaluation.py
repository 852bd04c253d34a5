"""The evaluation context of the curvature operators: dropout off, batch norm per mode.

Every product evaluates the model inside :func:`evaluation_context`, which switches dropout off,
sets the batch-norm layers to batch statistics (``bn_mode="train"``, running statistics neither
used nor updated) or to their running statistics (``"eval"``, as the affine maps they are, with a
convolution directly followed by one folded into a single convolution), and restores every flag
and ``forward`` on exit: the user's model is left exactly as it was.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .allocator import tune_cpu_allocator

__all__ = ["evaluation_context"]


@contextmanager
def evaluation_context(model: nn.Module, bn_mode: str, device: torch.device) -> Iterator[None]:
    """Dropout off, batch norm per ``bn_mode``, running statistics never updated.

    Every module's ``training`` flag and ``track_running_stats`` are restored on exit. In
    ``bn_mode="eval"``, the standard batch-norm layers are evaluated as the affine maps they
    are, ``(x - mean) * scale + b`` (same function; its second derivatives are far cheaper than
    those of ``F.batch_norm``): their ``forward`` is replaced for the duration. A convolution
    followed directly by such a layer in an ``nn.Sequential`` is evaluated as one convolution
    with the folded weights ``W * scale`` and bias ``b * scale + shift`` (the same function;
    the scaling then acts on the weights instead of the activations, see
    :func:`_conv_norm_pairs`). On the CPU, glibc's allocator is first set to reuse freed
    memory (:func:`~deepcurvature.operators.allocator.tune_cpu_allocator`).
    """
    if device.type == "cpu":
        tune_cpu_allocator()  # freed activations reused instead of unmapped (allocator.py)
    modules = list(model.modules())
    flags = [m.training for m in modules]
    norms = [m for m in modules if isinstance(m, _BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    affine = [m for m in norms if type(m) in _AFFINE_NORMS and m.running_mean is not None]
    fused = _conv_norm_pairs(modules, affine) if bn_mode == "eval" else {}
    patched = affine + list(fused)
    own_forward = [m.__dict__.get("forward") for m in patched]
    try:
        for m in modules:
            if m.training:  # only what differs (Module.__setattr__ is slow for small batches)
                m.training = False
        if bn_mode == "train":
            for m in norms:
                # batch statistics; running statistics neither used nor updated
                m.training = True
                m.track_running_stats = False
        else:
            for m in affine:
                m.forward = types.MethodType(_affine_batch_norm, m)
            for seq, starts in fused.items():
                seq.forward = types.MethodType(_fused_sequential(starts), seq)
        yield
    finally:
        for m, f in zip(modules, flags, strict=True):
            if m.training is not f:
                m.training = f
        for m, t in zip(norms, tracking, strict=True):
            m.track_running_stats = t
        for m, fwd in zip(patched, own_forward, strict=True):
            if fwd is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd


_AFFINE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _norm_affine(norm: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel of a batch norm with running statistics.

    ``scale = w / sqrt(var + eps)``, ``shift = b - mean * scale``, so that the layer is
    ``x * scale + shift``.
    """
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def _affine_batch_norm(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch norm with running statistics as the affine map ``(x - mean) * scale + b``.

    ``scale = w / sqrt(var + eps)`` acts on channel dimension 1: the same function as
    ``(x - mean) / sqrt(var + eps) * w + b``. Subtracting the mean first keeps the digits that
    ``x * scale + (b - mean * scale)`` cancels in float32 when ``|mean|`` is large against the
    spread of ``x`` (a Hessian quadratic form 2.2e-7 off the float64 value instead of 2.1e-6 in
    ``tests/test_operators.py``; ``F.batch_norm``: 1.6e-6).
    """
    if self.training:  # switched to batch statistics inside the context (e.g. BN recomputation)
        return type(self).forward(self, x)
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.weight is not None:
        scale = scale * self.weight
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - self.running_mean.reshape(shape)) * scale.reshape(shape)
    return y if self.bias is None else y + self.bias.reshape(shape)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _conv_norm_pairs(modules: list[nn.Module], affine: list[nn.Module]) -> dict[nn.Module, list]:
    """``{sequential: [start indices]}`` of ``Conv -> BatchNorm`` pairs that can be folded.

    A pair qualifies inside an ``nn.Sequential`` whose ``forward`` is the standard one (so the
    convolution's output goes to the batch norm and nowhere else), with a plain ``nn.Conv1d/2d/3d``
    whose output channels are the batch norm's features, a batch norm in ``affine`` (running
    statistics, evaluated as an affine map), and no hooks on either module (they would not run).
    Only the ``Sequential``'s own ``forward`` is replaced, so a convolution also called elsewhere
    is evaluated normally there. In ``benchmarks/hvp.py``'s CNN this made a Hessian column about
    1.2x cheaper (the batch-norm scaling of every activation and its second derivatives go:
    2.18 against 2.69 gradient passes per HVP, 1.39 against 1.68 per column at 16 columns).
    In float32 it costs precision in the second derivatives: on that CNN the Rayleigh quotient of
    the second eigenvector was 2.5e-6 off its float64 value folded and 1.4e-7 unfolded (the
    forward values are equally accurate; the folded derivatives with respect to the batch-norm
    weights are sums over the convolution weights). Evaluate in float64 (``dtype=``) when
    eigenvalues are wanted beyond about 1e-6 relative.
    """
    norms = set(affine)
    out: dict[nn.Module, list] = {}
    for seq in modules:
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        if "forward" in seq.__dict__:
            continue
        mods = list(seq._modules.values())
        starts, i = [], 0
        while i < len(mods) - 1:
            conv, norm = mods[i], mods[i + 1]
            if (
                type(conv) in _CONVS
                and norm in norms
                and conv.out_channels == norm.num_features
                and "forward" not in conv.__dict__
                and not _has_hooks(conv)
                and not _has_hooks(norm)
            ):
                starts.append(i)
                i += 2
            else:
                i += 1
        if starts:
            out[seq] = starts
    return out


def _has_hooks(m: nn.Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
    )


def _fused_sequential(starts: list[int]) -> Callable[..., torch.Tensor]:
    """The ``forward`` of an ``nn.Sequential`` with its ``Conv -> BatchNorm`` pairs folded."""
    first = set(starts)

    def forward(self: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            if i in first:
                x = _conv_norm(mods[i], mods[i + 1], x)
                i += 2
            else:
                x = mods[i](x)
                i += 1
        return x

    return forward


def _conv_norm(conv: nn.Module, norm: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` with running statistics, as one convolution with folded weights.

    ``scale = w / sqrt(var + eps)`` and ``shift = b - mean * scale`` per output channel:
    ``conv(x; W * scale, b_conv * scale + shift)``.
    """
    if norm.training:  # switched to batch statistics inside the context
        return norm(conv(x))
    scale, shift = _norm_affine(norm)
    weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
    if conv.bias is None:
        bias = shift
    else:
        bias = (conv.bias - norm.running_mean) * scale
        bias = bias if norm.bias is None else bias + norm.bias
    return conv._conv_forward(x, weight, bias)
