"""Hutchinson, Hutch++ and diagonal estimators against exact traces and diagonals (float64)."""

import numpy as np
import pytest
import torch

import deepcurvature as dc
from _helpers import rotate
from deepcurvature.linalg.operator import ShiftedOperator

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_symmetric(P, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, P, generator=g, dtype=torch.float64)
    return (X + X.T) / 2 + torch.diag(torch.linspace(0, 3, P, dtype=torch.float64))


def decaying(P=200, seed=0):
    """A PSD matrix with eigenvalues k^-2: most of the trace sits in a few directions."""
    return rotate(1.0 / np.arange(1, P + 1) ** 2, seed)


def offdiag_sq(A):
    return float((A**2).sum() - (torch.diagonal(A) ** 2).sum())


# ----------------------------------------------------------------------------- exact cases


def test_exact_on_diagonal_matrices_with_rademacher_probes():
    d = torch.linspace(-2, 5, 64, dtype=torch.float64)
    D = torch.diag(d)
    for probes in (1, 3, 10):
        t = dc.trace(D, probes, seed=probes, verbose=False)
        assert t.value == pytest.approx(float(d.sum()), rel=1e-14)
        assert t.n_matvec == probes
        if probes > 1:
            assert t.std_error == pytest.approx(0.0, abs=1e-12)
        est = dc.diagonal(D, probes, seed=probes, verbose=False)
        torch.testing.assert_close(est.value, d, rtol=1e-14, atol=1e-14)
        if probes > 1:
            assert est.std_error.abs().max().item() <= 1e-12
    # Gaussian probes are not exact on a diagonal matrix
    t = dc.trace(D, 10, seed=0, probe="gaussian", verbose=False)
    assert abs(t.value - float(d.sum())) > 1e-6


def test_hutch_plus_plus_is_exact_when_the_sketch_captures_the_range():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((150, 4))
    A = torch.as_tensor(X @ X.T)
    t = dc.trace(A, 15, method="hutch++", seed=0, verbose=False)  # sketch of 5 >= rank 4
    assert t.value == pytest.approx(float(torch.trace(A)), rel=1e-10)
    assert t.exact_part == pytest.approx(float(torch.trace(A)), rel=1e-10)
    assert np.abs(t.samples).max() <= 1e-9 * float(torch.trace(A))
    assert t.n_matvec == 15 and t.method == "hutch++"


# ----------------------------------------------------------------------- unbiasedness, errors


def test_hutchinson_is_unbiased_with_the_variance_of_lemma_1():
    A = dense_symmetric(60, 0)
    exact = float(torch.trace(A))
    samples = np.concatenate(
        [dc.trace(A, 20, seed=s, verbose=False).samples for s in range(100)]
    )  # 2000 quadratic forms
    # Rademacher: Var[z^T A z] = 2 sum_{i != j} A_ij^2 (<= (2 + m4) tr(A^T A), Lemma 1 ii)
    var = 2 * offdiag_sq(A)
    assert var <= 3 * float((A * A).sum())
    assert abs(samples.mean() - exact) <= 4 * np.sqrt(var / samples.size)
    assert samples.var(ddof=1) == pytest.approx(var, rel=0.15)
    # Gaussian: Var = 2 tr(A^2)
    g = np.concatenate(
        [dc.trace(A, 20, seed=s, probe="gaussian", verbose=False).samples for s in range(100)]
    )
    var_g = 2 * float((A * A).sum())
    assert abs(g.mean() - exact) <= 4 * np.sqrt(var_g / g.size)
    assert g.var(ddof=1) == pytest.approx(var_g, rel=0.15)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_reported_standard_error_is_calibrated(method):
    A = dense_symmetric(50, 1)
    exact = float(torch.trace(A))
    z = []
    for s in range(200):
        t = dc.trace(A, 60, method=method, seed=s, verbose=False)  # Hutch++: 20 samples
        z.append((t.value - exact) / t.std_error)
    z = np.array(z)
    # unbiased: the mean z-score is ~N(0, 1/200); calibrated: z^2 averages ~1
    assert abs(z.mean()) <= 4 / np.sqrt(len(z))
    assert 0.7 <= np.mean(z**2) <= 1.4
    assert 0.88 <= np.mean(np.abs(z) <= 2) <= 0.99


def test_hutchinson_error_decreases_like_one_over_sqrt_n():
    A = dense_symmetric(80, 2)
    exact = float(torch.trace(A))
    rmse = []
    for n in (8, 32, 128):
        errs = [dc.trace(A, n, seed=s, verbose=False).value - exact for s in range(60)]
        rmse.append(np.sqrt(np.mean(np.square(errs))))
    predicted = [np.sqrt(2 * offdiag_sq(A) / n) for n in (8, 32, 128)]
    np.testing.assert_allclose(rmse, predicted, rtol=0.3)
    assert 1.5 <= rmse[0] / rmse[1] <= 2.7 and 1.5 <= rmse[1] / rmse[2] <= 2.7


def test_hutch_plus_plus_beats_hutchinson_on_a_decaying_spectrum():
    A = decaying(200, 3)
    exact = float(torch.trace(A))
    e_h, e_pp = [], []
    for s in range(30):
        e_h.append(dc.trace(A, 60, seed=s, verbose=False).value - exact)
        e_pp.append(dc.trace(A, 60, method="hutch++", seed=s, verbose=False).value - exact)
    rms_h, rms_pp = np.sqrt(np.mean(np.square(e_h))), np.sqrt(np.mean(np.square(e_pp)))
    assert rms_pp * 20 < rms_h
    assert abs(np.mean(e_pp)) <= 4 * np.std(e_pp) / np.sqrt(len(e_pp))  # unbiased


def test_hutch_plus_plus_splits_the_budget_in_thirds():
    A = decaying(100, 4)

    class Counting(dc.LinearOperator):
        def __init__(self):
            super().__init__((100, 100), torch.float64, symmetric=True)
            self.cols = []

        def _matmat(self, V):
            self.cols.append(V.shape[1])
            return A @ V

    op = Counting()
    t = dc.trace(op, 31, method="hutch++", seed=0, block_size=4, verbose=False)
    assert sum(op.cols) == t.n_matvec == 31
    assert max(op.cols) <= 4
    assert t.samples.shape == (31 - 2 * 10,)
    assert t.value == pytest.approx(t.exact_part + t.samples.mean(), rel=1e-14)


def test_diagonal_is_unbiased_with_calibrated_standard_errors():
    A = dense_symmetric(40, 5)
    exact = torch.diagonal(A)
    for probe in ("rademacher", "gaussian"):
        ests = [dc.diagonal(A, 30, seed=s, probe=probe, verbose=False) for s in range(150)]
        vals = torch.stack([e.value for e in ests])
        z = torch.stack([(e.value - exact) / e.std_error for e in ests])
        # per-entry mean over seeds within 4 standard errors of the exact diagonal
        se_mean = vals.std(dim=0) / np.sqrt(len(ests))
        assert ((vals.mean(dim=0) - exact).abs() <= 4 * se_mean + 1e-12).all()
        assert 0.7 <= (z**2).mean().item() <= 1.4
    # Rademacher: Var[z_i (A z)_i] = sum_{j != i} A_ij^2, so the error shrinks like 1/sqrt(n)
    e = dc.diagonal(A, 400, seed=0, verbose=False)
    predicted = torch.sqrt(((A**2).sum(dim=1) - exact**2) / 400)
    torch.testing.assert_close(e.std_error, predicted, rtol=0.2, atol=0)


def test_same_probes_whatever_the_block_size():
    A = dense_symmetric(30, 6)
    a = dc.trace(A, 10, seed=4, block_size=3, verbose=False)
    b = dc.trace(A, 10, seed=4, block_size=10, verbose=False)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-13)
    c = dc.diagonal(A, 10, seed=4, block_size=1, verbose=False)
    d = dc.diagonal(A, 10, seed=4, block_size=7, verbose=False)
    torch.testing.assert_close(c.value, d.value, rtol=1e-13, atol=1e-13)
    assert a.seed == 4 and c.seed == 4
    r = dc.trace(A, 5, verbose=False)
    assert dc.trace(A, 5, seed=r.seed, verbose=False).value == r.value


def test_float32_callable_operator_and_progress(capsys):
    A = dense_symmetric(30, 7)
    op = dc.as_operator(lambda V: A.float() @ V, shape=(30, 30), dtype=torch.float32, batched=True)
    t = dc.trace(op, 12, seed=0, verbose=True)
    assert "trace" in capsys.readouterr().err
    ref = dc.trace(A, 12, seed=0, verbose=False)
    assert t.value == pytest.approx(ref.value, rel=1e-5)
    e = dc.diagonal(op, 12, seed=0, verbose=False)
    assert e.value.dtype == torch.float32 and e.value.shape == (30,)
    assert float(t) == t.value


def test_bad_input_errors():
    A = dense_symmetric(10, 0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="probes"):
            dc.trace(A, bad, verbose=False)
        with pytest.raises(ValueError, match="probes"):
            dc.diagonal(A, bad, verbose=False)
    with pytest.raises(ValueError, match="at least 3"):
        dc.trace(A, 2, method="hutch++", verbose=False)
    with pytest.raises(ValueError, match="unknown trace method"):
        dc.trace(A, 5, method="hutch", verbose=False)
    with pytest.raises(ValueError, match="unknown probe"):
        dc.trace(A, 5, probe="normal", verbose=False)
    with pytest.raises(ValueError, match="block_size"):
        dc.diagonal(A, 5, block_size=0, verbose=False)
    nan_op = dc.as_operator(lambda V: V * float("nan"), shape=(10, 10), batched=True)
    with pytest.raises(FloatingPointError, match="Hutchinson probes 1-4"):
        dc.trace(nan_op, 4, verbose=False)
    with pytest.raises(FloatingPointError, match="Hutch\\+\\+ sketch"):
        dc.trace(nan_op, 6, method="hutch++", verbose=False)
    with pytest.raises(FloatingPointError, match="diagonal probes 1-4"):
        dc.diagonal(nan_op, 4, verbose=False)


def test_hutch_plus_plus_probes_share_the_sketch_passes():
    """Two phases of matmat calls: [A S, A Z] together, then A Q."""
    A = decaying(60, 5)

    class Counting(dc.LinearOperator):
        def __init__(self):
            super().__init__((60, 60), torch.float64, symmetric=True)
            self.cols = []

        def _matmat(self, V):
            self.cols.append(V.shape[1])
            return A @ V

    op = Counting()
    t = dc.trace(op, 30, method="hutch++", seed=1, block_size=64, verbose=False)
    assert op.cols == [20, 10]  # sketch (10) + probes (10) in one pass, then Q (10)
    assert t.n_passes == 2 and t.n_matvec == 30
    t = dc.trace(A, 30, seed=1, block_size=8, verbose=False)
    assert t.n_passes == 4


def test_hutch_plus_plus_equals_the_projected_probe_estimator():
    """The samples are (Pz)^T A (Pz), P = I - QQ^T, with Q = orth(A S) (Meyer et al.)."""
    A = dense_symmetric(40, 3)
    t = dc.trace(A, 12, method="hutch++", seed=9, verbose=False)
    g = torch.Generator().manual_seed(9)
    draw = [dc.draw_probes(40, 1, kind="rademacher", generator=g)[0] for _ in range(8)]
    S, Z = torch.stack(draw[:4], 1).double(), torch.stack(draw[4:], 1).double()
    Q = torch.linalg.qr(A @ S)[0]
    PZ = Z - Q @ (Q.T @ Z)
    np.testing.assert_allclose(t.samples, ((PZ * (A @ PZ)).sum(0)).numpy(), rtol=1e-10, atol=1e-10)
    assert t.exact_part == pytest.approx(float(torch.trace(Q.T @ A @ Q)), rel=1e-12)


class Interrupted(RuntimeError):
    pass


def test_checkpoint_resume_is_bit_identical(tmp_path):
    A = dense_symmetric(30, 4)

    class Crashing(dc.LinearOperator):
        def __init__(self, after):
            super().__init__((30, 30), torch.float64, symmetric=True)
            self.after, self.calls = after, 0

        def _matmat(self, V):
            self.calls += 1
            if self.calls > self.after:
                raise Interrupted
            return A @ V

    full = dc.trace(A, 50, seed=3, block_size=8, verbose=False)
    path = tmp_path / "trace.pt"
    with pytest.raises(Interrupted):
        dc.trace(Crashing(3), 50, seed=3, block_size=8, checkpoint=path, verbose=False)
    state = torch.load(path, weights_only=True)
    assert state["done"] == 24
    op = Crashing(100)
    resumed = dc.trace(op, 50, block_size=8, checkpoint=path, verbose=False)  # seed from the file
    assert op.calls == 4  # the 4 blocks left of 7
    assert resumed.value == full.value and resumed.seed == 3
    np.testing.assert_array_equal(resumed.samples, full.samples)
    # a finished checkpoint gives the same estimate without any product
    again = dc.trace(Crashing(0), 50, seed=3, checkpoint=path, verbose=False)
    assert again.value == full.value


def test_checkpoint_of_another_run_is_refused(tmp_path):
    A = dense_symmetric(20, 5)
    path = tmp_path / "trace.pt"
    dc.trace(A, 10, seed=1, checkpoint=path, verbose=False)
    with pytest.raises(ValueError, match="seed"):
        dc.trace(A, 10, seed=2, checkpoint=path, verbose=False)
    with pytest.raises(ValueError, match="probes"):
        dc.trace(A, 12, seed=1, checkpoint=path, verbose=False)
    # another matrix of the same size: its fingerprint differs
    with pytest.raises(ValueError, match=r"saved for another operator \(the matrix entries differ"):
        dc.trace(dense_symmetric(20, 6), 10, seed=1, checkpoint=path, verbose=False)
    shifted = ShiftedOperator(dc.as_operator(A), shift=1.0)
    with pytest.raises(ValueError, match=r"the operator class \(DenseOperator saved, Shifted"):
        dc.trace(shifted, 10, seed=1, checkpoint=path, verbose=False)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid trace checkpoint"):
        dc.trace(A, 10, seed=1, checkpoint=path, verbose=False)
    with pytest.raises(ValueError, match="hutchinson"):
        dc.trace(A, 10, method="hutch++", checkpoint=tmp_path / "x.pt", verbose=False)
