"""Set-up shared by the paper's workflows: evaluation data and the network at a checkpoint."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

__all__ = ["build_network", "evaluation_data"]


def evaluation_data(
    dataset: Any,
    data_path: str | os.PathLike | None,
    *,
    batch_size: int,
    num_subsamples: int | None,
    subsample_seed: int | None,
    download: bool,
    use_test: bool = True,
) -> Any:
    """The data set without augmentation or shuffling, optionally a seeded training subsample.

    Returns:
        A :class:`~deepcurvature.data.DataBundle`.
    """
    from ..data import load_data

    return load_data(
        dataset,
        data_path,
        batch_size=batch_size,
        use_test=use_test,
        augment=False,
        shuffle_train=False,
        subsample=num_subsamples,
        seed=0 if subsample_seed is None else subsample_seed,
        download=download,
    )


def build_network(
    model: str | nn.Module,
    bundle: Any,
    *,
    model_kwargs: dict[str, Any] | None,
    checkpoint_path: str | os.PathLike | None,
    device: torch.device,
) -> nn.Module:
    """The model (a registry name, or a copy of a given module) with the checkpoint's weights.

    A given ``nn.Module`` is copied, so loading a checkpoint never changes the caller's model.
    """
    from ..models import get_model
    from ..training.checkpoint import load_checkpoint

    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        net = get_model(
            model,
            num_classes=bundle.num_classes,
            in_channels=bundle.in_channels,
            input_size=bundle.input_size,
            **(model_kwargs or {}),
        )
    if checkpoint_path is not None:
        load_checkpoint(checkpoint_path, net, map_location="cpu")
    return net.to(device)
