"""Section 4 (Theorems 1 and 2) and Appendix B (Theorems 6, 7, Table 1) of the paper, checked
numerically against dense float64 references."""

import warnings

import numpy as np
import pytest
import torch

import deepcurvature as dc
from _helpers import rotate

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------- Theorem 1


@pytest.mark.parametrize("mu", [0.0, 3.5, -20.0])
def test_theorem_1_shift_and_sign_flip_learns_nothing_new(mu):
    """Lanczos on -H + mu I from the same start vector has T~ = -T + mu I."""
    rng = np.random.default_rng(0)
    H = rotate(rng.standard_normal(300) * 2 + 1, 1)
    v = torch.as_tensor(rng.standard_normal(300))
    m = 25
    res = dc.lanczos(H, m, start=v, verbose=False)
    shifted = dc.ShiftedOperator(dc.as_operator(H), scale=-1.0, shift=mu)
    res_s = dc.lanczos(shifted, m, start=v, verbose=False)
    scale = float(np.abs(np.linalg.eigvalsh(H.numpy())).max()) + abs(mu)
    # alpha~ = -alpha + mu, beta~ = beta: the tridiagonal matrix is -T + mu I
    np.testing.assert_allclose(res_s.alphas[0], -res.alphas[0] + mu, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(res_s.betas[0], res.betas[0], rtol=0, atol=1e-11 * scale)
    # Ritz values are exactly -theta + mu: no new eigenvalue of H is learned
    np.testing.assert_allclose(
        np.sort(res_s.ritz_values[0]),
        np.sort(-res.ritz_values[0] + mu),
        rtol=0,
        atol=1e-11 * scale,
    )
    # and the quadrature weights are carried along unchanged (reversed order)
    np.testing.assert_allclose(res_s.weights[0], res.weights[0][::-1], atol=1e-10)


# ------------------------------------------------------------------------------- Theorem 2


def test_theorem_2_ritz_values_are_not_the_top_m_eigenvalues():
    """sum_{i<=m} lambda_i < sum_{i>m} lambda_i: m Lanczos steps do not give the top m."""
    P, m = 600, 10
    rng = np.random.default_rng(3)
    d = rng.uniform(0, 1, P)  # PSD with a bulk: the condition of Theorem 2 holds
    H = rotate(d, 4)
    lam = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1]
    assert lam[:m].sum() < lam[m:].sum()

    res = dc.lanczos(H, m, seed=0, verbose=False)
    theta, w = res.ritz_values[0], res.weights[0]
    # the quadrature's first moment is v^T H v / v^T v ~ tr(H) / P, far below lambda_m,
    # so (weights being positive) Ritz values must lie deep inside the spectrum
    assert np.sum(w * theta) < lam[m - 1]
    assert np.sum(w * theta) == pytest.approx(lam.mean(), rel=0.1)
    in_top_m = np.sum(theta >= lam[m - 1] - 1e-12)
    assert in_top_m <= 2  # at most the extreme one or two
    assert np.sum(theta < np.median(lam)) >= m // 3  # many lie in the lower half of the spectrum
    # a method that converges to eigenpairs finds the top m
    top = dc.eigsh(H, m, seed=0, verbose=False)
    np.testing.assert_allclose(np.sort(top.values)[::-1], lam[:m], rtol=0, atol=1e-8)
    assert top.converged


# ---------------------------------------------------------------------- Table 1 (Thms 6, 7)

GAPS = (1.5, 1.1, 1.01)
STEPS = (5, 10, 15, 20)
# The paper's Table 1 (from Golub & Van Loan): L_{m-1} / R_{m-1} for lambda_n = 0.
PAPER_TABLE = {
    1.5: [(1.1e-4, 3.9e-2), (2e-10, 6.8e-4), (3.9e-16, 1.2e-5), (7.4e-22, 2.0e-7)],
    1.1: [(2.7e-2, 4.7e-1), (5.5e-5, 1.8e-1), (1.1e-7, 6.9e-2), (2.1e-10, 2.7e-2)],
    1.01: [(5.6e-1, 9.2e-1), (1.0e-1, 8.4e-1), (1.5e-2, 7.6e-1), (2.0e-3, 6.9e-1)],
}


def chebyshev(n, x):
    """T_n(x) for x >= 1."""
    return np.cosh(n * np.arccosh(x))


def lanczos_term(gap, m, lam_n=0.0):
    """L_{m-1} = 1 / c_{m-1}(1 + 2 rho_1)^2 of equation 21 (lambda_2 = 1, lambda_1 = gap)."""
    rho = (gap - 1.0) / (1.0 - lam_n)
    return 1.0 / chebyshev(m - 1, 1.0 + 2.0 * rho) ** 2


def power_term(gap, m):
    """R_{m-1} = (lambda_2 / lambda_1)^{2(m-1)} of equation 22, as tabulated."""
    return (1.0 / gap) ** (2 * (m - 1))


def test_table_1_lanczos_bound_is_always_closer_than_power_iteration():
    ratios = np.zeros((len(GAPS), len(STEPS)))
    for a, gap in enumerate(GAPS):
        for b, m in enumerate(STEPS):
            L, R = lanczos_term(gap, m), power_term(gap, m)
            paper_L, paper_R = PAPER_TABLE[gap][b]
            # the table is printed with two significant digits
            assert L == pytest.approx(paper_L, rel=0.06)
            assert R == pytest.approx(paper_R, rel=0.06)
            assert L < R  # Lanczos's lower bound is always closer to lambda_1
            ratios[a, b] = L / R
    assert np.all(np.diff(ratios, axis=1) < 0)  # the advantage grows with m ...
    assert np.all(np.diff(ratios, axis=0) > 0)  # ... and shrinks as the gap closes


@pytest.mark.parametrize("gap", GAPS)
def test_actual_lanczos_beats_power_iteration_at_equal_products(gap):
    """diag(gap, 1, U[0, 1], 0): same start vector and m products for both methods."""
    P = 300
    rng = np.random.default_rng(7)
    d = np.concatenate([[gap, 1.0], rng.uniform(0.0, 1.0, P - 3), [0.0]])
    H = torch.diag(torch.as_tensor(d))
    v = torch.as_tensor(rng.standard_normal(P))
    cos2 = float(v[0] ** 2 / (v @ v))
    tan2 = (1 - cos2) / cos2
    lam1, lam_n = gap, 0.0
    prev_lanczos = np.inf
    for m in STEPS:
        lz = dc.lanczos(H, m, start=v, verbose=False)
        err_lanczos = lam1 - lz.ritz_values[0].max()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tol=0: run exactly m products
            pw = dc.power_iteration(H, 1, tol=0.0, max_iters=m, start=v, verbose=False)
        assert pw.n_matvec == m + 1  # m iterations and the final residual check
        err_power = lam1 - pw.values[0]
        # both are lower bounds of lambda_1 (Rayleigh quotients) within their theorem's bound
        assert -1e-13 <= err_lanczos <= (lam1 - lam_n) * tan2 * lanczos_term(gap, m) + 1e-13
        assert -1e-13 <= err_power <= (lam1 - lam_n) * tan2 * power_term(gap, m) + 1e-13
        assert err_lanczos < err_power
        assert err_lanczos <= prev_lanczos + 1e-14
        prev_lanczos = err_lanczos
    if gap >= 1.1:  # a visible gap: Lanczos is orders of magnitude closer after 20 products
        assert err_lanczos < 1e-3 * err_power
