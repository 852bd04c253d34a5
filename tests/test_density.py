"""SpectralDensity: moments, cdf, smoothing, summary and files."""

import json
import math

import numpy as np
import pytest

import deepcurvature as dc


def make_density():
    return dc.SpectralDensity(
        nodes=np.array([-1.0, 0.0, 2.0, 5.0]), weights=np.array([0.1, 0.4, 0.3, 0.2]), dim=100
    )


def test_moments_cdf_and_summary():
    d = make_density()
    assert d.moment(0) == pytest.approx(1.0)
    assert d.moment(1) == pytest.approx(-0.1 + 0.6 + 1.0)
    assert d.moment(2) == pytest.approx(0.1 + 1.2 + 5.0)
    assert d.cdf(-2) == 0.0
    assert d.cdf(0.0) == pytest.approx(0.5)
    np.testing.assert_allclose(d.cdf(np.array([1.0, 5.0])), [0.5, 1.0])
    s = d.summary()
    assert s["lambda_max"] == 5.0 and s["lambda_min"] == -1.0
    assert s["negative_mass"] == pytest.approx(0.1)
    assert s["mass_near_zero"] == pytest.approx(0.4)
    assert s["trace_estimate"] == pytest.approx(100 * 1.5)


def test_smoothing_integrates_to_one_and_biases_second_moment_by_sigma_squared():
    d = make_density()
    sigma = 0.3
    grid, dens = d.smooth(sigma, grid=np.linspace(-10, 15, 20001))
    dx = grid[1] - grid[0]
    assert np.sum(dens) * dx == pytest.approx(1.0, abs=1e-6)
    # Theorem 5: the first moment is unchanged, the second grows by sigma^2
    assert np.sum(dens * grid) * dx == pytest.approx(d.moment(1), abs=1e-6)
    assert np.sum(dens * grid**2) * dx == pytest.approx(d.moment(2) + sigma**2, abs=1e-5)
    with pytest.raises(ValueError, match="positive"):
        d.smooth(0.0)


def test_save_load_roundtrip(tmp_path):
    d = make_density()
    d.metadata["note"] = "x"
    path = d.save(tmp_path / "spec")
    assert path.name == "spec.npz"
    meta = json.loads((tmp_path / "spec.json").read_text())
    assert meta["summary"]["lambda_max"] == 5.0
    e = dc.SpectralDensity.load(tmp_path / "spec.npz")
    np.testing.assert_array_equal(e.nodes, d.nodes)
    np.testing.assert_array_equal(e.weights, d.weights)
    assert e.dim == 100 and e.metadata["note"] == "x"
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json", "spec.npz"]


def test_invalid_densities_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="sum to 1"):
        dc.SpectralDensity(np.array([1.0, 2.0]), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="non-negative"):
        dc.SpectralDensity(np.array([1.0, 2.0]), np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="differ in length"):
        dc.SpectralDensity(np.array([1.0]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="finite"):
        dc.SpectralDensity(np.array([math.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="needs the matrix dimension"):
        dc.SpectralDensity(np.array([1.0]), np.array([1.0])).trace_estimate()
    with pytest.raises(FileNotFoundError, match="no result file"):
        dc.SpectralDensity.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.ones(2))
    with pytest.raises(ValueError, match="not a spectral density file"):
        dc.SpectralDensity.load(tmp_path / "other.npz")
