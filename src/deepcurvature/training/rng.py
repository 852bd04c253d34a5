"""Random-number-generator states as tensors and plain values, for exact resumes.

The state covers torch's CPU generator (and CUDA's when initialised), numpy's and Python's global
generators, and any ``torch.Generator`` a data loader or its sampler owns (which drives shuffling
when set). Everything is a tensor, int, float, str, list or dict, so checkpoints holding it load
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "loader_generators", "set_rng_state"]


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects a data loader's shuffling may use."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def get_rng_state(generators: Iterable[torch.Generator] = ()) -> dict[str, Any]:
    """Capture the global RNG states and those of ``generators``."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global generator is the state)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: Iterable[torch.Generator] = ()) -> None:
    """Restore states captured by :func:`get_rng_state` (the generators in the same order).

    Raises:
        ValueError: the number of data-loader generators differs from the saved one.
    """
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            npst["keys"].cpu().numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["internal"]), py["gauss_next"]))
    generators = list(generators)
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        raise ValueError(
            f"the checkpoint saved {len(saved)} data-loader generator state(s) but the loader "
            f"has {len(generators)}: resume with the same data-loading settings"
        )
    for g, s in zip(generators, saved, strict=True):
        g.set_state(s.cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
