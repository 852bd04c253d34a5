"""Maximum-entropy spectral densities (issue 14, section 1) against exact references."""

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from matplotlib.figure import Figure
from numpy.polynomial import legendre as npleg

from deepcurvature.linalg.density import SpectralDensity
from deepcurvature.linalg.lanczos import lanczos
from deepcurvature.linalg.maxent import (
    MaxEntError,
    MaxEntResult,
    legendre_moments,
    maxent_density,
    maxent_from_quadrature,
    power_to_legendre_moments,
)
from deepcurvature.plotting.maxent import plot_maxent
from deepcurvature.rmt import (
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    semicircle_cdf,
    semicircle_density,
    wigner,
    wishart,
)


def sup_distance(result, cdf, lo, hi):
    """Kolmogorov distance between the MaxEnt CDF and a law's CDF on a fine grid."""
    x = np.linspace(lo, hi, 4001)
    return float(np.abs(result.cdf(x) - cdf(x)).max())


@pytest.fixture(scope="module")
def semicircle_density_slq():
    # moments from the Lanczos quadrature of 10 Rademacher probes x 30 steps (P = 2000)
    return lanczos(wigner(2000, seed=0, normalize=True), 30, probes=10, seed=1, verbose=False)


def test_recovers_semicircle(semicircle_density_slq):
    density = semicircle_density_slq.density()
    fit = density.maxent(10)
    assert fit.n_moments == 10 and fit.max_error <= 1e-8
    assert sup_distance(fit, semicircle_cdf, -2.5, 2.5) <= 0.02
    # the density itself: close to the semicircle inside the bulk
    x = np.linspace(-1.5, 1.5, 31)
    np.testing.assert_allclose(fit.pdf(x), semicircle_density(x), atol=0.03)


def test_recovers_marchenko_pastur():
    X = wishart(2000, 4000, seed=0)  # q = 1/2: no atom at 0
    density = lanczos(X, 30, probes=10, seed=1, verbose=False).density()
    fit = density.maxent(10)
    assert fit.max_error <= 1e-8
    assert sup_distance(fit, lambda x: marchenko_pastur_cdf(x, 0.5), 0.0, 3.5) <= 0.02
    x = np.linspace(0.5, 2.5, 21)
    np.testing.assert_allclose(fit.pdf(x), marchenko_pastur_density(x, 0.5), atol=0.05)


def two_bump_cdf(x):
    return 0.6 * scipy.stats.beta.cdf(x, 6, 14) + 0.4 * scipy.stats.beta.cdf(x, 16, 6)


def test_two_bump_spectrum():
    P = 2000
    grid = np.linspace(0.0, 1.0, 200_001)
    eig = np.interp((np.arange(P) + 0.5) / P, two_bump_cdf(grid), grid)  # exact quantiles
    density = lanczos(torch.diag(torch.as_tensor(eig)), 30, probes=10, seed=0, verbose=False)
    density = density.density()
    fit = density.maxent(10)
    assert sup_distance(fit, two_bump_cdf, 0.0, 1.0) <= 0.01
    # two modes (near 0.28 and 0.75) with a dip between them
    x = np.linspace(0.05, 0.95, 901)
    p = fit.pdf(x)
    peaks = x[1:-1][(p[1:-1] > p[:-2]) & (p[1:-1] > p[2:])]
    assert peaks.size == 2
    assert abs(peaks[0] - 0.28) < 0.05 and abs(peaks[1] - 0.76) < 0.05
    # two moments cannot: the Gaussian-like fit misses the bumps
    assert sup_distance(density.maxent(2), two_bump_cdf, 0.0, 1.0) > 0.03


def test_exact_exponential_family_two_bumps():
    """A bimodal density exp(quartic) is a MaxEnt density of 4 moments: recovered exactly."""
    support = (1.0, 3.0)
    lam = np.array([0.0, 0.3, 2.0, -0.2, -4.0])  # Legendre coefficients in t: two bumps
    t, w = scipy.special.roots_legendre(400)
    p_t = np.exp(npleg.legval(t, lam))
    p_t /= (w * p_t).sum()
    x = 2.0 + t  # map [-1, 1] -> [1, 3]
    power = np.array([(w * p_t * x**k).sum() for k in range(5)])
    fit = maxent_density(power, support)
    xs = np.linspace(1.0, 3.0, 201)
    # p_x(x) = p_t(x - 2): the map t = x - 2 has unit Jacobian
    exact = np.exp(npleg.legval(xs - 2.0, lam)) / (w * np.exp(npleg.legval(t, lam))).sum()
    np.testing.assert_allclose(fit.pdf(xs), exact, rtol=1e-8)
    np.testing.assert_allclose(fit.multipliers[1:], lam[1:], atol=1e-8)
    # the constraints hold in both bases
    assert fit.max_error <= 1e-8
    np.testing.assert_allclose([fit.moment(k) for k in range(5)], power, rtol=1e-10)


def test_moment_conversions_agree():
    rng = np.random.default_rng(0)
    nodes, weights = rng.uniform(-3.0, 5.0, 50), rng.uniform(0.0, 1.0, 50)
    weights /= weights.sum()
    support = (-3.5, 5.5)
    power = np.array([weights @ nodes**k for k in range(9)])
    np.testing.assert_allclose(
        power_to_legendre_moments(power, support),
        legendre_moments(nodes, weights, 8, support),
        rtol=0,
        atol=1e-11,
    )
    fit_q = maxent_from_quadrature(nodes, weights, 8, support)
    fit_p = maxent_density(power, support)
    np.testing.assert_allclose(fit_q.multipliers, fit_p.multipliers, atol=1e-7)
    # achieved power moments match the constraints to 1e-8 (relative)
    np.testing.assert_allclose([fit_q.moment(k) for k in range(9)], power, rtol=1e-8)


def test_pdf_cdf_consistency_and_files(tmp_path, semicircle_density_slq):
    fit = semicircle_density_slq.density().maxent(8)
    a, b = fit.support
    assert fit.cdf(a) == 0.0 and abs(fit.cdf(b) - 1.0) < 1e-12
    assert fit.pdf(a - 1.0) == 0.0 and fit.pdf(b + 1.0) == 0.0
    x = np.linspace(a, b, 101)
    F = fit.cdf(x)
    assert np.all(np.diff(F) >= 0)
    # cdf is the integral of pdf: compare with a fine trapezoid rule
    fine = np.linspace(a, 0.3, 20001)
    assert abs(np.trapezoid(fit.pdf(fine), fine) - fit.cdf(0.3)) < 1e-7
    s = fit.summary()
    assert s["n_moments"] == 8 and s["max_error"] <= 1e-8 and s["total_iterations"] > 0
    path = fit.save(tmp_path / "me")
    back = MaxEntResult.load(path)
    np.testing.assert_array_equal(back.multipliers, fit.multipliers)
    assert back.support == fit.support and back.iterations == fit.iterations
    np.testing.assert_array_equal(back.pdf(x), fit.pdf(x))
    assert back.metadata["dim"] == 2000


def test_two_atoms_raise_clear_error():
    # atoms at +-1/2 (mass 1/2 each): moments 1, 0, 1/4, 0, 1/16, ... lie on the boundary of the
    # moment cone from n = 4 on (E[(t^2 - 1/4)^2] = 0)
    power = [(0.5**k + (-0.5) ** k) / 2 for k in range(9)]
    with pytest.raises(MaxEntError, match=r"n = 4 moments.*n_moments <= 3") as info:
        maxent_density(power, (-1.0, 1.0))
    assert info.value.n == 4
    fit = maxent_density(power[:4], (-1.0, 1.0))  # three moments are fine
    assert fit.max_error <= 1e-8


def test_outside_moment_cone_raises():
    with pytest.raises(MaxEntError, match=r"n = 2 moments.*outside the moment cone"):
        maxent_density([1.0, 0.5, 0.2], (-1.0, 1.0))  # variance 0.2 - 0.25 < 0
    with pytest.raises(MaxEntError, match="outside the moment cone"):
        maxent_density([1.0, 2.0], (-1.0, 1.0))  # mean outside the support


def test_too_few_lanczos_nodes_raise(semicircle_density_slq):
    # one probe of 3 steps: 3 atoms carry at most 5 moments of a density
    run = lanczos(wigner(200, seed=0, normalize=True), 3, seed=2, verbose=False)
    with pytest.raises(MaxEntError, match=r"n = 6 moments.*n_moments <= 5"):
        run.density().maxent(10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="support"):
        maxent_density([1.0, 0.0, 0.3], (1.0, 1.0))
    with pytest.raises(ValueError, match="zeroth moment"):
        maxent_density([2.0, 0.0, 0.3], (-1.0, 1.0))
    with pytest.raises(ValueError, match="kind"):
        maxent_density([1.0, 0.0, 0.3], (-1.0, 1.0), kind="chebyshev")
    with pytest.raises(ValueError, match="outside the support"):
        maxent_from_quadrature(np.array([0.0, 2.0]), np.ones(2), 2, (-1.0, 1.0))
    with pytest.raises(ValueError, match="spread"):
        SpectralDensity(np.array([1.0, 1.0]), np.array([0.5, 0.5])).maxent(2)


def test_plot_maxent(semicircle_density_slq):
    density = semicircle_density_slq.density()
    fit = density.maxent(10)
    fig = plot_maxent(fit, density, reference=semicircle_density)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and hasattr(fig, "weight_axis")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), fit.pdf(ax.lines[0].get_xdata()))
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert plot_maxent(fit, ax=ax2, legend=False) is fig2
