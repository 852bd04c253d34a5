"""dc.spectrum on plain operators and SpectrumResult files."""

import numpy as np
import pytest
import torch

import deepcurvature as dc


def test_spectrum_of_operator_roundtrips(tmp_path):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(60, 60, generator=g, dtype=torch.float64)
    A = (A + A.T) / 2
    res = dc.spectrum(A, steps=60, probes=2, seed=4, store_vectors=True, verbose=False)
    exact = np.linalg.eigvalsh(A.numpy())
    np.testing.assert_allclose(np.sort(res.ritz_values), exact, atol=1e-8 * np.abs(exact).max())
    assert res.ritz_vectors.shape == (60, 60)
    assert res.config["seed"] == 4 and res.info["P"] == 60
    s = res.summary()
    assert s["lambda_max"] == pytest.approx(exact.max(), rel=1e-9)
    path = res.save(tmp_path / "spec")
    back = dc.SpectrumResult.load(path)
    np.testing.assert_array_equal(back.density.nodes, res.density.nodes)
    np.testing.assert_array_equal(back.alphas[1], res.alphas[1])
    torch.testing.assert_close(back.ritz_vectors, res.ritz_vectors)
    assert back.config == res.config
    # the saved density is readable on its own too
    d = dc.SpectralDensity.load(path)
    assert d.dim == 60


def test_spectrum_rejects_operator_options_without_model():
    with pytest.raises(TypeError, match="only apply when a model is given"):
        dc.spectrum(torch.eye(3, dtype=torch.float64), steps=2, bn_mode="train", verbose=False)
    with pytest.raises(ValueError, match="needs loss_fn and data"):
        dc.spectrum(torch.nn.Linear(2, 2), steps=2, verbose=False)
