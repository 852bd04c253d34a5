"""Gadam / GadamW: Adam (AdamW) with iterate averaging.

Granziol et al., "Iterative Averaging in the Quest for Best Test Error".

After optimizer step ``t`` (counted from 1), once ``t > average_start``, the running mean
``w_bar_n = w_bar_{n-1} + (w_t - w_bar_{n-1}) / n`` of the iterates is updated, so ``w_bar`` is the
mean of the iterates ``w_{s+1}, ..., w_t`` produced since the start ``s``. The averaged weights are
what the method evaluates: :meth:`swap_average` exchanges them with the current weights in place,
and :meth:`averaged` is a context manager that swaps them in and back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

__all__ = ["Gadam", "GadamW", "IterateAveraging"]


class IterateAveraging:
    """Mixin for a ``torch.optim.Optimizer`` subclass: tail averaging of the iterates.

    Group keys: ``average_start`` (steps before averaging starts), ``average_start_epoch``
    (alternatively, the epoch; the training loop calls :meth:`epoch_end`), ``avg_step`` (steps
    taken) and ``n_averaged``. Each parameter's average is ``state[p]["average"]``.
    """

    def _init_averaging(self, average_start: int | None, average_start_epoch: int | None) -> None:
        if average_start is not None and average_start < 0:
            raise ValueError(f"average_start must be >= 0, got {average_start}")
        if average_start_epoch is not None and average_start_epoch < 0:
            raise ValueError(f"average_start_epoch must be >= 0, got {average_start_epoch}")
        if average_start is None and average_start_epoch is None:
            average_start = 0
        if average_start is None and average_start_epoch == 0:
            average_start = 0
        for group in self.param_groups:
            group.setdefault("average_start", average_start)
            group.setdefault("average_start_epoch", average_start_epoch)
            group.setdefault("avg_step", 0)
            group.setdefault("n_averaged", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """The base optimiser's step (Adam or AdamW), then the running average of the iterate."""
        loss = super().step(closure)  # type: ignore[misc]
        self._update_average()
        return loss

    def _update_average(self) -> None:
        for group in self.param_groups:
            group["avg_step"] += 1
            start = group["average_start"]
            if start is None or group["avg_step"] <= start:
                continue
            group["n_averaged"] += 1
            n = group["n_averaged"]
            for p in group["params"]:
                state = self.state[p]
                if "average" not in state:
                    state["average"] = p.detach().clone()
                else:
                    state["average"].add_(p.detach() - state["average"], alpha=1.0 / n)

    def epoch_end(self, epochs_completed: int) -> None:
        """Start averaging once ``epochs_completed`` reaches ``average_start_epoch``."""
        for group in self.param_groups:
            e = group["average_start_epoch"]
            if group["average_start"] is None and e is not None and epochs_completed >= e:
                group["average_start"] = group["avg_step"]

    @property
    def n_averaged(self) -> int:
        """Number of iterates in the average (of the first group)."""
        return int(self.param_groups[0]["n_averaged"])

    @torch.no_grad()
    def swap_average(self) -> bool:
        """Exchange the parameters with their averages in place (call again to swap back).

        Returns:
            ``False`` when nothing has been averaged yet (nothing swapped).
        """
        swapped = False
        for group in self.param_groups:
            for p in group["params"]:
                avg = self.state[p].get("average")
                if avg is None:
                    continue
                tmp = p.detach().clone()
                p.copy_(avg)
                avg.copy_(tmp)
                swapped = True
        return swapped

    @contextlib.contextmanager
    def averaged(self) -> Iterator[bool]:
        """Context manager: the averaged weights inside the block, the iterate after it.

        Yields:
            Whether an average existed (and was swapped in).
        """
        swapped = self.swap_average()
        try:
            yield swapped
        finally:
            if swapped:
                self.swap_average()


class Gadam(IterateAveraging, torch.optim.Adam):
    """Adam with iterate averaging from ``average_start`` steps (or ``average_start_epoch``).

    Takes the arguments of ``torch.optim.Adam`` (``lr``, ``betas``, ``eps``, ``weight_decay``
    as an L2 penalty, ``amsgrad``) plus ``average_start`` / ``average_start_epoch``.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        average_start: int | None = None,
        average_start_epoch: int | None = None,
    ) -> None:
        torch.optim.Adam.__init__(
            self, params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
        self._init_averaging(average_start, average_start_epoch)


class GadamW(IterateAveraging, torch.optim.AdamW):
    """AdamW (decoupled weight decay) with iterate averaging; arguments as :class:`Gadam`."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        average_start: int | None = None,
        average_start_epoch: int | None = None,
    ) -> None:
        torch.optim.AdamW.__init__(
            self, params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
        self._init_averaging(average_start, average_start_epoch)
