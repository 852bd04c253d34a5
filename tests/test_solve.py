"""dc.solve and dc.matrix_function against dense float64 solutions, scipy and network operators."""

import math

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg as sla
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.func import hessian as func_hessian

import deepcurvature as dc
from _helpers import rotate
from deepcurvature.linalg.operator import LinearOperator

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def rel(x, ref):
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


def rhs(P, k=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(P, generator=g, dtype=DT)
        if k is None
        else torch.randn(P, k, generator=g, dtype=DT)
    )


def spd(P=30, seed=0):
    return rotate(np.logspace(-1, 1, P), seed)


def indefinite(P=30, seed=0):
    d = np.concatenate([-np.linspace(0.5, 3.0, P // 3), np.linspace(0.5, 4.0, P - P // 3)])
    return rotate(d, seed)


def dense_solve(A, lam, b):
    return torch.linalg.solve(A + lam * torch.eye(A.shape[0], dtype=DT), b)


def dense_function(A, f, b):
    e, U = torch.linalg.eigh(A)
    return U @ (f(e).reshape(-1, *([1] * (b.ndim - 1))) * (U.T @ b))


class Counting(LinearOperator):
    """Wraps an operator and counts matmat calls and the columns they carry."""

    def __init__(self, A):
        super().__init__(A.shape, A.dtype, symmetric=True)
        self.A, self.calls, self.columns = A, 0, 0

    def _matmat(self, V):
        self.calls += 1
        self.columns += V.shape[1]
        return self.A @ V


# ------------------------------------------------------------------------------------------------
# dense matrices


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("method", ["cg", "minres", "lanczos"])
def test_spd_matches_dense_solve(method, k):
    A, b, lam = spd(), rhs(30, k), 0.3
    res = dc.solve(A, b, damping=lam, method=method, tol=1e-12, verbose=False)
    ref = dense_solve(A, lam, b)
    assert res.x.shape == b.shape and res.x.dtype == DT
    assert rel(res.x, ref) <= 1e-8
    ncol = 1 if k is None else k
    assert res.converged and res.column_converged.shape == (ncol,)
    # the reported residuals are the true ones
    R = (A + lam * torch.eye(30, dtype=DT)) @ res.x - b
    true = (R.reshape(30, -1).norm(dim=0) / b.reshape(30, -1).norm(dim=0)).numpy()
    np.testing.assert_allclose(res.residual_norms, true, rtol=0.05, atol=1e-15)
    assert np.all(res.residual_norms <= 1e-12)
    assert res.n_products == int(res.iterations.sum()) + ncol
    assert res.n_matmat == int(res.iterations.max()) + 1
    assert "converged" in res.summary() and method in res.summary()


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("method", ["minres", "lanczos"])
def test_indefinite_matches_dense_solve(method, k):
    A, b, lam = indefinite(), rhs(30, k, seed=2), 0.1
    res = dc.solve(A, b, damping=lam, method=method, tol=1e-12, verbose=False)
    assert rel(res.x, dense_solve(A, lam, b)) <= 1e-8
    assert res.converged and np.all(res.residual_norms <= 1e-12)


def test_numpy_matrix_callable_and_float32_rhs():
    A, b = spd(), rhs(30)
    ref = dense_solve(A, 0.2, b)
    r1 = dc.solve(A.numpy(), b.numpy(), damping=0.2, tol=1e-12, verbose=False)
    op = dc.as_operator(lambda v: A @ v, shape=(30, 30), symmetric=True)
    r2 = dc.solve(op, b.float(), damping=0.2, tol=1e-12, verbose=False)  # b converted to float64
    assert rel(r1.x, ref) <= 1e-8
    assert r2.x.dtype == DT and rel(r2.x, dense_solve(A, 0.2, b.float().double())) <= 1e-8


def test_zero_column_and_early_columns_stop():
    """A zero column costs nothing; an eigenvector column converges in one step and stops."""
    A = spd()
    U = torch.linalg.eigh(A).eigenvectors
    B = torch.stack([torch.zeros(30, dtype=DT), U[:, 4], rhs(30)], dim=1)
    for method in ("cg", "minres", "lanczos"):
        op = Counting(A)
        res = dc.solve(op, B, damping=0.1, method=method, tol=1e-12, verbose=False)
        assert res.iterations[0] == 0 and res.iterations[1] == 1 and res.iterations[2] > 5
        assert torch.equal(res.x[:, 0], torch.zeros(30, dtype=DT))
        assert res.residual_norms[0] == 0.0 and res.converged
        assert rel(res.x[:, 1:], dense_solve(A, 0.1, B[:, 1:])) <= 1e-8
        # converged columns leave the shared product: columns applied = sum of iterations (+ 3
        # for the final check), matmat calls = the longest column (+ 1)
        assert op.columns == res.n_products == int(res.iterations.sum()) + 3
        assert op.calls == res.n_matmat == int(res.iterations.max()) + 1


@pytest.mark.parametrize("method", ["cg", "minres", "lanczos"])
def test_k_columns_share_one_matmat_per_step(method):
    A = spd(40) if method == "cg" else indefinite(40)
    op1, opk = Counting(A), Counting(A)
    B = rhs(40, 5, seed=3)
    one = dc.solve(op1, B[:, 0], damping=0.2, method=method, tol=1e-10, verbose=False)
    many = dc.solve(opk, B, damping=0.2, method=method, tol=1e-10, verbose=False)
    steps = int(many.iterations.max())
    assert opk.calls == steps + 1  # 5 columns: one matmat per step, plus the final check
    assert opk.columns == int(many.iterations.sum()) + 5
    assert op1.calls == int(one.iterations[0]) + 1
    assert opk.calls < 5 * steps  # k separate solves would cost ~k times as many calls


# ------------------------------------------------------------------------------------------------
# matrix functions


@pytest.mark.parametrize("k", [None, 3])
def test_inverse_sqrt_matches_eigh(k):
    A, b, lam = spd(), rhs(30, k), 0.05
    res = dc.matrix_function(A, b, "inverse_sqrt", damping=lam, tol=None, verbose=False)
    ref = dense_function(A, lambda e: 1 / torch.sqrt(e + lam), b)
    assert res.x.shape == b.shape and rel(res.x, ref) <= 1e-8
    assert res.n_matmat == 30 and res.converged


def test_abs_inverse_matches_dense():
    A, b, lam = indefinite(), rhs(30, 2), 0.1
    res = dc.matrix_function(A, b, "abs_inverse", damping=lam, verbose=False)
    ref = dense_function(A, lambda e: 1 / (e.abs() + lam), b)
    assert rel(res.x, ref) <= 1e-8 and res.converged
    assert "abs" in res.summary() or "|theta|" in res.summary()


def test_callable_function_and_early_stop_on_invariant_subspace():
    # 4 distinct eigenvalues: the Krylov space of any b is invariant after 4 steps
    A = rotate(np.repeat([0.5, 1.0, 2.0, 3.0], 8), 1)
    b = rhs(32)
    res = dc.matrix_function(A, b, np.exp, verbose=False)
    assert rel(res.x, dense_function(A, torch.exp, b)) <= 1e-10
    assert res.iterations[0] == 4 and res.invariant[0] and res.converged
    inv = dc.matrix_function(A, b, "inverse", damping=0.5, verbose=False)
    assert rel(inv.x, dense_solve(A, 0.5, b)) <= 1e-10


def test_change_tolerance_stops_before_p_steps():
    A, b = spd(60), rhs(60)
    res = dc.matrix_function(A, b, "inverse", damping=1.0, tol=1e-9, verbose=False)
    assert res.iterations[0] < 60 and res.changes[0] <= 1e-9 and res.converged
    assert rel(res.x, dense_solve(A, 1.0, b)) <= 1e-8


def test_matrix_function_errors():
    A, b = indefinite(), rhs(30)
    with pytest.raises(ValueError, match="inverse_sqrt.*positive definite"):
        dc.matrix_function(A, b, "inverse_sqrt", verbose=False)
    with pytest.raises(ValueError, match="fn must be one of"):
        dc.matrix_function(A, b, "log", verbose=False)
    with pytest.raises(ValueError, match="damping must be 0 with a callable"):
        dc.matrix_function(A, b, np.exp, damping=0.1, verbose=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        dc.matrix_function(A, b, steps=0, verbose=False)
    with pytest.raises(ValueError, match="same shape"):
        dc.matrix_function(A, b, lambda t: t.sum(), verbose=False)


# ------------------------------------------------------------------------------------------------
# iteration counts against scipy


def scipy_counts(solver, A, lam, b, tol, op):
    """Iterations of scipy's solver on op.to_scipy() + lam I: (own stop, first true res <= tol)."""
    S = op.to_scipy() + sla.aslinearoperator(lam * scipy.sparse.identity(A.shape[0]))
    Ad, bn = A.numpy() + lam * np.eye(A.shape[0]), b.numpy()
    own = []
    solver(S, bn, rtol=tol, maxiter=10 * A.shape[0], callback=lambda xk: own.append(1))
    iterates = []  # copies: scipy's CG hands the callback the same array, updated in place
    keep = lambda xk: iterates.append(np.array(xk))  # noqa: E731
    solver(S, bn, rtol=tol * 1e-4, maxiter=10 * A.shape[0], callback=keep)
    true = [np.linalg.norm(Ad @ x - bn) / np.linalg.norm(bn) for x in iterates]
    first = next(i + 1 for i, r in enumerate(true) if r <= tol)
    return len(own), first


def test_cg_iterations_no_more_than_scipy():
    """Same rtol, scipy's own stop (there also the first iterate with true residual <= tol).

    +1: our iterates and scipy's agree to 15 digits in the first steps but drift apart by
    round-off (CG loses orthogonality) to ~10% in the residual by step ~80, where the residual
    falls only ~15% per step: the crossing of tol moves by a step either way (measured on this
    case: ours 80, 80, 80, scipy 79, 79, 79).
    """
    A, B, lam, tol = rotate(np.logspace(-1, 1, 120), 0), rhs(120, 3), 0.05, 1e-10
    op = dc.as_operator(A)
    res = dc.solve(op, B, damping=lam, method="cg", tol=tol, verbose=False)
    assert res.converged
    for c in range(3):
        own, first = scipy_counts(sla.cg, A, lam, B[:, c], tol, op)
        assert res.iterations[c] <= min(own, first) + 1, (res.iterations[c], own, first)
        assert res.iterations[c] >= own - 1  # and not suspiciously fewer (a wrong criterion)


def test_minres_iterations_no_more_than_scipy():
    """scipy's MINRES stops on a backward-error test ``||r|| <= rtol (||A|| ||x|| + ||b||)``,
    looser than ``||r|| <= tol ||b||`` (it stops with true relative residuals ~1e-8 at rtol
    1e-10), so we compare with the first scipy iterate whose TRUE relative residual is <= tol;
    +1 for round-off at the crossing step as for CG (measured: ours 105, 104, 103, scipy's first
    iterate under tol 104, 103, 103, scipy's own stop 99, 100, 99)."""
    A, B, lam, tol = indefinite(120), rhs(120, 3), 0.1, 1e-10
    op = dc.as_operator(A)
    res = dc.solve(op, B, damping=lam, method="minres", tol=tol, verbose=False)
    assert res.converged
    for c in range(3):
        own, first = scipy_counts(sla.minres, A, lam, B[:, c], tol, op)
        assert res.iterations[c] <= first + 1, (res.iterations[c], first)
        assert res.iterations[c] >= first - 1
        assert own <= first  # the looser test stops earlier (with a larger residual)


# ------------------------------------------------------------------------------------------------
# network operators


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2)
        )
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def network_case(kind):
    torch.manual_seed(0)
    model = (MLP() if kind == "mlp" else CNN()).double()
    g = torch.Generator().manual_seed(5)
    shape = (10, 4) if kind == "mlp" else (10, 2, 4, 4)
    if kind == "cnn":  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, *shape[1:], generator=g, dtype=DT) * 2 + 0.5)
    model.eval()
    x = torch.randn(*shape, generator=g, dtype=DT)
    y = torch.randint(0, 3, (10,), generator=g)
    data = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 10, 4)]  # batches 4, 4, 2
    return model, nn.CrossEntropyLoss(), x, y, data


def dense_references(model, loss_fn, x, y):
    """Hessian (torch.func.hessian) and explicit GGN J^T H J of the mean loss, eval mode."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    fixed = {n: b.detach() for n, b in model.named_buffers()}
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def outputs(t):
        p, o = dict(fixed), 0
        for n, s in zip(names, shapes, strict=True):
            p[n] = t[o : o + math.prod(s)].view(s)
            o += math.prod(s)
        return functional_call(model, p, (x,))

    H = func_hessian(lambda t: loss_fn(outputs(t), y))(theta)
    out = outputs(theta).detach()
    J = jacrev(outputs)(theta).reshape(out.numel(), -1)
    Hout = func_hessian(lambda o: loss_fn(o.view(out.shape), y))(out.reshape(-1))
    return H, J.T @ Hout @ J


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_network_operators_ggn_cg_and_hessian_minres(kind):
    model, loss_fn, x, y, data = network_case(kind)
    H, G = dense_references(model, loss_fn, x, y)
    P = H.shape[0]
    B = rhs(P, 2, seed=7)
    lam = 0.05
    G_op = dc.ggn(model, loss_fn, data)
    res = dc.solve(G_op, B, damping=lam, method="cg", tol=1e-12, verbose=False)
    assert res.converged and rel(res.x, dense_solve(G, lam, B)) <= 1e-8
    H_op = dc.hessian(model, loss_fn, data)
    shifted = torch.linalg.eigvalsh(H) + lam
    assert shifted.min() < 0 or shifted.abs().min() > 1e-3  # well posed (and maybe indefinite)
    res = dc.solve(H_op, B[:, 0], damping=lam, method="minres", tol=1e-12, verbose=False)
    assert res.converged and rel(res.x, dense_solve(H, lam, B[:, 0])) <= 1e-8
    fn = dc.matrix_function(H_op, B[:, 0], "abs_inverse", damping=lam, verbose=False)
    ref = dense_function(H, lambda e: 1 / (e.abs() + lam), B[:, 0])
    assert rel(fn.x, ref) <= 1e-8


# ------------------------------------------------------------------------------------------------
# errors


def test_cg_negative_curvature_error():
    A, b = indefinite(), rhs(30)
    with pytest.raises(ValueError, match=r"not positive definite along a direction found at step"):
        dc.solve(A, b, method="cg", verbose=False)
    with pytest.raises(ValueError, match="method='minres' or more damping"):
        dc.solve(A, b, method="cg", verbose=False)


def test_bad_input_errors():
    A, b = spd(), rhs(30)
    with pytest.raises(ValueError, match=r"b must have shape \(P,\) or \(P, k\) with P = 30"):
        dc.solve(A, rhs(31), verbose=False)
    with pytest.raises(ValueError, match="b must have shape"):
        dc.solve(A, torch.zeros(30, 0, dtype=DT), verbose=False)
    with pytest.raises(ValueError, match="b must have shape"):
        dc.solve(A, torch.zeros(30, 2, 2, dtype=DT), verbose=False)
    with pytest.raises(TypeError, match=r"b must be a floating tensor.*b.to\("):
        dc.solve(A, torch.ones(30, dtype=torch.int64), verbose=False)
    with pytest.raises(TypeError, match="complex"):
        dc.solve(A, torch.ones(30, dtype=torch.complex128), verbose=False)
    with pytest.raises(TypeError, match="complex"):
        dc.solve(A, np.ones(30, dtype=complex), verbose=False)
    with pytest.raises(TypeError, match="b must be a torch.Tensor or numpy array"):
        dc.solve(A, [1.0] * 30, verbose=False)
    bad = b.clone()
    bad[3] = math.nan
    with pytest.raises(ValueError, match="b is not finite"):
        dc.solve(A, bad, verbose=False)
    for tol in (0.0, -1e-3, math.nan, True):
        with pytest.raises(ValueError, match="tol must be"):
            dc.solve(A, b, tol=tol, verbose=False)
    for steps in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="max_steps must be a positive integer"):
            dc.solve(A, b, max_steps=steps, verbose=False)
    with pytest.raises(ValueError, match=r"damping must be >= 0 for method='cg'.*minres"):
        dc.solve(A, b, damping=-0.1, verbose=False)
    with pytest.raises(ValueError, match="damping must be finite"):
        dc.solve(A, b, damping=math.inf, method="minres", verbose=False)
    with pytest.raises(ValueError, match="method must be one of"):
        dc.solve(A, b, method="gmres", verbose=False)
    with pytest.raises(ValueError, match="not symmetric"):
        dc.solve(torch.triu(A), b, verbose=False)


@pytest.mark.parametrize("method", ["cg", "minres", "lanczos"])
def test_non_finite_product_error(method):
    A = spd()

    def fn(v):
        out = A @ v
        out[0] = math.nan
        return out

    op = dc.as_operator(fn, shape=(30, 30), symmetric=True)
    with pytest.raises(FloatingPointError, match="product is not finite at step 1"):
        dc.solve(op, rhs(30), method=method, verbose=False)


def test_not_converged_warns_and_reports():
    A, b = spd(60), rhs(60)
    with pytest.warns(RuntimeWarning, match="did not converge.*raise max_steps"):
        res = dc.solve(A, b, tol=1e-12, max_steps=3, verbose=False)
    assert not res.converged and res.iterations[0] == 3 and res.residual_norms[0] > 1e-12
    assert "NOT converged" in res.summary()


def test_reported_residual_is_the_true_one_not_the_recurrence_estimate():
    """In float32 the CG recurrence's residual keeps falling below what x attains."""
    A, b = spd(60).float(), rhs(60).float()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = dc.solve(A, b, tol=1e-9, max_steps=300, verbose=False)
    true = float((A.double() @ res.x.double() - b.double()).norm() / b.double().norm())
    assert res.x.dtype == torch.float32 and not res.converged
    assert res.residual_estimates[0] <= 1e-9 < 1e-7 < true  # the estimate lies
    assert res.residual_norms[0] == pytest.approx(true, rel=0.3)  # the report does not


def test_singular_systems_are_refused_clearly():
    A = torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=DT))
    with pytest.raises(ValueError, match="singular on the Krylov space of b.*add damping"):
        dc.solve(A, torch.tensor([1.0, 0.0, 0.0], dtype=DT), method="minres", verbose=False)
    with pytest.raises(ValueError, match="f\\(T\\) is not finite.*add damping"):
        dc.matrix_function(A, torch.ones(3, dtype=DT), "inverse", verbose=False)
    # with damping both are fine, and lanczos never runs more than P steps
    res = dc.solve(A, torch.ones(3, dtype=DT), damping=0.5, method="lanczos", max_steps=50)
    assert res.max_steps == 3 and res.iterations[0] == 3 and res.converged
    assert rel(res.x, dense_solve(A, 0.5, torch.ones(3, dtype=DT))) <= 1e-12
