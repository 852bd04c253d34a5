"""Mini-batch curvature extremes: Wishart batch Hessians of linear regression, the fit, the CLI.

For ``l(w) = 1/2 mean_i (w . x_i - y_i)^2`` the Hessian of a batch is ``H_B = X_B^T X_B / B``, a
Wishart matrix. With a spiked population covariance ``I + (ell - 1) u u^T`` its top eigenvalue
is an outlier at ``ell + ell gamma / (ell - 1)``, ``gamma = P / B`` (BBP): exactly the law
``a + c / B`` that the analysis fits.
"""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from _helpers import cli
from deepcurvature.analysis.batch_extremes import (
    BatchExtremesResult,
    batch_hessian_extremes,
    draw_batches,
    fit_batch_law,
)
from deepcurvature.plotting.batch_extremes import plot_batch_extremes

P, ELL, N = 100, 3.0, 8000
SIZES = [50, 100, 200, 400, 800]
M = 8


def _half_mse(f, y):
    return 0.5 * ((f - y) ** 2).mean()


@pytest.fixture(scope="module")
def wishart(one_thread):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(P, generator=g, dtype=torch.float64)
    u /= u.norm()
    spike = torch.randn(N, 1, generator=g, dtype=torch.float64) * (ELL - 1) ** 0.5
    X = torch.randn(N, P, generator=g, dtype=torch.float64) + spike * u
    y = torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(P, 1, bias=False).double()
    res = batch_hessian_extremes(
        model, _half_mse, (X, y), SIZES, batches_per_size=M, seed=1, tol=1e-6, verbose=False
    )
    exact = np.array(
        [
            [np.linalg.eigvalsh((X[i].T @ X[i] / len(i)).numpy())[[0, -1]] for i in rows]
            for rows in draw_batches(N, res.batch_sizes, M, 1)
        ]
    )
    full = np.linalg.eigvalsh((X.T @ X / N).numpy())[[0, -1]]
    return X, y, model, res, exact, full


def test_extremes_match_dense_eigvalsh(wishart):
    _, _, _, res, exact, full = wishart
    assert res.lambda_max.shape == res.lambda_min.shape == (len(SIZES), M)
    np.testing.assert_allclose(res.lambda_max, exact[..., 1], rtol=1e-6)
    np.testing.assert_allclose(res.lambda_min, exact[..., 0], rtol=0, atol=1e-5)
    assert res.full_lambda_max == pytest.approx(full[1], rel=1e-6)
    assert res.full_lambda_min == pytest.approx(full[0], rel=1e-5)
    # B < P: the batch matrix has rank B, so lambda_min = 0
    assert np.all(np.abs(res.lambda_min[0]) < 1e-6)
    assert res.info["converged"] and res.info["N"] == N and res.info["P"] == P


def test_fitted_law_matches_exact_extremes_and_bbp(wishart):
    _, _, _, res, exact, _ = wishart
    b = np.asarray(SIZES, dtype=float)
    fitted = res.predicted_lambda_max(b)
    # the fit against the exact batch means, within 5 %
    np.testing.assert_allclose(fitted, exact[..., 1].mean(axis=1), rtol=0.05)
    # ... and against the spiked Marcenko-Pastur (BBP) outlier ell + ell (P/B) / (ell - 1)
    bbp = ELL + ELL * (P / b) / (ELL - 1)
    np.testing.assert_allclose(fitted, bbp, rtol=0.05)
    a, c = res.fit_max
    assert a == res.full_lambda_max
    assert c == pytest.approx(ELL * P / (ELL - 1), rel=0.1)  # 150
    # the extremes grow in magnitude as B shrinks (the paper's theorem)
    assert np.all(np.diff(res.lambda_max_mean) < 0)
    # SGD learning rate 2 / lambda_max(B) grows with B, towards 2 / lambda_max(full)
    lr = res.sgd_lr()
    assert np.all(np.diff(lr) > 0) and lr[-1] < 2 / res.full_lambda_max
    np.testing.assert_allclose(lr, 2 / fitted)
    # Adam: sqrt(B / B0) lambda(B0) / lambda(B)
    rel = res.adam_lr_relative()
    np.testing.assert_allclose(rel, np.sqrt(b / b[0]) * fitted[0] / fitted)
    # the data passes: every product of a batch matrix costs B / N passes
    assert res.info["data_passes"] == pytest.approx(
        res.info["data_passes_batches"] + res.info["data_passes_full"]
    )
    assert 0 < res.info["data_passes_batches"] < res.info["n_matvec"] * max(SIZES) / N


def test_fit_batch_law_recovers_exact_law():
    b = np.array([10, 20, 40, 80, 1000])
    y = 2.0 + 30.0 * (1 / b - 1 / 1000)
    a, c = fit_batch_law(b, y, np.full(5, 0.1), 1000)
    assert (a, c) == pytest.approx((2.0, 30.0), rel=1e-12)
    a, c = fit_batch_law(b[:1], y[:1], np.zeros(1), 1000, intercept=2.0)
    assert (a, c) == pytest.approx((2.0, 30.0), rel=1e-12)
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        fit_batch_law(b[:1], y[:1], np.zeros(1), 1000)


def test_ggn_fit_intercept_save_load_plot(wishart, tmp_path):
    X, y, model, res, _, _ = wishart
    res2 = batch_hessian_extremes(
        model, _half_mse, (X[:2000], y[:2000]), [50, 200], matrix="ggn", batches_per_size=3,
        seed=2, intercept="fit", verbose=False,
    )  # fmt: skip
    assert res2.config["matrix"] == "ggn" and res2.config["intercept"] == "fit"
    assert res2.fit_max[0] != res2.full_lambda_max
    path = res.save(tmp_path / "bx")
    back = BatchExtremesResult.load(path)
    np.testing.assert_array_equal(back.lambda_max, res.lambda_max)
    assert back.fit_max == res.fit_max and back.summary() == res.summary()
    meta = json.loads((tmp_path / "bx.json").read_text())
    assert meta["kind"] == "BatchExtremesResult" and meta["summary"]["law"].startswith("lambda")
    for kind in ("lambda", "lr"):
        fig = plot_batch_extremes(res, kind=kind, show_min=True)
        assert fig.axes and fig.axes[0].get_title()
    import matplotlib.figure

    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    assert plot_batch_extremes(res, ax=ax) is fig


def test_bad_input(wishart):
    X, y, model, _, _, _ = wishart
    run = lambda data, sizes: batch_hessian_extremes(  # noqa: E731
        model, _half_mse, data, sizes, batches_per_size=1, verbose=False
    )
    with pytest.raises(ValueError, match="batch_sizes is empty"):
        run((X, y), [])
    with pytest.raises(ValueError, match="positive integers, got 0"):
        run((X, y), [0, 10])
    with pytest.raises(ValueError, match=f"larger than the data set \\(N = {N}"):
        run((X, y), [10, N + 1])
    with pytest.raises(ValueError, match="different lengths"):
        run((X, y[:-1]), [10])
    with pytest.raises(ValueError, match="unknown matrix"):
        batch_hessian_extremes(model, _half_mse, (X, y), [10], matrix="fisher")


def test_cli_batch_lr(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = tmp_path / "run"
    args = ["batch-lr", "--subsample", "200", "--train-epochs", "1", "--batches-per-size", "2"]
    proc = cli(*args, "--batch-sizes", "8", "32", "--tol", "1e-3", "--out", out, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "law: lambda_max(B)" in proc.stdout
    for name in ("batch_lr.npz", "batch_lr.json", "batch_lr.png"):
        assert (out / name).is_file()
    res = BatchExtremesResult.load(out / "batch_lr")
    assert res.batch_sizes.tolist() == [8, 32] and res.info["N"] == 200
    assert res.lambda_max_mean[0] > res.full_lambda_max > 0
    # a batch size larger than the data set: one line, exit status 2, nothing written
    bad = cli(*args, "--batch-sizes", "8", "500", "--out", tmp_path / "bad", env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "at most 200" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_batch_of_one_pass_keeps_its_forward_pass_between_the_products(monkeypatch):
    """On a chain with convolutions every batch operator records one forward pass for all of
    eigsh's products (``cache="forward"``), and the extremes equal autograd's route's."""
    from deepcurvature.operators import chain_products

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(12, 3),
    ).double().eval()  # fmt: skip
    recorded = []
    original = chain_products.record_forward

    def counted(layers, tensors, probes, inputs, **kw):
        recorded.append(inputs.shape[0])
        return original(layers, tensors, probes, inputs, **kw)

    monkeypatch.setattr(chain_products, "record_forward", counted)
    kw = {"batches_per_size": 3, "seed": 2, "tol": 1e-8, "verbose": False}
    res = batch_hessian_extremes(model, nn.functional.cross_entropy, (x, y), [5, 10], **kw)
    assert recorded.count(5) == recorded.count(10) == 3  # one per batch operator
    assert recorded.count(40) > 3 and res.info["n_matvec"] > 6 * 3  # the full data: not kept
    monkeypatch.setattr(chain_products, "ENABLED", False)  # autograd's products, no cache
    ref = batch_hessian_extremes(model, nn.functional.cross_entropy, (x, y), [5, 10], **kw)
    np.testing.assert_allclose(res.lambda_max, ref.lambda_max, rtol=1e-7)
    np.testing.assert_allclose(res.lambda_min, ref.lambda_min, rtol=1e-6, atol=1e-7)
