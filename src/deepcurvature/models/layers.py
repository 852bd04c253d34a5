"""Small building blocks shared by the model definitions."""

from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATIONS", "activation", "halve", "pool_or_identity"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def activation(name: str | type[nn.Module] | nn.Module) -> nn.Module:
    """A fresh activation module from a name ("relu", "tanh", ...), a class or a module.

    Activations are never in-place, so forward-mode AD (``torch.func.jvp``) works through them.
    """
    if isinstance(name, nn.Module):
        return name
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name()
    key = str(name).lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def halve(size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size ``(H // 2, W // 2)`` after a 2x2 max-pool with stride 2."""
    return (size[0] // 2, size[1] // 2)


def pool_or_identity(size: tuple[int, int]) -> tuple[nn.Module, tuple[int, int]]:
    """A 2x2/stride-2 max-pool if the map ``size`` (H, W) is at least 2x2, else an identity.

    Small inputs (8x8 digits, 28x28 MNIST) would otherwise be pooled to nothing by the five
    pools of a VGG: the pools that would shrink the map below 1x1 are skipped.

    Returns:
        ``(module, size_after)``.
    """
    if min(size) >= 2:
        return nn.MaxPool2d(kernel_size=2, stride=2), halve(size)
    return nn.Identity(), size
