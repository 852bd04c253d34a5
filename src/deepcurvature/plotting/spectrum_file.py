"""Reading a spectrum file (``SpectrumResult.save`` / ``SpectralDensity.save``) for plotting."""

from __future__ import annotations

import os
from typing import Any

from ..io.results import npz_names, read_json, read_npz, result_paths
from ..linalg.density import SpectralDensity, density_metadata_from_file


def read_spectrum(path: str | os.PathLike) -> tuple[SpectralDensity, dict[str, Any]]:
    """Read a spectrum file written by ``SpectrumResult.save`` or ``SpectralDensity.save``.

    Args:
        path: ``NAME.npz``, ``NAME.json`` or ``NAME`` (the pair ``NAME.npz`` + ``NAME.json``).

    Returns:
        ``(density, metadata)``: the :class:`SpectralDensity` (its ``metadata`` holds the
        Lanczos settings and the matrix) and the whole JSON metadata (``kind``, ``config``,
        ``info``, ``summary``...; ``{}`` without a JSON file).

    Raises:
        FileNotFoundError: there is no ``NAME.npz``.
        ValueError: the file holds no ``nodes``/``weights`` arrays (it is not a spectrum).
    """
    npz, sidecar = result_paths(path)
    if not npz.is_file():
        raise FileNotFoundError(f"no result file at {npz}")
    meta: dict[str, Any] = {}
    if sidecar.is_file():
        meta = read_json(sidecar, what="result file")
        if not isinstance(meta, dict):
            raise ValueError(f"{sidecar} is not a valid result file: its JSON is not an object")
    # read only the density's arrays: the file may also hold (P, m) eigenvectors
    names = npz_names(npz)
    arrays = read_npz(npz, ("nodes", "weights", "probe_index"))
    missing = [k for k in ("nodes", "weights") if k not in arrays]
    if missing:
        kind = meta.get("kind")
        what = f"a {kind} file" if kind else f"arrays {sorted(names)}"
        raise ValueError(
            f"{npz} is not a spectrum file: it holds {what}, without the 'nodes' and 'weights' "
            f"arrays of a SpectrumResult or SpectralDensity"
        )
    density = SpectralDensity(
        arrays["nodes"],
        arrays["weights"],
        dim=meta.get("dim"),
        probe_index=arrays.get("probe_index"),
        metadata=density_metadata_from_file(meta),
    )
    return density, meta
