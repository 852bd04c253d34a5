"""The model as the curvature operators evaluate it: detached state, tied names, data checks.

Every product evaluates the model functionally (``torch.func.functional_call``) on detached copies
of its parameters and buffers (:class:`ModelState`), so the user's model is never modified. The
copies are cached between products while no parameter or buffer of the model has changed (same
tensor objects, same storage, same in-place version counters) and no forward pass wrote into the
copies: a Lanczos run of many products then converts the state once instead of once per product.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ModelState", "shuffles", "tied_aliases"]

Tensors = dict[str, torch.Tensor]


class ModelState:
    """Detached copies of a model's selected parameters and of the fixed rest, cached.

    Args:
        model: the network.
        selected: names of the selected parameters.
        device: the evaluation device.
        dtype: the evaluation dtype of floating tensors.

    :meth:`get` returns ``(selected, fixed)``: the selected parameters and the other parameters
    and buffers (buffers always as copies, so a forward pass never writes into the user's
    buffers), on ``device`` with floating tensors in ``dtype``. The returned dicts are shared
    between calls while the model is unchanged: callers must not modify them.
    """

    def __init__(
        self, model: nn.Module, selected: frozenset[str], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.model = model
        self.selected = selected
        self.device, self.dtype = device, dtype
        self._key: list[tuple[int, int, int]] | None = None
        self._value: tuple[Tensors, Tensors] | None = None
        self._copies: list[tuple[torch.Tensor, int]] = []

    def _signature(self) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[int, int, int]]]:
        named = [*self.model.named_parameters(), *self.model.named_buffers()]
        key = [(id(t), t.data_ptr(), t._version) for _, t in named]
        return named, key

    def get(self) -> tuple[Tensors, Tensors]:
        """``(selected, fixed)`` for the model's current values (cached while unchanged)."""
        named, key = self._signature()
        if self._value is not None and key == self._key and self._copies_unchanged():
            return self._value
        n_params = sum(1 for _ in self.model.named_parameters())
        selected: Tensors = {}
        fixed: Tensors = {}
        for i, (name, t) in enumerate(named):
            c = self._convert(t)
            if i < n_params:
                (selected if name in self.selected else fixed)[name] = c
            else:
                if c.data_ptr() == t.data_ptr() and c.numel():
                    c = c.clone()  # never let a forward pass write into the user's buffers
                fixed[name] = c
        self._key, self._value = key, (selected, fixed)
        self._copies = [(c, c._version) for c in fixed.values()]
        return self._value

    def _copies_unchanged(self) -> bool:
        """No forward pass wrote into the cached copies (a module updating a buffer in place)."""
        return all(c._version == v for c, v in self._copies)

    def fresh(self) -> tuple[Tensors, Tensors]:
        """Like :meth:`get`, as new dicts (and new buffer copies) the caller may modify."""
        selected, fixed = self.get()
        buffers = {n for n, _ in self.model.named_buffers()}
        return dict(selected), {n: t.clone() if n in buffers else t for n, t in fixed.items()}

    def _convert(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.is_floating_point():
            return t.to(device=self.device, dtype=self.dtype)
        return t.to(device=self.device)


def tied_aliases(model: nn.Module) -> list[tuple[str, str]]:
    """``(alias, name)`` pairs for parameters/buffers registered under several names.

    Names that reach the same attribute of the same module (a submodule registered twice, e.g.
    ``conv`` and ``block.0``) are one slot, not an alias: ``functional_call`` must not swap that
    slot twice (it would then restore the wrong tensor into the model).
    """
    pairs: list[tuple[str, str]] = []
    for named in (
        model.named_parameters(remove_duplicate=False),
        model.named_buffers(remove_duplicate=False),
    ):
        first: dict[int, str] = {}
        for name, t in named:
            if id(t) not in first:
                first[id(t)] = name
            elif _slot(model, name) != _slot(model, first[id(t)]):
                pairs.append((name, first[id(t)]))
    return pairs


def _slot(model: nn.Module, name: str) -> tuple[int, str]:
    """``(id(owning module), attribute)`` of a parameter or buffer name."""
    path, _, attr = name.rpartition(".")
    return id(model.get_submodule(path)), attr


def shuffles(data: Any) -> bool:
    """Whether ``data`` is a DataLoader with a random sampler (a different order every pass)."""
    return isinstance(data, torch.utils.data.DataLoader) and isinstance(
        data.sampler, torch.utils.data.RandomSampler
    )
