"""The text of a spectrum plot: its default title, the summary box and the negative-mass line."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..linalg.density import SpectralDensity
from .style import matrix_label


def _count(n: object) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _default_title(density: SpectralDensity, file_meta: dict[str, Any] | None) -> str:
    """One or two lines: which matrix, of which model and data, with which Lanczos settings."""
    meta = density.metadata or {}
    config = (file_meta or {}).get("config") or {}
    info = (file_meta or {}).get("info") or {}
    name = matrix_label(config.get("matrix", meta.get("matrix")))
    head = f"{name} spectral density" if name and name != "operator" else "Spectral density"
    if config.get("model") and config.get("dataset"):
        head += f" of {config['model']} on {config['dataset']}"
    details = []
    steps = config.get("steps", meta.get("steps"))
    if steps is not None:
        n_p = config.get("probes", meta.get("probes", 1))
        details.append(f"Lanczos m={steps}, {n_p} probe{'s' * (n_p != 1)}")
    if file_meta is None:
        return ", ".join([head, *details])
    sizes = [f"{k} = {_count(info[k])}" for k in ("P", "N") if info.get(k) is not None]
    if not sizes and density.dim is not None:
        sizes = [f"P = {_count(density.dim)}"]
    details.extend(sizes)
    return head + ("\n" + ", ".join(details) if details else "")


def negative_mass_text(density: SpectralDensity, psd: bool | None = None) -> str:
    """One line on the negative mass, saying below which tolerance it counts.

    ``"negative mass = 0.3 (θ < −3e-06)"``, with the strict count when round-off negatives were
    left out (``"; 0.31 with any θ < 0"``), or ``"negative mass = 0 (PSD by construction)"``
    for a GGN or Fisher (``psd``, default ``density.psd_by_construction``), whose negative Ritz
    values are round-off.
    """
    s = density.negative_mass_summary(psd)
    if s["psd_by_construction"]:
        return "negative mass = 0 (PSD by construction)"
    text = f"negative mass = {s['negative_mass']:.3g} (θ < −{s['negative_mass_tol']:.2g})"
    if s["negative_mass_strict"] != s["negative_mass"]:
        text += f"; {s['negative_mass_strict']:.3g} with any θ < 0"
    return text


def _summary_text(density: SpectralDensity, psd: bool | None = None) -> str:
    n_probes = len(np.unique(density.probe_index))
    lines = [
        f"λ_max = {density.lambda_max:.4g}",
        f"λ_min = {density.lambda_min:.4g}",
        negative_mass_text(density, psd),
        f"nodes = {density.nodes.size} ({n_probes} probe{'s' if n_probes != 1 else ''})",
    ]
    return "\n".join(lines)
