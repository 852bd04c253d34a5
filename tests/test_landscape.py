"""Loss landscapes: exact values against independent evaluations, the quadratic model against
dense float64 Hessians, filter normalisation, batch-norm handling, files and figures."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import deepcurvature as dc
from _helpers import dense_hessian_and_gradient
from deepcurvature.analysis.landscape import LandscapeResult


# ----------------------------------------------------------------------------------- helpers
def tanh_mlp(seed=0, d_in=4, width=6, d_out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, d_out)).double()


def regression_data(seed=1, n=40, d_in=4, d_out=3, batch=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def class_data(seed=2, n=50, d_in=4, classes=3, batch=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 8)
        self.bn1 = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.tanh(self.bn1(self.fc(h.flatten(1)))))


def bn_model_and_data(seed=3):
    torch.manual_seed(seed)
    model = BNNet().double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(44, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (44,), generator=g)
    data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 44, 16)]
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for xb, _ in data:
            model(xb * 1.5 + 0.3)
    return model, data


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def with_params(model, vector):
    """A deep copy of model whose parameters are set from the flat vector."""
    other = copy.deepcopy(model)
    offset = 0
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(vector[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    return other


def plain_metrics(model, loss_fn, data):
    """Mean loss and accuracy over the data, by a plain loop in eval mode."""
    model = copy.deepcopy(model).eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in data:
            out = model(x)
            total += float(loss_fn(out, y)) * len(y)
            if not y.is_floating_point():
                correct += int((out.argmax(1) == y).sum())
            n += len(y)
    return total / n, correct / n


def snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [getattr(m, "momentum", None) for m in model.modules()],
    )


def assert_unchanged(model, snap):
    state, flags, momenta = snap
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert [m.training for m in model.modules()] == flags
    assert [getattr(m, "momentum", None) for m in model.modules()] == momenta


def spectrum_of(model, loss_fn, data, steps):
    return dc.spectrum(model, loss_fn, data, steps=steps, seed=0, store_vectors=True, verbose=False)


# -------------------------------------------------------------------------- values at points
def test_origin_equals_independent_loss_and_accuracy():
    model, data = tanh_mlp(), class_data()
    test = class_data(seed=7, n=30)
    loss_fn = nn.CrossEntropyLoss()
    res = dc.loss_landscape(model, loss_fn, data, test, directions="gaussian:2", dist=0.3,
                            n_points=5, seed=0, verbose=False)  # fmt: skip
    train_loss, train_acc = plain_metrics(model, loss_fn, data)
    test_loss, test_acc = plain_metrics(model, loss_fn, test)
    assert res.origin["train_loss"] == pytest.approx(train_loss, rel=1e-13)
    assert res.origin["test_loss"] == pytest.approx(test_loss, rel=1e-13)
    assert res.origin["train_accuracy"] == pytest.approx(train_acc)
    assert res.origin["test_accuracy"] == pytest.approx(test_acc)
    j0 = int(np.flatnonzero(res.t == 0)[0])
    np.testing.assert_allclose(res.train_loss[:, j0], train_loss, rtol=1e-13)
    np.testing.assert_allclose(res.test_accuracy[:, j0], test_acc)
    # every other point equals the loss of a copy of the model moved there
    U = torch.stack([torch.as_tensor(res_dir) for res_dir in _directions(model, res)], dim=1)
    w = flat_params(model)
    for d in range(2):
        for j in (0, 1, 4):
            moved = with_params(model, w + float(res.t[j]) * U[:, d])
            loss, acc = plain_metrics(moved, loss_fn, data)
            t_loss, t_acc = plain_metrics(moved, loss_fn, test)
            assert res.train_loss[d, j] == pytest.approx(loss, rel=1e-12)
            assert res.train_accuracy[d, j] == pytest.approx(acc)
            assert res.test_loss[d, j] == pytest.approx(t_loss, rel=1e-12)
            assert res.test_accuracy[d, j] == pytest.approx(t_acc)
    assert res.info["passes"] == {"train": 1, "test": 1, "bn_statistics": 0, "quadratic": 2}


def _directions(model, res):
    """Rebuild the seeded gaussian directions of a result the way resolve_directions does."""
    dirs = dc.resolve_directions("gaussian:2", model=model, seed=res.config["seed"])
    assert [d.label for d in dirs] == res.labels
    return [d.vector for d in dirs]


def test_points_per_pass_does_not_change_the_values():
    model, data = tanh_mlp(), class_data()
    kw = {"directions": "random:2", "dist": 0.5, "n_points": 7, "seed": 3, "verbose": False}
    a = dc.loss_landscape(model, nn.CrossEntropyLoss(), data, **kw)
    b = dc.loss_landscape(model, nn.CrossEntropyLoss(), data, points_per_pass=2, **kw)
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-14)
    assert b.info["passes"]["train"] == 7  # 13 points (origin + 12) in passes of 2
    assert a.info["passes"]["train"] == 1


# ------------------------------------------------------------------------- quadratic model
def test_quadratic_model_error_is_third_order_along_an_eigenvector():
    model, data = tanh_mlp(seed=5), regression_data()
    loss_fn = nn.MSELoss()
    H, _ = dense_hessian_and_gradient(model, loss_fn, data)
    evals, evecs = torch.linalg.eigh(H)
    u = evecs[:, -1]
    errors = []
    for h in (0.08, 0.04, 0.02):
        res = dc.loss_landscape(model, loss_fn, data, directions=[("top", u)], dist=h,
                                n_points=3, verbose=False)  # fmt: skip
        assert res.thetas[0] == pytest.approx(float(evals[-1]), rel=1e-10)
        errors.append(np.abs(res.train_loss[0] - res.quadratic[0])[[0, 2]])
    errors = np.array(errors)  # (3 step sizes, 2 sides)
    assert errors.max() < 1e-3 and errors.min() > 1e-12  # above round-off
    ratios = errors[:-1] / errors[1:]  # halving t divides a cubic error by 8
    np.testing.assert_allclose(ratios, 8.0, rtol=0.15)
    # with a wrong curvature the error would be second order: the test can fail
    wrong = res.quadratic[0] + 0.05 * res.thetas[0] * res.t**2
    assert abs(res.train_loss[0, 0] - wrong[0]) > 10 * errors[-1, 0]


def test_theta_slope_and_uhu_match_dense_hessian():
    model, data = tanh_mlp(seed=4), class_data()
    loss_fn = nn.CrossEntropyLoss()
    H, g = dense_hessian_and_gradient(model, loss_fn, data)
    v = torch.linspace(-1, 1, H.shape[0], dtype=torch.float64)
    res = dc.loss_landscape(model, loss_fn, data, directions=["random:1", "gaussian:1", v],
                            dist=0.1, n_points=3, seed=11, verbose=False)  # fmt: skip
    dirs = dc.resolve_directions(["random:1", "gaussian:1", v], model=model, seed=11)
    U = torch.stack([d.vector for d in dirs], dim=1)
    np.testing.assert_allclose(res.uhu, (U.T @ H @ U).numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.slopes, (g @ U).numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.norms, U.norm(dim=0).numpy(), rtol=1e-14)
    np.testing.assert_allclose(res.rayleigh_quotients, np.diag(res.uhu) / res.norms**2)
    expected = (
        res.origin["train_loss"]
        + res.slopes[:, None] * res.t
        + 0.5 * res.thetas[:, None] * res.t**2
    )
    np.testing.assert_allclose(res.quadratic, expected, rtol=1e-14)
    assert res.kinds == ["random", "gaussian", "given"]
    assert np.isnan(res.eigenvalues).all() and (res.ritz_indices == -1).all()


def test_eigen_directions_theta_ritz_and_rayleigh_agree_for_a_hessian_spectrum():
    model, data = tanh_mlp(seed=6), class_data()
    loss_fn = nn.CrossEntropyLoss()
    P = sum(p.numel() for p in model.parameters())
    spec = spectrum_of(model, loss_fn, data, steps=P)  # full Krylov space: exact eigenpairs
    H, _ = dense_hessian_and_gradient(model, loss_fn, data)
    exact = torch.linalg.eigvalsh(H).numpy()
    res = dc.loss_landscape(model, loss_fn, data, spectrum=spec, directions="extremes:2",
                            dist=0.2, n_points=3, verbose=False)  # fmt: skip
    np.testing.assert_allclose(res.eigenvalues, exact[[-1, -2, 0, 1]], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.thetas, res.eigenvalues, rtol=1e-8, atol=1e-10)
    off = res.uhu - np.diag(np.diag(res.uhu))
    assert np.abs(off).max() < 1e-8  # Ritz vectors are H-orthogonal
    ritz = dc.loss_landscape(model, loss_fn, data, spectrum=spec, directions="extremes:2",
                             dist=0.2, n_points=3, theta="ritz", verbose=False)  # fmt: skip
    np.testing.assert_allclose(ritz.thetas, ritz.eigenvalues * ritz.norms**2, rtol=1e-15)
    assert ritz.info["passes"]["quadratic"] == 1  # the gradient only
    np.testing.assert_allclose(ritz.train_loss, res.train_loss, rtol=1e-14)


def test_eigsh_eigenvectors_as_directions():
    model, data = tanh_mlp(seed=13), class_data()
    loss_fn = nn.CrossEntropyLoss()
    op = dc.hessian(model, loss_fn, data)
    pairs = dc.eigsh(op, 2, which="LA", seed=0, verbose=False)
    res = dc.loss_landscape(model, loss_fn, data, spectrum=pairs, directions="largest:2",
                            dist=0.1, n_points=3, verbose=False)  # fmt: skip
    assert res.labels == ["eigenvector #1", "eigenvector #0"]
    H, _ = dense_hessian_and_gradient(model, loss_fn, data)
    np.testing.assert_allclose(res.thetas, torch.linalg.eigvalsh(H).numpy()[[-1, -2]], rtol=1e-8)


# ------------------------------------------------------------------------ direction choice
def test_direction_specs_select_the_right_ritz_vectors():
    model, data = tanh_mlp(seed=8), class_data()
    spec = spectrum_of(model, nn.CrossEntropyLoss(), data, steps=12)
    vals = spec.ritz_values
    pick = lambda s: dc.resolve_directions(s, model=model, spectrum=spec)  # noqa: E731
    assert [d.ritz_index for d in pick("largest:3")] == [11, 10, 9]
    assert [d.ritz_index for d in pick("smallest:2")] == [0, 1]
    assert [d.ritz_index for d in pick(["index:-1", 3, "index:3"])] == [11, 3]  # no repeats
    assert [d.ritz_index for d in pick("extremes:8")] == [11, 10, 9, 8, 7, 6, 5, 4, 0, 1, 2, 3]
    assert [d.ritz_index for d in pick("all")] == list(range(12))
    x = 0.5 * (vals[4] + vals[5]) + 1e-9
    assert pick(f"eigenvalue:{x}")[0].ritz_index == 5
    neg = np.flatnonzero(vals < 0)
    assert neg.size >= 1  # an untrained network has negative curvature
    assert [d.ritz_index for d in pick("most-negative:50")] == list(neg)
    d = pick("largest")[0]
    assert d.eigenvalue == vals[-1] and d.kind == "eigen"
    torch.testing.assert_close(d.vector, spec.ritz_vectors[:, -1])
    assert abs(float(d.vector.norm()) - 1) < 1e-10  # unit norm: t is a distance


def test_random_directions_are_seeded_and_normalised():
    model = tanh_mlp()
    a = dc.resolve_directions(["random:2", "gaussian:1"], model=model, seed=5)
    b = dc.resolve_directions(["random:2", "gaussian:1"], model=model, seed=5)
    c = dc.resolve_directions(["random:2", "gaussian:1"], model=model, seed=6)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.vector, y.vector)
    assert not torch.equal(a[0].vector, c[0].vector)
    assert not torch.equal(a[0].vector, a[1].vector)
    assert float(a[2].vector.norm()) == pytest.approx(1.0, abs=1e-14)
    assert [d.kind for d in a] == ["random", "random", "gaussian"]


def test_filter_normalisation_matches_filter_norms():
    model, _ = bn_model_and_data()
    d = dc.filter_normalized_direction(model, seed=0)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    parts = dict(zip(names, torch.split(d, sizes), strict=True))
    for name, w in model.named_parameters():
        part = parts[name].view_as(w)
        if w.ndim >= 2:
            target = w.detach().flatten(1).norm(dim=1)
            torch.testing.assert_close(part.flatten(1).norm(dim=1), target, rtol=1e-12, atol=0)
        else:
            assert torch.count_nonzero(part) == 0, name  # biases and BN parameters zeroed
    # the direction of each filter is the Gaussian draw's: filter normalisation only rescales
    raw = torch.randn(d.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    conv = raw[: model.conv.weight.numel()].view_as(model.conv.weight)
    mine = d[: model.conv.weight.numel()].view_as(model.conv.weight)
    cos = torch.nn.functional.cosine_similarity(conv.flatten(1), mine.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))
    # bias_bn="filter": one-dimensional parameters rescaled as one filter
    f = dc.filter_normalize(raw, model, bias_bn="filter")
    offset = 0
    for w in model.parameters():
        part = f[offset : offset + w.numel()]
        offset += w.numel()
        if w.ndim == 1:
            assert float(part.norm()) == pytest.approx(float(w.detach().norm()), rel=1e-12)
    with pytest.raises(ValueError, match="bias_bn"):
        dc.filter_normalize(raw, model, bias_bn="keep")


def test_filter_normalisation_on_a_parameter_subset():
    model, _ = bn_model_and_data()
    d = dc.filter_normalized_direction(model, params="fc.weight", seed=1)
    assert d.shape == (model.fc.weight.numel(),)
    target = model.fc.weight.detach().norm(dim=1)
    torch.testing.assert_close(d.view_as(model.fc.weight).norm(dim=1), target, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------- 2-D
def test_plane_axes_equal_one_dimensional_landscapes_and_orientation():
    model, data = tanh_mlp(seed=9), class_data()
    loss_fn = nn.CrossEntropyLoss()
    u, v = (d.vector for d in dc.resolve_directions("gaussian:2", model=model, seed=2))
    kw = {"dist": 0.6, "n_points": 5, "verbose": False}
    one = dc.loss_landscape(model, loss_fn, data, data, directions=[u, v], **kw)
    two = dc.loss_landscape(model, loss_fn, data, data, plane=[u, v], **kw)
    assert two.ndim == 2 and two.train_loss.shape == (5, 5)
    np.testing.assert_allclose(two.train_loss[:, 2], one.train_loss[0], rtol=1e-13)
    np.testing.assert_allclose(two.train_loss[2, :], one.train_loss[1], rtol=1e-13)
    np.testing.assert_allclose(two.test_accuracy[:, 2], one.test_accuracy[0])
    np.testing.assert_allclose(two.quadratic[:, 2], one.quadratic[0], rtol=1e-12)
    np.testing.assert_allclose(two.quadratic[2, :], one.quadratic[1], rtol=1e-12)
    # [i, j] is at w* + t_i u + t_j v
    w = flat_params(model)
    moved = with_params(model, w + float(two.t[0]) * u + float(two.t[3]) * v)
    assert two.train_loss[0, 3] == pytest.approx(plain_metrics(moved, loss_fn, data)[0], rel=1e-12)
    # the 2-D quadratic model has the cross term u^T H v
    H, g = dense_hessian_and_gradient(model, loss_fn, data)
    a, b = float(two.t[0]), float(two.t[3])
    q = (two.origin["train_loss"] + a * float(g @ u) + b * float(g @ v)
         + 0.5 * float((a * u + b * v) @ H @ (a * u + b * v)))  # fmt: skip
    assert two.quadratic[0, 3] == pytest.approx(q, rel=1e-10)


def test_argument_errors():
    model, data = tanh_mlp(), class_data()
    loss_fn = nn.CrossEntropyLoss()
    run = lambda **kw: dc.loss_landscape(model, loss_fn, data, verbose=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="exactly two"):
        run(plane="random:3")
    with pytest.raises(ValueError, match="not both"):
        run(directions="random", plane="random:2")
    with pytest.raises(ValueError, match="n_points"):
        run(n_points=1)
    with pytest.raises(ValueError, match="dist"):
        run(dist=0.0)
    with pytest.raises(ValueError, match="unknown direction"):
        run(directions="biggest")
    with pytest.raises(ValueError, match="need a spectrum"):
        run(directions="largest")
    with pytest.raises(ValueError, match="shape"):
        run(directions=[torch.ones(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="theta"):
        run(theta="exact")
    spec = spectrum_of(model, loss_fn, data, steps=4)
    with pytest.raises(ValueError, match="out of range"):
        run(spectrum=spec, directions="index:7")
    with pytest.raises(ValueError, match="P="):
        run(spectrum=spec, directions="largest", params="2.weight")
    no_vectors = dc.spectrum(model, loss_fn, data, steps=4, seed=0, verbose=False)
    with pytest.raises(ValueError, match="save_eigvec"):
        run(spectrum=no_vectors, directions="largest")
    positive = dc.spectrum(torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64)), steps=4,
                           seed=0, store_vectors=True, verbose=False)  # fmt: skip
    with pytest.raises(ValueError, match="no negative"):
        dc.resolve_directions("most-negative", model=nn.Linear(2, 2, bias=False), spectrum=positive)


# ------------------------------------------------------------------------------ batch norm
def test_model_is_unchanged_after_a_landscape_with_bn_recompute():
    model, data = bn_model_and_data()
    model.train()  # the user's flags are train: they must stay so
    model.bn1.momentum = 0.3
    snap = snapshot(model)
    dc.loss_landscape(model, nn.CrossEntropyLoss(), data, data, directions="random:2",
                      bn_recompute=True, dist=0.5, n_points=3, verbose=False)  # fmt: skip
    assert_unchanged(model, snap)
    model.eval()
    snap = snapshot(model)
    dc.loss_landscape(model, nn.CrossEntropyLoss(), data, plane="gaussian:2", dist=0.5,
                      n_points=3, verbose=False)  # fmt: skip
    assert_unchanged(model, snap)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["statistics pass", "evaluation"])
def test_model_is_unchanged_after_an_interrupted_landscape(where):
    model, data = bn_model_and_data()
    model.train()
    snap = snapshot(model)
    calls = {"n": 0}
    limit = 2 if where == "statistics pass" else 15  # 3 batches x 3 points per statistics pass

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] > limit:
            # the flags are changed inside the evaluation: BN in training mode when recomputing
            assert module.bn.training == (where == "statistics pass")
            raise Boom("interrupted")

    handle = model.register_forward_pre_hook(hook)
    try:
        with pytest.raises(Boom):
            dc.loss_landscape(model, nn.CrossEntropyLoss(), data, directions="random:1",
                              bn_recompute=True, dist=0.5, n_points=3, verbose=False)  # fmt: skip
    finally:
        handle.remove()
    assert_unchanged(model, snap)


def test_bn_recompute_matches_update_bn_on_a_moved_copy():
    model, data = bn_model_and_data()
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    kw = {"directions": "random:1", "dist": 0.8, "n_points": 3, "seed": 4, "verbose": False}
    kept = dc.loss_landscape(model, loss_fn, data, **kw)
    fresh = dc.loss_landscape(model, loss_fn, data, bn_recompute=True, **kw)
    (u,) = (d.vector for d in dc.resolve_directions("random:1", model=model, seed=4))
    w = flat_params(model)
    for j in range(3):
        moved = with_params(model, w + float(fresh.t[j]) * u)
        update_bn(data, moved)  # reference: torch's own recomputation (cumulative average)
        assert fresh.train_loss[0, j] == pytest.approx(plain_metrics(moved, loss_fn, data)[0],
                                                       rel=1e-11)  # fmt: skip
    # the recomputed statistics differ from the stored ones, so do the losses
    assert np.abs(fresh.train_loss - kept.train_loss).min() > 1e-4
    # the origin (and the quadratic model) keeps the model's own statistics
    assert fresh.origin["train_loss"] == pytest.approx(plain_metrics(model, loss_fn, data)[0])
    assert fresh.origin["train_loss"] == pytest.approx(kept.origin["train_loss"], rel=1e-14)
    np.testing.assert_allclose(fresh.quadratic, kept.quadratic, rtol=1e-13)
    assert fresh.info["passes"]["bn_statistics"] == 1
    fig = dc.plot_loss_landscape(fresh)  # no quadratic model of another function on the plot
    assert not any(line.get_linestyle() == "--" for line in fig.axes[0].lines)
    assert fig._suptitle.get_text() == "Loss landscape (BN statistics recomputed)"


def test_float32_model_evaluated_in_float64_on_a_parameter_subset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    data = [(x.float(), y) for x, y in class_data()]
    snap = snapshot(model)
    res = dc.loss_landscape(model, nn.CrossEntropyLoss(), data, directions="gaussian:1",
                            params="2.*", dtype=torch.float64, dist=0.3, n_points=3,
                            verbose=False)  # fmt: skip
    assert res.info["P"] == 18 and res.config["dtype"] == "float64"
    assert res.config["params"] == ["2.weight", "2.bias"]
    assert_unchanged(model, snap)
    assert next(model.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------- files and figures
def test_save_load_roundtrip(tmp_path):
    model, data = tanh_mlp(), regression_data()
    res = dc.loss_landscape(model, nn.MSELoss(), data, data, directions=["random", "gaussian"],
                            dist=0.4, n_points=5, verbose=False)  # fmt: skip
    assert res.train_accuracy is None  # regression: no accuracy
    path = res.save(tmp_path / "land")
    assert path.name == "land.npz" and (tmp_path / "land.json").is_file()
    back = LandscapeResult.load(tmp_path / "land.npz")
    for name in ("t", "eigenvalues", "ritz_indices", "norms", "slopes", "uhu", "thetas",
                 "train_loss", "test_loss", "quadratic"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.train_accuracy is None and back.test_accuracy is None
    assert back.labels == res.labels and back.kinds == res.kinds and back.ndim == 1
    assert back.origin == res.origin and back.config == res.config
    assert back.summary() == res.summary()
    with pytest.raises(ValueError, match="accuracy"):
        dc.plot_loss_landscape(back, metric="accuracy")
    spec = spectrum_of(model, nn.MSELoss(), data, steps=3)
    spec.save(tmp_path / "spec")
    with pytest.raises(ValueError, match="not a loss-landscape file"):
        LandscapeResult.load(tmp_path / "spec")
    with pytest.raises(FileNotFoundError):
        LandscapeResult.load(tmp_path / "missing")


def test_plot_one_and_two_dimensional(tmp_path):
    model, data = tanh_mlp(seed=12), class_data()
    loss_fn = nn.CrossEntropyLoss()
    spec = spectrum_of(model, loss_fn, data, steps=8)
    res = dc.loss_landscape(model, loss_fn, data, data, spectrum=spec, directions="extremes:2",
                            dist=0.5, n_points=7, verbose=False)  # fmt: skip
    res.save(tmp_path / "land")
    fig = dc.plot_loss_landscape(str(tmp_path / "land.npz"))  # the paper's usage
    train_ax, test_ax = fig.axes
    assert len(train_ax.lines) == 4 + 4 + 1  # curves, dashed quadratic models, t = 0 line
    assert sum(line.get_linestyle() == "--" for line in train_ax.lines) == 4
    assert len(test_ax.lines) == 4 + 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == f"λ = {res.eigenvalues[0]:.4g} (Ritz #7)"
    assert "quadratic" in labels[-1]
    assert "‖w − w*‖" in train_ax.get_xlabel() and train_ax.get_ylabel() == "training loss"
    lo, hi = train_ax.get_ylim()  # the y-range is the data's, not the quadratic model's
    assert lo <= res.train_loss.min() and hi >= res.train_loss.max()
    assert hi - lo < 1.2 * np.ptp(res.train_loss)
    acc = dc.plot_loss_landscape(res, metric="accuracy", split="test", directions=[0, "Ritz #0"])
    (ax,) = acc.axes
    assert len(ax.lines) == 2 + 1 and "accuracy" in ax.get_ylabel()
    dc.save_figure(acc, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    plane = dc.loss_landscape(model, loss_fn, data, data, spectrum=spec, plane="largest:2",
                              dist=0.5, n_points=5, verbose=False)  # fmt: skip
    fig2 = dc.plot_loss_landscape(plane)
    assert len(fig2.axes) == 4  # two panels, two colour bars
    train_ax = fig2.axes[0]
    assert "λ =" in train_ax.get_xlabel() and "λ =" in train_ax.get_ylabel()
    assert len(train_ax.collections) >= 3  # filled contours, lines, dashed quadratic contours
    assert any(t.get_text() for t in train_ax.texts)  # contour labels
    dc.save_figure(fig2, tmp_path / "plane.png")
    with pytest.raises(ValueError, match="metric"):
        dc.plot_loss_landscape(res, metric="perplexity")
    with pytest.raises(TypeError):
        dc.plot_loss_landscape(42)


# ---------------------------------------------------------------- the paper's workflow
def test_build_loss_landscape_from_a_real_checkpoint_and_spectrum(tmp_path):
    run = dc.train_network(tmp_path / "run", "digits", model="mlp", epochs=3,
                           optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, subsample=300, seed=0,
                           model_kwargs={"hidden": (16,)}, device="cpu", verbose=False)  # fmt: skip
    ckpt = run.final_checkpoint
    spec = dc.compute_eigenspectrum("digits", None, "mlp", ckpt, lanczos_iters=10,
                                    save_spectrum_path=tmp_path / "spectrum", save_eigvec=True,
                                    num_subsamples=300, seed=0, device="cpu",
                                    model_kwargs={"hidden": (16,)}, verbose=False)  # fmt: skip
    res = dc.build_loss_landscape(dataset="digits", data_path=None, model="mlp", dist=0.5,
                                  n_points=5, spectrum_path=tmp_path / "spectrum",
                                  checkpoint_path=ckpt, save_path=tmp_path / "land.npz",
                                  device="cpu", verbose=False)  # fmt: skip
    assert (tmp_path / "land.npz").is_file() and (tmp_path / "land.json").is_file()
    vals = spec.ritz_values
    np.testing.assert_array_equal(res.eigenvalues, vals[[9, 8, 7, 0, 1, 2]])
    # the Rayleigh quotients over the same 300 samples reproduce the float32 Ritz values
    np.testing.assert_allclose(res.thetas, res.eigenvalues, rtol=1e-3, atol=1e-4)
    assert res.info["N_train"] == 300 and res.info["N_test"] == 360
    assert list(res.config["model_kwargs"]["hidden"]) == [16]  # from the checkpoint
    # the origin is the checkpoint's loss over the run's (recorded) subsample, computed
    # independently
    bundle = dc.load_data("digits", batch_size=64, augment=False, shuffle_train=False,
                          subsample=300, seed=0)  # fmt: skip
    net = dc.get_model("mlp", hidden=(16,), **bundle.model_kwargs())
    dc.load_checkpoint(ckpt, net)
    loss, acc = plain_metrics(net, nn.CrossEntropyLoss(), bundle.train_loader)
    assert res.origin["train_loss"] == pytest.approx(loss, rel=1e-5)
    assert res.origin["train_accuracy"] == pytest.approx(acc)
    fig = dc.plot_loss_landscape(tmp_path / "land.npz")
    assert len(fig.axes) == 2
