"""A training run that diverged: :class:`TrainingDivergedError` and the message naming the fix."""

from __future__ import annotations

import torch


class TrainingDivergedError(ValueError, FloatingPointError):
    """Training produced a non-finite loss, update or weight.

    A ``ValueError`` (as before) and a ``FloatingPointError``; the message names the epoch, the
    step and the fix.
    """


def _diverged(where: str, reason: str, opt: torch.optim.Optimizer) -> TrainingDivergedError:
    """The error of a run that diverged ``where`` (``"epoch 2, step 7 of 12"``)."""
    text = f"training diverged at {where}: {reason}"
    if "learning rate" not in reason:
        group = opt.param_groups[0]
        fixes = [f"lower the learning rate (lr={group['lr']:.3g})"]
        if isinstance(group.get("damping"), (int, float)):
            fixes.append(f"raise damping (damping={group['damping']:.3g})")
        text += f"; {', '.join(fixes)} or check the data"
    return TrainingDivergedError(" ".join(text.split()))
