"""Spacing ratios and local statistics against GOE and Poisson references."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from deepcurvature.analysis.local_statistics import (
    GOE_MEAN_RATIO,
    GOE_SURMISE_MEAN_RATIO,
    MIN_WINDOW,
    POISSON_MEAN_RATIO,
    LocalStatistics,
    goe_ratio_cdf,
    goe_ratio_density,
    local_statistics,
    poisson_ratio_cdf,
    poisson_ratio_density,
    select_window,
    spacing_ratios,
)
from deepcurvature.linalg.density import SpectralDensity
from deepcurvature.linalg.eigsh import eigsh
from deepcurvature.rmt.ensembles import wigner

P = 2000


@pytest.fixture(scope="module")
def goe():
    """Eigenvalues of a P = 2000 GOE-class (Wigner) matrix, float64."""
    return torch.linalg.eigvalsh(wigner(P, seed=1)).numpy()


def test_spacing_ratios_by_hand():
    # spacings 1, 2, 4, 1 -> ratios 1/2, 2/4, 1/4 (any order of the input)
    r = spacing_ratios(np.array([7.0, 0.0, 1.0, 3.0, 8.0]))
    np.testing.assert_allclose(r, [0.5, 0.5, 0.25])
    # scale and shift invariant
    np.testing.assert_allclose(spacing_ratios(np.array([0.0, 3.0, 9.0, 21.0]) * 5 - 2), [0.5, 0.5])


def test_laws_are_normalised_with_the_stated_means():
    for dens, cdf, mean in (
        (goe_ratio_density, goe_ratio_cdf, GOE_SURMISE_MEAN_RATIO),
        (poisson_ratio_density, poisson_ratio_cdf, POISSON_MEAN_RATIO),
    ):
        assert integrate.quad(dens, 0, 1)[0] == pytest.approx(1.0, abs=1e-12)
        assert integrate.quad(lambda r, d=dens: r * d(r), 0, 1)[0] == pytest.approx(mean, abs=1e-10)
        for x in (0.0, 0.1, 0.37, 0.8, 1.0):  # the closed-form CDFs are the integrals
            assert cdf(x) == pytest.approx(integrate.quad(dens, 0, x)[0], abs=1e-12)
    assert GOE_SURMISE_MEAN_RATIO == pytest.approx(0.53590, abs=1e-5)
    assert POISSON_MEAN_RATIO == pytest.approx(0.38629, abs=1e-5)


def test_goe_matrix_is_goe(goe):
    res = local_statistics(goe)
    assert res.eigenvalues.size == 1600 and res.ratios.size == 1598  # 10 % dropped at each end
    assert res.mean == pytest.approx(0.53, abs=0.01)
    assert abs(res.mean - GOE_MEAN_RATIO) < 3 * res.stderr
    assert 0.004 < res.stderr < 0.012  # ~ 0.29 / sqrt(1598) x correlation
    assert res.ks_goe < 0.05 < 0.2 < res.ks_poisson
    assert res.closer_to == "GOE"


def test_diagonal_random_matrix_is_poisson():
    # independent levels; +-0.01 is ~1.2 standard errors at P = 2000 (the 3 SE check is the law)
    d = torch.rand(P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = local_statistics(torch.diag(d))  # the dense path of a matrix
    assert res.metadata["source"] == "dense"
    assert res.mean == pytest.approx(0.386, abs=0.01)
    assert abs(res.mean - POISSON_MEAN_RATIO) < 3 * res.stderr
    assert res.ks_poisson < 0.05 < 0.2 < res.ks_goe
    assert res.closer_to == "Poisson"


def test_stderr_is_calibrated():
    # the spread of the means of independent matrices matches the batch-means standard error
    runs = [local_statistics(np.linalg.eigvalsh(wigner(300, seed=s).numpy())) for s in range(12)]
    means = np.array([r.mean for r in runs])
    se = np.mean([r.stderr for r in runs])
    assert 0.5 * se < means.std(ddof=1) < 2.0 * se


def test_window_rule():
    values = np.arange(100.0) ** 1.5
    kept, info = select_window(values, trim=0.1)
    np.testing.assert_array_equal(kept, values[10:90])
    assert info["n_trimmed"] == 10 and info["n_window"] == 80
    kept, info = select_window(values, trim=0.0, window=(None, values[60]))
    np.testing.assert_array_equal(kept, values[:61])


def test_operator_with_k_uses_eigsh_values():
    A = wigner(120, seed=5)  # k = 63 >= 2k + 1 > P: eigsh's exact path (the plumbing, quickly)
    res = local_statistics(A, k=63, which="SA", seed=0)
    ref = np.sort(np.linalg.eigvalsh(A.numpy()))[:63]
    np.testing.assert_allclose(res.eigenvalues, ref[6:57], rtol=0, atol=1e-9)
    assert res.metadata["source"] == "eigsh" and res.metadata["k"] == 63
    # an EigshResult directly
    res2 = local_statistics(eigsh(A, 63, which="SA", seed=0, verbose=False))
    np.testing.assert_allclose(res2.ratios, res.ratios, atol=1e-9)
    # a spectral density is refused: Ritz values are not eigenvalues
    with pytest.raises(TypeError, match="Ritz values"):
        local_statistics(SpectralDensity(np.arange(100.0), np.full(100, 0.01)))


def test_too_few_eigenvalues_says_how_many():
    with pytest.raises(ValueError, match=r"at least 50 eigenvalues in the window.*at least 63"):
        local_statistics(np.arange(40.0) ** 1.1)
    with pytest.raises(ValueError, match="at least 3 eigenvalues"):
        spacing_ratios([1.0, 2.0])
    assert MIN_WINDOW == 50


def test_bad_input():
    with pytest.raises(ValueError, match="0/0"):
        spacing_ratios([0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="trim"):
        local_statistics(np.arange(100.0), trim=0.5)
    with pytest.raises(ValueError, match="finite"):
        local_statistics(np.array([1.0, np.nan] * 40))
    with pytest.raises(ValueError, match="k applies"):
        local_statistics(np.arange(100.0), k=10)


def test_save_load_summary(goe, tmp_path):
    res = local_statistics(goe[::4])
    path = res.save(tmp_path / "ls")
    back = LocalStatistics.load(path)
    np.testing.assert_array_equal(back.ratios, res.ratios)
    assert back.summary() == res.summary()
    s = res.summary()
    assert s["goe_mean"] == GOE_MEAN_RATIO and math.isfinite(s["z_goe"])
    assert "batch means" in s["stderr_method"]
    with pytest.raises(ValueError, match="not a local-statistics file"):
        LocalStatistics.load(SpectralDensity(np.ones(2), np.ones(2) / 2).save(tmp_path / "d"))


def test_plot(goe):
    from deepcurvature.plotting.local_statistics import plot_local_statistics

    fig = plot_local_statistics(local_statistics(goe))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("GOE" in t for t in labels) and any("Poisson" in t for t in labels)
