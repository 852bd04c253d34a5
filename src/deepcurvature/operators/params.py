"""Which parameters a curvature operator acts on, and how they are flattened into one vector.

The operator of a network is a ``(P, P)`` matrix over the *selected* parameters, concatenated in the
order of ``model.named_parameters()`` (each parameter flattened in row-major order). Parameters that
are not selected are held fixed at their current values.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ParameterLayout", "select_parameters"]


def _available(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"available parameters: {shown}{more}"


def select_parameters(
    model: nn.Module,
    params: str | nn.Module | nn.Parameter | Iterable[str | nn.Module | nn.Parameter] | None = None,
) -> list[str]:
    """Resolve a parameter selection to parameter names, in ``model.named_parameters()`` order.

    Args:
        model: the network.
        params: ``None`` for every parameter with ``requires_grad``; otherwise one item or a list of
            items, each an exact parameter name (``"fc.weight"``), an ``fnmatch`` glob pattern
            (``"features.*.weight"``, ``"layer1.*"``), a submodule of ``model`` (all its
            parameters) or a parameter of ``model``. An explicit selection ignores
            ``requires_grad``.

    Returns:
        The selected names, without duplicates, in the model's order.

    Raises:
        ValueError: an item matches nothing (the message lists the available names) or the
            selection is empty.
        TypeError: an item is of an unsupported kind.
    """
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    if not named:
        raise ValueError(
            f"the model {type(model).__name__} has no parameters: there is no curvature to compute"
        )
    if params is None:
        chosen = {n for n, p in named if p.requires_grad}
        if not chosen:
            raise ValueError(
                "no parameter of the model has requires_grad=True; select parameters explicitly "
                "with params=[...] (names, glob patterns or modules). " + _available(names)
            )
        return [n for n in names if n in chosen]

    items: list[object]
    if isinstance(params, (str, nn.Module, torch.Tensor)):
        items = [params]
    else:
        try:
            items = list(params)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                "params must be None, a name, a glob pattern, a module, a parameter or a list of "
                f"those; got {type(params).__name__}"
            ) from None
    if not items:
        raise ValueError(
            "params=[] selects no parameter: pass None for all parameters or a non-empty list. "
            + _available(names)
        )

    by_id = {id(p): n for n, p in named}
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            if item in by_id.values():
                chosen.add(item)
                continue
            matches = [n for n in names if fnmatch.fnmatchcase(n, item)]
            if not matches:
                raise ValueError(
                    f"params: {item!r} is neither a parameter name nor a pattern matching one; "
                    + _available(names)
                )
            chosen.update(matches)
        elif isinstance(item, nn.Module):
            own = list(item.parameters())
            if not own:
                raise ValueError(
                    f"params: the module {type(item).__name__} has no parameters; "
                    + _available(names)
                )
            missing = [p for p in own if id(p) not in by_id]
            if missing:
                raise ValueError(
                    f"params: the module {type(item).__name__} is not part of the model (its "
                    "parameters are not the model's); pass a submodule of the model, "
                    "e.g. model.fc"
                )
            chosen.update(by_id[id(p)] for p in own)
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError(
                    "params: a tensor that is not a parameter of the model was given; pass the "
                    "model's own parameters, their names or modules. " + _available(names)
                )
            chosen.add(by_id[id(item)])
        else:
            raise TypeError(
                "each params item must be a parameter name, a glob pattern, a module or a "
                f"parameter; got {type(item).__name__}"
            )
    return [n for n in names if n in chosen]


@dataclass(frozen=True)
class ParameterLayout:
    """How the selected parameters map to slices of the flat ``(P,)`` vector.

    Attributes:
        names: parameter names in flattening order.
        shapes: their shapes.
        numels: their sizes.
        offsets: start of each parameter in the flat vector.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]
    offsets: tuple[int, ...]

    @classmethod
    def from_model(cls, model: nn.Module, names: Sequence[str]) -> ParameterLayout:
        """Layout of the named parameters of ``model`` (in the order given)."""
        lookup = dict(model.named_parameters())
        shapes = tuple(lookup[n].shape for n in names)
        numels = tuple(int(lookup[n].numel()) for n in names)
        offsets, total = [], 0
        for k in numels:
            offsets.append(total)
            total += k
        return cls(tuple(names), shapes, numels, tuple(offsets))

    @property
    def size(self) -> int:
        """``P``: the total number of selected parameter elements."""
        return sum(self.numels)

    def flatten(self, tensors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate tensors with the parameters' shapes into a ``(P,)`` vector."""
        seq = [tensors[n] for n in self.names] if isinstance(tensors, Mapping) else list(tensors)
        if len(seq) != len(self.names):
            raise ValueError(
                f"flatten expects {len(self.names)} tensors (one per selected parameter: "
                f"{', '.join(self.names)}), got {len(seq)}"
            )
        for t, n, s in zip(seq, self.names, self.shapes, strict=True):
            if tuple(t.shape) != tuple(s):
                raise ValueError(
                    f"flatten: the tensor for {n} has shape {tuple(t.shape)}, expected {tuple(s)}"
                )
        return torch.cat([t.reshape(-1) for t in seq])

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a ``(P,)`` vector into views with the parameters' shapes."""
        if vector.ndim != 1 or vector.shape[0] != self.size:
            raise ValueError(
                f"unflatten expects a vector of shape ({self.size},), got {tuple(vector.shape)}"
            )
        return [
            vector[o : o + k].view(s)
            for o, k, s in zip(self.offsets, self.numels, self.shapes, strict=True)
        ]

    def columns_to_dict(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``V`` of shape ``(P, k)`` into ``{name: (k, *shape)}`` tensors."""
        Vt = V.T.contiguous()
        k = Vt.shape[0]
        return {
            n: Vt[:, o : o + m].reshape(k, *s)
            for n, o, m, s in zip(self.names, self.offsets, self.numels, self.shapes, strict=True)
        }

    def row_views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views ``{name: (k, *shape)}`` of the rows of ``rows`` ``(k, P)`` (which they share)."""
        k = rows.shape[0]
        return {
            n: rows[:, o : o + m].view(k, *s)
            for n, o, m, s in zip(self.names, self.offsets, self.numels, self.shapes, strict=True)
        }

    def dict_to_columns(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`columns_to_dict`: ``{name: (k, *shape)}`` to ``(P, k)``."""
        first = tensors[self.names[0]]
        k = first.shape[0]
        return torch.cat([tensors[n].reshape(k, -1) for n in self.names], dim=1).T.contiguous()
