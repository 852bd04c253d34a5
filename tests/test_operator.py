"""The linear-operator protocol and as_operator wrappers."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

import deepcurvature as dc


def sym(P=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, P, generator=g, dtype=torch.float64)
    return (A + A.T) / 2


@pytest.mark.parametrize("kind", ["torch", "numpy", "sparse", "scipy_linop", "callable", "batched"])
def test_wrappers_agree_with_dense(kind):
    A = sym()
    An = A.numpy()
    if kind == "torch":
        op = dc.as_operator(A)
    elif kind == "numpy":
        op = dc.as_operator(An)
    elif kind == "sparse":
        op = dc.as_operator(scipy.sparse.csr_matrix(An))
    elif kind == "scipy_linop":
        op = dc.as_operator(scipy.sparse.linalg.aslinearoperator(An))
    elif kind == "callable":
        op = dc.as_operator(lambda v: A @ v, shape=(12, 12))
    else:
        op = dc.as_operator(lambda V: A @ V, shape=(12, 12), batched=True)
    assert op.shape == (12, 12)
    assert op.dtype == torch.float64
    v = torch.randn(12, dtype=torch.float64)
    V = torch.randn(12, 3, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), A @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.matmat(V), A @ V, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op @ V, A @ V, rtol=1e-12, atol=1e-12)
    sp = op.to_scipy()
    np.testing.assert_allclose(sp @ v.numpy(), An @ v.numpy(), rtol=1e-12)
    np.testing.assert_allclose(sp.matmat(V.numpy()), An @ V.numpy(), rtol=1e-12)
    torch.testing.assert_close(op.to_dense(), A)


def test_scipy_eigsh_runs_on_exported_operator():
    A = sym(30)
    vals = scipy.sparse.linalg.eigsh(dc.as_operator(A).to_scipy(), k=2, which="LA")[0]
    np.testing.assert_allclose(np.sort(vals), np.linalg.eigvalsh(A.numpy())[-2:], rtol=1e-10)


def test_shape_dtype_device_errors():
    op = dc.as_operator(sym())
    with pytest.raises(ValueError, match=r"shape \(P,\) with P = 12"):
        op.matvec(torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(P, k\)"):
        op.matmat(torch.ones(5, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="convert with x.to"):
        op.matvec(torch.ones(12, dtype=torch.float32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op.matvec(np.ones(12))
    with pytest.raises(ValueError, match="square"):
        dc.as_operator(torch.ones(3, 4))
    with pytest.raises(TypeError, match="needs shape"):
        dc.as_operator(lambda v: v)
    with pytest.raises(TypeError, match="cannot make a linear operator"):
        dc.as_operator("matrix")
    bad = dc.as_operator(lambda V: V[:2], shape=(12, 12), batched=True)
    with pytest.raises(ValueError, match="returned shape"):
        bad.matmat(torch.ones(12, 2, dtype=torch.float64))


def test_shifted_operator():
    A = sym()
    op = dc.ShiftedOperator(dc.as_operator(A), scale=-1.0, shift=2.5)
    V = torch.randn(12, 2, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), -A @ V + 2.5 * V)
