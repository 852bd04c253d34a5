"""Outliers of spiked random matrices: exactly r outliers at the known locations (BBP)."""

import numpy as np
import pytest
import torch

from deepcurvature.analysis.outliers import OutlierResult, outliers
from deepcurvature.linalg.density import SpectralDensity
from deepcurvature.linalg.eigsh import eigsh
from deepcurvature.linalg.lanczos import lanczos
from deepcurvature.rmt.ensembles import wigner, wishart

P, T = 400, 1600  # q = 1/4: MP bulk on [0.25, 2.25], BBP threshold 1 + sqrt(q) = 1.5
Q = P / T
ELLS = np.array([3.0, 5.0, 8.0])  # population spikes above the threshold
THETAS = np.array([2.0, 3.0, 5.0])  # additive spikes of a Wigner matrix (threshold 1)


def _spiked_covariance(P, T, ells, seed):
    """``X X^T / T`` with columns ``N(0, I + sum (l - 1) u u^T)``."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((P, len(ells))))
    L = np.linalg.cholesky(np.eye(P) + (U * (np.asarray(ells) - 1.0)) @ U.T)
    X = L @ rng.standard_normal((P, T))
    C = X @ X.T / T
    return (C + C.T) / 2


@pytest.fixture(scope="module")
def spiked_wishart():
    C = _spiked_covariance(P, T, ELLS, seed=0)
    return C, np.linalg.eigvalsh(C)


@pytest.fixture(scope="module")
def spiked_wigner():
    rng = np.random.default_rng(10)
    U, _ = np.linalg.qr(rng.standard_normal((500, 3)))
    M = wigner(500, seed=0, normalize=True).numpy() + (U * THETAS) @ U.T
    return M, np.linalg.eigvalsh(M)


@pytest.mark.parametrize("method", ["mp", "gap"])
def test_spiked_wishart_eigenvalues(spiked_wishart, method):
    _, exact = spiked_wishart
    res = outliers(exact, method)
    assert res.count == 3
    np.testing.assert_array_equal(res.values, exact[-3:])
    # BBP: a spike l > 1 + sqrt(q) puts an eigenvalue at l (1 + q / (l - 1)), ~3 % fluctuations
    np.testing.assert_allclose(res.values, ELLS * (1 + Q / (ELLS - 1)), rtol=0.1)
    assert res.upper_edge == pytest.approx((1 + np.sqrt(Q)) ** 2, rel=0.03)
    assert res.n_bulk == P - 3
    if method == "mp":
        assert res.fit["ratio"] == pytest.approx(Q, rel=0.05)
        assert res.fit["scale"] == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("method", ["semicircle", "gap"])
def test_spiked_wigner_eigenvalues(spiked_wigner, method):
    _, exact = spiked_wigner
    res = outliers(exact, method, side="both")
    assert res.count == 3
    np.testing.assert_array_equal(res.values, exact[-3:])
    np.testing.assert_allclose(res.values, THETAS + 1 / THETAS, atol=0.15)
    assert res.upper_edge == pytest.approx(2.0, abs=0.1)
    assert res.lower_edge == pytest.approx(-2.0, abs=0.1)
    # the same matrix negated: the outliers are on the left
    left = outliers(-exact, method, side="left")
    np.testing.assert_array_equal(left.values, np.sort(-exact[-3:]))


@pytest.mark.parametrize("method", ["mp", "gap"])
def test_spiked_wishart_lanczos_density(spiked_wishart, method):
    C, exact = spiked_wishart
    dens = lanczos(torch.as_tensor(C), 40, probes=3, seed=0, verbose=False).density()
    res = outliers(dens, method)
    assert res.count == 3  # the three probes' copies of each outlier merged
    np.testing.assert_allclose(res.values, exact[-3:], rtol=1e-8)
    np.testing.assert_array_equal(res.count_per_probe, [3, 3, 3])
    assert res.weights.shape == (3,) and res.mass == pytest.approx(res.weights.sum())
    assert 0.3 < res.count_from_mass < 10  # E[mass] = 3 / P; chi-square noise of 3 probes


def test_spiked_wigner_lanczos_density(spiked_wigner):
    M, exact = spiked_wigner
    dens = lanczos(torch.as_tensor(M), 40, probes=2, seed=0, verbose=False).density()
    res = outliers(dens, "semicircle")
    assert res.count == 3
    np.testing.assert_allclose(res.values, exact[-3:], rtol=1e-8)


def test_no_outliers_without_spikes():
    e = np.linalg.eigvalsh(wishart(P, T, seed=3).numpy())
    for method in ("mp", "gap"):
        assert outliers(e, method).count == 0
    e = np.linalg.eigvalsh(wigner(500, seed=3, normalize=True).numpy())
    for method in ("semicircle", "gap"):
        assert outliers(e, method, side="both").count == 0


def test_eigsh_result_top_of_the_spectrum():
    C = _spiked_covariance(100, 400, [8.0], seed=1)
    res = outliers(eigsh(C, 60, which="LA", seed=0, verbose=False))  # 2k + 1 > P: exact path
    assert res.count == 1
    assert res.values[0] == pytest.approx(np.linalg.eigvalsh(C)[-1], rel=1e-10)


def test_mp_ignores_the_atom_at_zero():
    # q = 2: half of the eigenvalues are exact zeros; a spike above the bulk
    C = _spiked_covariance(400, 200, [12.0], seed=2)
    e = np.linalg.eigvalsh(C)
    res = outliers(e, "mp")
    assert res.count == 1 and res.values[0] == e[-1]


def test_save_load_summary(spiked_wishart, tmp_path):
    C, _ = spiked_wishart
    dens = lanczos(torch.as_tensor(C), 30, probes=2, seed=1, verbose=False).density()
    res = outliers(dens, "gap")
    back = OutlierResult.load(res.save(tmp_path / "out"))
    assert back.summary() == res.summary()
    s = res.summary()
    assert s["count"] == 3 and len(s["values"]) == 3 and s["dim"] == P
    with pytest.raises(ValueError, match="not an outlier file"):
        OutlierResult.load(SpectralDensity(np.ones(2), np.ones(2) / 2).save(tmp_path / "d"))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown method"):
        outliers(np.arange(10.0), "biggest")
    with pytest.raises(ValueError, match="unknown side"):
        outliers(np.arange(10.0), side="up")
    with pytest.raises(ValueError, match="at least 3 values"):
        outliers(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="Marčenko–Pastur bulk is positive"):
        outliers(-np.arange(1.0, 20.0), "mp")
    with pytest.raises(ValueError, match="1-D array"):
        outliers(np.eye(3))


def test_plot(spiked_wishart):
    from deepcurvature.plotting.outliers import plot_outliers

    _, exact = spiked_wishart
    res = outliers(exact, "mp")
    fig = plot_outliers(res, exact)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("3 outliers" in t for t in labels)
