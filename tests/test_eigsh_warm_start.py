"""eigsh warm starts: the eigenpairs of a cold start in fewer products of the full operator."""

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _helpers import dense_hessian_and_gradient, rotate

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_case(n=240, batch=40, seed=0):
    """A float64 tanh MLP on random data in batches: model, loss, batches."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
    return model, nn.CrossEntropyLoss(), batches


def dense_hessian(model, loss_fn, batches):
    """``(P, P)`` float64 Hessian of the mean loss over the concatenated batches."""
    return dense_hessian_and_gradient(model, loss_fn, batches)[0]


def test_warm_start_from_a_nearby_matrix_matches_dense_eigh_in_fewer_products():
    rng = np.random.default_rng(0)
    d = np.concatenate([[10.0], rng.uniform(-1, 8.5, 399)])
    A = rotate(d, 1)
    E = torch.as_tensor(rng.standard_normal((400, 400)) * 0.02)
    sub = A + (E + E.T) / 2  # a cheap stand-in: the same top eigenvector up to O(1e-2)
    exact = np.linalg.eigvalsh(A.numpy())[-1]
    cold = dc.eigsh(A, 1, tol=1e-10, accuracy="value", seed=3, verbose=False)
    warm = dc.eigsh(A, 1, tol=1e-10, accuracy="value", seed=3, warm_start=sub, verbose=False)
    assert abs(warm.values[-1] - exact) <= 1e-9 * exact
    assert abs(cold.values[-1] - exact) <= 1e-9 * exact
    assert warm.converged and warm.warm_matvec > 0 and cold.warm_matvec == 0
    assert warm.n_matvec < cold.n_matvec  # the point of it
    # the result's vector is that of A (not of the stand-in): its true residual r is reported
    # and meets the eigenvalue bound r^2 / gap <= tol * lambda (gap 1.5 here)
    u = warm.vectors[:, 0]
    r = float(torch.linalg.norm(A @ u - warm.values[-1] * u))
    assert r == pytest.approx(warm.residual_norms[-1], rel=1e-6)
    assert r**2 / 1.5 <= 1e-10 * exact
    # smallest eigenvalues too
    low = dc.eigsh(A, 2, which="SA", tol=1e-10, seed=3, warm_start=sub, verbose=False)
    np.testing.assert_allclose(low.values, np.linalg.eigvalsh(A.numpy())[:2], rtol=0, atol=1e-8)


def test_batch_warm_start_of_a_hessian_matches_the_dense_hessian():
    model, loss_fn, batches = mlp_case()
    H = dc.hessian(model, loss_fn, batches)
    ref = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batches)).numpy()
    sub = H.warm_start_operator()
    assert isinstance(sub, dc.operators.HessianOperator) and sub.num_samples == 40
    # it is the Hessian of the first batch exactly
    first = dense_hessian(model, loss_fn, batches[:1])
    torch.testing.assert_close(sub.to_dense(), first, rtol=1e-10, atol=1e-12)
    warm = dc.eigsh(H, 1, tol=1e-10, accuracy="value", seed=0, warm_start="batch", verbose=False)
    assert abs(warm.values[-1] - ref[-1]) <= 1e-9 * abs(ref[-1])
    assert warm.warm_matvec > 0
    both = dc.eigsh(H, 2, which="BE", tol=1e-9, seed=0, warm_start="batch", verbose=False)
    np.testing.assert_allclose(np.sort(both.values), [ref[0], ref[-1]], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("make", ["ggn", "empirical", "mc"])
def test_warm_start_operator_keeps_the_settings(make):
    model, loss_fn, batches = mlp_case()
    kw = {"params": ["0.weight", "2.bias"], "weight_decay": 0.3}
    if make == "ggn":
        op = dc.ggn(model, loss_fn, batches, **kw)
        again = dc.ggn(model, loss_fn, batches[:1], **kw)
    else:
        op = dc.fisher(model, loss_fn, batches, kind=make, seed=11, **kw)
        again = dc.fisher(model, loss_fn, batches[:1], kind=make, seed=11, **kw)
    sub = op.warm_start_operator()
    assert type(sub) is type(op) and sub.param_names == op.param_names == ["0.weight", "2.bias"]
    assert sub.metadata == op.metadata  # kind, seed, weight decay, dtype, ...
    assert sub.num_samples == 40 and op.num_samples == 240
    torch.testing.assert_close(sub.to_dense(), again.to_dense(), rtol=1e-12, atol=1e-14)
    # and not the full operator's matrix
    assert not torch.allclose(sub.to_dense(), op.to_dense(), atol=1e-6)


def test_single_batch_has_no_warm_start_and_eigsh_runs_cold():
    model, loss_fn, batches = mlp_case(n=40)
    H = dc.hessian(model, loss_fn, batches)
    assert H.warm_start_operator() is None
    warm = dc.eigsh(H, 1, tol=1e-8, seed=5, warm_start="batch", verbose=False)
    cold = dc.eigsh(H, 1, tol=1e-8, seed=5, verbose=False)
    assert warm.warm_matvec == 0 and warm.n_matvec == cold.n_matvec
    np.testing.assert_array_equal(warm.values, cold.values)


def test_warm_start_errors_name_the_fix():
    A = rotate(np.linspace(-1, 3, 50), 0)
    with pytest.raises(ValueError, match="'batch'.*cheaper LinearOperator"):
        dc.eigsh(A, 1, warm_start="first", verbose=False)
    with pytest.raises(ValueError, match="needs a curvature operator"):
        dc.eigsh(A, 1, warm_start="batch", verbose=False)
    with pytest.raises(ValueError, match=r"shape \(40, 40\).*\(50, 50\)"):
        dc.eigsh(A, 1, warm_start=torch.eye(40, dtype=torch.float64), verbose=False)
    with pytest.raises(ValueError, match="either start"):
        dc.eigsh(A, 1, start=torch.ones(50), warm_start=A, verbose=False)
