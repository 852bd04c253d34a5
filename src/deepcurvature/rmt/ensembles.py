"""Seeded random-matrix ensembles of section 6 of the paper (float64 torch tensors).

* :func:`wigner`: real symmetric Wigner matrices (Appendix A, Definition A.1), whose spectrum
  divided by ``sqrt(P)`` tends to the semicircle on ``[-2, 2]`` (Theorem 3, equation 7);
* :func:`wishart`: sample covariance matrices ``X X^T / T`` (section 6.2), whose spectrum tends to
  the Marcenko-Pastur law with ratio ``q = P / T`` (Theorem 4, equations 8-9);
* :func:`synthetic_spectrum`: the section 6.4 matrix imitating a network's Hessian (a spike at
  zero, a right-skewed bulk, positive and negative outliers), built as ``U D U^T`` with a Haar
  random rotation ``U`` so its eigenvalues are known exactly by construction.

Every generator draws on the CPU from its own ``torch.Generator`` seeded with ``seed`` (a fresh
seed when ``None``), so a result depends only on the seed, not on the device or global state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..linalg.probes import resolve_seed

__all__ = [
    "SYNTHETIC_FRACTIONS",
    "SyntheticSpectrum",
    "haar_orthogonal",
    "synthetic_counts",
    "synthetic_spectrum",
    "wigner",
    "wishart",
]

#: Section 6.4 at ``P = 1000``: (count, low, high) of the uniformly drawn eigenvalues; the rest
#: of the ``P`` eigenvalues are exactly zero.
SYNTHETIC_FRACTIONS: tuple[tuple[int, float, float], ...] = (
    (470, 0.0, 15.0),  # the bulk
    (20, 0.0, 60.0),  # positive outliers
    (10, -10.0, 0.0),  # negative outliers
)


def _check_dim(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(resolve_seed(seed))


def wigner(
    P: int,
    *,
    seed: int | None = None,
    normalize: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw a real symmetric Wigner matrix (Definition A.1) with N(0, 1) entries.

    The diagonal and the upper triangle are i.i.d. standard normal and the lower triangle mirrors
    the upper one. Unnormalised, the spectrum fills ``[-2 sqrt(P), 2 sqrt(P)]`` as ``P`` grows;
    divided by ``sqrt(P)`` it tends to the semicircle on ``[-2, 2]`` (Theorem 3, equation 7).

    Args:
        P: the dimension.
        seed: seed of the draw (a fresh one when ``None``).
        normalize: divide by ``sqrt(P)``.
        device: where to put the result (drawn on the CPU).

    Returns:
        ``(P, P)`` float64 symmetric tensor.
    """
    P = _check_dim("P", P)
    A = torch.randn((P, P), generator=_generator(seed), dtype=torch.float64)
    M = torch.triu(A) + torch.triu(A, diagonal=1).T
    if normalize:
        M = M / P**0.5
    return M.to(device)


def wishart(
    P: int,
    T: int,
    *,
    seed: int | None = None,
    sigma2: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw the sample covariance ``X X^T / T`` with ``X`` ``(P, T)`` i.i.d. ``N(0, sigma2)``.

    As ``P, T`` grow with ``P / T -> q`` its spectrum tends to the Marcenko-Pastur law (Theorem 4,
    equations 8-9) on ``[sigma2 (1 - sqrt q)^2, sigma2 (1 + sqrt q)^2]``, with an extra mass
    ``1 - 1/q`` of exact zeros when ``q > 1`` (the rank is ``T``).

    Args:
        P: the dimension of the matrix.
        T: the number of samples (columns of ``X``).
        seed: seed of the draw (a fresh one when ``None``).
        sigma2: variance of the entries of ``X``.
        device: where to put the result (drawn on the CPU).

    Returns:
        ``(P, P)`` float64 symmetric positive semi-definite tensor.
    """
    P = _check_dim("P", P)
    T = _check_dim("T", T)
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2}")
    X = torch.randn((P, T), generator=_generator(seed), dtype=torch.float64)
    Y = (X @ X.T) * (float(sigma2) / T)
    Y = (Y + Y.T) / 2  # exactly symmetric
    return Y.to(device)


def haar_orthogonal(
    P: int, *, seed: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw a ``(P, P)`` orthogonal matrix from the Haar measure.

    QR of a Gaussian matrix, with the columns of ``Q`` multiplied by the signs of ``diag(R)``:
    without this fix the distribution of ``Q`` depends on the QR convention and is not Haar.
    """
    P = _check_dim("P", P)
    g = generator if generator is not None else _generator(seed)
    G = torch.randn((P, P), generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return Q * signs


class SyntheticSpectrum(NamedTuple):
    """The section 6.4 matrix and its exact eigen-decomposition ``U diag(eigenvalues) U^T``.

    Unpacks as ``matrix, eigenvalues = synthetic_spectrum(...)[:2]``.

    Attributes:
        matrix: ``(P, P)`` float64 symmetric tensor.
        eigenvalues: ``(P,)`` float64, ascending, exact by construction.
        eigenvectors: ``(P, P)`` float64 orthogonal ``U``; column ``i`` belongs to
            ``eigenvalues[i]``.
        counts: how many eigenvalues were drawn in each group: ``{"bulk", "positive_outliers",
            "negative_outliers", "zero"}``.
    """

    matrix: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    counts: dict[str, int]


def synthetic_counts(P: int) -> dict[str, int]:
    """Group sizes of :func:`synthetic_spectrum` for dimension ``P``.

    Exactly 470 / 20 / 10 / 500 at ``P = 1000``; otherwise scaled with ``P`` and rounded, with at
    least one eigenvalue in each non-zero group.
    """
    P = _check_dim("P", P, minimum=4)
    names = ("bulk", "positive_outliers", "negative_outliers")
    counts = {
        name: max(1, round(n * P / 1000))
        for name, (n, _, _) in zip(names, SYNTHETIC_FRACTIONS, strict=True)
    }
    counts["zero"] = P - sum(counts.values())
    if counts["zero"] < 0:  # pragma: no cover - impossible for P >= 4
        raise ValueError(f"P={P} is too small for the synthetic spectrum")
    return counts


def synthetic_spectrum(
    P: int = 1000, *, seed: int | None = None, device: torch.device | str | None = None
) -> SyntheticSpectrum:
    """Build the section 6.4 matrix ``H = U D U^T`` with known eigenvalues.

    At ``P = 1000``: 470 eigenvalues uniform on ``[0, 15]`` (the bulk), 20 uniform on ``[0, 60]``
    (outliers), 10 uniform on ``[-10, 0]`` (negative outliers) and 500 exact zeros (the spike);
    other ``P`` scale the counts proportionally (:func:`synthetic_counts`). ``U`` is Haar
    (:func:`haar_orthogonal`), so ``H`` carries no trace of the basis it was built in.

    Args:
        P: the dimension (at least 4).
        seed: seed of the eigenvalues and of the rotation.
        device: where to put the tensors (drawn on the CPU).

    Returns:
        A :class:`SyntheticSpectrum` ``(matrix, eigenvalues, eigenvectors, counts)``.
    """
    counts = synthetic_counts(P)
    g = _generator(seed)
    parts = []
    for key, (_, lo, hi) in zip(
        ("bulk", "positive_outliers", "negative_outliers"), SYNTHETIC_FRACTIONS, strict=True
    ):
        u = torch.rand(counts[key], generator=g, dtype=torch.float64)
        parts.append(lo + (hi - lo) * u)
    parts.append(torch.zeros(counts["zero"], dtype=torch.float64))
    eigenvalues, _ = torch.sort(torch.cat(parts))
    U = haar_orthogonal(P, generator=g)
    H = (U * eigenvalues) @ U.T
    H = (H + H.T) / 2
    return SyntheticSpectrum(H.to(device), eigenvalues.to(device), U.to(device), counts)
