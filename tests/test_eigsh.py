"""eigsh (thick-restart Lanczos) and power iteration against dense float64 eigendecompositions."""

import warnings

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

import deepcurvature as dc
from _helpers import rotate

TOL = 1e-8


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_section_6_4(seed=0, P=1000):
    """The paper's section 6.4 matrix: 470 U[0,15], 20 U[0,60], 10 U[-10,0], the rest zero."""
    rng = np.random.default_rng(seed)
    d = np.zeros(P)
    d[:470] = rng.uniform(0, 15, 470)
    d[470:490] = rng.uniform(0, 60, 20)
    d[490:500] = rng.uniform(-10, 0, 10)
    return rotate(d, seed + 1)


def wigner(P, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, P, generator=g, dtype=torch.float64)
    return (X + X.T) / np.sqrt(2 * P)


def random_spectrum(P, seed):
    rng = np.random.default_rng(seed)
    return rotate(rng.standard_normal(P) * np.linspace(0.5, 3, P), seed)


MATRICES = {
    "random150": lambda: random_spectrum(150, 3),
    "wigner400": lambda: wigner(400, 4),
    "synthetic1000": lambda: synthetic_section_6_4(0),
}
_CACHE = {}


def matrix(name):
    if name not in _CACHE:
        A = MATRICES[name]()
        _CACHE[name] = (A, np.linalg.eigvalsh(A.numpy()))
    return _CACHE[name]


def expected_values(evals, k, which):
    """The k wanted eigenvalues of the dense spectrum, ascending (scipy's convention)."""
    s = np.sort(evals)
    if which == "LA":
        out = s[-k:]
    elif which == "SA":
        out = s[:k]
    elif which == "LM":
        out = evals[np.argsort(-np.abs(evals), kind="stable")[:k]]
    else:
        out = np.concatenate([s[: k // 2], s[len(s) - (k + 1) // 2 :]])
    return np.sort(out)


def true_residuals(A, res):
    U = res.vectors.double()
    return torch.linalg.vector_norm(A @ U - U * torch.as_tensor(res.values), dim=0).numpy()


def check_result(A, evals, res, k, which, tol=TOL):
    exact = expected_values(evals, k, which)
    scale = np.abs(evals).max()
    assert res.values.shape == (k,)
    assert res.vectors.shape == (A.shape[0], k)
    assert np.all(np.diff(res.values) >= 0), "values must be ascending"
    np.testing.assert_allclose(res.values, exact, rtol=0, atol=1e-8 * scale)
    # residual_norms are the true residuals, and they meet the criterion
    mine = true_residuals(A, res)
    np.testing.assert_allclose(res.residual_norms, mine, rtol=1e-6, atol=1e-13 * scale)
    bound = max(tol * np.abs(res.values).max(), 10 * np.sqrt(A.shape[0]) * 2.3e-16 * scale)
    assert mine.max() <= bound
    U = res.vectors.double()
    assert torch.allclose(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-8)
    assert res.converged


@pytest.mark.parametrize("name", list(MATRICES))
@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
@pytest.mark.parametrize("k", [1, 5])
def test_eigsh_matches_dense_eigvalsh(name, which, k):
    A, evals = matrix(name)
    res = dc.eigsh(A, k, which=which, tol=TOL, seed=7, verbose=False)
    check_result(A, evals, res, k, which)
    assert res.method == "thick-restart Lanczos"
    assert res.n_matvec <= 100 * min(A.shape[0], max(2 * k + 1, 20))


class CountingOperator(dc.LinearOperator):
    """Counts the operator columns applied."""

    def __init__(self, A):
        super().__init__(tuple(A.shape), A.dtype, A.device, symmetric=True)
        self.A, self.count = A, 0

    def _matmat(self, V):
        self.count += V.shape[1]
        return self.A @ V


def test_n_matvec_counts_every_column_including_the_final_check():
    A, evals = matrix("random150")
    op = CountingOperator(A)
    res = dc.eigsh(op, 4, which="LA", seed=1, verbose=False)
    assert res.n_matvec == op.count
    assert res.n_restarts >= 1  # the default ncv=20 cannot hold the answer without restarting
    check_result(A, evals, res, 4, "LA")


def test_no_more_operator_applications_than_arpack_on_the_synthetic_matrix():
    A, _ = matrix("synthetic1000")
    for k in (1, 5):
        ncv = max(2 * k + 1, 20)
        v0 = np.random.default_rng(k).standard_normal(A.shape[0])
        count = [0]
        An = A.numpy()

        def mv(x, An=An, count=count):
            count[0] += 1
            return An @ x

        lop = scipy.sparse.linalg.LinearOperator(An.shape, matvec=mv, dtype=np.float64)
        scipy.sparse.linalg.eigsh(lop, k, which="LA", tol=TOL, ncv=ncv, v0=v0)
        ours = dc.eigsh(A, k, ncv=ncv, tol=TOL, start=torch.as_tensor(v0), verbose=False)
        assert ours.converged
        # ours includes the k products of the final residual check, ARPACK's count does not
        assert ours.n_matvec <= count[0] + k


def test_low_rank_matrix_takes_the_breakdown_path():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    A = torch.as_tensor(X @ X.T)
    evals = np.linalg.eigvalsh(A.numpy())
    for which in ["LA", "SA", "LM", "BE"]:
        for k in (1, 5):
            op = CountingOperator(A)
            res = dc.eigsh(op, k, which=which, seed=2, verbose=False)
            check_result(A, evals, res, k, which)
            # the Krylov space is exhausted after 4 steps; no restart is needed
            assert res.n_restarts == 0
            assert res.n_matvec == op.count <= 20 + k
    # SA: the three non-zero eigenvalues must not be mistaken for the smallest ones
    res = dc.eigsh(A, 5, which="SA", seed=2, verbose=False)
    assert np.abs(res.values).max() <= 1e-10 * evals.max()


def test_identity_breaks_down_immediately():
    A = torch.eye(50, dtype=torch.float64) * 3.0
    res = dc.eigsh(A, 3, seed=0, verbose=False)
    np.testing.assert_allclose(res.values, 3.0, rtol=1e-14)
    assert res.converged


def test_repeated_top_eigenvalue():
    rng = np.random.default_rng(5)
    d = rng.uniform(0, 5, 300)
    d[:3] = 10.0
    A = rotate(d, 6)
    evals = np.linalg.eigvalsh(A.numpy())
    for k in (1, 3, 5):
        res = dc.eigsh(A, k, seed=0, verbose=False)
        check_result(A, evals, res, k, "LA")
    assert np.sum(np.isclose(res.values, 10.0, rtol=1e-10)) == 3


@pytest.mark.parametrize(("P", "k"), [(1, 1), (6, 2), (12, 5), (15, 15)])
def test_small_dimension_is_solved_exactly(P, k):
    A = random_spectrum(P, P)
    evals = np.linalg.eigvalsh(A.numpy())
    for which in ["LA", "SA", "LM", "BE"]:
        res = dc.eigsh(A, k, which=which, seed=0, verbose=False)
        assert res.method == "dense"
        assert res.n_matvec == P + k
        check_result(A, evals, res, k, which)


def test_k_close_to_p_uses_the_iterative_path():
    A = random_spectrum(40, 9)
    evals = np.linalg.eigvalsh(A.numpy())
    res = dc.eigsh(A, 15, which="SA", seed=0, verbose=False)  # ncv = 31 < 40
    assert res.method == "thick-restart Lanczos"
    check_result(A, evals, res, 15, "SA")


def test_minimal_ncv_and_custom_ncv():
    A, evals = matrix("random150")
    for ncv in (4, 40):
        res = dc.eigsh(A, 3, which="LM", ncv=ncv, seed=0, max_steps=5000, verbose=False)
        check_result(A, evals, res, 3, "LM")


def test_seeded_results_are_deterministic():
    A, _ = matrix("wigner400")
    a = dc.eigsh(A, 3, seed=11, verbose=False)
    b = dc.eigsh(A, 3, seed=11, verbose=False)
    c = dc.eigsh(A, 3, seed=12, verbose=False)
    assert a.seed == 11
    np.testing.assert_array_equal(a.values, b.values)
    assert torch.equal(a.vectors, b.vectors)
    assert a.n_matvec == b.n_matvec and a.n_restarts == b.n_restarts
    assert not torch.equal(a.vectors, c.vectors)  # another start vector, another path
    r = dc.eigsh(A, 3, verbose=False)
    assert isinstance(r.seed, int)
    np.testing.assert_array_equal(dc.eigsh(A, 3, seed=r.seed, verbose=False).values, r.values)


def test_explicit_start_vector():
    A, evals = matrix("random150")
    v = torch.ones(150, dtype=torch.float64)
    res = dc.eigsh(A, 2, start=v, verbose=False)
    check_result(A, evals, res, 2, "LA")
    again = dc.eigsh(A, 2, start=v, verbose=False)
    assert torch.equal(res.vectors, again.vectors)


def test_callable_scipy_and_float32_operators():
    A, evals = matrix("random150")
    An = A.numpy()
    op = dc.as_operator(lambda v: A @ v, shape=(150, 150))
    res = dc.eigsh(op, 2, seed=0, verbose=False, which="SA")
    assert res.vectors.dtype == torch.float64
    check_result(A, evals, res, 2, "SA")
    res = dc.eigsh(scipy.sparse.linalg.aslinearoperator(An), 2, seed=0, verbose=False)
    check_result(A, evals, res, 2, "LA")
    # float32: converges to the accuracy float32 allows (floor 10 sqrt(P) eps ||A||)
    res = dc.eigsh(A.float(), 2, seed=0, verbose=False)
    assert res.vectors.dtype == torch.float32
    assert res.converged
    np.testing.assert_allclose(res.values, np.sort(evals)[-2:], rtol=0, atol=1e-4 * 3)


def test_budget_exhausted_warns_and_reports_true_residuals():
    A, _ = matrix("wigner400")
    op = CountingOperator(A)
    with pytest.warns(UserWarning, match="did not converge"):
        res = dc.eigsh(op, 3, seed=0, max_steps=30, verbose=False)
    assert not res.converged
    assert res.n_matvec == op.count <= 30
    np.testing.assert_allclose(res.residual_norms, true_residuals(A, res), rtol=1e-6)
    assert res.residual_norms.max() > TOL * np.abs(res.values).max()


def test_verbose_progress_runs(capsys):
    A, _ = matrix("random150")
    dc.eigsh(A, 1, seed=0, verbose=True)
    assert "eigsh" in capsys.readouterr().err


def test_bad_input_errors():
    A, _ = matrix("random150")
    with pytest.raises(ValueError, match="k=151"):
        dc.eigsh(A, 151, verbose=False)
    with pytest.raises(ValueError, match="positive integer"):
        dc.eigsh(A, 0, verbose=False)
    with pytest.raises(ValueError, match="unknown which"):
        dc.eigsh(A, 2, which="LR", verbose=False)
    with pytest.raises(ValueError, match="ncv"):
        dc.eigsh(A, 5, ncv=5, verbose=False)
    with pytest.raises(ValueError, match="tol"):
        dc.eigsh(A, 2, tol=-1.0, verbose=False)
    with pytest.raises(ValueError, match="max_steps"):
        dc.eigsh(A, 2, max_steps=3, verbose=False)
    with pytest.raises(ValueError, match="not symmetric"):
        dc.eigsh(torch.triu(A), 2, verbose=False)
    with pytest.raises(ValueError, match="zero"):
        dc.eigsh(A, 2, start=torch.zeros(150, dtype=torch.float64), verbose=False)
    with pytest.raises(ValueError, match="start must have shape"):
        dc.eigsh(A, 2, start=torch.ones(3, dtype=torch.float64), verbose=False)
    with pytest.raises(ValueError, match="positive integer"):
        dc.power_iteration(A, 0, verbose=False)
    with pytest.raises(ValueError, match="max_iters"):
        dc.power_iteration(A, 1, max_iters=0, verbose=False)


def test_non_finite_products_name_the_step():
    calls = [0]

    def bad(v):
        calls[0] += 1
        out = v * torch.arange(1.0, 51.0, dtype=torch.float64)
        if calls[0] >= 3:
            out[0] = float("nan")
        return out

    with pytest.raises(FloatingPointError, match="operator application 3"):
        dc.eigsh(dc.as_operator(bad, shape=(50, 50)), 1, seed=0, verbose=False)
    calls[0] = 0
    with pytest.raises(FloatingPointError, match="power iteration 3"):
        dc.power_iteration(dc.as_operator(bad, shape=(50, 50)), 1, seed=0, verbose=False)


# --------------------------------------------------------------------------- power iteration


def gapped(P=200, lam=(2.0, 1.5, 1.2), seed=0):
    d = np.linspace(0, 1, P)
    d[-len(lam) :] = lam[::-1]
    return rotate(d, seed)


def test_power_iteration_converges_with_a_gap():
    A = gapped()
    evals = np.linalg.eigvalsh(A.numpy())
    op = CountingOperator(A)
    res = dc.power_iteration(op, 3, seed=0, verbose=False)
    assert res.converged and res.method == "power iteration"
    assert res.n_matvec == op.count
    np.testing.assert_allclose(res.values, [1.2, 1.5, 2.0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.residual_norms, true_residuals(A, res), rtol=1e-6)
    # deflation leaves a small error in the later pairs: within a few times the tolerance
    assert res.residual_norms.max() <= 5 * TOL * 2.0
    assert res.residual_norms[-1] <= TOL * 2.0
    np.testing.assert_allclose(np.sort(evals)[-3:], res.values, atol=1e-10)


def test_power_iteration_finds_a_negative_dominant_eigenvalue():
    d = np.linspace(-1, 1, 100)
    d[0] = -3.0
    A = rotate(d, 2)
    res = dc.power_iteration(A, 1, seed=1, verbose=False)
    assert res.values[0] == pytest.approx(-3.0, abs=1e-10)
    assert res.which == "LM"


def test_power_iteration_needs_many_more_products_than_eigsh_on_a_small_gap():
    A = gapped(lam=(2.0, 1.98, 1.2))
    p = dc.power_iteration(A, 1, seed=0, max_iters=20000, verbose=False)
    e = dc.eigsh(A, 1, seed=0, verbose=False)
    assert p.converged and e.converged
    assert p.values[0] == pytest.approx(2.0, abs=1e-9)
    assert e.values[0] == pytest.approx(2.0, abs=1e-12)
    assert p.n_matvec > 20 * e.n_matvec


def test_power_iteration_not_converging_warns():
    A = gapped(lam=(2.0, 1.99, 1.2))
    with pytest.warns(UserWarning, match="did not converge"):
        res = dc.power_iteration(A, 1, seed=0, max_iters=5, verbose=False)
    assert not res.converged
    assert res.n_matvec == 5 + 1
    # the returned value is the Rayleigh quotient of the returned vector
    u = res.vectors[:, 0]
    assert (u @ A @ u).item() == pytest.approx(res.values[0], rel=1e-12)


def test_power_iteration_is_deterministic():
    A = gapped()
    a = dc.power_iteration(A, 2, seed=3, verbose=False)
    b = dc.power_iteration(A, 2, seed=3, verbose=False)
    assert torch.equal(a.vectors, b.vectors) and a.n_matvec == b.n_matvec
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dc.power_iteration(A, 1, seed=3, verbose=False)


# -- accuracy="value" and verify=False ---------------------------------------------------------


@pytest.mark.parametrize("name", list(MATRICES))
@pytest.mark.parametrize("k", [1, 5])
def test_value_accuracy_meets_tol_on_eigenvalues_with_fewer_products(name, k):
    A, evals = matrix(name)
    exact = expected_values(evals, k, "LA")
    scale = np.abs(exact).max()
    counts = {}
    for accuracy, verify in (("residual", True), ("value", True), ("value", False)):
        op = CountingOperator(A)
        res = dc.eigsh(op, k, tol=1e-6, accuracy=accuracy, verify=verify, seed=3, verbose=False)
        assert res.converged
        assert res.n_matvec == op.count
        assert np.max(np.abs(res.values - exact)) <= 1e-6 * scale
        counts[(accuracy, verify)] = res.n_matvec
    assert counts[("value", True)] <= counts[("residual", True)]
    # without the check, exactly the k columns of the final product are saved
    assert counts[("value", False)] == counts[("value", True)] - k


def test_verify_false_reports_the_lanczos_residual_estimates():
    A, _ = matrix("random150")
    res = dc.eigsh(A, 3, tol=1e-8, verify=False, seed=5, verbose=False)
    true = true_residuals(A, res)
    scale = np.abs(res.values).max()
    # estimates agree with the true residuals up to round-off of ||A|| eps
    np.testing.assert_allclose(res.residual_norms, true, rtol=1e-3, atol=1e-12 * scale)
    assert res.n_matvec < dc.eigsh(A, 3, tol=1e-8, seed=5, verbose=False).n_matvec


def test_value_error_bounds_min_of_residual_and_kato_temple():
    from deepcurvature.linalg.eigsh import value_error_bounds

    theta = np.array([0.0, 1.0, 3.0])
    out = value_error_bounds(theta, np.array([2, 1]), np.array([0.1, 2.0]))
    np.testing.assert_allclose(out, [0.1**2 / 2.0, 2.0])  # r^2/gap, and r when r < r^2/gap
    np.testing.assert_allclose(value_error_bounds(np.array([1.0]), np.array([0]), [0.5]), [0.5])


def test_warm_start_from_a_nearby_vector_saves_products():
    A, evals = matrix("synthetic1000")
    cold = dc.eigsh(A, 1, tol=1e-6, accuracy="value", verify=False, seed=2, verbose=False)
    u = cold.vectors[:, 0] + 0.05 * torch.randn(
        A.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    ) / np.sqrt(A.shape[0])
    warm = dc.eigsh(A, 1, tol=1e-6, accuracy="value", verify=False, start=u, verbose=False)
    assert abs(warm.values[0] - evals.max()) <= 1e-6 * evals.max()
    assert warm.n_matvec < cold.n_matvec


def test_unknown_accuracy_is_refused():
    A, _ = matrix("random150")
    with pytest.raises(ValueError, match="accuracy"):
        dc.eigsh(A, 1, accuracy="eigenvalue", verbose=False)


def test_value_accuracy_stops_at_the_attainable_accuracy_in_float32():
    """tol below float32 round-off: pairs at the residual floor count as converged."""
    A, evals = matrix("synthetic1000")
    res = dc.eigsh(A.float(), 6, tol=1e-12, accuracy="value", seed=0, verbose=False)
    assert res.converged and res.n_matvec < 200
    exact = np.sort(evals)[-6:]
    assert np.max(np.abs(res.values - exact)) <= 1e-5 * exact.max()


def test_value_accuracy_is_relative_to_each_eigenvalue():
    """accuracy='value': tol bounds each wanted eigenvalue's relative error, small ones too."""
    rng = np.random.default_rng(7)
    d = np.concatenate([[100.0, 10.0, 1.0], rng.uniform(-0.5, 0.7, 297)])
    A = rotate(d, 8)
    res = dc.eigsh(A, 3, tol=1e-9, accuracy="value", verify=False, seed=1, verbose=False)
    exact = np.sort(d)[-3:]
    rel = np.abs(res.values - exact) / exact
    assert res.converged and np.all(rel <= 1e-8), rel
