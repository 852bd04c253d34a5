"""Log-determinants by stochastic Lanczos quadrature and MaxEnt (issue 14, section 2)."""

import re

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from deepcurvature.linalg.lanczos import lanczos
from deepcurvature.linalg.logdet import LogdetResult, logdet
from deepcurvature.linalg.probes import draw_probes
from deepcurvature.operators import ggn
from deepcurvature.rmt import wigner, wishart


def check(result, exact, rel=0.01):
    """Relative error below ``rel`` and within 3 standard errors."""
    err = result.value - exact
    assert abs(err) <= 3 * result.standard_error, (result, exact)
    assert abs(err) <= rel * abs(exact), (result, exact)


def test_slq_per_probe_is_the_quadratic_form():
    """With m = P steps Gauss quadrature is exact: Gamma_l = v_l^T log(A + lam I) v_l."""
    rng = np.random.default_rng(0)
    B = rng.standard_normal((40, 60))
    A = B @ B.T / 60
    shift = 0.3
    res = logdet(torch.as_tensor(A), shift=shift, probes=3, steps=40, seed=5)
    V = draw_probes(40, 3, kind="rademacher", seed=5).numpy()
    L = scipy.linalg.logm(A + shift * np.eye(40)).real
    np.testing.assert_allclose(res.per_probe, np.einsum("kp,pq,kq->k", V, L, V), rtol=1e-9)
    assert res.products == 120 and res.method == "slq"
    assert res.value == pytest.approx(res.per_probe.mean())
    assert res.standard_error == pytest.approx(res.per_probe.std(ddof=1) / np.sqrt(3))


@pytest.fixture(scope="module")
def wishart_case():
    X = wishart(2000, 4000, seed=0)  # Marcenko-Pastur, q = 1/2
    shift = 1.0
    exact = np.linalg.slogdet(X.numpy() + shift * np.eye(2000))
    assert exact[0] == 1
    run = lanczos(X, 30, probes=30, seed=0, verbose=False)
    return run, shift, exact[1]


@pytest.mark.parametrize("method", ["slq", "maxent"])
def test_wishart_against_slogdet(wishart_case, method):
    run, shift, exact = wishart_case
    res = logdet(run, shift=shift, method=method)
    check(res, exact)
    assert res.n_probes == 30 and res.dim == 2000 and res.products == 900
    assert 0 < res.relative_standard_error < 0.01


@pytest.fixture(scope="module")
def ggn_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    X = torch.randn(256, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (256,))
    G = ggn(model, nn.CrossEntropyLoss(), [(X, y)]).to_dense()  # float64 (212, 212)
    A = 256 * G  # the GGN of the summed loss, as in a Laplace posterior
    prior_precision = 10.0
    exact = np.linalg.slogdet(A.numpy() + prior_precision * np.eye(A.shape[0]))
    assert exact[0] == 1
    return A, prior_precision, exact[1]


@pytest.mark.parametrize("method", ["slq", "maxent"])
def test_network_ggn_against_slogdet(ggn_case, method):
    A, prior_precision, exact = ggn_case
    res = logdet(A, shift=prior_precision, method=method, probes=30, steps=30, seed=0)
    check(res, exact)


def test_not_positive_definite_suggests_shift():
    W = wigner(300, seed=0, normalize=True)  # eigenvalues in [-2, 2]
    with pytest.raises(ValueError, match=r"not positive definite.*add shift=") as info:
        logdet(W, probes=4, steps=20, seed=0)
    suggested = float(re.search(r"add shift=([0-9.e+-]+)", str(info.value)).group(1))
    assert suggested > 1.9
    exact = np.linalg.slogdet(W.numpy() + (suggested + 0.2) * np.eye(300))[1]
    res = logdet(W, shift=suggested + 0.2, probes=30, steps=30, seed=0)
    check(res, exact, rel=0.05)


def test_files_and_summary(tmp_path, wishart_case):
    run, shift, _ = wishart_case
    res = logdet(run, shift=shift, method="maxent", n_moments=8)
    s = res.summary()
    assert s["method"] == "maxent" and s["shift"] == shift and s["probes"] == 30
    assert res.metadata["maxent"]["n_moments"] == 8
    back = LogdetResult.load(res.save(tmp_path / "ld"))
    assert back.value == res.value and back.standard_error == res.standard_error
    np.testing.assert_array_equal(back.per_probe, res.per_probe)
    assert back.metadata["support"] == res.metadata["support"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        logdet(torch.eye(5), method="exact")
    with pytest.raises(ValueError, match="shift"):
        logdet(torch.eye(5), shift=float("nan"))
