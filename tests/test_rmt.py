"""Random-matrix ensembles and limiting laws against exact references.

Finite-size tolerances used below:

* Edges: the extreme eigenvalue of a Wigner or sample-covariance matrix fluctuates around the
  edge of the limiting law on the Tracy-Widom scale, ``P^(-2/3)`` for ``M / sqrt(P)`` and
  Johnstone's ``(sqrt(n1) + sqrt(n2)) (1/sqrt(n1) + 1/sqrt(n2))^(1/3) / T`` for ``X X^T / T``
  (``n1, n2`` the two dimensions; with a minus sign for the lower edge). The Tracy-Widom law
  has mean -1.21 and standard deviation 1.27, so six scale units bound the deviation with
  probability far above 1 - 1e-4.
* Kolmogorov distance: eigenvalues are rigid (the number in an interval fluctuates by
  O(sqrt(log P)), not O(sqrt(P)) as for independent samples), so the empirical spectral CDF is
  within O(log P / P) of the law: a few 1e-3 at P = 1000. We allow 0.01 (ten eigenvalues) and
  check that a 5-10 % error in the law's scale is detected (i.i.d. samples would already fluctuate
  by ~0.04 at this size).
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import deepcurvature as dc

KS_TOL = 0.01


def eigvalsh(M: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(M).numpy()


def johnstone_scales(P: int, T: int) -> tuple[float, float]:
    """Tracy-Widom scales of the lower and upper edge of the spectrum of X X^T / T."""
    n1, n2 = min(P, T), max(P, T)
    a, b = math.sqrt(n1), math.sqrt(n2)
    upper = (a + b) * (1 / a + 1 / b) ** (1 / 3) / T
    lower = (b - a) * (1 / a - 1 / b) ** (1 / 3) / T
    return lower, upper


# -- generators ------------------------------------------------------------------------------------
def test_wigner_is_symmetric_seeded_and_standard_normal():
    P = 300
    M = dc.wigner(P, seed=4)
    assert M.dtype == torch.float64 and M.shape == (P, P)
    assert torch.equal(M, M.T)
    assert torch.equal(M, dc.wigner(P, seed=4))
    assert not torch.equal(M, dc.wigner(P, seed=5))
    upper = M[torch.triu_indices(P, P, offset=1).unbind()]
    diag = torch.diagonal(M)
    n_up, n_d = upper.numel(), diag.numel()
    # N(0, 1) entries: sample mean and variance within 5 standard errors
    assert abs(upper.mean().item()) < 5 / math.sqrt(n_up)
    assert abs(upper.var().item() - 1) < 5 * math.sqrt(2 / n_up)
    assert abs(diag.mean().item()) < 5 / math.sqrt(n_d)
    assert abs(diag.var().item() - 1) < 5 * math.sqrt(2 / n_d)
    torch.testing.assert_close(dc.wigner(P, seed=4, normalize=True), M / math.sqrt(P))


def test_wishart_is_psd_with_the_right_rank_and_scale():
    P, T = 200, 80
    Y = dc.wishart(P, T, seed=1, sigma2=2.5)
    assert torch.equal(Y, Y.T) and torch.equal(Y, dc.wishart(P, T, seed=1, sigma2=2.5))
    ev = eigvalsh(Y)
    scale = ev.max()
    assert ev.min() > -1e-12 * scale
    # rank T: exactly P - T eigenvalues vanish (to round-off)
    assert np.sum(ev < 1e-10 * scale) == P - T
    # E tr(Y) / P = sigma2, with sd sigma2 * sqrt(2 / (P T)) (a scaled chi-square)
    assert abs(np.trace(Y.numpy()) / P - 2.5) < 5 * 2.5 * math.sqrt(2 / (P * T))


def test_synthetic_spectrum_has_the_stated_eigenvalues():
    syn = dc.synthetic_spectrum(1000, seed=3)
    H, ev, U, counts = syn
    assert counts == {"bulk": 470, "positive_outliers": 20, "negative_outliers": 10, "zero": 500}
    assert torch.equal(H, H.T)
    assert torch.all(ev[1:] >= ev[:-1])
    assert int((ev == 0).sum()) == 500
    assert int((ev < 0).sum()) == 10 and ev.min() >= -10
    assert ev.max() <= 60 and int((ev > 15).sum()) <= 20
    np.testing.assert_allclose(eigvalsh(H), ev.numpy(), rtol=0, atol=1e-9)
    eye = torch.eye(1000, dtype=torch.float64)
    assert (U.T @ U - eye).abs().max().item() < 1e-12
    assert ((U * ev) @ U.T - H).abs().max().item() < 1e-10
    again = dc.synthetic_spectrum(1000, seed=3)
    assert torch.equal(again.matrix, H)


def test_synthetic_counts_scale_with_P():
    assert dc.synthetic_counts(200) == {
        "bulk": 94,
        "positive_outliers": 4,
        "negative_outliers": 2,
        "zero": 100,
    }
    small = dc.synthetic_counts(20)
    assert min(small.values()) >= 1 and sum(small.values()) == 20
    ev = dc.synthetic_spectrum(200, seed=0).eigenvalues
    assert int((ev == 0).sum()) == 100 and int((ev < 0).sum()) == 2


def test_haar_orthogonal_has_the_sign_fix():
    # Without the fix, LAPACK's QR makes U[0, 0] = -|G_00| / ||g|| < 0 for every draw; Haar
    # matrices have U[0, 0] symmetric about 0 with E[U_00^2] = 1 / P.
    P, n = 6, 400
    g = torch.Generator().manual_seed(0)
    first = torch.stack([dc.haar_orthogonal(P, generator=g)[0, 0] for _ in range(n)])
    assert abs((first > 0).double().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(n)
    # Var(U_00^2) = 2 (P - 1) / (P^2 (P + 2)) for a uniform unit vector
    sd = math.sqrt(2 * (P - 1) / (P**2 * (P + 2)) / n)
    assert abs((first**2).mean().item() - 1 / P) < 5 * sd


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dc.wigner(0), "P must be"),
        (lambda: dc.wishart(10, 0), "T must be"),
        (lambda: dc.wishart(10, 5, sigma2=-1.0), "sigma2"),
        (lambda: dc.synthetic_spectrum(3), "P must be"),
        (lambda: dc.semicircle_density(0.0, radius=0.0), "radius"),
        (lambda: dc.marchenko_pastur_edges(-0.5), "q must be"),
        (lambda: dc.kolmogorov_distance([], dc.semicircle_cdf), "non-empty"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- limiting laws ---------------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [2.0, 2 * math.sqrt(225)])
def test_semicircle_integrates_to_one_with_the_right_moments(radius):
    lo, hi = dc.semicircle_edges(radius)
    assert (lo, hi) == (-radius, radius)
    mass = quad(lambda x: dc.semicircle_density(x, radius), lo, hi)[0]
    m2 = quad(lambda x: x * x * dc.semicircle_density(x, radius), lo, hi)[0]
    assert mass == pytest.approx(1.0, abs=1e-10)
    assert m2 == pytest.approx(radius**2 / 4, rel=1e-10)  # = 1 for M / sqrt(P)
    assert dc.semicircle_density(0.0) == pytest.approx(1 / math.pi)  # sqrt(4) / (2 pi)
    assert dc.semicircle_density(np.array([-2.5, 2.5])).tolist() == [0.0, 0.0]
    xs = np.linspace(lo * 1.1, hi * 1.1, 9)
    num = [quad(lambda t: dc.semicircle_density(t, radius), lo, min(max(x, lo), hi))[0] for x in xs]
    np.testing.assert_allclose(dc.semicircle_cdf(xs, radius), num, atol=1e-10)
    assert dc.wigner_radius(225) == radius or dc.wigner_radius(225, normalize=True) == radius


@pytest.mark.parametrize("q", [0.25, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("sigma2", [1.0, 2.5])
def test_marchenko_pastur_integrates_to_one_with_the_atom(q, sigma2):
    lo, hi = dc.marchenko_pastur_edges(q, sigma2)
    assert lo == pytest.approx(sigma2 * (1 - math.sqrt(q)) ** 2)
    assert hi == pytest.approx(sigma2 * (1 + math.sqrt(q)) ** 2)
    atom = dc.marchenko_pastur_atom(q)
    assert atom == pytest.approx(max(0.0, 1 - 1 / q))

    def f(x):
        return dc.marchenko_pastur_density(x, q, sigma2)

    cont = quad(f, lo, hi, limit=200)[0]
    assert cont == pytest.approx(min(1.0, 1 / q), abs=1e-9)
    assert cont + atom == pytest.approx(1.0, abs=1e-9)
    # moments of the whole law (the atom at 0 adds nothing): E = sigma2, E^2 = sigma2^2 (1 + q)
    m1 = quad(lambda x: x * f(x), lo, hi, limit=200)[0]
    m2 = quad(lambda x: x * x * f(x), lo, hi, limit=200)[0]
    assert m1 == pytest.approx(sigma2, rel=1e-8)
    assert m2 == pytest.approx(sigma2**2 * (1 + q), rel=1e-8)
    # the closed-form CDF matches the integral of the density (plus the atom at 0)
    xs = np.linspace(-0.1, hi * 1.05, 11)
    num = [atom * (x >= 0) + quad(f, lo, min(max(x, lo), hi), limit=200)[0] for x in xs]
    np.testing.assert_allclose(dc.marchenko_pastur_cdf(xs, q, sigma2), num, atol=1e-9)
    assert dc.marchenko_pastur_cdf(0.0, q, sigma2) == pytest.approx(atom)


def test_kolmogorov_distance_handles_atoms_exactly():
    # half the samples at the atom, half at the median of the continuous part of MP(q=2)
    q = 2.0
    cdf = lambda x: dc.marchenko_pastur_cdf(x, q)  # noqa: E731
    lo, hi = dc.marchenko_pastur_edges(q)
    median = float(
        lo + (hi - lo) * np.searchsorted(cdf(np.linspace(lo, hi, 200001)), 0.75) / 200000
    )
    samples = np.r_[np.zeros(50), np.full(50, median)]
    # F_n jumps 0 -> 0.5 at 0 (the law too) and 0.5 -> 1 at the median (the law is at 0.75)
    assert dc.kolmogorov_distance(samples, cdf) == pytest.approx(0.25, abs=1e-4)
    # a continuous law ignores nothing: the distance of 100 zeros to MP(q=2) is 1/2
    assert dc.kolmogorov_distance(np.zeros(100), cdf) == pytest.approx(0.5)


# -- empirical spectra vs the laws -----------------------------------------------------------------
def test_wigner_spectrum_matches_the_semicircle():
    P = 1000
    ev = eigvalsh(dc.wigner(P, seed=11, normalize=True))
    tw = P ** (-2 / 3)
    assert abs(ev.max() - 2) < 6 * tw and abs(ev.min() + 2) < 6 * tw
    ks = dc.kolmogorov_distance(ev, dc.semicircle_cdf)
    assert ks < KS_TOL
    # the same check would catch a 5 % error in the radius
    assert dc.kolmogorov_distance(ev, lambda x: dc.semicircle_cdf(x, 2.1)) > 1.5 * KS_TOL
    # unnormalised: the same spectrum times sqrt(P), law of radius 2 sqrt(P)
    ev_raw = eigvalsh(dc.wigner(P, seed=11))
    R = dc.wigner_radius(P)
    assert dc.kolmogorov_distance(ev_raw, lambda x: dc.semicircle_cdf(x, R)) == pytest.approx(ks)


@pytest.mark.parametrize("q", [0.5, 2.0])
def test_wishart_spectrum_matches_marchenko_pastur(q):
    P = 1000
    T = round(P / q)
    ev = eigvalsh(dc.wishart(P, T, seed=21))
    ev = np.where(np.abs(ev) <= 1e-10 * ev.max(), 0.0, ev)  # exact zeros came out as +-1e-15
    lo, hi = dc.marchenko_pastur_edges(q)
    s_lo, s_hi = johnstone_scales(P, T)
    nonzero = ev[ev > 0]
    assert abs(nonzero.max() - hi) < 6 * s_hi
    assert abs(nonzero.min() - lo) < 6 * s_lo
    assert np.mean(ev == 0) == pytest.approx(dc.marchenko_pastur_atom(q), abs=1e-12)
    ks = dc.kolmogorov_distance(ev, lambda x: dc.marchenko_pastur_cdf(x, q))
    assert ks < KS_TOL
    # a 10 % error in the scale sigma2 is detected (for q = 2 it moves only half the mass)
    bad = dc.kolmogorov_distance(ev, lambda x: dc.marchenko_pastur_cdf(x, q, 1.1))
    assert bad > 1.5 * KS_TOL
