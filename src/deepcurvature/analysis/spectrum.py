"""The spectrum of a curvature matrix: Lanczos on an operator, with the result kept as files.

:func:`spectrum` runs stochastic Lanczos quadrature (Algorithm 1, equation 25 of the paper) on any
operator, or builds the Hessian / GGN / Fisher operator of a model over a data set first, and
returns a :class:`SpectrumResult` that saves to and loads from ``NAME.npz`` + ``NAME.json``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io.results import load_npz_json, save_npz_json
from ..linalg.density import (
    PSD_MATRICES,
    SpectralDensity,
    canonical_matrix,
    density_metadata_from_file,
    is_psd_matrix,
)
from ..linalg.lanczos import LanczosResult, lanczos
from ..linalg.operator import LinearOperator, as_operator

__all__ = ["MATRICES", "PSD_MATRICES", "SpectrumResult", "curvature_operator", "spectrum"]

MATRICES = ("hessian", "ggn", "fisher", "fisher_mc")


@dataclass
class SpectrumResult:
    """A learned spectrum with everything needed to interpret and reproduce it.

    Attributes:
        density: the discrete spectral density (nodes, weights summing to 1).
        alphas: per probe, the diagonal of the Lanczos tridiagonal matrix ``(m_l,)``.
        betas: per probe, its off-diagonal ``(m_l - 1,)``.
        ritz_vectors: ``(P, m)`` Ritz vectors of the first probe (columns ordered like
            ``ritz_values``), when they were asked for; else ``None``.
        ritz_values: ``(m,)`` Ritz values of the first probe, ascending.
        config: how the spectrum was computed (matrix, steps, steps_requested, probes, seed,
            dtype, model, data...).
        info: sizes, timings and memory: ``P`` (parameters), ``N`` (samples), ``seconds``,
            ``seconds_per_step`` (list), ``peak_memory_per_step`` (bytes after each Lanczos step,
            a high-water mark: CUDA max allocated on a GPU, else the host's max RSS),
            ``peak_memory_bytes`` (the last of them) and ``memory_kind``, ...
    """

    density: SpectralDensity
    alphas: list[np.ndarray]
    betas: list[np.ndarray]
    ritz_values: np.ndarray
    ritz_vectors: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def psd_by_construction(self) -> bool:
        """Whether ``config["matrix"]`` is ``"ggn"``, ``"fisher"`` or ``"fisher_mc"``.

        Without a matrix in the config: what the density's metadata says.
        """
        matrix = self.config.get("matrix")
        if matrix is None:
            return self.density.psd_by_construction
        return is_psd_matrix(matrix)

    def summary(self) -> dict[str, Any]:
        """Summary statistics of the density together with P, N and the run time.

        Besides :meth:`SpectralDensity.summary` (whose ``negative_mass`` counts below the
        round-off tolerance ``negative_mass_tol = negative_mass_rtol * max|theta|``, with the strict
        count ``negative_mass_strict``): ``P``, ``N``, ``matrix``, ``steps`` (run),
        ``steps_requested`` (asked for; larger than ``steps`` when clamped to ``P``; ``None`` in
        files written before it was recorded), ``probes``, ``seconds``, ``peak_memory_mb`` (the
        high-water mark of ``info["peak_memory_bytes"]`` in MiB; ``None`` if unrecorded) and
        ``psd_by_construction``. For a GGN or Fisher (PSD by construction) negative Ritz values
        can only be round-off: ``negative_mass`` is 0 and ``note`` says so.
        """
        out = dict(self.density.summary(psd_by_construction=self.psd_by_construction))
        out.update(
            {
                "P": self.info.get("P"),
                "N": self.info.get("N"),
                "matrix": self.config.get("matrix"),
                "steps": self.config.get("steps"),
                "steps_requested": self.config.get("steps_requested"),
                "probes": self.config.get("probes"),
                "seconds": self.info.get("seconds"),
                "peak_memory_mb": _mib(self.info.get("peak_memory_bytes")),
            }
        )
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.npz`` (arrays) and ``path.json`` (config, info, summary) atomically.

        Returns:
            The ``.npz`` path.
        """
        arrays: dict[str, np.ndarray] = {
            "nodes": self.density.nodes,
            "weights": self.density.weights,
            "probe_index": self.density.probe_index,
            "ritz_values": self.ritz_values,
        }
        for i, (a, b) in enumerate(zip(self.alphas, self.betas, strict=True)):
            arrays[f"alpha_{i}"] = a
            arrays[f"beta_{i}"] = b
        if self.ritz_vectors is not None:
            arrays["eigvecs"] = self.ritz_vectors.detach().cpu().numpy()
        meta = {
            "kind": "SpectrumResult",
            "dim": self.density.dim,
            "n_probes": len(self.alphas),
            "config": self.config,
            "info": self.info,
            "summary": self.summary(),
            "density_metadata": self.density.metadata,
        }
        npz, _ = save_npz_json(path, arrays, meta)
        return npz

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpectrumResult:
        """Read a result written by :meth:`save` (path with or without ``.npz``)."""
        arrays, meta = load_npz_json(path)
        if "nodes" not in arrays or "weights" not in arrays:
            raise ValueError(f"{path} is not a spectrum file: it has no nodes/weights arrays")
        n = int(meta.get("n_probes", 0))
        density = SpectralDensity(
            arrays["nodes"],
            arrays["weights"],
            dim=meta.get("dim"),
            probe_index=arrays.get("probe_index"),
            metadata=density_metadata_from_file(meta),
        )
        eig = arrays.get("eigvecs")
        return cls(
            density=density,
            alphas=[arrays[f"alpha_{i}"] for i in range(n)],
            betas=[arrays[f"beta_{i}"] for i in range(n)],
            ritz_values=arrays.get("ritz_values", density.nodes),
            ritz_vectors=torch.from_numpy(eig) if eig is not None else None,
            config=meta.get("config", {}),
            info=meta.get("info", {}),
        )


def curvature_operator(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    matrix: str = "hessian",
    **kwargs: Any,
) -> LinearOperator:
    """Build the curvature operator named ``matrix`` of ``model`` over ``data``.

    Args:
        model: the network.
        loss_fn: a mean-reduction loss ``loss_fn(model(x), y)``.
        data: an iterable of ``(inputs, targets)`` batches.
        matrix: ``"hessian"``, ``"ggn"``, ``"fisher"`` (empirical) or ``"fisher_mc"``.
        **kwargs: passed to :func:`deepcurvature.hessian` / ``ggn`` / ``fisher``.

    Returns:
        The ``(P, P)`` operator.
    """
    from .. import operators

    key = canonical_matrix(matrix)
    if key == "hessian":
        return operators.hessian(model, loss_fn, data, **kwargs)
    if key == "ggn":
        return operators.ggn(model, loss_fn, data, **kwargs)
    if key == "fisher":
        return operators.fisher(model, loss_fn, data, kind="empirical", **kwargs)
    if key == "fisher_mc":
        return operators.fisher(model, loss_fn, data, kind="mc", **kwargs)
    raise ValueError(f"unknown curvature matrix {matrix!r}: use one of {', '.join(MATRICES)}")


def _operator_matrix_name(op: LinearOperator) -> str:
    """The name of a curvature operator's matrix (``"ggn"``...), else ``"operator"``."""
    name = getattr(op, "matrix_name", None) or getattr(op, "curvature", None)
    if name == "fisher" and getattr(op, "kind", None) == "mc":
        return "fisher_mc"
    return name if canonical_matrix(name) in MATRICES else "operator"


def spectrum(
    op_or_model: Any,
    loss_fn: Any = None,
    data: Any = None,
    *,
    matrix: str = "hessian",
    steps: int = 100,
    probes: int = 1,
    seed: int | None = None,
    probe: str = "rademacher",
    store_vectors: bool = False,
    basis_dtype: torch.dtype | None = None,
    verbose: bool = True,
    config: dict[str, Any] | None = None,
    basis: str = "memory",
    basis_device: str | torch.device | None = None,
    basis_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    **operator_kwargs: Any,
) -> SpectrumResult:
    """Learn the spectral density of a curvature matrix (or any symmetric operator).

    Args:
        op_or_model: a :class:`LinearOperator` (or anything ``as_operator`` takes), or an
            ``nn.Module`` whose curvature matrix ``matrix`` over ``data`` is wanted.
        loss_fn: the mean-reduction loss (models only).
        data: iterable of ``(inputs, targets)`` batches (models only).
        matrix: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"fisher_mc"`` (models only).
        steps: Lanczos steps ``m`` per probe (clamped to ``P`` with a warning; ``config``
            records ``steps`` run and ``steps_requested``).
        probes: number of random probe vectors ``n_v`` (they share each data pass).
        seed: seed of the probes (recorded in the result).
        probe: ``"rademacher"`` or ``"gaussian"``.
        store_vectors: keep the ``(P, m)`` Ritz vectors of the first probe.
        basis_dtype: storage dtype of the Lanczos basis.
        verbose: progress bar per Lanczos step.
        config: extra configuration recorded in the result.
        basis: where the Lanczos basis is kept: ``"memory"``, ``"host"`` or ``"disk"`` (see
            :func:`~deepcurvature.linalg.lanczos`).
        basis_device: device of a memory basis (``"cpu"``: host memory).
        basis_dir: folder of a disk basis's file.
        checkpoint: a Lanczos state file, continued from when it exists.
        checkpoint_every: steps between two writes of ``checkpoint``.
        **operator_kwargs: ``params``, ``bn_mode``, ``weight_decay``, ``dtype``, ``device``...
            for the curvature operator.

    Returns:
        A :class:`SpectrumResult`.
    """
    t0 = time.perf_counter()
    if isinstance(op_or_model, nn.Module):
        if loss_fn is None or data is None:
            raise ValueError("spectrum(model, ...) needs loss_fn and data to build the operator")
        op = curvature_operator(op_or_model, loss_fn, data, matrix=matrix, **operator_kwargs)
    else:
        if operator_kwargs:
            raise TypeError(
                f"operator options {sorted(operator_kwargs)} only apply when a model is given"
            )
        op = as_operator(op_or_model)
        matrix = _operator_matrix_name(op)
    t_build = time.perf_counter() - t0
    res: LanczosResult = lanczos(
        op,
        steps,
        probes=probes,
        seed=seed,
        probe=probe,
        store_vectors=store_vectors,
        basis_dtype=basis_dtype,
        verbose=verbose,
        description=f"Lanczos ({matrix})",
        basis=basis,
        basis_device=basis_device,
        basis_dir=basis_dir,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    seconds = time.perf_counter() - t0
    cfg = {
        "matrix": matrix,
        "steps": res.steps,
        "steps_requested": res.steps_requested,
        "probes": res.n_probes,
        "seed": res.seed,
        "probe": res.probe,
        "basis_dtype": str(basis_dtype or op.dtype),
        "dtype": str(op.dtype),
    }
    cfg.update(config or {})
    info = {
        "P": op.shape[0],
        "N": getattr(op, "num_samples", None),
        "seconds": seconds,
        "seconds_build": t_build,
        "seconds_per_step": res.step_times,
        "peak_memory_per_step": res.step_memory,
        "peak_memory_bytes": max(res.step_memory) if res.step_memory else None,
        "memory_kind": res.memory_kind,
        "steps_done": res.steps_done,
        "steps_clamped": res.steps_requested is not None and res.steps_requested > res.steps,
        "broke_down": [bool(b) for b in res.broke_down],
        "device": str(op.device),
        "product_route": getattr(op, "product_route", None),  # "chain" or "autograd" (networks)
        "basis": res.basis_kind,
        "resumed_from_step": res.resumed_from,
    }
    density = res.density()
    density.metadata.update({"matrix": matrix, "psd_by_construction": is_psd_matrix(matrix)})
    return SpectrumResult(
        density=density,
        alphas=res.alphas,
        betas=res.betas,
        ritz_values=res.ritz_values[0],
        ritz_vectors=res.ritz_vectors[0] if store_vectors and res.ritz_vectors else None,
        config=cfg,
        info=info,
    )


def _mib(n_bytes: Any) -> float | None:
    """Bytes as MiB (rounded to 0.1), ``None`` for ``None``."""
    return None if n_bytes is None else round(float(n_bytes) / 2**20, 1)
