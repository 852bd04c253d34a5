"""Diagonal approximations against exact dense float64 references, and compare_diagonal.

References: torch.func.hessian of the mean loss; the dense GGN J^T H J (jacrev of the outputs,
torch.func.hessian of the loss w.r.t. them); per-sample gradients from a loop over samples; Adam's
recursion replayed by hand; dense MC Fisher operators with the same seed.
"""

import copy
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call, jacrev
from torch.func import hessian as func_hessian

import deepcurvature as dc

DT = torch.float64


class Net(nn.Module):
    def __init__(self, out=3, bn=False):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5) if bn else nn.Identity()
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(5, out)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def make(out=3, bn=False, n=10, seed=0, regression=False):
    g = torch.Generator().manual_seed(seed)
    model = Net(out, bn).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.8)
        if bn:
            model.bn.running_mean.copy_(torch.randn(5, generator=g, dtype=DT) * 0.1)
            model.bn.running_var.copy_(torch.rand(5, generator=g, dtype=DT) + 0.5)
    model.train()
    x = torch.randn(n, 4, generator=g, dtype=DT)
    if regression:
        y = torch.randn(n, out, generator=g, dtype=DT)
    else:
        y = torch.randint(0, out, (n,), generator=g)
    data = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]  # an unequal last batch
    return model, x, y, data


class Ref:
    def __init__(self, model, loss_fn, x, y):
        self.m = copy.deepcopy(model).eval()
        self.loss_fn, self.x, self.y = loss_fn, x, y
        self.names = [n for n, _ in self.m.named_parameters()]
        self.p = {n: p.detach().clone() for n, p in self.m.named_parameters()}
        self.b = {n: b.detach().clone() for n, b in self.m.named_buffers()}
        self.flat = torch.cat([self.p[n].reshape(-1) for n in self.names])

    def unflat(self, v):
        out, o = {}, 0
        for n in self.names:
            k = self.p[n].numel()
            out[n] = v[o : o + k].reshape(self.p[n].shape)
            o += k
        return out

    def out(self, v, x):
        return functional_call(self.m, {**self.b, **self.unflat(v)}, (x,))

    def hessian(self):
        return func_hessian(lambda v: self.loss_fn(self.out(v, self.x), self.y))(self.flat)

    def ggn(self):
        J = jacrev(self.out)(self.flat, self.x).reshape(-1, self.flat.numel())
        o = self.out(self.flat, self.x).detach()
        Ho = func_hessian(lambda z: self.loss_fn(z.reshape(o.shape), self.y))(o.reshape(-1))
        return J.T @ Ho @ J

    def per_sample_grads(self):
        return torch.stack(
            [
                torch.func.grad(
                    lambda v, i=i: self.loss_fn(self.out(v, self.x[i : i + 1]), self.y[i : i + 1])
                )(self.flat)
                for i in range(len(self.x))
            ]
        )


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bn", [False, True])
def test_exact_hessian_diagonal(bn):
    model, x, y, data = make(bn=bn)
    loss_fn = nn.CrossEntropyLoss()
    before = state_of(model)
    d = dc.hessian_diagonal(model, loss_fn, data, block_size=16, verbose=False)
    assert unchanged(model, before)
    H = Ref(model, loss_fn, x, y).hessian()
    torch.testing.assert_close(d.value, torch.diagonal(H), rtol=0, atol=1e-10)
    assert d.name == "hessian" and d.metadata["matvecs"] == H.shape[0]
    assert d.metadata["data_passes"] == math.ceil(H.shape[0] / 16)
    # the per-parameter and per-layer splits are slices of the vector
    parts = d.per_parameter()
    assert parts["fc2.weight"].shape == (3, 5)
    layers = d.per_layer()
    assert list(layers) == (["fc1", "bn", "fc2"] if bn else ["fc1", "fc2"])
    torch.testing.assert_close(torch.cat(list(layers.values())), d.value)


def test_hessian_diagonal_size_guard():
    model, _, _, data = make()
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"costs 43 Hessian-vector products.*force=True"):
        dc.hessian_diagonal(model, loss_fn, data, max_params=40, verbose=False)
    d = dc.hessian_diagonal(model, loss_fn, data, max_params=40, force=True, verbose=False)
    assert d.value.shape == (43,)


@pytest.mark.parametrize(
    "loss_fn, out, regression",
    [(nn.CrossEntropyLoss(), 3, False), (nn.MSELoss(), 2, True)],
    ids=["cross_entropy", "mse"],
)
def test_exact_ggn_diagonal(loss_fn, out, regression):
    model, x, y, data = make(out=out, regression=regression, bn=True)
    before = state_of(model)
    d = dc.ggn_diagonal(model, loss_fn, data, sample_chunk=3, verbose=False)
    assert unchanged(model, before)
    G = Ref(model, loss_fn, x, y).ggn()
    torch.testing.assert_close(d.value, torch.diagonal(G), rtol=0, atol=1e-10)
    assert d.metadata["output_size"] == out and d.metadata["per_sample_vjps"] == 10 * out


def test_ggn_diagonal_of_a_parameter_subset_and_float32():
    model, x, y, data = make()
    loss_fn = nn.CrossEntropyLoss()
    G = Ref(model, loss_fn, x, y).ggn()
    d = dc.ggn_diagonal(model, loss_fn, data, params="fc2.*", verbose=False)
    torch.testing.assert_close(d.value, torch.diagonal(G)[-18:], rtol=0, atol=1e-10)
    m32 = copy.deepcopy(model).float()
    d32 = dc.ggn_diagonal(m32, loss_fn, [(a.float(), b) for a, b in data], verbose=False)
    assert d32.value.dtype == torch.float32
    torch.testing.assert_close(d32.value.double(), torch.diagonal(G), rtol=1e-4, atol=1e-6)


def test_per_sample_methods_refuse_batch_statistics():
    model, _, _, data = make(bn=True)
    with pytest.raises(ValueError, match="bn_mode='train' batch norm couples the samples"):
        dc.ggn_diagonal(model, nn.CrossEntropyLoss(), data, bn_mode="train", verbose=False)


def test_empirical_fisher_diagonal_is_the_mean_squared_per_sample_gradient():
    model, x, y, data = make(bn=True)
    loss_fn = nn.CrossEntropyLoss()
    before = state_of(model)
    d = dc.empirical_fisher_diagonal(model, loss_fn, data, sample_chunk=4, verbose=False)
    assert unchanged(model, before)
    Gs = Ref(model, loss_fn, x, y).per_sample_grads()
    torch.testing.assert_close(d.value, (Gs**2).mean(0), rtol=0, atol=1e-12)
    F = dc.fisher(model, loss_fn, data, kind="empirical").to_dense()
    torch.testing.assert_close(d.value, torch.diagonal(F), rtol=0, atol=1e-12)


def test_mc_ggn_diagonal_is_the_mc_fisher_diagonal_and_converges_to_the_ggn():
    model, x, y, data = make()
    loss_fn = nn.CrossEntropyLoss()
    before = state_of(model)
    exact = torch.diagonal(Ref(model, loss_fn, x, y).ggn())
    # the same seeded targets as the Monte Carlo Fisher operator: its exact diagonal
    d4 = dc.mc_ggn_diagonal(model, loss_fn, data, mc_samples=4, seed=7, verbose=False)
    F = dc.fisher(model, loss_fn, data, kind="mc", mc_samples=4, seed=7).to_dense()
    torch.testing.assert_close(d4.value, torch.diagonal(F), rtol=0, atol=1e-12)
    assert unchanged(model, before) and d4.metadata["seed"] == 7
    errors, zs = [], []
    for S in (2, 32, 512):
        d = dc.mc_ggn_diagonal(model, loss_fn, data, mc_samples=S, seed=S, verbose=False)
        errors.append(float((d.value - exact).norm() / exact.norm()))
        zs.append(((d.value - exact) / d.std_error).abs())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05
    # unbiased: the errors are of the size of the standard errors
    z = zs[-1]
    assert float(z.max()) < 5 and float((z < 2.5).double().mean()) > 0.9
    single = dc.mc_ggn_diagonal(model, loss_fn, data, seed=0, verbose=False)
    assert torch.isnan(single.std_error).all()


def test_hutchinson_diagonal_converges_and_is_unbiased():
    model, x, y, data = make()
    loss_fn = nn.CrossEntropyLoss()
    H = dc.hessian(model, loss_fn, data)
    exact = torch.diagonal(Ref(model, loss_fn, x, y).hessian())
    errors = []
    for probes in (8, 128, 2048):
        d = dc.hutchinson_diagonal(H, probes, seed=1, block_size=256, verbose=False)
        errors.append(float((d.value - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1
    z = ((d.value - exact) / d.std_error).abs()
    assert float(z.max()) < 5 and float((z < 2.5).double().mean()) > 0.9
    assert list(d.per_layer()) == ["fc1", "fc2"] and d.metadata["probes"] == 2048
    # any operator works (without a layout)
    A = torch.diag(torch.arange(1.0, 6.0, dtype=DT))
    plain = dc.hutchinson_diagonal(A, 3, seed=0, verbose=False)
    torch.testing.assert_close(plain.value, torch.arange(1.0, 6.0, dtype=DT))
    with pytest.raises(ValueError, match="no parameter layout"):
        plain.per_layer()


@pytest.mark.parametrize("opt_name", ["Adam", "AdamW", "Gadam"])
def test_adam_second_moment_replays_the_recursion(opt_name, tmp_path):
    model, x, y, _ = make()
    loss_fn = nn.CrossEntropyLoss()
    cls = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "Gadam": dc.Gadam}[opt_name]
    opt = cls(model.parameters(), lr=0.01, betas=(0.9, 0.95))
    v = torch.zeros(43, dtype=DT)
    for step in range(4):
        opt.zero_grad()
        loss_fn(model(x[step:]), y[step:]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        v = 0.95 * v + 0.05 * g * g
        opt.step()
    raw = dc.adam_second_moment(opt, model, bias_correction=False)
    torch.testing.assert_close(raw.value, v, rtol=1e-12, atol=1e-16)
    hat = dc.adam_second_moment(opt, model)
    torch.testing.assert_close(hat.value, v / (1 - 0.95**4), rtol=1e-12, atol=1e-16)
    assert hat.name == "adam" and list(hat.per_layer()) == ["fc1", "fc2"]
    # from the state dict, through a checkpoint file loaded with weights_only=True
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    again = dc.adam_second_moment(ckpt, model)
    torch.testing.assert_close(again.value, hat.value, rtol=0, atol=0)
    sub = dc.adam_second_moment(opt.state_dict(), model, params="fc2.*")
    torch.testing.assert_close(sub.value, hat.value[-18:], rtol=0, atol=0)


def test_adam_second_moment_errors():
    model, x, y, _ = make()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.CrossEntropyLoss()(model(x), y).backward()
    sgd.step()
    with pytest.raises(ValueError, match="not Adam-like"):
        dc.adam_second_moment(sgd, model)
    fresh = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="has not taken a step"):
        dc.adam_second_moment(fresh, model)
    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="covers 2 parameters but the model has 4"):
        dc.adam_second_moment(torch.optim.Adam(other.parameters()).state_dict(), model)
    with pytest.raises(TypeError, match="needs an optimizer"):
        dc.adam_second_moment([1, 2], model)


def test_compare_diagonal_on_the_section_6_4_matrix(tmp_path):
    syn = dc.synthetic_spectrum(1000, seed=0)
    H = syn.matrix
    density = dc.lanczos(H, 30, seed=0, verbose=False).density()
    cmp = dc.compare_diagonal(torch.diagonal(H), density, eigenvalues=syn.eigenvalues,
                              name="diag(H)")  # fmt: skip
    s = cmp.summary
    # the paper: diagonal entries between ~3.3 and ~5.3, no outliers; the spectrum spans [-10, 60]
    assert 2.5 < s["diag_min"] and s["diag_max"] < 6.0
    assert s["density_min"] < -8 and s["density_max"] > 45
    assert s["eig_min"] < -8 and s["eig_max"] > 45
    assert s["support_ratio"] < 0.06
    # same mean (tr H / P) but a far smaller second moment (equation 10)
    assert s["diag_mean"] == pytest.approx(s["eig_mean"], rel=1e-10)
    assert s["density_mean"] == pytest.approx(s["eig_mean"], rel=0.15)
    assert s["diag_second_moment"] < 0.3 * s["eig_second_moment"]
    assert s["second_moment_ratio"] < 0.35
    # the spike at zero: half the eigenvalues are 0, no diagonal entry is
    assert s["eig_mass_near_zero"] >= 0.5 and s["diag_mass_near_zero"] == 0.0
    assert s["density_mass_near_zero"] > 0.2 and s["diag_negative"] == 0.0
    fig = cmp.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert any("diag(H)" in t for t in labels) and any("Lanczos" in t for t in labels)
    (bars,) = [c for c in ax.containers if c.get_label().startswith("diag(H)")]
    assert sum(b.get_height() for b in bars) == pytest.approx(1.0)  # bar masses sum to 1
    path = dc.save_figure(fig, tmp_path / "diag.png")
    assert path.stat().st_size > 10_000
    log_ax = cmp.plot(log_weights=True, bins=40).axes[0]
    assert log_ax.get_yscale() == "log" and max(log_ax.get_yticks()) <= 1.0
    # accepted inputs and errors
    dc.compare_diagonal(np.asarray(torch.diagonal(H)), dc.lanczos(H, 5, seed=1, verbose=False))
    with pytest.raises(TypeError, match="SpectralDensity"):
        dc.compare_diagonal(torch.diagonal(H), [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        dc.compare_diagonal(torch.tensor([1.0, math.nan]), density)


def test_compare_ggn_diagonal_with_the_ggn_density_of_a_network():
    """Figure 7 in small: the exact diagonal's mean is tr(G)/P, its spread is too small."""
    model, x, y, data = make()
    loss_fn = nn.CrossEntropyLoss()
    G = Ref(model, loss_fn, x, y).ggn()
    d = dc.ggn_diagonal(model, loss_fn, data, verbose=False)
    spec = dc.spectrum(model, loss_fn, data, matrix="ggn", steps=20, probes=3, seed=0,
                       verbose=False)  # fmt: skip
    cmp = dc.compare_diagonal(d, spec, eigenvalues=torch.linalg.eigvalsh(G))
    s = cmp.summary
    assert s["diag_mean"] == pytest.approx(float(torch.trace(G)) / 43, rel=1e-10)
    assert s["diag_second_moment"] < s["eig_second_moment"]
    assert s["diag_max"] < s["eig_max"] and cmp.name == "ggn"
