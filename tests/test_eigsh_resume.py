"""eigsh checkpoints: an interrupted solve continues bit for bit; other runs' states are refused."""

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _helpers import rotate
from deepcurvature.linalg.operator import DenseOperator

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupts(DenseOperator):
    """A dense matrix whose ``n``-th product raises KeyboardInterrupt (a user's Ctrl-C).

    ``n = 0`` never interrupts. Its fingerprint is a dense matrix's (class and entries).
    """

    def __init__(self, A, n=0):
        super().__init__(A)
        self.n, self.calls = n, 0

    def _matmat(self, V):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super()._matmat(V)


def spectrum(P=300, seed=0):
    rng = np.random.default_rng(seed)
    d = np.concatenate([[9.0, 8.7, 8.5], rng.uniform(-2, 8, P - 3)])
    return rotate(d, seed + 1)


def same(a, b):
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.residual_norms, b.residual_norms)
    assert torch.equal(a.vectors, b.vectors)
    assert (a.n_matvec, a.n_restarts, a.converged, a.seed, a.warm_matvec) == (
        b.n_matvec,
        b.n_restarts,
        b.converged,
        b.seed,
        b.warm_matvec,
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"tol": 1e-10},
        {"tol": 1e-9, "accuracy": "value", "verify": False, "which": "BE"},
        {"tol": 1e-10, "which": "SA", "ncv": 9},
    ],
    ids=["residual", "value-both-ends", "small-ncv"],
)
@pytest.mark.parametrize("stop_at", [5, 23, 41])
def test_an_interrupted_solve_continues_bit_for_bit(tmp_path, kw, stop_at):
    A = spectrum()
    args = {"ncv": 10, "seed": 4, "verbose": False, **kw}
    counted = Interrupts(A)
    full = dc.eigsh(counted, 3, **args)
    assert full.n_restarts >= 2 and full.converged  # several restarts to cross
    ckpt = tmp_path / "eig.pt"
    with pytest.raises(KeyboardInterrupt):
        dc.eigsh(Interrupts(A, stop_at), 3, checkpoint=ckpt, checkpoint_every=4, **args)
    assert ckpt.is_file()  # kept for the continuation
    with pytest.raises(ValueError, match="the operator class .*Interrupts saved, DenseOperator"):
        dc.eigsh(A, 3, checkpoint=ckpt, checkpoint_every=4, **args)  # not the same operator
    saved_steps = torch.load(ckpt, weights_only=True)["n_matvec"]
    assert saved_steps >= 4
    op = Interrupts(A)
    again = dc.eigsh(op, 3, checkpoint=ckpt, checkpoint_every=4, **args)
    same(again, full)
    assert op.calls <= counted.calls - saved_steps  # continued, not started over
    assert not ckpt.exists()  # ours, removed when the solve ends


def test_seed_none_continues_with_the_saved_seed_and_twice_interrupted(tmp_path):
    A = spectrum(seed=3)
    ckpt = tmp_path / "eig.pt"
    with pytest.raises(KeyboardInterrupt):
        dc.eigsh(
            Interrupts(A, 12), 2, tol=1e-10, checkpoint=ckpt, checkpoint_every=3, verbose=False
        )
    saved_seed = torch.load(ckpt, weights_only=True)["run"]["seed"]
    with pytest.raises(KeyboardInterrupt):  # interrupted again after continuing
        dc.eigsh(Interrupts(A, 9), 2, tol=1e-10, checkpoint=ckpt, checkpoint_every=3, verbose=False)
    again = dc.eigsh(
        Interrupts(A), 2, tol=1e-10, checkpoint=ckpt, verbose=False, checkpoint_every=3
    )
    assert again.seed == saved_seed
    same(again, dc.eigsh(A, 2, tol=1e-10, seed=saved_seed, verbose=False))


def mlp_data(n=200, batch=40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class StopsAfter(list):
    """Batches whose ``n``-th pass is interrupted (Ctrl-C while the data loads)."""

    def __init__(self, batches, n):
        super().__init__(batches)
        self.n, self.passes = n, 0

    def __iter__(self):
        self.passes += 1
        if self.passes == self.n:
            raise KeyboardInterrupt
        return super().__iter__()


def test_a_hessian_solve_with_warm_start_continues_and_refuses_other_runs(tmp_path):
    model, batches = mlp_data()
    loss = nn.CrossEntropyLoss()
    H = dc.hessian(model, loss, batches)
    opts = dict(tol=1e-9, accuracy="value", seed=2, warm_start="batch", verbose=False)
    full = dc.eigsh(H, 2, **opts)
    ckpt = tmp_path / "h.pt"
    with pytest.raises(KeyboardInterrupt):
        dc.eigsh(
            dc.hessian(model, loss, StopsAfter(batches, 9)),
            2,
            checkpoint=ckpt,
            checkpoint_every=2,
            **opts,
        )
    state = ckpt.read_bytes()

    # another run's arguments, or another model, are refused in one line; the state is untouched
    with pytest.raises(ValueError, match=r"eigsh state .* saved for another run: k \(2 saved, 3"):
        dc.eigsh(H, 3, checkpoint=ckpt, **opts)
    with pytest.raises(ValueError, match=r"tol \(1e-09 saved, 1e-08 now\)"):
        dc.eigsh(H, 2, checkpoint=ckpt, **{**opts, "tol": 1e-8})
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-12
    with pytest.raises(ValueError, match="the model parameters differ; delete .* to start afresh"):
        dc.eigsh(dc.hessian(model, loss, batches), 2, checkpoint=ckpt, **opts)
    with torch.no_grad():
        model[0].weight[0, 0] -= 1e-12
    with pytest.raises(ValueError, match=r"the number of samples N \(200 saved, 160 now\)"):
        dc.eigsh(dc.hessian(model, loss, batches[:4]), 2, checkpoint=ckpt, **opts)
    with pytest.raises(ValueError, match="is not a Lanczos state file"):
        dc.lanczos(H, 5, checkpoint=ckpt, verbose=False)
    assert ckpt.read_bytes() == state

    counted = StopsAfter(batches, 0)
    again = dc.eigsh(dc.hessian(model, loss, counted), 2, checkpoint=ckpt, **opts)
    same(again, full)
    assert counted.passes < full.n_matvec  # continued: no warm start, fewer passes
    assert again.warm_matvec > 0 and not ckpt.exists()


def test_checkpoint_arguments_and_foreign_files(tmp_path):
    A = spectrum(P=60)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        dc.eigsh(A, 1, ncv=8, checkpoint=tmp_path / "s.pt", checkpoint_every=0, verbose=False)
    foreign = tmp_path / "model.pt"
    torch.save({"weights": torch.ones(3)}, foreign)
    with pytest.raises(ValueError, match="is not an eigsh state file"):
        dc.eigsh(A, 1, ncv=8, checkpoint=foreign, verbose=False)
    assert torch.load(foreign, weights_only=True)["weights"].sum() == 3  # left untouched
    # a solve that ends before its first checkpoint leaves no file; the dense path ignores it
    dc.eigsh(A, 1, ncv=8, checkpoint=tmp_path / "none.pt", checkpoint_every=10_000, verbose=False)
    dc.eigsh(A, 1, ncv=60, checkpoint=tmp_path / "dense.pt", checkpoint_every=1, verbose=False)
    assert not (tmp_path / "none.pt").exists() and not (tmp_path / "dense.pt").exists()
