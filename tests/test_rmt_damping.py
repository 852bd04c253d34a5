"""The random-matrix damping learner (linear shrinkage, Granziol & Baskerville; Ledoit & Wolf
2004): the learned intensity against the closed-form optimum of a spiked covariance, the running
sums against dense formulas, and its use by LanczosNewton/LanczosGGN and K-FAC."""

import io
import math

import pytest
import torch
from torch import nn

from _helpers import Vector
from deepcurvature.linalg.shrinkage import ShrinkageDamping, shrinkage_ratio
from deepcurvature.optim.kfac import KFAC
from deepcurvature.optim.lanczos_newton import LanczosGGN, LanczosNewton

DT = torch.float64


def _spiked(P, seed=0):
    """Eigenvalues ``[10, 5, 3, 1, ..., 1]`` in a random basis: ``(Sigma^{1/2}, eigenvalues)``."""
    eig = torch.ones(P, dtype=DT)
    eig[:3] = torch.tensor([10.0, 5.0, 3.0], dtype=DT)
    U, _ = torch.linalg.qr(
        torch.randn(P, P, dtype=DT, generator=torch.Generator().manual_seed(seed))
    )
    return U * eig.sqrt(), eig


def _ledoit_wolf_optimum(eig, B):
    """``beta^2 / delta^2`` of Ledoit & Wolf for ``S = X^T X / B``, Gaussian rows, target ``mu I``.

    ``E ||S - Sigma||_F^2 = (tr Sigma^2 + (tr Sigma)^2) / B``, ``||Sigma - mu I||_F^2`` with
    ``mu = tr Sigma / P``, and ``delta^2 = alpha^2 + beta^2``.
    """
    beta2 = ((eig**2).sum() + eig.sum() ** 2) / B
    alpha2 = ((eig - eig.mean()) ** 2).sum()
    return float(beta2 / (alpha2 + beta2)), float(beta2 / (beta2 + (eig**2).sum()))


def _feed(learner, root, B, batches, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        X = torch.randn(B, root.shape[0], dtype=DT, generator=gen) @ root.T
        learner.update(X.T @ (X @ learner.probes) / B)  # S_b V without forming S_b


def test_learned_shrinkage_matches_ledoit_wolf_on_spiked_covariance():
    P, B = 100, 50
    root, eig = _spiked(P)
    rho_star, rho_towards_zero = _ledoit_wolf_optimum(eig, B)
    # the two targets give clearly different optima: a learner shrinking towards 0 would fail
    assert abs(rho_towards_zero / rho_star - 1) > 0.2
    errors = []
    for seed in range(4):
        learner = ShrinkageDamping(P, probes=32, decay=1.0, seed=seed)
        _feed(learner, root, B, 300, 100 + seed)
        est = learner.estimate()
        errors.append(est.rho / rho_star - 1)
        assert abs(est.mean_eigenvalue - float(eig.mean())) < 0.1 * float(eig.mean())
        assert est.damping == pytest.approx(est.rho / (1 - est.rho) * est.mean_eigenvalue)
    assert max(abs(e) for e in errors) < 0.10, errors
    assert abs(sum(errors) / len(errors)) < 0.05, errors


def test_learned_shrinkage_follows_the_batch_size():
    P = 60
    root, eig = _spiked(P, seed=3)
    for B in (10, 40, 200):
        learner = ShrinkageDamping(P, probes=32, decay=0.99, seed=1)
        _feed(learner, root, B, 200, B)
        rho_star, _ = _ledoit_wolf_optimum(eig, B)
        assert learner.estimate().rho == pytest.approx(rho_star, rel=0.12)


def test_running_sums_equal_the_dense_weighted_formulas():
    torch.manual_seed(0)
    P, k, n = 30, 5, 7
    for decay in (1.0, 0.8):
        learner = ShrinkageDamping(P, probes=k, decay=decay, seed=4)
        V = learner.probes
        assert torch.allclose(V.norm(dim=0), torch.ones(k, dtype=DT))
        mats = []
        base = torch.randn(P, P, dtype=DT)
        for _ in range(n):
            M = base + 0.3 * torch.randn(P, P, dtype=DT)  # a common signal and batch noise
            mats.append(M @ M.T / P)
            learner.update(mats[-1] @ V)
        w = torch.tensor([decay ** (n - 1 - i) for i in range(n)], dtype=DT)
        W, W2 = w.sum(), (w * w).sum()
        prods = torch.stack([Hb @ V for Hb in mats])  # (n, P, k)
        mean = (w[:, None, None] * prods).sum(0) / W
        noise = (w[:, None, None] * (prods - mean) ** 2).sum() / (W - W2 / W)
        mus = torch.stack([torch.trace(V.T @ Hb @ V) / k for Hb in mats])
        spread = (
            sum(
                wi * ((Hb - mu * torch.eye(P, dtype=DT)) @ V).pow(2).sum()
                for wi, Hb, mu in zip(w, mats, mus, strict=True)
            )
            / W
        )
        est = learner.estimate()
        assert est.noise == pytest.approx(float(noise), rel=1e-10)
        assert est.spread == pytest.approx(float(spread), rel=1e-10)
        assert est.mean_eigenvalue == pytest.approx(float((w * mus).sum() / W), rel=1e-10)
        assert est.rho == pytest.approx(float(noise / spread), rel=1e-10)
        assert learner.mean_variance_scale() == pytest.approx(float(W2 / W**2), rel=1e-12)
        # the variance of a running mean: rho = c N / (signal + c N)
        c = learner.mean_variance_scale()
        scaled = learner.estimate(noise_scale=c)
        signal = est.spread - est.noise
        assert scaled.rho == pytest.approx(c * est.noise / (signal + c * est.noise), rel=1e-10)


def test_learner_state_round_trip_and_first_batch():
    P = 20
    learner = ShrinkageDamping(P, probes=3, seed=2)
    assert learner.estimate() is None
    M = torch.randn(P, P, dtype=DT)
    learner.update(M @ M.T @ learner.probes)
    assert learner.estimate() is None  # one batch: no variance
    learner.update(M.T @ M @ learner.probes)
    copy = ShrinkageDamping(
        P, probes=3, seed=2, state={k: v.clone() for k, v in learner.state.items()}
    )
    for other in (learner, copy):
        other.update((M + M.T) @ other.probes)
    assert copy.estimate() == learner.estimate()
    assert shrinkage_ratio(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]))[1].isnan()


@pytest.mark.parametrize(
    "kwargs",
    [dict(probes=0), dict(decay=0.0), dict(decay=1.5), dict(rho_max=1.0), dict(probes=True)],
)
def test_learner_bad_input(kwargs):
    with pytest.raises(ValueError, match="ShrinkageDamping"):
        ShrinkageDamping(10, **kwargs)
    learner = ShrinkageDamping(10, probes=2)
    with pytest.raises(ValueError, match="shape"):
        learner.update(torch.zeros(10, 3, dtype=DT))
    with pytest.raises(FloatingPointError):
        learner.update(torch.full((10, 2), math.nan, dtype=DT))


# ------------------------------------------------------------------ Lanczos Newton optimisers


@pytest.mark.parametrize("cls", [LanczosNewton, LanczosGGN])
def test_rmt_damping_step_is_the_learned_damped_newton_step(cls):
    """Batch ``b`` has curvature ``A_b``; after each step the damping in the state is what a
    learner fed ``A_1 V .. A_b V`` gives, and the step is ``-(A_b + delta I)^{-1} g``."""
    P = 12
    gen = torch.Generator().manual_seed(0)
    mats = []
    for _ in range(4):
        M = torch.randn(P, P, dtype=DT, generator=gen)
        mats.append(M @ M.T / P + 0.5 * torch.eye(P, dtype=DT))
    b = torch.randn(P, dtype=DT, generator=gen)

    def loss_fn(out, y):
        w = out[0]
        return 0.5 * w @ mats[int(y[0])] @ w - b @ w

    model = Vector(torch.randn(P, dtype=DT, generator=gen))
    opt = cls(
        model, lr=1.0, damping="rmt", lanczos_steps=P, rmt_probes=3, rmt_decay=0.7, loss_fn=loss_fn
    )
    reference = ShrinkageDamping(P, probes=3, decay=0.7)
    x = torch.zeros(1, 1, dtype=DT)
    first = opt.state[model.w]
    for i in range(4):
        y = torch.tensor([i])
        w0 = model.w.detach().clone()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        g = model.w.grad.detach().clone()
        opt.set_batch(x, y)
        opt.step()
        reference.update(mats[i] @ reference.probes)
        est = reference.estimate()
        if est is None:
            assert "rmt_damping" not in first
            delta = 10.0  # damping_ratio * lr until the learner has two batches
        else:
            delta = est.damping
            assert float(first["rmt_damping"]) == pytest.approx(delta, rel=1e-12)
            assert float(first["rmt_rho"]) == pytest.approx(est.rho, rel=1e-12)
        step = torch.linalg.solve(mats[i] + delta * torch.eye(P, dtype=DT), g)
        assert torch.allclose(model.w.detach(), w0 - step, atol=1e-9)
    opt.remove_hooks()


def _digits(n=512):
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data[:n], dtype=DT) / 16, torch.tensor(d.target[:n])


@pytest.mark.parametrize("cls", [LanczosNewton, LanczosGGN])
def test_rmt_rho_is_larger_for_smaller_curvature_batches(cls):
    X, Y = _digits()
    rhos = {}
    for bs in (8, 256):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
        # a small lr: H hardly moves, so the variance is the batch noise, not the drift
        opt = cls(model, lr=1e-3, damping="rmt", lanczos_steps=5, rmt_probes=4, rmt_decay=1.0)
        gen = torch.Generator().manual_seed(1)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(12):
            idx = torch.randint(0, len(X), (bs,), generator=gen)
            opt.zero_grad()
            loss_fn(model(X[idx]), Y[idx]).backward()
            opt.step()
        rhos[bs] = float(opt.state[next(model.parameters())]["rmt_rho"])
        opt.remove_hooks()
    assert 0 < rhos[256] < rhos[8] < 1
    assert rhos[8] > 3 * rhos[256], rhos


def test_rmt_state_dict_resume_is_exact():
    X, Y = _digits(256)
    X = X.float()
    loss_fn = nn.CrossEntropyLoss()

    def run(model, opt, steps, start):
        gen = torch.Generator().manual_seed(start)
        for _ in range(steps):
            idx = torch.randint(0, len(X), (32,), generator=gen)
            opt.zero_grad()
            loss_fn(model(X[idx]), Y[idx]).backward()
            opt.step()

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
        return model, LanczosNewton(model, lr=0.05, damping="rmt", lanczos_steps=4)

    model, opt = make()
    run(model, opt, 3, 1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    run(model, opt, 3, 2)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, opt2 = make()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    run(model2, opt2, 3, 2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    opt.remove_hooks()
    opt2.remove_hooks()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(damping="auto"), "'rmt'"),
        (dict(damping="rmt", rmt_probes=0), "rmt_probes"),
        (dict(damping="rmt", rmt_decay=0.0), "rmt_decay"),
        (dict(damping="rmt", rmt_decay="x"), "rmt_decay"),
    ],
)
def test_rmt_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanczosGGN(nn.Linear(3, 2), **kwargs)
    if "rmt_decay" not in kwargs:
        with pytest.raises(ValueError, match=match):
            KFAC(nn.Linear(3, 2), **kwargs)


# ------------------------------------------------------------------ K-FAC
def test_kfac_rmt_shrinks_each_factor_with_the_learned_intensity():
    """A bias-free linear layer fed Gaussian inputs: the learner of its factor ``A`` sees the
    batch covariances ``S_b``, so its batch intensity is Ledoit-Wolf's optimum (a spread
    spectrum: the probe error of a spiked one is tested above); the inverse used is
    ``(A + rho'/(1 - rho') mu_A I)^{-1}`` with ``rho'`` for the running average."""
    P, B = 40, 64
    eig = torch.linspace(0.2, 3.0, P, dtype=DT)
    gen = torch.Generator().manual_seed(5)
    U, _ = torch.linalg.qr(torch.randn(P, P, dtype=DT, generator=gen))
    root = U * eig.sqrt()
    layer = nn.Linear(P, 3, bias=False).double()
    opt = KFAC(layer, lr=1e-3, damping="rmt", rmt_probes=16, stat_decay=0.99, kl_clip=None)
    gen = torch.Generator().manual_seed(7)
    for _ in range(200):
        x = torch.randn(B, P, dtype=DT, generator=gen) @ root.T
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    state = opt.state[layer.weight]
    learner = ShrinkageDamping(P, probes=16, decay=0.99, seed=0, state=state["rmt_A"])
    rho_star, _ = _ledoit_wolf_optimum(eig, B)
    assert learner.estimate().rho == pytest.approx(rho_star, rel=0.05)
    running = learner.estimate(noise_scale=learner.mean_variance_scale())
    assert float(state["rmt_rho_A"]) == pytest.approx(running.rho, rel=1e-12)
    assert running.rho < 0.5 * learner.estimate().rho  # averaging removes most of the noise
    A = state["A"]
    mu = float(torch.trace(A)) / P
    shift = running.rho / (1 - running.rho) * mu
    assert float(state["rmt_shift_A"]) == pytest.approx(shift, rel=1e-12)
    opt._update_inverses(opt.layers[0], opt.param_groups[0])
    expected = torch.linalg.inv(A + shift * torch.eye(P, dtype=DT))
    assert torch.allclose(state["A_inv"], expected, rtol=1e-8, atol=1e-10)
    opt.remove_hooks()


def test_kfac_rmt_trains_the_digits_mlp():
    X, Y = _digits()
    X = X.float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = KFAC(model, lr=0.05, damping="rmt", damping_mode="eigen")
    loss_fn = nn.CrossEntropyLoss()
    start = loss_fn(model(X), Y).item()
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, len(X), (32,), generator=gen)
        opt.zero_grad()
        loss_fn(model(X[idx]), Y[idx]).backward()
        opt.step()
    assert loss_fn(model(X), Y).item() < 0.3 * start
    state = opt.state[model[0].weight]
    assert 0 < float(state["rmt_rho_G"]) < 1 and 0 <= float(state["rmt_rho_A"]) < 1
    opt.remove_hooks()
