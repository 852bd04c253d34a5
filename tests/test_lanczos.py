"""Lanczos and SLQ against exact dense float64 references."""

import numpy as np
import pytest
import torch

import deepcurvature as dc


def random_symmetric(P, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, P, generator=g, dtype=torch.float64)
    return ((A + A.T) / 2).to(dtype)


@pytest.mark.parametrize("P", [1, 2, 7, 50, 200])
def test_full_steps_reproduce_exact_eigenvalues(P):
    A = random_symmetric(P, seed=P)
    res = dc.lanczos(A, steps=P, seed=3, verbose=False)
    exact = np.linalg.eigvalsh(A.numpy())
    theta = np.sort(res.ritz_values[0])
    assert theta.shape == exact.shape
    scale = np.abs(exact).max()
    np.testing.assert_allclose(theta, exact, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize(("P", "m", "probes"), [(60, 20, 1), (120, 40, 3), (40, 40, 2)])
def test_decomposition_identity_and_orthogonality(P, m, probes):
    A = random_symmetric(P, seed=11)
    res = dc.lanczos(A, steps=m, probes=probes, seed=5, store_vectors=True, verbose=False)
    for i in range(probes):
        Q = res.basis[i]
        T = torch.as_tensor(res.tridiagonal(i))
        r = res.residuals[i]
        # A Q = Q T + r e_m^T
        E = A @ Q - Q @ T
        E[:, -1] -= r
        assert E.abs().max().item() <= 1e-10 * torch.linalg.matrix_norm(A, 2).item()
        eye = torch.eye(Q.shape[1], dtype=torch.float64)
        assert (Q.T @ Q - eye).abs().max().item() <= 1e-10
        assert torch.linalg.vector_norm(r).item() == pytest.approx(res.residual_norms[i])
        # Ritz vectors are Q S and satisfy A y - theta y = r * s_m
        Y = res.ritz_vectors[i]
        assert torch.allclose(Y.T @ Y, eye, atol=1e-10)


@pytest.mark.parametrize("m", [3, 10, 25])
def test_gauss_quadrature_is_exact_to_degree_2m_minus_1(m):
    P = 80
    A = random_symmetric(P, seed=2) / 5
    v = torch.randn(P, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    res = dc.lanczos(A, steps=m, start=v, verbose=False)
    theta, w = res.ritz_values[0], res.weights[0]
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    x = v.clone()
    vv = (v @ v).item()
    for k in range(0, 2 * m):
        exact = (v @ x).item() / vv  # v^T A^k v / v^T v
        quad = float(np.sum(w * theta**k))
        assert quad == pytest.approx(exact, rel=1e-8, abs=1e-12 * abs(exact) + 1e-300)
        x = A @ x


def test_quadrature_fails_beyond_degree_2m_minus_1():
    # the 2m-th moment is NOT matched in general: the exactness test above can fail
    P, m = 80, 5
    A = random_symmetric(P, seed=2) / 5
    v = torch.randn(P, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    res = dc.lanczos(A, steps=m, start=v, verbose=False)
    exact = (v @ torch.linalg.matrix_power(A, 2 * m) @ v).item() / (v @ v).item()
    quad = float(np.sum(res.weights[0] * res.ritz_values[0] ** (2 * m)))
    assert abs(quad - exact) > 1e-6 * abs(exact)


def test_probes_share_one_matmat_per_step():
    A = random_symmetric(30, seed=1)
    calls = []

    def mm(V):
        calls.append(V.shape[1])
        return A @ V

    op = dc.as_operator(mm, shape=(30, 30), batched=True)
    res = dc.lanczos(op, steps=8, probes=4, seed=0, verbose=False)
    assert calls == [4] * 8
    # each probe is an independent recurrence: equal to running it alone
    single = dc.lanczos(
        A, steps=8, start=torch.as_tensor(dc.draw_probes(30, 4, seed=0)[2]), verbose=False
    )
    np.testing.assert_allclose(res.alphas[2], single.alphas[0], rtol=1e-12)
    np.testing.assert_allclose(res.betas[2], single.betas[0], rtol=1e-12)


def test_density_averages_probes_equation_25():
    A = random_symmetric(50, seed=4)
    res = dc.lanczos(A, steps=10, probes=3, seed=1, verbose=False)
    d = res.density()
    assert d.nodes.size == 30
    assert d.weights.sum() == pytest.approx(1.0, abs=1e-12)
    for i in range(3):
        np.testing.assert_allclose(d.weights[d.probe_index == i], res.weights[i] / 3, rtol=1e-12)
    # SLQ first moment is an unbiased trace estimate; check the combination formula
    pairs = zip(res.weights, res.ritz_values, strict=True)
    assert d.trace_estimate() == pytest.approx(
        50 * np.mean([np.sum(w * t) for w, t in pairs]), rel=1e-12
    )


def test_breakdown_on_low_rank_matrix_stops_cleanly():
    P, r = 100, 4
    X = torch.randn(P, r, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A = X @ X.T
    res = dc.lanczos(A, steps=30, probes=2, seed=0, verbose=False)
    exact_nonzero = np.linalg.eigvalsh((X.T @ X).numpy())
    for i in range(2):
        assert res.broke_down[i]
        # Krylov space: r eigenvectors plus the null-space component of the start vector
        assert res.steps_done[i] == r + 1
        theta = np.sort(res.ritz_values[i])
        assert np.all(np.isfinite(theta))
        np.testing.assert_allclose(theta[1:], exact_nonzero, rtol=1e-9)
        assert abs(theta[0]) < 1e-9 * exact_nonzero.max()
        assert res.weights[i].sum() == pytest.approx(1.0, abs=1e-12)
    d = res.density()
    # the null space holds (P - r)/P of the mass in expectation; one probe is close to it
    assert d.mass_near_zero() == pytest.approx((P - r) / P, abs=0.05)


def test_breakdown_on_identity_gives_one_node():
    res = dc.lanczos(torch.eye(20, dtype=torch.float64) * 3, steps=5, seed=0, verbose=False)
    assert res.steps_done == [1]
    assert res.ritz_values[0] == pytest.approx([3.0])


def test_steps_larger_than_dimension_are_clamped_with_warning():
    A = random_symmetric(6, seed=0)
    with pytest.warns(UserWarning, match="exceeds the dimension"):
        res = dc.lanczos(A, steps=50, seed=0, verbose=False)
    assert res.steps == 6


def test_same_seed_same_result_and_seed_recorded():
    A = random_symmetric(40, seed=0)
    a = dc.lanczos(A, steps=10, seed=123, verbose=False)
    b = dc.lanczos(A, steps=10, seed=123, verbose=False)
    np.testing.assert_array_equal(a.alphas[0], b.alphas[0])
    c = dc.lanczos(A, steps=10, verbose=False)
    assert isinstance(c.seed, int)
    d = dc.lanczos(A, steps=10, seed=c.seed, verbose=False)
    np.testing.assert_array_equal(c.alphas[0], d.alphas[0])


def test_float32_operator_keeps_float64_scalars():
    A = random_symmetric(100, seed=8)
    res32 = dc.lanczos(A.float(), steps=100, seed=0, verbose=False)
    assert res32.alphas[0].dtype == np.float64
    exact = np.linalg.eigvalsh(A.numpy())
    np.testing.assert_allclose(
        np.sort(res32.ritz_values[0]), exact, atol=1e-4 * np.abs(exact).max()
    )
    res = dc.lanczos(A.float(), steps=100, seed=0, basis_dtype=torch.float64, verbose=False)
    assert res.steps_done == [100]


def test_gaussian_probes_and_rademacher_differ():
    A = random_symmetric(30, seed=0)
    a = dc.lanczos(A, steps=5, seed=0, probe="gaussian", verbose=False)
    b = dc.lanczos(A, steps=5, seed=0, probe="rademacher", verbose=False)
    assert not np.allclose(a.alphas[0], b.alphas[0])
    with pytest.raises(ValueError, match="unknown probe kind"):
        dc.lanczos(A, steps=5, probe="uniform", verbose=False)


def test_bad_input_errors():
    A = random_symmetric(10, seed=0)
    with pytest.raises(ValueError, match="non-zero start"):
        dc.lanczos(A, steps=3, start=torch.zeros(10, dtype=torch.float64), verbose=False)
    with pytest.raises(ValueError, match="start must have shape"):
        dc.lanczos(A, steps=3, start=torch.ones(11, dtype=torch.float64), verbose=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        dc.lanczos(A, steps=0, verbose=False)
    with pytest.raises(ValueError, match="not symmetric"):
        dc.lanczos(torch.triu(A), steps=3, verbose=False)

    def bad(v):
        out = A @ v
        if calls.append(1) or len(calls) >= 3:
            out[0] = float("nan")
        return out

    calls = []
    op = dc.as_operator(bad, shape=(10, 10))
    with pytest.raises(FloatingPointError, match="step 3"):
        dc.lanczos(op, steps=5, seed=0, verbose=False)
