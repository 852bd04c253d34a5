"""The Lanczos algorithm with full reorthogonalisation and stochastic Lanczos quadrature.

Algorithm 1 of the paper, with these choices:

* every new vector is orthogonalised against the whole stored basis by two classical
  Gram-Schmidt passes written as (batched) matrix products, so orthogonality holds to round-off
  and the quadrature weights are meaningful;
* the scalars alpha and beta are accumulated in float64 whatever the operator's dtype, and the
  tridiagonal eigenproblem is solved in float64 by ``scipy.linalg.eigh_tridiagonal``;
* several probes run as independent recurrences whose products share one ``matmat`` per step;
* a probe whose beta falls below a relative tolerance has found an invariant subspace and stops;
* the basis is kept in device memory, host memory or a memory-mapped file (:mod:`.basis`), with
  bitwise identical results, and a long run can write its state every few steps and continue
  from it bit for bit (:mod:`.lanczos_state`).

Memory of a run: the basis ``(probes, m, P)``, plus per step at most the product's input (a copy
only when the basis's dtype or device differs from the operator's, or when some probes stopped),
the product ``A Q_j`` ``(P, probes)``, the work vector ``w`` ``(probes, P)`` on the basis's device,
and the operator's workspace; the float64 scalars are accumulated in slices (:func:`.dot64`).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch

from ..progress import ProgressBar
from .basis import BASIS_KINDS, DiskBasis, LanczosBasis, default_chunk, dot64, open_basis
from .density import SpectralDensity
from .lanczos_state import (
    Recurrence,
    check_checkpoint_every,
    check_state,
    load_state,
    operator_fingerprint,
    save_state,
    tensor_digest,
)
from .operator import as_operator, lower_precision
from .probes import draw_probes, resolve_seed

__all__ = ["LanczosResult", "lanczos", "tridiagonal_eigh"]


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decompose a symmetric tridiagonal matrix in float64.

    ``T`` has diagonal ``alpha`` (m,) and off-diagonal ``beta`` (m-1,).

    Returns:
        ``(theta, S)``: Ritz values ``(m,)`` ascending and eigenvectors ``(m, m)`` (columns).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(alpha, beta)


@dataclass
class LanczosResult:
    """What :func:`lanczos` learned, per probe.

    Attributes:
        alphas: per probe, the diagonal of T, ``(m_l,)`` float64.
        betas: per probe, the off-diagonal of T, ``(m_l - 1,)`` float64.
        residual_norms: ``(n_probes,)`` the final beta_m (norm of the residual ``r`` in
            ``A Q = Q T + r e_m^T``); 0 when the probe broke down.
        ritz_values: per probe, eigenvalues of T ascending, ``(m_l,)``.
        weights: per probe, squared first components of T's eigenvectors, ``(m_l,)``, sum 1.
        ritz_vectors: per probe ``(P, m_l)`` tensors ``Q S`` when ``store_vectors`` was set.
        basis: per probe the Lanczos basis ``Q`` ``(P, m_l)`` when ``store_vectors`` was set.
        residuals: per probe the residual vector ``r`` ``(P,)`` when ``store_vectors`` was set.
        start_norms: ``(n_probes,)`` the norms of the start vectors.
        broke_down: ``(n_probes,)`` whether each probe stopped at an invariant subspace.
        dim: ``P``.
        steps: the number of steps per probe, after clamping to ``P`` (a probe that broke down
            ran fewer: :attr:`steps_done`).
        steps_requested: the number of steps asked for before clamping (``> steps`` when
            ``steps`` exceeded ``P``); ``None`` if unknown.
        precision: name of the floating dtype limiting the accuracy of the run (the lower of the
            operator's products and the basis), e.g. ``"float32"``: it sets the round-off
            tolerance of :meth:`SpectralDensity.negative_mass`.
        seed: the seed the probes were drawn with (``None`` for given start vectors).
        probe: ``"rademacher"``, ``"gaussian"`` or ``"given"``.
        step_times: wall-clock seconds of each step (all probes together).
        step_memory: peak memory in bytes after each step (see :func:`peak_memory`): on a CUDA
            device ``torch.cuda.max_memory_allocated``, else the host process's maximum resident
            set size; both are HIGH-WATER marks (since the process started or the last
            ``torch.cuda.reset_peak_memory_stats``), so they never decrease. Empty when not
            measurable (no ``resource`` module).
        memory_kind: ``"cuda_max_allocated"`` or ``"host_max_rss"`` (``None`` if unmeasured).
        basis_kind: where the basis was kept: ``"memory"``, ``"host"`` or ``"disk"``.
        resumed_from: the steps a continued run read from its checkpoint (``None``: a fresh run);
            ``step_times`` and ``step_memory`` then include the earlier steps.
    """

    alphas: list[np.ndarray]
    betas: list[np.ndarray]
    residual_norms: np.ndarray
    ritz_values: list[np.ndarray]
    weights: list[np.ndarray]
    start_norms: np.ndarray
    broke_down: np.ndarray
    dim: int
    steps: int
    seed: int | None
    probe: str
    step_times: list[float] = field(default_factory=list)
    step_memory: list[int] = field(default_factory=list)
    memory_kind: str | None = None
    steps_requested: int | None = None
    precision: str | None = None
    ritz_vectors: list[torch.Tensor] | None = None
    basis: list[torch.Tensor] | None = None
    residuals: list[torch.Tensor] | None = None
    basis_kind: str = "memory"
    resumed_from: int | None = None

    @property
    def n_probes(self) -> int:
        """Number of probes."""
        return len(self.alphas)

    @property
    def steps_done(self) -> list[int]:
        """Steps each probe ran (fewer than ``steps`` after a breakdown)."""
        return [int(a.size) for a in self.alphas]

    def tridiagonal(self, probe: int = 0) -> np.ndarray:
        """The dense ``(m_l, m_l)`` tridiagonal matrix T of one probe."""
        a, b = self.alphas[probe], self.betas[probe]
        return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)

    def density(self) -> SpectralDensity:
        """The discrete spectral density averaging the probes (equation 25)."""
        n = self.n_probes
        nodes = np.concatenate(self.ritz_values)
        weights = np.concatenate([w / n for w in self.weights])
        weights = weights / weights.sum()  # exact sum 1 against round-off
        index = np.concatenate([np.full(t.size, i) for i, t in enumerate(self.ritz_values)])
        meta: dict[str, Any] = {
            "method": "stochastic Lanczos quadrature",
            "steps": self.steps,
            "steps_requested": self.steps_requested,
            "steps_done": self.steps_done,
            "probes": n,
            "probe": self.probe,
            "seed": self.seed,
        }
        if self.precision is not None:
            meta["precision"] = self.precision
        return SpectralDensity(nodes, weights, dim=self.dim, probe_index=index, metadata=meta)


def _default_breakdown_tol(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) ** (2.0 / 3.0)


def peak_memory(device: torch.device) -> tuple[int | None, str | None]:
    """The peak memory of the computation so far, in bytes, and what it measures.

    ``torch.cuda.max_memory_allocated(device)`` on a CUDA device (``"cuda_max_allocated"``),
    else the host process's maximum resident set size from ``resource.getrusage``
    (``"host_max_rss"``; ``ru_maxrss`` is in KiB on Linux and bytes on macOS). Both are high-water
    marks. ``(None, None)`` where neither is available (e.g. ``resource`` on Windows).
    """
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None, None
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return (rss if sys.platform == "darwin" else rss * 1024), "host_max_rss"


def lanczos(
    op: Any,
    steps: int,
    *,
    probes: int = 1,
    seed: int | None = None,
    probe: str = "rademacher",
    start: torch.Tensor | None = None,
    store_vectors: bool = False,
    basis_dtype: torch.dtype | None = None,
    breakdown_tol: float | None = None,
    verbose: bool = True,
    description: str = "Lanczos",
    basis: str = "memory",
    basis_device: str | torch.device | None = None,
    basis_dir: str | os.PathLike | None = None,
    basis_chunk: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
) -> LanczosResult:
    """Run ``steps`` Lanczos steps with full reorthogonalisation from each of ``probes`` vectors.

    Args:
        op: a :class:`LinearOperator` or anything :func:`as_operator` takes; ``(P, P)`` symmetric.
        steps: Lanczos steps ``m`` per probe; clamped to ``P`` with a warning (the result
            records both: ``steps`` and ``steps_requested``).
        probes: number of independent random start vectors ``n_v`` (all share one ``matmat``
            per step).
        seed: seed of the random start vectors (drawn on the CPU; a fresh one when ``None``,
            recorded in the result; a continued run takes the state's).
        probe: ``"rademacher"`` or ``"gaussian"`` start vectors.
        start: explicit start vectors ``(P,)`` or ``(P, k)`` instead of random ones.
        store_vectors: keep the basis and return Ritz vectors ``(P, m)`` per probe (on the
            basis's device: the host for a host or disk basis).
        basis_dtype: dtype in which the basis is stored and reorthogonalised (default: the
            operator's); float32 halves the memory, float64 improves orthogonality.
        breakdown_tol: a probe stops when ``beta < breakdown_tol * ||T||`` (estimate);
            default ``eps ** (2/3)`` of the basis dtype.
        verbose: show a progress bar with the time per step.
        description: label of the progress bar.
        basis: where the ``(probes, m, P)`` basis is kept (see :mod:`.basis`): ``"memory"`` (on
            ``basis_device``, default the operator's device), ``"host"`` (host memory while the
            products run on a GPU; the same as ``basis_device="cpu"``) or ``"disk"`` (a
            memory-mapped file). The three give bitwise identical results on one device.
        basis_device: device of a memory basis (``"cpu"`` keeps it in host memory).
        basis_dir: folder of the disk basis's file (default: the checkpoint's folder, else a
            new temporary folder); the file is removed when the run ends, unless a checkpoint
            needs it.
        basis_chunk: vectors per chunk of the streamed reorthogonalisation (default: 256 MiB).
        checkpoint: a state file: written atomically every ``checkpoint_every`` steps; when it
            exists, the run continues from it (with bitwise identical results) after checking
            that it was saved for the same operator and settings; removed when the run ends.
        checkpoint_every: steps between two checkpoints.

    Returns:
        A :class:`LanczosResult`; ``result.density()`` is the spectral density of equation 25.

    Raises:
        ValueError: bad ``steps``/``probes``/``start``/``basis``, a zero start vector, a dense
            matrix with NaN or infinite entries ("not finite", checked before symmetry) or a
            non-symmetric one, or a ``checkpoint`` that is not a state of this run (naming what
            differs).
        TypeError: a complex matrix or operator.
        FloatingPointError: the operator's product is not finite (NaN or infinity in ``A v``,
            seen in the scalars alpha and beta of that step): names the step and the probe.
    """
    op = as_operator(op)
    if op.symmetric is False:
        raise ValueError(
            "Lanczos needs a symmetric operator, but the matrix is not symmetric; "
            "symmetrise it with (A + A.T) / 2 if that is what you mean"
        )
    P = op.shape[0]
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps_requested = int(steps)
    if steps > P:
        warnings.warn(
            f"steps={steps} exceeds the dimension P={P}; running {P} steps instead",
            stacklevel=2,
        )
        steps = P
    steps = int(steps)
    bdtype = basis_dtype or op.dtype
    if not bdtype.is_floating_point:
        raise TypeError(f"basis_dtype must be a floating dtype, got {bdtype}")
    kind, bdev = resolve_basis(basis, basis_device, basis_dir, op.device)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        check_checkpoint_every(checkpoint_every)
    state = load_state(ckpt) if ckpt is not None and ckpt.exists() else None

    V0: torch.Tensor | None = None
    start_digest = None
    if start is not None:
        if not isinstance(start, torch.Tensor):
            start = torch.as_tensor(np.asarray(start))
        start = start.unsqueeze(1) if start.ndim == 1 else start
        if start.ndim != 2 or start.shape[0] != P:
            raise ValueError(
                f"start must have shape (P,) or (P, k) with P = {P}, got {tuple(start.shape)}"
            )
        V0 = start.T.to(dtype=torch.float64, device=op.device)
        probe_kind, used_seed = "given", None
        start_digest = tensor_digest(V0) if ckpt is not None else None
    else:
        if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 1:
            raise ValueError(f"probes must be a positive integer, got {probes!r}")
        if seed is None and state is not None:
            seed = state["run"].get("seed")  # continue the recorded run
        used_seed = resolve_seed(seed)
        probe_kind = probe
    k = V0.shape[0] if V0 is not None else int(probes)
    tol = _default_breakdown_tol(bdtype) if breakdown_tol is None else float(breakdown_tol)
    itemsize = torch.empty((), dtype=bdtype).element_size()
    chunk = int(basis_chunk) if basis_chunk is not None else default_chunk(k, P, itemsize)
    if chunk < 1:
        raise ValueError(f"basis_chunk must be a positive number of vectors, got {basis_chunk}")
    settings = {
        "steps": steps,
        "probes": k,
        "probe": probe_kind,
        "seed": used_seed,
        "start": start_digest,
        "basis_dtype": str(bdtype).removeprefix("torch."),
        "breakdown_tol": tol,
        "basis_in": "file" if kind == "disk" else "state",
        "basis_chunk": chunk,  # the chunks set the order of the sums: bitwise identity
    }
    fingerprint = operator_fingerprint(op) if ckpt is not None else None
    if state is not None:
        assert ckpt is not None and fingerprint is not None
        check_state(state, ckpt, fingerprint, settings)
    rec = Recurrence.restore(state, P) if state is not None else Recurrence.fresh(k, steps)
    if state is None:
        if V0 is None:
            V0 = draw_probes(P, k, kind=probe, seed=used_seed, device=op.device)
        rec.norms0 = torch.linalg.vector_norm(V0, dim=1)
        if not torch.all(torch.isfinite(rec.norms0)):
            raise ValueError("the start vector contains NaN or infinity")
        if torch.any(rec.norms0 == 0):
            raise ValueError("a start vector is zero: Lanczos needs a non-zero start vector")
    shape = (k, steps, P)
    if state is not None and kind == "disk":
        path = state["basis_file"]["path"]
        B = open_basis(kind, shape, bdtype, device=bdev, path=path, chunk=chunk)
    else:
        folder = basis_dir if basis_dir is not None or ckpt is None else ckpt.parent
        B = open_basis(kind, shape, bdtype, device=bdev, directory=folder, chunk=chunk)
    if isinstance(B, DiskBasis):
        B.track = ckpt is not None  # the digest is for checkpoints only
    resumed_from = int(state["done"]) if state is not None else None
    saved = state is not None  # a state on disk refers to this run (its basis file included)
    try:
        if state is not None:
            rec.restore_basis(B, state)
            state = None  # release the memory-mapped state file
        else:
            assert V0 is not None
            if start is None:  # our own draw: normalise in place (no second float64 copy)
                B.append(V0.div_(rec.norms0[:, None]))
            else:
                B.append(V0 / rec.norms0[:, None])
        del V0

        def save(done: int, times: list[float]) -> None:
            assert ckpt is not None
            save_state(ckpt, rec.state_dict(B, done, times, fingerprint, settings))

        every = int(checkpoint_every) if ckpt is not None else 0
        _run(op, B, rec, steps, tol, store_vectors, verbose, description, every, save)
        saved = saved or rec.saved
        result = _finish(op, B, rec, steps, store_vectors)
    except BaseException:
        if kind == "disk":
            B.close(remove=not (saved or rec.saved))
        raise
    if ckpt is not None and (saved or rec.saved):
        ckpt.unlink(missing_ok=True)  # ours: written or continued by this call
    if kind == "disk":
        B.close(remove=True)
    result.steps_requested = steps_requested
    result.precision = str(lower_precision(op.product_dtype, bdtype)).removeprefix("torch.")
    result.seed, result.probe = used_seed, probe_kind
    result.basis_kind = kind
    result.resumed_from = resumed_from
    return result


def resolve_basis(
    basis: str,
    basis_device: str | torch.device | None,
    basis_dir: str | os.PathLike | None,
    op_device: torch.device,
) -> tuple[str, torch.device]:
    """``(kind, device)`` of the basis.

    ``"memory"`` on the CPU while the products run elsewhere is ``"host"``; a host or disk basis
    lives on the CPU.
    """
    if basis not in BASIS_KINDS:
        raise ValueError(f"basis must be one of {', '.join(BASIS_KINDS)}, got {basis!r}")
    if basis_dir is not None and basis != "disk":
        raise ValueError(f"basis_dir applies to basis='disk' only (got basis={basis!r})")
    dev = torch.device(basis_device) if basis_device is not None else None
    if basis == "memory":
        dev = dev or op_device
        return ("host" if dev.type == "cpu" and op_device.type != "cpu" else "memory"), dev
    if dev is not None and dev.type != "cpu":
        raise ValueError(
            f"a {basis} basis lives in host memory: basis_device must be 'cpu' or None, got {dev}"
        )
    return basis, torch.device("cpu")


def _run(
    op: Any,
    B: LanczosBasis,
    rec: Recurrence,
    steps: int,
    tol: float,
    store_vectors: bool,
    verbose: bool,
    description: str,
    every: int,
    save: Any,
) -> None:
    """The Lanczos steps ``rec.done .. steps - 1`` (Algorithm 1), in place on ``rec`` and ``B``.

    Full-length temporaries per step: the product's input (a copy only when the basis's dtype or
    device differs from the operator's, or when some probes stopped), the product ``A Q_j``
    ``(P, k)``, and ``w`` ``(k, P)`` on the basis device; the float64 scalars are accumulated in
    slices (:func:`dot64`).
    """
    k, P = B.k, B.dim
    alphas, betas, scale = rec.alphas, rec.betas, rec.scale
    active, broke, done_steps = rec.active, rec.broke, rec.done_steps
    j0 = rec.done
    label = description if j0 == 0 else f"{description} (from step {j0})"
    with ProgressBar(steps - j0, label, verbose=verbose) as bar:
        for j in range(j0, steps):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            Qj = B.vector(j)  # (k, P) view of the basis
            rows = Qj if idx.size == k else Qj[torch.as_tensor(idx, device=B.device)]
            AV = op.matmat(rows.to(device=op.device, dtype=op.dtype).T)  # (P, k_active)
            del rows
            W = torch.empty((k, P), dtype=B.dtype, device=B.device)
            if idx.size == k:
                W.copy_(AV.T)
            else:
                W.zero_()
                for r, i in enumerate(idx):
                    W[i].copy_(AV[:, r])
            del AV
            if B.dtype != torch.float64:  # alpha_j = q_j^T A q_j accumulated in float64
                alpha = dot64(Qj, W)
            last = B.orthogonalise(W, j + 1)  # two classical Gram-Schmidt passes
            if B.dtype == torch.float64:  # float64 basis: alpha is the total projection
                alpha = last
                beta = torch.linalg.vector_norm(W, dim=1)
            else:
                beta = dot64(W, W).sqrt()
            ab = torch.stack([alpha, beta]).cpu().numpy()  # one host sync per step
            for i in idx:
                a_i, b_i = ab[0, i], ab[1, i]
                if not (math.isfinite(a_i) and math.isfinite(b_i)):
                    raise FloatingPointError(
                        f"the operator's product is not finite at step {j + 1} (probe {i}: "
                        f"alpha={a_i}, beta={b_i}): A v holds NaN or infinity; check the "
                        "operator (model, loss, data) for NaN or infinity, e.g. "
                        "torch.isfinite(op.matvec(v)).all()"
                    )
                alphas[i, j], betas[i, j] = a_i, b_i
                scale[i] = max(scale[i], abs(a_i), b_i, betas[i, j - 1] if j else 0.0)
                if j < steps - 1 and b_i <= tol * scale[i]:
                    active[i], broke[i], done_steps[i] = False, True, j + 1
                    betas[i, j] = 0.0
            if j < steps - 1:
                inv = np.where(active, 1.0 / np.where(active, ab[1], 1.0), 0.0)
                B.append_scaled(W, torch.as_tensor(inv, dtype=B.dtype, device=B.device))
            elif store_vectors:
                rec.residuals = W.to(op.dtype)
            del W
            bar.advance()
            peak, rec.memory_kind = peak_memory(op.device)  # one getrusage call: microseconds
            if peak is not None:
                rec.step_memory.append(peak)
            rec.done = j + 1
            if every and rec.done % every == 0 and rec.done < steps and active.any():
                rec.saved = True  # from now on a state may refer to the basis: keep its file
                save(rec.done, rec.step_times + list(bar.step_times))
            if verbose:
                bar.set_info(f"alpha={ab[0, idx[0]]:.4g}")
        rec.step_times += list(bar.step_times)


def _finish(
    op: Any, B: LanczosBasis, rec: Recurrence, steps: int, store_vectors: bool
) -> LanczosResult:
    """Ritz values, weights and (with ``store_vectors``) Ritz vectors of every probe."""
    k, P = B.k, B.dim
    res_alphas, res_betas, ritz_vals, wts, ritz_vecs, bases, resids = [], [], [], [], [], [], []
    final_betas = np.zeros(k)
    for i in range(k):
        m_i = int(rec.done_steps[i])
        a = rec.alphas[i, :m_i].copy()
        b = rec.betas[i, : m_i - 1].copy()
        final_betas[i] = 0.0 if rec.broke[i] else rec.betas[i, m_i - 1]
        theta, S = tridiagonal_eigh(a, b)
        w = S[0, :] ** 2
        w = w / w.sum()
        res_alphas.append(a)
        res_betas.append(b)
        ritz_vals.append(theta)
        wts.append(w)
        if store_vectors:
            bases.append(B.probe_basis(i, m_i, op.dtype))  # (P, m_i)
            ritz_vecs.append(B.ritz_vectors(i, m_i, S, op.dtype))
            if rec.broke[i] or rec.residuals is None:
                resids.append(torch.zeros(P, dtype=op.dtype, device=B.device))
            else:
                resids.append(rec.residuals[i])
    return LanczosResult(
        alphas=res_alphas,
        betas=res_betas,
        residual_norms=final_betas,
        ritz_values=ritz_vals,
        weights=wts,
        start_norms=rec.norms0.cpu().numpy(),
        broke_down=rec.broke.copy(),
        dim=P,
        steps=steps,
        seed=None,
        probe="",
        step_times=rec.step_times,
        step_memory=rec.step_memory,
        memory_kind=rec.memory_kind,
        ritz_vectors=ritz_vecs if store_vectors else None,
        basis=bases if store_vectors else None,
        residuals=resids if store_vectors else None,
    )
