"""dc.loss_stats and dc.compute_loss_stats against brute-force loops written here.

References: a loop over the same mini-batches with autograd (losses, gradients), dense per-batch
Hessians from torch.func.hessian and dense GGNs J^T H J (jacrev + the loss Hessian w.r.t. the
outputs), all in float64.
"""

import copy
import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev
from torch.func import hessian as func_hessian
from torch.utils.data import DataLoader, TensorDataset

import deepcurvature as dc

DT = torch.float64


class Net(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5) if bn else nn.Identity()
        self.drop = nn.Dropout(0.3)  # must be off
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def make(n=24, seed=0, bn=False):
    g = torch.Generator().manual_seed(seed)
    model = Net(bn).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.8)
        if bn:
            model.bn.running_mean.copy_(torch.randn(5, generator=g, dtype=DT) * 0.1)
            model.bn.running_var.copy_(torch.rand(5, generator=g, dtype=DT) + 0.5)
    x = torch.randn(n, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


class Dense:
    """Brute-force per-batch quantities of a model (eval mode) on given batches."""

    def __init__(self, model, loss_fn, batches):
        self.model, self.loss_fn = model, loss_fn
        self.names = [n for n, _ in model.named_parameters()]
        ref = copy.deepcopy(model).eval()
        self.ref = ref
        self.params = {n: p.detach().clone() for n, p in ref.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in ref.named_buffers()}
        self.flat = torch.cat([self.params[n].reshape(-1) for n in self.names])
        self.batches = batches

    def unflat(self, v):
        out, o = {}, 0
        for n in self.names:
            k = self.params[n].numel()
            out[n] = v[o : o + k].reshape(self.params[n].shape)
            o += k
        return out

    def out(self, v, x):
        return functional_call(self.ref, {**self.buffers, **self.unflat(v)}, (x,))

    def loss(self, v, x, y):
        return self.loss_fn(self.out(v, x), y)

    def grad(self, x, y):
        return torch.func.grad(self.loss)(self.flat, x, y)

    def hessian(self, x, y):
        return func_hessian(self.loss)(self.flat, x, y)

    def ggn(self, x, y):
        J = jacrev(self.out)(self.flat, x).reshape(-1, self.flat.numel())
        o = self.out(self.flat, x).detach()
        Ho = func_hessian(lambda z: self.loss_fn(z.reshape(o.shape), y))(o.reshape(-1))
        return J.T @ Ho @ J


def brute_force(model, loss_fn, batches, V, matrix="hessian"):
    """Every statistic by definition, from dense per-batch matrices."""
    d = Dense(model, loss_fn, batches)
    ns = np.array([len(y) for _, y in batches], dtype=float)
    N = ns.sum()
    losses = np.array([float(d.loss(d.flat, x, y)) for x, y in batches])
    grads = [d.grad(x, y) for x, y in batches]
    mats = [(d.hessian if matrix == "hessian" else d.ggn)(x, y) for x, y in batches]
    g = sum(n * gb for n, gb in zip(ns, grads, strict=True)) / N
    H = sum(n * Hb for n, Hb in zip(ns, mats, strict=True)) / N
    V = V / V.norm(dim=0, keepdim=True)
    HV = H @ V
    HbV = [Hb @ V for Hb in mats]
    M = len(batches)
    ref = {
        "loss": float((ns * losses).sum() / N),
        "loss_batch_mean": losses.mean(),
        "loss_batch_var": losses.var(ddof=1) if M > 1 else math.nan,
        "grad_norm_sq": float(g @ g),
        "grad_batch_norm_sq": float(sum(gb @ gb for gb in grads) / M),
        "grad_var": float(sum((gb - g) @ (gb - g) for gb in grads) / M),
    }
    per_probe = {
        "curv_rayleigh": (V * HV).sum(0),
        "curv_norm_sq": (HV * HV).sum(0),
        "curv_batch_norm_sq": sum((X * X).sum(0) for X in HbV) / M,
        "curv_var": sum(((X - HV) ** 2).sum(0) for X in HbV) / M,
    }
    per_probe["curv_shrinkage"] = per_probe["curv_var"] / per_probe["curv_batch_norm_sq"]
    P = V.shape[0]
    per_probe["curv_trace"] = P * per_probe["curv_rayleigh"]
    per_probe["curv_frobenius_sq"] = P * per_probe["curv_norm_sq"]
    per_probe = {k: v.numpy() for k, v in per_probe.items()}
    return SimpleNamespace(ref=ref, per_probe=per_probe, d=d, g=g, HV=HV, V=V, H=H)


def batches_of(x, y, sizes):
    out, o = [], 0
    for s in sizes:
        out.append((x[o : o + s], y[o : o + s]))
        o += s
    return out


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("matrix", ["hessian", "ggn"])
def test_every_statistic_matches_a_brute_force_loop(matrix):
    model, x, y = make(n=22)
    loss_fn = nn.CrossEntropyLoss()
    batches = batches_of(x, y, [6, 6, 6, 4])  # given batches, an unequal last one
    V = torch.randn(model.fc1.weight.numel() + 5 + 15 + 3, 3, dtype=DT)
    model.train()
    before = state_of(model)
    st = dc.loss_stats(model, loss_fn, batches, matrix=matrix, probes=V, verbose=False,
                       test_data=batches[:2])  # fmt: skip
    assert model.training and model.drop.training  # flags restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bf = brute_force(model, loss_fn, batches, V, matrix)
    ref, per_probe, d = bf.ref, bf.per_probe, bf.d
    for key, value in ref.items():
        assert st[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    for key, values in per_probe.items():
        np.testing.assert_allclose(st.per_probe[key], values, rtol=1e-10, atol=1e-14)
        assert st[key] == pytest.approx(values.mean(), rel=1e-10)
        assert st[f"{key}_se"] == pytest.approx(values.std(ddof=1) / math.sqrt(3), rel=1e-8)
    np.testing.assert_allclose(
        st.batches["loss"], [float(d.loss(d.flat, a, b)) for a, b in batches]
    )
    assert st.batches["curv_norm_sq"].shape == (4, 3)
    # given batches of unequal sizes: no per-sample covariance
    assert math.isnan(st["grad_var_per_sample"])
    # accuracies and the test pass
    with torch.no_grad():
        out = d.out(d.flat, x)
    assert st["accuracy"] == pytest.approx(float((out.argmax(1) == y).double().mean()))
    xt, yt = torch.cat([x[:6], x[6:12]]), torch.cat([y[:6], y[6:12]])
    assert st["test_loss"] == pytest.approx(float(loss_fn(d.out(d.flat, xt), yt)), rel=1e-12)
    # weight norms
    flat = d.flat
    assert st["weight_l2"] == pytest.approx(float(flat.norm()), rel=1e-12)
    assert st["weight_linf"] == pytest.approx(float(flat.abs().max()), rel=1e-12)
    assert st.config["data_passes"] == 1.0 and st.config["test_passes"] == 1


def test_per_layer_values_are_slices_and_sum_to_the_model():
    model, x, y = make(n=20, bn=True)
    loss_fn = nn.CrossEntropyLoss()
    batches = batches_of(x, y, [5, 5, 5, 5])
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(P, 2, dtype=DT)
    st = dc.loss_stats(model, loss_fn, batches, probes=V, verbose=False)
    assert list(st.layers) == ["fc1", "bn", "fc2"]
    assert st.layers["bn"]["num_params"] == 10
    bf = brute_force(model, loss_fn, batches, V)
    g, HV, Vn = bf.g, bf.HV, bf.V
    # fc2 is the last 18 entries: its values are those of the slice
    sl = slice(P - 18, P)
    assert st.layers["fc2"]["grad_norm_sq"] == pytest.approx(float(g[sl] @ g[sl]), rel=1e-10)
    rq = (Vn[sl] * HV[sl]).sum(0).numpy()
    assert st.layers["fc2"]["curv_rayleigh"] == pytest.approx(rq.mean(), rel=1e-9)
    additive = ["grad_norm_sq", "grad_batch_norm_sq", "grad_var", "curv_rayleigh",
                "curv_norm_sq", "curv_batch_norm_sq", "curv_var", "curv_trace",
                "curv_frobenius_sq", "num_params"]  # fmt: skip
    for key in additive:
        total = sum(lay[key] for lay in st.layers.values())
        expect = st[key] if key != "num_params" else P
        assert total == pytest.approx(expect, rel=1e-10, abs=1e-15), key
    assert sum(lay["weight_l2"] ** 2 for lay in st.layers.values()) == pytest.approx(
        st["weight_l2"] ** 2, rel=1e-12
    )
    assert max(lay["weight_linf"] for lay in st.layers.values()) == st["weight_linf"]
    for lay in st.layers.values():
        assert 0.0 <= lay["curv_shrinkage"] <= 1.0


def test_dataset_and_loader_mode_one_pass_and_full_data_values():
    model, x, y = make(n=27)
    loss_fn = nn.CrossEntropyLoss()
    ds = TensorDataset(x, y)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=DT)
    a = dc.loss_stats(model, loss_fn, ds, batch_size=6, probes=V, seed=3, verbose=False)
    loader = DataLoader(ds, batch_size=100, shuffle=True)  # re-batched: its sampler is not used
    b = dc.loss_stats(model, loss_fn, loader, batch_size=6, probes=V, seed=3, verbose=False)
    assert a.values == b.values
    # 27 samples, B=6: 4 full mini-batches; the 3 left over only count in the full-data values
    assert a.config["num_batches"] == 4 and list(a.batches["size"]) == [6, 6, 6, 6]
    assert a.config["data_passes"] == 1.0 and a.config["num_samples"] == 27
    bf = brute_force(model, loss_fn, [(x, y)], V)
    ref, per_probe = bf.ref, bf.per_probe
    for key in ("loss", "grad_norm_sq"):
        assert a[key] == pytest.approx(ref[key], rel=1e-12)
    np.testing.assert_allclose(a.per_probe["curv_norm_sq"], per_probe["curv_norm_sq"], rtol=1e-10)
    np.testing.assert_allclose(a.per_probe["curv_rayleigh"], per_probe["curv_rayleigh"], rtol=1e-10)
    assert a["grad_var_per_sample"] == pytest.approx(a["grad_var"] * 6 * 26 / 21)
    # another seed draws other mini-batches (same full-data values)
    c = dc.loss_stats(model, loss_fn, ds, batch_size=6, probes=V, seed=4, verbose=False)
    assert c["loss"] == pytest.approx(a["loss"]) and c["grad_var"] != a["grad_var"]
    # more batches than one partition: further permutations, more passes
    e = dc.loss_stats(model, loss_fn, ds, batch_size=6, num_batches=10, probes=V, seed=3,
                      verbose=False)  # fmt: skip
    assert e.config["num_batches"] == 10 and e.config["data_passes"] == pytest.approx(
        (27 + 6 * 6) / 27
    )
    assert e["loss"] == pytest.approx(a["loss"], rel=1e-12)


def test_gradient_noise_is_unbiased_for_the_per_sample_covariance():
    """Over all C(12, 4) mini-batches the formula is exact; many seeded draws converge to it."""
    model, x, y = make(n=12, seed=5)
    loss_fn = nn.CrossEntropyLoss()
    d = Dense(model, loss_fn, None)
    G = torch.stack([d.grad(x[i : i + 1], y[i : i + 1]) for i in range(12)])  # per sample
    g = G.mean(0)
    tr_sigma = float(((G - g) ** 2).sum(1).mean())
    devs = np.array(
        [float(((G[list(S)].mean(0) - g) ** 2).sum()) for S in itertools.combinations(range(12), 4)]
    )
    assert devs.mean() * 4 * 11 / 8 == pytest.approx(tr_sigma, rel=1e-10)  # the stated formula
    st = dc.loss_stats(model, loss_fn, TensorDataset(x, y), batch_size=4, num_batches=160,
                       probes=1, seed=0, verbose=False)  # fmt: skip
    se = devs.std() / math.sqrt(160) * 4 * 11 / 8
    assert abs(st["grad_var_per_sample"] - tr_sigma) < 4 * se
    assert st["grad_norm_sq"] == pytest.approx(float(g @ g), rel=1e-10)


def test_random_probes_estimate_trace_and_frobenius_with_honest_standard_errors():
    model, x, y = make(n=16, seed=2)
    loss_fn = nn.CrossEntropyLoss()
    batches = batches_of(x, y, [8, 8])
    k = 300
    st = dc.loss_stats(model, loss_fn, batches, probes=k, seed=11, verbose=False)
    H = brute_force(model, loss_fn, batches, torch.eye(H_dim(model), dtype=DT)[:, :1]).H
    tr, fro = float(torch.trace(H)), float((H * H).sum())
    assert abs(st["curv_trace"] - tr) < 4 * st["curv_trace_se"]
    assert abs(st["curv_frobenius_sq"] - fro) < 4 * st["curv_frobenius_sq_se"]
    # Rademacher: var(z^T H z) = 2 sum_{i != j} H_ij^2, so the standard error must match it
    off = fro - float((torch.diagonal(H) ** 2).sum())
    assert st["curv_trace_se"] == pytest.approx(math.sqrt(2 * off / k), rel=0.25)
    # deterministic given the seed
    again = dc.loss_stats(model, loss_fn, batches, probes=k, seed=11, verbose=False)
    np.testing.assert_array_equal(again.per_probe["curv_trace"], st.per_probe["curv_trace"])
    assert st.config["seed"] == 11 and st.config["probe"] == "rademacher"


def H_dim(model):
    return sum(p.numel() for p in model.parameters())


def test_float32_model_params_selection_and_bn_model_unchanged():
    model, x, y = make(n=16, bn=True)
    model = model.float()
    before = state_of(model)
    batches = batches_of(x.float(), y, [8, 8])
    st = dc.loss_stats(model, nn.CrossEntropyLoss(), batches, params="fc2.*", probes=2,
                       dtype=DT, seed=0, verbose=False)  # fmt: skip
    assert list(st.layers) == ["fc2"] and st.config["num_params"] == 18
    assert st.config["dtype"] == "float64"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.bn.num_batches_tracked.item() == 0
    whole = dc.loss_stats(model, nn.CrossEntropyLoss(), batches, probes=2, seed=0,
                          per_layer=False, verbose=False)  # fmt: skip
    assert whole.layers == {} and whole["loss"] == pytest.approx(st["loss"], rel=1e-5)


def test_save_load_and_row(tmp_path):
    model, x, y = make(n=12)
    st = dc.loss_stats(model, nn.CrossEntropyLoss(), batches_of(x, y, [6, 6]), probes=1,
                       seed=0, verbose=False)  # fmt: skip
    assert math.isnan(st["curv_rayleigh_se"]) and math.isnan(st["test_loss"])
    path = st.save(tmp_path / "stats")
    assert path.name == "stats.npz" and (tmp_path / "stats.json").is_file()
    json.loads((tmp_path / "stats.json").read_text())  # strict JSON: NaN written as null
    back = dc.LossStats.load(tmp_path / "stats")
    assert back.values.keys() == st.values.keys()
    for k, v in st.values.items():
        assert (math.isnan(v) and math.isnan(back[k])) or back[k] == v
    assert back.layers.keys() == st.layers.keys()
    np.testing.assert_array_equal(back.batches["loss"], st.batches["loss"])
    np.testing.assert_array_equal(back.per_probe["curv_var"], st.per_probe["curv_var"])
    row = st.as_row(layers=True)
    assert row["matrix"] == "hessian" and row["fc1/grad_var"] == st.layers["fc1"]["grad_var"]
    assert "fc1/grad_var" not in st.as_row()


def test_bad_arguments_are_named():
    model, x, y = make(n=12)
    loss_fn = nn.CrossEntropyLoss()
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="matrix must be one of"):
        dc.loss_stats(model, loss_fn, ds, matrix="fisher", verbose=False)
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        dc.loss_stats(model, loss_fn, ds, probes=0, verbose=False)
    with pytest.raises(ValueError, match="larger than the data set"):
        dc.loss_stats(model, loss_fn, ds, batch_size=13, verbose=False)
    with pytest.raises(ValueError, match="num_batches=3 but data is a list of 2"):
        dc.loss_stats(model, loss_fn, [(x, y), (x, y)], num_batches=3, verbose=False)
    with pytest.raises(TypeError, match="collect the batches into a list"):
        dc.loss_stats(model, loss_fn, ((x, y) for _ in range(2)), verbose=False)
    with pytest.raises(ValueError, match=r"shape \(P,\) or \(P, k\) with P=43"):
        dc.loss_stats(model, loss_fn, ds, batch_size=6, probes=torch.ones(5), verbose=False)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.fc2.bias[0] = math.inf
    with pytest.raises(FloatingPointError, match="batch 0"):
        dc.loss_stats(bad, loss_fn, ds, batch_size=6, verbose=False)


def test_compute_loss_stats_two_checkpoints_one_file(tmp_path):
    run = tmp_path / "run"
    dc.train_network(run, "digits", model="mlp", model_kwargs={"hidden": [16]}, epochs=1,
                     subsample=120, seed=0, verbose=False, batch_size=40)  # fmt: skip
    ckpts = dc.list_checkpoints(run)
    assert [p.name for p in ckpts] == ["checkpoint-00000.pt", "checkpoint-00001.pt"]
    out = tmp_path / "stats"
    res = dc.compute_loss_stats("digits", None, "mlp", run, out, batch_size=30, probes=2,
                                seed=1, num_subsamples=120, device="cpu",
                                curvature_matrix="ggn_lanczos", verbose=False)  # fmt: skip
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["complete"] is True and doc["format"] == "deepcurvature-loss-stats"
    assert [r["epoch"] for r in doc["rows"]] == [0, 1] and len(doc["layers"]) == 2
    assert doc["rows"][1]["checkpoint"].endswith("checkpoint-00001.pt")
    assert doc["config"]["curvature_matrix"] == "ggn" and doc["config"]["seed"] == 1
    assert doc["columns"][:3] == ["epoch", "checkpoint", "matrix"]
    read = dc.read_loss_stats(tmp_path / "stats.json")
    assert read["rows"][1]["grad_var"] == pytest.approx(res[1]["grad_var"])
    assert res[1]["loss"] < res[0]["loss"] and not math.isnan(res[1]["test_accuracy"])
    # row 1 equals loss_stats of the loaded checkpoint on the same data, seed and settings
    bundle = dc.load_data("digits", subsample=120, augment=False, shuffle_train=False,
                          batch_size=30)  # fmt: skip
    net = dc.get_model("mlp", hidden=[16], **bundle.model_kwargs())
    dc.load_checkpoint(ckpts[1], net)
    direct = dc.loss_stats(net, nn.CrossEntropyLoss(), bundle.train_set, batch_size=30,
                           matrix="ggn", probes=2, seed=1, test_data=bundle.test_loader,
                           verbose=False)  # fmt: skip
    for key in ("loss", "grad_var", "curv_var", "curv_shrinkage", "test_accuracy"):
        assert read["rows"][1][key] == pytest.approx(direct[key], rel=1e-6), key
    # errors before anything is computed or written
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run folder"):
        dc.compute_loss_stats("digits", None, "mlp", tmp_path / "missing", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        dc.compute_loss_stats("digits", None, "mlp", tmp_path / "empty", tmp_path / "x.json")
    with pytest.raises(ValueError, match="must be a .json file"):
        dc.compute_loss_stats("digits", None, "mlp", run, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="use 'hessian' or 'ggn'"):
        dc.compute_loss_stats("digits", None, "mlp", run, None, curvature_matrix="fisher")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("matrix", ["hessian", "ggn"])
def test_batch_statistics_mode_matches_the_operator_definition(matrix):
    """bn_mode="train": the full-data product is sum_b n_b H_b v / N with batch statistics."""
    model, x, y = make(n=20, bn=True)
    loss_fn = nn.CrossEntropyLoss()
    batches = batches_of(x, y, [8, 8, 4])
    P = H_dim(model)
    V = torch.randn(P, 2, dtype=DT)
    before = state_of(model)
    st = dc.loss_stats(model, loss_fn, batches, matrix=matrix, probes=V, bn_mode="train",
                       verbose=False)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    op = getattr(dc, matrix)(model, loss_fn, batches, bn_mode="train")
    Vn = V / V.norm(dim=0)
    HV = op.matmat(Vn)
    np.testing.assert_allclose(st.per_probe["curv_rayleigh"], (Vn * HV).sum(0), rtol=1e-10)
    np.testing.assert_allclose(st.per_probe["curv_norm_sq"], (HV * HV).sum(0), rtol=1e-10)
    assert st["grad_norm_sq"] == pytest.approx(float(op.gradient().norm() ** 2), rel=1e-10)
    assert st["loss"] == pytest.approx(op.loss(), rel=1e-12)
    # batch statistics differ from running statistics
    ev = dc.loss_stats(model, loss_fn, batches, matrix=matrix, probes=V, verbose=False)
    assert abs(ev["loss"] - st["loss"]) > 1e-6


@pytest.mark.parametrize("probes", [1, 3])
@pytest.mark.parametrize("written", [True, False])
def test_a_loss_without_forward_mode_derivatives_takes_reverse_mode(probes, written, monkeypatch):
    """torch has no forward-mode derivative of the Huber loss's gradient: ``nn.HuberLoss`` is
    written out (forward-over-reverse), ``F.huber_loss`` in a function of one's own falls back to
    reverse-over-reverse; both give the brute-force values."""
    from deepcurvature.analysis import batch_products

    model, x, _ = make(n=12)
    y = torch.randn(12, 3, generator=torch.Generator().manual_seed(5), dtype=DT)
    if written:
        loss_fn = nn.HuberLoss(delta=0.3)
    else:
        loss_fn = lambda o, t: F.huber_loss(o, t, delta=0.3)  # noqa: E731
    batches = batches_of(x, y, [4, 4, 4])
    V = torch.randn(model.fc1.weight.numel() + 5 + 15 + 3, probes, dtype=DT)
    routes = []
    forward = batch_products._BatchEvaluator._forward_over_reverse

    def spy(self, gradient):
        routes.append(self.reverse)
        return forward(self, gradient)

    monkeypatch.setattr(batch_products._BatchEvaluator, "_forward_over_reverse", spy)
    st = dc.loss_stats(model, loss_fn, batches, probes=V, verbose=False)
    # written out: forward mode on every batch; else tried once, then reverse for the rest
    assert len(routes) == (3 if written else 1)
    bf = brute_force(model, loss_fn, batches, V)
    for key, value in bf.ref.items():
        assert st[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    for key, values in bf.per_probe.items():
        np.testing.assert_allclose(st.per_probe[key], values, rtol=1e-10, atol=1e-14)
