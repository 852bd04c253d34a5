"""Where the Lanczos basis lives: device memory, host memory, or a memory-mapped file.

Full reorthogonalisation keeps every Lanczos vector: ``k`` probes x ``m`` steps x ``P`` entries
(VGG-16, P = 15.3 M, m = 100: 6.1 GB in float32). Three backends share one interface:

* ``"memory"``: a ``(k, m, P)`` tensor on the operator's device (the fastest);
* ``"host"``: the same tensor in host memory (``basis_device="cpu"``) while the products run on a
  GPU; the Gram-Schmidt passes run where the basis is, so per step only ``w`` (one vector) goes
  to the host and ``q_{j+1}`` back, never the basis;
* ``"disk"``: a ``(k, m, P)`` ``numpy.memmap`` in a file (preallocated, so that a full disk fails
  at the start and not with a SIGBUS in the middle), read through the page cache.

Every backend reorthogonalises by the same chunked arithmetic: two classical Gram-Schmidt passes,
each ``h = [Q_c^T w for each chunk c]`` followed by ``w -= Q_c h_c`` chunk by chunk, with chunks of
``chunk`` vectors (the same for every backend). The three therefore do the same floating-point
operations in the same order and give bitwise identical results on the same device.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..io.outputs import make_dirs

__all__ = [
    "BASIS_KINDS",
    "DEFAULT_CHUNK_BYTES",
    "DiskBasis",
    "LanczosBasis",
    "default_chunk",
    "dot64",
    "open_basis",
]

BASIS_KINDS = ("memory", "host", "disk")
#: Bytes of basis vectors per chunk of the streamed Gram-Schmidt passes (and of the Ritz vectors).
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Entries per slice of the float64 dot products of lower-precision vectors (bounds temporaries).
DOT_SLICE = 1 << 18
_INT_OF_SIZE = {2: np.int16, 4: np.int32, 8: np.int64}


def dot64(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of ``x`` and ``y`` ``(k, P)`` accumulated in float64, ``(k,)``.

    Float64 inputs are multiplied directly; others are converted slice by slice (``DOT_SLICE``
    entries), so no full-length float64 copy is made.
    """
    if x.dtype == torch.float64 and y.dtype == torch.float64:
        return torch.einsum("kp,kp->k", x, y)
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[1], DOT_SLICE):
        b = a + DOT_SLICE
        out += torch.einsum("kp,kp->k", x[:, a:b].double(), y[:, a:b].double())
    return out


def default_chunk(k: int, dim: int, itemsize: int) -> int:
    """Vectors per chunk: ``DEFAULT_CHUNK_BYTES`` of ``k`` probes' vectors of ``dim`` entries."""
    return max(1, DEFAULT_CHUNK_BYTES // (k * dim * itemsize))


class LanczosBasis:
    """The Lanczos vectors ``q_0, q_1, ...`` of ``k`` probes in a ``(k, m, P)`` tensor.

    Args:
        storage: the ``(k, m, P)`` tensor the vectors are written into.
        kind: ``"memory"``, ``"host"`` or ``"disk"``.
        chunk: vectors per chunk of the Gram-Schmidt passes (default: ``DEFAULT_CHUNK_BYTES``).
    """

    def __init__(self, storage: torch.Tensor, kind: str, chunk: int | None = None) -> None:
        self.storage = storage
        self.kind = kind
        self.k, self.capacity, self.dim = (int(n) for n in storage.shape)
        self.dtype, self.device = storage.dtype, storage.device
        size = storage.element_size()
        self.chunk = int(chunk) if chunk else default_chunk(self.k, self.dim, size)
        if self.chunk < 1:
            raise ValueError(f"the basis chunk must be a positive number of vectors, got {chunk}")
        self.count = 0  # vectors written

    @property
    def nbytes(self) -> int:
        """Bytes of the whole basis."""
        return self.k * self.capacity * self.dim * self.storage.element_size()

    def vector(self, j: int) -> torch.Tensor:
        """The ``j``-th vector of every probe, ``(k, P)`` (a view of the storage)."""
        return self.storage[:, j]

    def append(self, V: torch.Tensor) -> None:
        """Write ``V`` ``(k, P)`` (any device or dtype) as the next vector."""
        self.storage[:, self.count].copy_(V)
        self._written(self.count)
        self.count += 1

    def append_scaled(self, W: torch.Tensor, inv: torch.Tensor) -> None:
        """Write ``W * inv[:, None]`` as the next vector (``W`` ``(k, P)`` on the basis device)."""
        torch.mul(W, inv[:, None], out=self.storage[:, self.count])
        self._written(self.count)
        self.count += 1

    def _written(self, j: int) -> None:
        """Hook: vector ``j`` was written."""

    def orthogonalise(self, W: torch.Tensor, n: int) -> torch.Tensor:
        """Two classical Gram-Schmidt passes of ``W`` ``(k, P)`` against the first ``n`` vectors.

        ``W`` (contiguous, on the basis device, in its dtype) is updated in place, chunk by chunk.

        Returns:
            ``(k,)`` the coefficient of vector ``n - 1`` summed over both passes (``q^T A q`` of
            the last vector: alpha, when the basis is float64).
        """
        W3 = W.unsqueeze(2)  # (k, P, 1) view
        total: torch.Tensor | None = None
        bounds = [(a, min(n, a + self.chunk)) for a in range(0, n, self.chunk)]
        for _ in range(2):
            hs = [torch.bmm(self.storage[:, a:b], W3) for a, b in bounds]  # Q_c^T w, (k, c, 1)
            for (a, b), h in zip(bounds, hs, strict=True):
                W3.baddbmm_(self.storage[:, a:b].transpose(1, 2), h, alpha=-1.0)  # w -= Q_c h_c
            last = hs[-1][:, -1, 0]
            total = last if total is None else total + last
        assert total is not None
        return total

    def probe_basis(self, i: int, m: int, dtype: torch.dtype) -> torch.Tensor:
        """Probe ``i``'s first ``m`` vectors as columns ``(P, m)`` (a view when ``dtype`` fits)."""
        return self.storage[i, :m].T.to(dtype)

    def ritz_vectors(self, i: int, m: int, S: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """``Q_i S`` ``(P, m')`` for ``S`` ``(m, m')``, computed by row blocks of ``Q_i``."""
        S_t = torch.as_tensor(S, dtype=dtype, device=self.device)
        out = torch.empty((self.dim, S_t.shape[1]), dtype=dtype, device=self.device)
        rows = max(1, DEFAULT_CHUNK_BYTES // max(1, m * self.storage.element_size()))
        for a in range(0, self.dim, rows):
            b = min(self.dim, a + rows)
            torch.mm(self.storage[i, :m, a:b].T.to(dtype), S_t, out=out[a:b])
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def used_vectors(self, n: int) -> list[torch.Tensor] | None:
        """Per probe the first ``n`` vectors ``(n, P)``, compact tensors to save (no copy on a CPU).

        ``None`` for a file-backed basis (the checkpoint records the file instead).
        """
        out = []
        for i in range(self.k):
            view = self.storage[i, :n]
            if view.device.type == "cpu":  # a slice of the storage: torch.save writes only it
                size = view.element_size()
                start = view.storage_offset() * size
                part = view.untyped_storage()[start : start + n * self.dim * size]
                out.append(
                    torch.empty(0, dtype=self.dtype).set_(part, 0, (n, self.dim), (self.dim, 1))
                )
            else:  # torch.save would copy the storage to the host anyway: copy just this part
                out.append(view.cpu())
        return out

    def restore(self, vectors: list[torch.Tensor] | None, n: int) -> None:
        """Fill the first ``n`` vectors from :meth:`used_vectors` of a checkpoint."""
        if vectors is None or len(vectors) != self.k:
            raise ValueError("the Lanczos state holds no basis vectors for this basis")
        for i, v in enumerate(vectors):
            if tuple(v.shape) != (n, self.dim):
                raise ValueError(
                    f"the Lanczos state's basis has shape {tuple(v.shape)}, "
                    f"expected {(n, self.dim)}"
                )
            self.storage[i, :n].copy_(v)
        self.count = n

    def flush(self) -> None:
        """Make the written vectors durable (a no-op in memory)."""

    def close(self, remove: bool = True) -> None:
        """Release the storage (a disk basis also removes its file when ``remove``)."""
        self.storage = torch.empty(0)


class DiskBasis(LanczosBasis):
    """A basis in a memory-mapped file ``(k, m, P)`` of ``dtype`` entries (C order).

    Args:
        path: the file.
        shape: ``(k, m, P)``.
        dtype: entry dtype.
        create: make the file (preallocated) instead of opening an existing one.
        owned: this process made the file, so :meth:`close` may remove it.
        chunk: vectors per chunk of the Gram-Schmidt passes.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
        *,
        create: bool,
        owned: bool,
        chunk: int | None = None,
    ) -> None:
        size = torch.empty((), dtype=dtype).element_size()
        nbytes = int(np.prod(shape)) * size
        self.path, self.owned = Path(path), owned
        if create:
            with open(self.path, "r+b") as fh:
                if hasattr(os, "posix_fallocate"):  # reserve the blocks now: ENOSPC up front
                    os.posix_fallocate(fh.fileno(), 0, nbytes)
                else:  # pragma: no cover - not Linux
                    fh.truncate(nbytes)
        elif self.path.stat().st_size != nbytes:
            raise ValueError(
                f"the Lanczos basis file {self.path} has {self.path.stat().st_size} bytes, "
                f"expected {nbytes}: it does not belong to this state"
            )
        self._map = np.memmap(self.path, dtype=_INT_OF_SIZE[size], mode="r+", shape=shape)
        storage = torch.from_numpy(self._map).view(dtype)
        super().__init__(storage, "disk", chunk)
        self._hash = hashlib.blake2b(digest_size=16)
        #: keep the digest of the written vectors (for checkpoints; costs a read of each vector)
        self.track = True
        #: the folders made for the file (outermost first), removed with it when empty
        self.temporary_folders: list[Path] = []

    def _written(self, j: int) -> None:
        if self.track:  # a running digest of the used part, in write order
            for i in range(self.k):
                self._hash.update(memoryview(self._map[i, j]))

    def digest(self) -> str:
        """Digest of the vectors written so far (in write order; needs :attr:`track`)."""
        if not self.track:
            raise RuntimeError("the digest of a disk basis is kept only when track is set")
        return self._hash.hexdigest()

    def used_vectors(self, n: int) -> list[torch.Tensor] | None:
        """``None``: a checkpoint records the file, its size and :meth:`digest`."""
        return None

    def restore_file(self, n: int, digest: str) -> None:
        """Adopt the first ``n`` vectors of the file, checking them against ``digest``."""
        self.track = True
        for j in range(n):
            self._written(j)
        if self.digest() != digest:
            raise ValueError(
                f"the Lanczos basis file {self.path} was changed since the state was saved "
                "(its checksum differs)"
            )
        self.count = n

    def probe_basis(self, i: int, m: int, dtype: torch.dtype) -> torch.Tensor:
        """A copy in host memory (the file is removed when the run ends)."""
        return self.storage[i, :m].T.to(dtype, copy=True)

    def flush(self) -> None:
        """``msync`` the written vectors to the file."""
        self._map.flush()

    def close(self, remove: bool = True) -> None:
        """Unmap the file and, when ``remove`` and this process made it, delete it."""
        self.storage = torch.empty(0)
        mm = getattr(self._map, "_mmap", None)
        self._map = None  # type: ignore[assignment]
        if mm is not None:
            with contextlib.suppress(BufferError, ValueError):
                mm.close()
        if remove and self.owned:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            _remove_folders(self.temporary_folders)


def open_basis(
    kind: str,
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    *,
    device: torch.device,
    directory: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    chunk: int | None = None,
) -> LanczosBasis:
    """Allocate an empty basis ``(k, m, P)`` of ``kind`` (``BASIS_KINDS``).

    Args:
        kind: ``"memory"`` / ``"host"`` (a tensor on ``device``) or ``"disk"``.
        shape: ``(k, m, P)``.
        dtype: entry dtype.
        device: the device of a memory or host basis.
        directory: folder of a new disk basis file, made if missing (default: a new temporary
            folder); the folders made for it are removed with the file.
        path: an existing disk basis file to open (a resumed run) instead of a new one.
        chunk: vectors per chunk of the Gram-Schmidt passes.
    """
    if kind not in BASIS_KINDS:
        raise ValueError(f"basis must be one of {', '.join(BASIS_KINDS)}, got {kind!r}")
    if kind != "disk":
        return LanczosBasis(torch.empty(shape, dtype=dtype, device=device), kind, chunk)
    if path is not None:
        return DiskBasis(Path(path), shape, dtype, create=False, owned=True, chunk=chunk)
    if directory is None:
        folder = Path(tempfile.mkdtemp(prefix="deepcurvature-basis-"))
        made = [folder]
    else:
        folder = Path(directory)
        made = make_dirs(folder)  # the folders this call creates are removed with the file
    try:
        fd, name = tempfile.mkstemp(prefix="lanczos-basis-", suffix=".bin", dir=folder)
        os.close(fd)
        try:
            basis = DiskBasis(Path(name), shape, dtype, create=True, owned=True, chunk=chunk)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
    except BaseException:
        _remove_folders(made)
        raise
    basis.temporary_folders = made
    return basis


def _remove_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first), each only if empty."""
    for d in reversed(folders):
        with contextlib.suppress(OSError):
            d.rmdir()
