"""Parameter groups: the layer (owning module) of each parameter name."""

from __future__ import annotations

from collections.abc import Sequence

ROOT_LAYER = "(root)"


def layer_of(param_name: str) -> str:
    """The name of the module owning a parameter.

    ``"features.0.weight"`` -> ``"features.0"``; ``"(root)"`` for a parameter of the top-level
    module.
    """
    head, sep, _ = param_name.rpartition(".")
    return head if sep else ROOT_LAYER


def group_parameters(names: Sequence[str]) -> dict[str, list[str]]:
    """Group parameter names by owning module, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(layer_of(n), []).append(n)
    return groups
