"""Stochastic Lanczos Newton optimisers (paper section 2.2): exact damped Newton steps on a
quadratic, Newton-speed convergence on logistic regression, saddle-free behaviour at a saddle,
state-dict round trips and bad input."""

import io
import itertools

import pytest
import torch
from torch import nn

from _helpers import Vector
from deepcurvature.optim.lanczos_newton import LanczosGGN, LanczosNewton

DT = torch.float64


def _spd(P, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(P, P, generator=g, dtype=DT)
    eig = torch.logspace(-1, 1, P, dtype=DT)
    Q, _ = torch.linalg.qr(M)
    return Q @ torch.diag(eig) @ Q.T, torch.randn(P, generator=g, dtype=DT)


def _manual_step(opt, model, loss_fn, x, y, explicit=True):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    if explicit:
        opt.set_batch(x, y)
    opt.step()
    return loss.item()


# ----------------------------------------------------------------------------- quadratic
@pytest.mark.parametrize("cls", [LanczosNewton, LanczosGGN])
def test_full_krylov_step_is_damped_newton_on_quadratic(cls):
    P, delta = 20, 1e-3
    A, b = _spd(P)
    model = Vector(torch.randn(P, dtype=DT, generator=torch.Generator().manual_seed(1)))
    w0 = model.w.detach().clone()

    def loss_fn(out, y):
        w = out[0]
        return 0.5 * w @ A @ w - b @ w

    x, y = torch.zeros(1, 1, dtype=DT), torch.zeros(1, dtype=DT)
    opt = cls(model, lr=1.0, damping=delta, lanczos_steps=P, loss_fn=loss_fn)
    _manual_step(opt, model, loss_fn, x, y)
    g = A @ w0 - b
    expected = w0 - torch.linalg.solve(A + delta * torch.eye(P, dtype=DT), g)
    assert torch.allclose(model.w.detach(), expected, rtol=0, atol=1e-10)
    opt.remove_hooks()


def test_default_damping_follows_the_learning_rate():
    A, b = _spd(6)
    model = Vector(torch.ones(6, dtype=DT))
    opt = LanczosNewton(model, lr=0.1, loss_fn=lambda o, y: 0.5 * o[0] @ A @ o[0] - b @ o[0])
    assert opt._damping(opt.param_groups[0]) == pytest.approx(1.0)  # delta = 10 alpha
    opt.param_groups[0]["lr"] = 0.02
    assert opt._damping(opt.param_groups[0]) == pytest.approx(0.2)
    opt.remove_hooks()


# ----------------------------------------------------------------------------- logistic
def _logistic_data(n=200, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1.5, 0.5, d, dtype=DT)  # ill-conditioned features
    x = torch.randn(n, d, generator=g, dtype=DT) * scales
    w_true = torch.randn(d, generator=g, dtype=DT) / scales
    y = ((x @ w_true + 0.5 * torch.randn(n, generator=g, dtype=DT)) > 0).to(DT)[:, None]
    return x, y


def _logistic_model(d):
    torch.manual_seed(0)
    model = nn.Linear(d, 1).to(DT)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def _objective(model, x, y, lam):
    with torch.no_grad():
        data = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        return float(data + 0.5 * lam * sum((p**2).sum() for p in model.parameters()))


def _optimum(x, y, lam):
    """Many exact Newton steps on the dense Hessian of the regularised objective."""
    d = x.shape[1]
    theta = torch.zeros(d + 1, dtype=DT)

    def f(t):
        logits = x @ t[:d] + t[d]
        return nn.functional.binary_cross_entropy_with_logits(logits, y[:, 0]) + 0.5 * lam * (t @ t)

    for _ in range(40):
        g = torch.autograd.functional.jacobian(f, theta)
        H = torch.autograd.functional.hessian(f, theta)
        theta = theta - torch.linalg.solve(H, g)
    return float(f(theta))


def test_lanczos_ggn_reaches_the_logistic_optimum_far_faster_than_sgd():
    x, y = _logistic_data()
    lam = 1e-3
    best = _optimum(x, y, lam)
    loss = nn.BCEWithLogitsLoss()

    model = _logistic_model(x.shape[1])
    opt = LanczosGGN(model, lr=1.0, damping=1e-10, lanczos_steps=20, weight_decay=lam)
    steps = None
    for k in range(30):
        _manual_step(opt, model, loss, x, y, explicit=False)  # hooks record x, y and the loss
        if _objective(model, x, y, lam) - best < 1e-8:
            steps = k + 1
            break
    opt.remove_hooks()
    assert steps is not None and steps <= 30

    sgd_model = _logistic_model(x.shape[1])
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1.0, weight_decay=lam)
    for _ in range(300):
        sgd.zero_grad()
        loss(sgd_model(x), y).backward()
        sgd.step()
    assert _objective(sgd_model, x, y, lam) - best > 1e-3


# ----------------------------------------------------------------------------- saddle
def _saddle_loss(out, y):
    w = out[0]
    return w[0] ** 2 - w[1] ** 2 + 0.5 * w[1] ** 4 + 0.25 * w[0] ** 4


def test_saddle_free_newton_escapes_where_damped_newton_is_attracted():
    start = torch.tensor([0.5, 0.01], dtype=DT)
    x, y = torch.zeros(1, 1, dtype=DT), torch.zeros(1, dtype=DT)
    delta = 0.01

    # reference: plain damped Newton w <- w - (H + delta I)^{-1} g, computed densely
    w = start.clone()
    for _ in range(5):
        g = torch.autograd.functional.jacobian(lambda v: _saddle_loss(v[None], None), w)
        H = torch.autograd.functional.hessian(lambda v: _saddle_loss(v[None], None), w)
        w = w - torch.linalg.solve(H + delta * torch.eye(2, dtype=DT), g)
    assert abs(float(w[1])) < 1e-4  # pulled onto the saddle at w1 = 0

    model = Vector(start)
    opt = LanczosNewton(model, lr=1.0, damping=delta, lanczos_steps=2, loss_fn=_saddle_loss)
    losses = [_objective_ce(model, x, y, _saddle_loss)]
    w1 = [abs(model.w[1].item())]
    for _ in range(5):
        _manual_step(opt, model, _saddle_loss, x, y)
        losses.append(_objective_ce(model, x, y, _saddle_loss))
        w1.append(abs(model.w[1].item()))
    opt.remove_hooks()
    assert all(b > a for a, b in itertools.pairwise(w1))  # |w1| grows every step
    assert all(b < a for a, b in itertools.pairwise(losses))  # loss decreases
    assert w1[-1] > 0.1


# ----------------------------------------------------------------------------- state
def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)


def _batches(n_batches=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 5, generator=g, dtype=DT), torch.randint(0, 3, (16,), generator=g))
        for _ in range(n_batches)
    ]


def _reload(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("cls", [LanczosNewton, LanczosGGN])
def test_state_dict_round_trip_continues_identically(cls):
    kwargs = dict(
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        lanczos_steps=5,
        refresh_every=3,
        curvature_batch_size=8,
        outside="scale",
    )
    loss = nn.CrossEntropyLoss()
    data = _batches()

    ref = _mlp()
    ref_opt = cls(ref, **kwargs)
    for x, y in data:
        _manual_step(ref_opt, ref, loss, x, y, explicit=False)

    first = _mlp()
    opt = cls(first, **kwargs)
    for x, y in data[:4]:  # stop between two refreshes: the cached basis must travel
        _manual_step(opt, first, loss, x, y, explicit=False)
    saved = _reload({"model": first.state_dict(), "opt": opt.state_dict()})
    assert "krylov_basis" in opt.state[next(first.parameters())]
    opt.remove_hooks()

    resumed = _mlp(seed=7)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for x, y in data[4:]:
        _manual_step(opt2, resumed, loss, x, y, explicit=False)
    for a, b in zip(ref.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state[next(resumed.parameters())]["step"] == len(data)
    ref_opt.remove_hooks()
    opt2.remove_hooks()


def test_refresh_reuses_the_basis_and_outside_modes_differ():
    loss = nn.CrossEntropyLoss()
    x, y = _batches(1)[0]
    results = {}
    for outside in ("scale", "drop"):
        model = _mlp()
        opt = LanczosGGN(model, lr=0.1, lanczos_steps=3, refresh_every=10, outside=outside)
        _manual_step(opt, model, loss, x, y, explicit=False)
        basis = opt.state[model[0].weight]["krylov_basis"].clone()
        _manual_step(opt, model, loss, x, y, explicit=False)
        assert torch.equal(opt.state[model[0].weight]["krylov_basis"], basis)  # not refreshed
        results[outside] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        opt.remove_hooks()
    assert not torch.allclose(results["scale"], results["drop"])


def test_independent_curvature_data_and_parameter_subset():
    loss = nn.CrossEntropyLoss()
    data = _batches(3)
    model = _mlp()
    frozen = model[0].weight.detach().clone()
    opt = LanczosNewton(model, lr=0.05, params=["2.*"], curvature_data=data[1:], lanczos_steps=4)
    before = _objective_ce(model, *data[0], loss)
    for _ in range(3):
        _manual_step(opt, model, loss, *data[0], explicit=False)
    opt.remove_hooks()
    assert torch.equal(model[0].weight, frozen)
    assert _objective_ce(model, *data[0], loss) < before


def _objective_ce(model, x, y, loss):
    with torch.no_grad():
        return float(loss(model(x), y))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=0.0), "lr must be positive"),
        (dict(lr=-1.0), "lr must be positive"),
        (dict(lr=float("nan")), "lr=nan is not a finite number"),
        (dict(damping=0.0), "damping must be positive"),
        (dict(damping_ratio=-1.0), "damping_ratio must be positive"),
        (dict(lanczos_steps=0), "lanczos_steps must be a positive integer"),
        (dict(refresh_every=0), "refresh_every must be a positive integer"),
        (dict(curvature_batch_size=0), "curvature_batch_size must be a positive integer"),
        (dict(outside="keep"), "outside must be one of"),
        (dict(bn_mode="batch"), "bn_mode must be one of"),
        (dict(momentum=-0.1), "momentum must be non-negative"),
    ],
)
def test_bad_hyperparameters_raise_one_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanczosNewton(_mlp(), **kwargs)


def test_bad_input_at_step():
    loss = nn.CrossEntropyLoss()
    x, y = _batches(1)[0]
    with pytest.raises(TypeError, match="needs the model"):
        LanczosNewton(list(_mlp().parameters()))

    model = _mlp()
    opt = LanczosNewton(model, curvature_batch_size=32)
    with pytest.raises(ValueError, match="curvature_batch_size=32 is larger than the batch"):
        _manual_step(opt, model, loss, x, y, explicit=False)
    opt.remove_hooks()

    model = _mlp()
    opt = LanczosNewton(model)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # functional loss: no targets recorded
    with pytest.raises(RuntimeError, match="set_batch"):
        opt.step()
    opt.set_batch(x, y)
    opt.step()  # works once the batch is given

    opt.zero_grad()
    loss(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="gradient is not finite.*lower the learning"):
        opt.step()

    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    opt.zero_grad()
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    for p in list(model.parameters())[1:]:
        p.grad = torch.ones_like(p)
    opt.set_batch(x, y)
    with pytest.raises(FloatingPointError, match="not finite.*raise the damping"):
        opt.step()
    opt.remove_hooks()


# ----------------------------------------------------------------------------- train_network
@pytest.mark.parametrize("cls", [LanczosNewton, LanczosGGN])
def test_trains_inside_train_network_unchanged(cls):
    from deepcurvature.optim import registry
    from deepcurvature.training.train import train_network

    name = f"{cls.__name__}TestOnly"
    registry.register_optimizer(name, defaults={"lr": 0.1}, needs_model=True)(cls)
    try:
        res = train_network(
            None,
            dataset="digits",
            model="mlp",
            epochs=2,
            batch_size=64,
            subsample=256,
            optimizer=name,
            optimizer_kwargs={"lanczos_steps": 5},
            verbose=False,
            device="cpu",
            seed=0,
        )
    finally:
        registry._REGISTRY.pop(registry._key(name))
    losses = res.column("train_loss")
    assert losses[-1] < losses[0]
    assert not res.optimizer._handles  # train_network removed the hooks
    assert res.optimizer.state[next(res.model.parameters())]["step"] == 8


def test_float64_curvature_of_a_float32_batch_norm_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    x, y = _batches(1)[0]
    x = x.float()
    loss = nn.CrossEntropyLoss()
    for bn_mode in ("train", "eval"):
        opt = LanczosGGN(model, lr=0.1, lanczos_steps=4, dtype=torch.float64, bn_mode=bn_mode)
        before = _objective_ce(model, x, y, loss)
        _manual_step(opt, model, loss, x, y, explicit=False)
        opt.remove_hooks()
        assert opt.state[model[0].weight]["krylov_basis"].dtype == torch.float32
        assert _objective_ce(model, x, y, loss) < before


@pytest.mark.parametrize("name", ["LanczosNewton", "LanczosGGN"])
def test_by_name_in_train_network_and_resume_is_exact(tmp_path, name):
    import deepcurvature as dc

    args = dict(optimizer=name, optimizer_kwargs={"lanczos_steps": 5}, save_freq=1, seed=0,
                subsample=96, batch_size=32, verbose=False)  # fmt: skip
    full = dc.train_network(tmp_path / "full", "digits", epochs=2, **args)
    assert full.stats[-1]["train_loss"] < full.stats[0]["train_loss"]  # it learns
    start = tmp_path / "full" / "checkpoint-00001.pt"
    resumed = dc.train_network(tmp_path / "branch", "digits", epochs=2, resume=start, **args)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damping", [1e-12, "rmt"])
def test_diverging_newton_run_is_the_training_diverged_error(tmp_path, damping):
    """A huge step gives a NaN loss: train_network and the CLI stop with the same one-line
    "training diverged" error as for SGD, not a traceback from the Lanczos code."""
    import deepcurvature as dc
    from _helpers import cli
    from deepcurvature.training.train import TrainingDivergedError

    kwargs = {"lr": 1e8, "damping": damping, "lanczos_steps": 3, "momentum": 0.0}
    with pytest.raises(TrainingDivergedError) as info:
        dc.train_network(
            None, "digits", optimizer="LanczosNewton", optimizer_kwargs=kwargs, epochs=2,
            batch_size=64, subsample=256, seed=0, verbose=False,
        )  # fmt: skip
    text = str(info.value)
    assert text.startswith("training diverged at epoch 1, step ") and "\n" not in text
    assert "lower the learning rate" in text

    if damping == "rmt":
        return
    import json

    proc = cli(
        "train", "--dir", tmp_path / "run", "--optimizer", "LanczosNewton", "--epochs", "2",
        "--subsample", "256", "--optimizer-kwargs", json.dumps(kwargs), "--seed", "0",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("deepcurvature train: error: training diverged at epoch ")
    assert proc.stderr.strip().endswith(errors[0])
    assert not (tmp_path / "run").exists()  # nothing of the failed run is left
