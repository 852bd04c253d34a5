"""Curvature operators of networks against exact dense float64 references built independently.

References use only torch.func / autograd on a deep copy of the model:
* Hessian: torch.func.hessian of the mean loss over the CONCATENATED data (bn_mode="eval"), or of
  the batch-weighted mean of per-batch losses with batch statistics (bn_mode="train");
* GGN: J^T H J with J = jacrev of the outputs and H = torch.func.hessian of the loss w.r.t. them;
* empirical Fisher: per-sample gradients from a loop over samples (autograd);
* Monte Carlo Fisher: its definition, with the sampled targets the operator drew.
"""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, replace_all_batch_norm_modules_
from torch.func import hessian as func_hessian

import deepcurvature as dc
from deepcurvature.operators.losses import OutputLoss
from deepcurvature.operators.products import Block

DT = torch.float64
N, BS = 10, 4  # batches of 4, 4, 2: an unequal last batch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is fastest and immune to oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# models


class MLP(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.drop = nn.Dropout(0.5)  # must be off in every product
        self.fc2 = nn.Linear(6, out)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


class CNN(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2)
        )
        self.head = nn.Linear(12, out)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class DictModel(nn.Module):
    """Transformer-style inputs: model(input_ids=..., attention_mask=...)."""

    def __init__(self, out=3, sequence=False):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.proj = nn.Linear(4, out)
        self.sequence = sequence

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.embed(input_ids)) * attention_mask.unsqueeze(-1)
        if self.sequence:
            return self.proj(h)  # (B, T, C)
        return self.proj(h.sum(1) / attention_mask.sum(1, keepdim=True))


def make_model(kind, out=3, seed=0):
    torch.manual_seed(seed)
    if kind == "mlp":
        model = MLP(out)
    elif kind == "cnn":
        model = CNN(out)
        # non-trivial running statistics, so eval and train modes differ
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 2, 4, 4) * 2 + 0.5)
    elif kind == "mlp-bn":
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, out))
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 4) * 2 + 0.5)
    elif kind in ("dict", "seq"):
        model = DictModel(out, sequence=kind == "seq")
    else:
        raise ValueError(kind)
    return model.double()


def make_inputs(kind, n, g):
    if kind in ("mlp", "mlp-bn"):
        return torch.randn(n, 4, generator=g, dtype=DT)
    if kind == "cnn":
        return torch.randn(n, 2, 4, 4, generator=g, dtype=DT)
    T = 5
    mask = torch.ones(n, T, dtype=DT)
    mask[:, 3:] = (torch.rand(n, 2, generator=g) > 0.5).to(DT)
    return {"input_ids": torch.randint(0, 7, (n, T), generator=g), "attention_mask": mask}


def make_targets(loss, n, out, g, seq_len=None):
    shape = (n,) if seq_len is None else (n, seq_len)
    if loss == "ce":
        return torch.randint(0, out, shape, generator=g)
    full = (*shape, out)
    if loss == "mse":
        return torch.randn(full, generator=g, dtype=DT)
    return torch.randint(0, 2, full, generator=g).to(DT)


LOSSES = {
    "ce": nn.CrossEntropyLoss(),
    "mse": nn.MSELoss(),
    "bce": nn.BCEWithLogitsLoss(),
}


def split(inputs, targets, bs=BS):
    n = targets.shape[0]
    out = []
    for i in range(0, n, bs):
        x = (
            {k: v[i : i + bs] for k, v in inputs.items()}
            if isinstance(inputs, dict)
            else inputs[i : i + bs]
        )
        out.append((x, targets[i : i + bs]))
    return out


def make_case(model_kind="mlp", loss="ce", out=3, seed=0, n=N):
    g = torch.Generator().manual_seed(seed + 100)
    model = make_model(model_kind, out, seed)
    inputs = make_inputs(model_kind, n, g)
    seq = 5 if model_kind == "seq" else None
    targets = make_targets(loss, n, out, g, seq)
    return model, LOSSES[loss], inputs, targets


# ------------------------------------------------------------------------------------------------
# independent references


class Reference:
    """Dense float64 curvature matrices of a deep copy of the model."""

    def __init__(self, model, loss_fn, inputs, targets, names, bn_mode="eval", bs=BS):
        self.model = copy.deepcopy(model).double().eval()
        if bn_mode == "train":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
            replace_all_batch_norm_modules_(self.model)  # batch statistics, no running stats
        self.loss_fn, self.inputs, self.targets = loss_fn, inputs, targets
        self.bn_mode, self.bs, self.names = bn_mode, bs, names
        all_params = dict(self.model.named_parameters())
        self.fixed = {n: p.detach() for n, p in all_params.items() if n not in names}
        self.fixed.update({n: b.detach() for n, b in self.model.named_buffers()})
        self.shapes = [all_params[n].shape for n in names]
        self.theta = torch.cat([all_params[n].detach().reshape(-1) for n in names])
        self.batches = split(inputs, targets, bs)
        self.N = targets.shape[0]

    def params(self, theta):
        out, o = dict(self.fixed), 0
        for n, s in zip(self.names, self.shapes, strict=False):
            k = math.prod(s)
            out[n] = theta[o : o + k].view(s)
            o += k
        return out

    def forward(self, theta, x):
        p = self.params(theta)
        if isinstance(x, dict):
            return functional_call(self.model, p, (), x)
        return functional_call(self.model, p, (x,))

    def outputs(self, theta):
        """Eval: one forward of the concatenated data; train: per batch, concatenated."""
        if self.bn_mode == "eval":
            return self.forward(theta, self.inputs)
        return torch.cat([self.forward(theta, x) for x, _ in self.batches])

    def loss_of_outputs(self, outs):
        if self.bn_mode == "eval":
            return self.loss_fn(outs, self.targets)
        total, o = 0.0, 0
        for _, y in self.batches:
            n = y.shape[0]
            total = total + n / self.N * self.loss_fn(outs[o : o + n], y)
            o += n
        return total

    def loss(self, theta):
        return self.loss_of_outputs(self.outputs(theta))

    def hessian(self):
        if self.bn_mode == "eval":
            return func_hessian(self.loss)(self.theta)
        # torch.func.hessian (jacfwd of jacrev) is wrong through conv-bias -> batch norm in
        # training mode in torch 2.13 (non-symmetric, spurious bias cross terms); plain autograd
        # double backward, one column at a time, is right (and agrees with finite differences)
        return torch.autograd.functional.hessian(self.loss, self.theta)

    def ggn(self):
        out = self.outputs(self.theta).detach()
        J = jacrev(self.outputs)(self.theta).reshape(out.numel(), -1)
        H = func_hessian(lambda o: self.loss_of_outputs(o.view(out.shape)))(out.reshape(-1))
        return J.T @ H @ J

    def per_sample_losses(self, theta):
        """List of per-sample losses l_i with L = mean_i l_i."""
        if self.bn_mode == "eval":  # each sample alone through the model
            out = []
            for i in range(self.N):
                x = (
                    {k: v[i : i + 1] for k, v in self.inputs.items()}
                    if isinstance(self.inputs, dict)
                    else self.inputs[i : i + 1]
                )
                out.append(self.loss_fn(self.forward(theta, x), self.targets[i : i + 1]))
            return out
        out = []  # batch statistics: sample i's share of its batch's loss
        for x, y in self.batches:
            f = self.forward(theta, x)
            out.extend(self.loss_fn(f[i : i + 1], y[i : i + 1]) for i in range(y.shape[0]))
        return out

    def empirical_fisher(self):
        theta = self.theta.clone().requires_grad_()
        losses = self.per_sample_losses(theta)
        G = torch.stack([torch.autograd.grad(li, theta, retain_graph=True)[0] for li in losses])
        return G.T @ G / self.N


def state_of(model):
    return (
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: b.detach().clone() for n, b in model.named_buffers()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: p.dtype for n, p in model.named_parameters()},
    )


def assert_unchanged(model, before):
    after = state_of(model)
    for b, a in zip(before[:2], after[:2], strict=False):
        assert b.keys() == a.keys()
        for k in b:
            assert b[k].dtype == a[k].dtype
            assert torch.equal(b[k], a[k]), f"{k} changed"
    assert before[2:] == after[2:]


def rel_err(A, B):
    return float((A - B).abs().max() / B.abs().max().clamp_min(1e-300))


def check_operator(op, ref_matrix, *, psd=False):
    P = ref_matrix.shape[0]
    assert op.shape == (P, P) and op.num_params == P and op.symmetric is True
    g = torch.Generator().manual_seed(1)
    v = torch.randn(P, generator=g, dtype=op.dtype)
    V = torch.randn(P, 3, generator=g, dtype=op.dtype)
    assert rel_err(op.matvec(v), ref_matrix @ v) <= 1e-8
    assert rel_err(op.matmat(V), ref_matrix @ V) <= 1e-8
    D = op.to_dense()
    assert rel_err(D, ref_matrix) <= 1e-8
    assert rel_err(D, D.T) <= 1e-12  # symmetric to round-off
    if psd:
        ev = torch.linalg.eigvalsh(D)
        assert ev.min() >= -1e-10 * ev.abs().max()
    return D


# ------------------------------------------------------------------------------------------------
# the grid: models x bn modes x losses x curvature

GRID = [
    (model, bn, loss)
    for model, bns in (
        ("mlp", ["eval"]),
        ("cnn", ["eval", "train"]),
        ("dict", ["eval"]),
        ("mlp-bn", ["eval", "train"]),
    )
    for bn in bns
    for loss in ("ce", "mse", "bce")
]


@pytest.mark.parametrize("model_kind,bn_mode,loss", GRID)
def test_hessian_ggn_empirical_fisher_match_dense_references(model_kind, bn_mode, loss):
    model, loss_fn, inputs, targets = make_case(model_kind, loss)
    model.train()  # the user's flags must come back as they were
    before = state_of(model)
    names = [n for n, _ in model.named_parameters()]
    ref = Reference(model, loss_fn, inputs, targets, names, bn_mode)
    data = split(inputs, targets)
    kw = dict(bn_mode=bn_mode)
    H = check_operator(dc.hessian(model, loss_fn, data, **kw), ref.hessian())
    G = check_operator(dc.ggn(model, loss_fn, data, **kw), ref.ggn(), psd=True)
    Fe = check_operator(dc.fisher(model, loss_fn, data, **kw), ref.empirical_fisher(), psd=True)
    assert_unchanged(model, before)
    assert all("forward" not in m.__dict__ for m in model.modules())  # BN forward restored
    # the three are genuinely different matrices (so the checks above discriminate)
    assert rel_err(G, H) > 1e-3 and rel_err(Fe, G) > 1e-3
    if model_kind in ("cnn", "mlp-bn"):  # the batch-norm mode matters
        other = "train" if bn_mode == "eval" else "eval"
        H2 = dc.hessian(model, loss_fn, data, bn_mode=other).to_dense()
        assert rel_err(H2, H) > 1e-3


@pytest.mark.parametrize(
    "model_kind,bn_mode,loss",
    [("mlp", "eval", "mse"), ("cnn", "train", "ce"), ("dict", "eval", "bce")],
)
def test_forward_over_reverse_engine_matches_reference(model_kind, bn_mode, loss):
    model, loss_fn, inputs, targets = make_case(model_kind, loss)
    before = state_of(model)
    names = [n for n, _ in model.named_parameters()]
    ref = Reference(model, loss_fn, inputs, targets, names, bn_mode).hessian()
    op = dc.hessian(model, loss_fn, split(inputs, targets), bn_mode=bn_mode, engine="forward")
    assert op.engine == "forward" and op.metadata["hvp_engine"] == "forward"
    check_operator(op, ref)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="engine must be"):
        dc.hessian(model, loss_fn, split(inputs, targets), engine="fast")


def test_batch_norm_train_hessian_matches_finite_differences_of_the_gradient():
    model, loss_fn, inputs, targets = make_case("cnn", "bce")
    data = split(inputs, targets)
    op = dc.hessian(model, loss_fn, data, bn_mode="train")
    v = torch.randn(op.num_params, dtype=DT)
    v /= v.norm()
    theta = op.parameters_vector()
    eps = 1e-5

    def grad_at(t):
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for p, new in zip(shifted.parameters(), op.unflatten(t), strict=False):
                p.copy_(new)
        return dc.hessian(shifted, loss_fn, data, bn_mode="train").gradient()

    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    assert rel_err(op.matvec(v), fd) < 1e-7


def test_gradient_and_loss_match_reference():
    for bn_mode in ("eval", "train"):
        model, loss_fn, inputs, targets = make_case("cnn", "ce")
        names = [n for n, _ in model.named_parameters()]
        ref = Reference(model, loss_fn, inputs, targets, names, bn_mode)
        op = dc.hessian(model, loss_fn, split(inputs, targets), bn_mode=bn_mode)
        g_ref = torch.func.grad(ref.loss)(ref.theta)
        assert rel_err(op.gradient(), g_ref) <= 1e-10
        assert op.loss() == pytest.approx(float(ref.loss(ref.theta)), rel=1e-12)
        assert op.num_samples == N


# ------------------------------------------------------------------------------------------------
# Monte Carlo Fisher


def mc_reference(op, model, loss_name, loss_fn, inputs, targets):
    """(1/N) sum_i (1/M) sum_m (1/c) g_im g_im^T.

    g_im is the gradient of the per-sample loss at the sampled target (c = 1 for CE and MSE,
    1/d for BCE with d outputs)."""
    names = [n for n, _ in model.named_parameters()]
    ref = Reference(model, loss_fn, inputs, targets, names)
    theta = ref.theta.clone().requires_grad_()
    samples = torch.cat([op._samples[b] for b in sorted(op._samples)], dim=1)  # (M, N, ...)
    M = samples.shape[0]
    grads = []
    for i in range(ref.N):
        x = inputs[i : i + 1]
        f = ref.forward(theta, x)
        d = f.shape[-1]
        for m in range(M):
            if loss_name == "ce":
                y, c = samples[m, i : i + 1], 1.0
            elif loss_name == "bce":
                y, c = samples[m, i : i + 1].to(DT), 1.0 / d
            else:  # sampled Gaussian target y = f + sqrt(d/2) * noise
                y, c = f.detach() + math.sqrt(d / 2) * samples[m, i : i + 1], 1.0
            gi = torch.autograd.grad(loss_fn(f, y), theta, retain_graph=True)[0]
            grads.append(gi / math.sqrt(c))
    Gm = torch.stack(grads)
    return Gm.T @ Gm / (ref.N * M), ref


@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
def test_mc_fisher_matches_its_definition(loss):
    model, loss_fn, inputs, targets = make_case("mlp", loss)
    before = state_of(model)
    op = dc.fisher(model, loss_fn, split(inputs, targets), kind="mc", mc_samples=3, seed=5)
    v = torch.randn(op.num_params, dtype=DT)
    first = op.matvec(v)  # draws the targets
    F_ref, _ = mc_reference(op, model, loss, loss_fn, inputs, targets)
    check_operator(op, F_ref, psd=True)
    torch.testing.assert_close(op.matvec(v), first, rtol=0, atol=0)  # a fixed matrix
    assert_unchanged(model, before)
    # same seed: same matrix; other seed: another one
    again = dc.fisher(model, loss_fn, split(inputs, targets), kind="mc", mc_samples=3, seed=5)
    torch.testing.assert_close(again.matvec(v), first, rtol=1e-13, atol=1e-15)
    other = dc.fisher(model, loss_fn, split(inputs, targets), kind="mc", mc_samples=3, seed=6)
    assert rel_err(other.matvec(v), first) > 1e-3


@pytest.mark.parametrize("loss", ["ce", "bce", "mse"])
def test_mc_fisher_converges_to_ggn(loss):
    model, loss_fn, inputs, targets = make_case("mlp", loss)
    data = split(inputs, targets)
    G = dc.ggn(model, loss_fn, data).to_dense()
    errs = {}
    for M in (4, 1024):
        Fm = dc.fisher(model, loss_fn, data, kind="mc", mc_samples=M, seed=0).to_dense()
        errs[M] = rel_err(Fm, G)
    # Monte Carlo error ~ 1/sqrt(M): 16x fewer at 256x more samples; demand at least 5x
    assert errs[1024] < errs[4] / 5
    assert errs[1024] < 0.1


# ------------------------------------------------------------------------------------------------
# parameter subsets


@pytest.mark.parametrize(
    "selection,expected",
    [
        (["head.weight", "features.1.bias"], ["features.1.bias", "head.weight"]),
        ("features.*.weight", ["features.0.weight", "features.1.weight"]),
        (["features.1.*", "head.bias"], ["features.1.weight", "features.1.bias", "head.bias"]),
        ("modules", ["features.1.weight", "features.1.bias", "head.weight", "head.bias"]),
    ],
)
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_parameter_subsets(selection, expected, bn_mode):
    model, loss_fn, inputs, targets = make_case("cnn", "ce")
    if selection == "modules":
        selection = [model.features[1], model.head]
    data = split(inputs, targets)
    before = state_of(model)
    H = dc.hessian(model, loss_fn, data, params=selection, bn_mode=bn_mode)
    assert H.param_names == expected
    ref = Reference(model, loss_fn, inputs, targets, expected, bn_mode)
    check_operator(H, ref.hessian())
    check_operator(dc.ggn(model, loss_fn, data, params=selection, bn_mode=bn_mode), ref.ggn())
    Fe = dc.fisher(model, loss_fn, data, params=selection, bn_mode=bn_mode)
    check_operator(Fe, ref.empirical_fisher())
    assert_unchanged(model, before)
    # the subset operator is the principal sub-block of the full one
    full = dc.hessian(model, loss_fn, data, bn_mode=bn_mode)
    all_names = full.param_names
    starts = {n: o for n, o in zip(all_names, full.layout.offsets, strict=False)}
    sizes = {n: k for n, k in zip(all_names, full.layout.numels, strict=False)}
    idx = torch.cat([torch.arange(starts[n], starts[n] + sizes[n]) for n in expected])
    block = full.to_dense()[idx][:, idx]
    assert rel_err(H.to_dense(), block) <= 1e-10


def test_frozen_parameters_are_skipped_by_default_and_selectable_explicitly():
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    model.fc1.weight.requires_grad_(False)
    data = split(inputs, targets)
    op = dc.hessian(model, loss_fn, data)
    assert op.param_names == ["fc1.bias", "fc2.weight", "fc2.bias"]
    op2 = dc.hessian(model, loss_fn, data, params=["fc1.weight"])
    assert op2.param_names == ["fc1.weight"] and op2.num_params == 24
    assert model.fc1.weight.requires_grad is False


def test_selection_errors_are_clear():
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    data = split(inputs, targets)
    with pytest.raises(ValueError, match="selects no parameter.*available parameters: fc1.weight"):
        dc.hessian(model, loss_fn, data, params=[])
    with pytest.raises(ValueError, match="'fc3.weight' is neither.*fc2.bias"):
        dc.ggn(model, loss_fn, data, params=["fc1.weight", "fc3.weight"])
    with pytest.raises(ValueError, match="'conv.*' is neither"):
        dc.fisher(model, loss_fn, data, params="conv.*")
    with pytest.raises(ValueError, match="not part of the model"):
        dc.hessian(model, loss_fn, data, params=[nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="each params item"):
        dc.hessian(model, loss_fn, data, params=[3])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter of the model has requires_grad"):
        dc.hessian(model, loss_fn, data)


# ------------------------------------------------------------------------------------------------
# Lanczos on the operators


def test_lanczos_with_full_steps_reproduces_the_exact_hessian_spectrum():
    # MSE on an MLP: a generic (non-degenerate) spectrum; cross-entropy would add the
    # softmax-shift null space, whose multiplicity one Lanczos run cannot resolve
    model, loss_fn, inputs, targets = make_case("mlp", "mse")
    names = [n for n, _ in model.named_parameters()]
    op = dc.hessian(model, loss_fn, split(inputs, targets))
    P = op.num_params
    assert 50 <= P <= 150
    exact = torch.linalg.eigvalsh(Reference(model, loss_fn, inputs, targets, names).hessian())
    res = dc.lanczos(op, P, seed=0, verbose=False)
    ritz = np.sort(res.ritz_values[0])
    assert ritz.size == P and not res.broke_down[0]
    scale = float(exact.abs().max())
    np.testing.assert_allclose(ritz, exact.numpy(), atol=1e-8 * scale, rtol=0)
    assert exact.min() < -1e-6 * scale  # a real indefinite Hessian


def test_ggn_spectrum_has_no_negative_nodes():
    model, loss_fn, inputs, targets = make_case("cnn", "ce")
    op = dc.ggn(model, loss_fn, split(inputs, targets))
    dens = dc.lanczos(op, 40, probes=2, seed=0, verbose=False).density()
    assert dens.nodes.min() >= -1e-10 * np.abs(dens.nodes).max()
    H = dc.hessian(model, loss_fn, split(inputs, targets))
    dens_h = dc.lanczos(H, 40, probes=2, seed=0, verbose=False).density()
    assert dens_h.nodes.min() < -1e-6 * np.abs(dens_h.nodes).max()


def test_weight_decay_shifts_eigenvalues_gradient_and_loss():
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    data = split(inputs, targets)
    lam = 0.37
    for make in (dc.hessian, dc.ggn, dc.fisher):
        plain, decayed = make(model, loss_fn, data), make(model, loss_fn, data, weight_decay=lam)
        e0 = torch.linalg.eigvalsh(plain.to_dense())
        e1 = torch.linalg.eigvalsh(decayed.to_dense())
        torch.testing.assert_close(e1, e0 + lam, rtol=0, atol=1e-12)
    theta = decayed.parameters_vector()
    torch.testing.assert_close(decayed.gradient(), plain.gradient() + lam * theta)
    assert decayed.loss() == pytest.approx(plain.loss() + lam / 2 * float(theta @ theta), rel=1e-12)
    assert decayed.loss(include_weight_decay=False) == pytest.approx(plain.loss(), rel=1e-14)
    with pytest.raises(ValueError, match="weight_decay must be finite and >= 0"):
        dc.hessian(model, loss_fn, data, weight_decay=-1.0)


# ------------------------------------------------------------------------------------------------
# losses: closed forms against torch.func.hessian of the loss w.r.t. the output


def _output_hessian_cases():
    g = torch.Generator().manual_seed(3)
    out2 = torch.randn(5, 4, generator=g, dtype=DT)
    out3 = torch.randn(3, 4, 6, generator=g, dtype=DT)  # (B, C, T) torch layout
    idx = torch.randint(0, 4, (5,), generator=g)
    idx_ign = idx.clone()
    idx_ign[1] = -100
    idx3 = torch.randint(0, 4, (3, 6), generator=g)
    prob = torch.softmax(torch.randn(5, 4, generator=g, dtype=DT), -1)
    w = torch.rand(4, generator=g, dtype=DT) + 0.5
    yb = torch.randint(0, 2, (5, 4), generator=g).to(DT)
    pw = torch.rand(4, generator=g, dtype=DT) + 0.5
    seq = torch.randn(3, 6, 4, generator=g, dtype=DT)  # (B, T, C)
    seq_y = torch.randint(0, 4, (3, 6), generator=g)
    seq_y[0, 2] = 7  # ignored below
    return [
        ("ce", nn.CrossEntropyLoss(), out2, idx, "ce_index"),
        ("ce-fn", F.cross_entropy, out2, idx, "ce_index"),
        (
            "ce-weight-ignore",
            nn.CrossEntropyLoss(weight=w, ignore_index=-100),
            out2,
            idx_ign,
            "ce_index",
        ),
        ("ce-smooth", nn.CrossEntropyLoss(label_smoothing=0.2), out2, idx_ign, "ce_index"),
        (
            "ce-weight-smooth",
            nn.CrossEntropyLoss(weight=w, label_smoothing=0.2),
            out2,
            idx,
            "generic",
        ),
        ("ce-prob", nn.CrossEntropyLoss(label_smoothing=0.1), out2, prob, "ce_prob"),
        ("ce-spatial", nn.CrossEntropyLoss(), out3, idx3, "ce_index"),
        ("seq-ce", dc.SequenceCrossEntropyLoss(ignore_index=7), seq, seq_y, "ce_index"),
        ("mse", nn.MSELoss(), out2, torch.randn(5, 4, generator=g, dtype=DT), "mse"),
        ("mse-fn", F.mse_loss, out3, torch.randn(3, 4, 6, generator=g, dtype=DT), "mse"),
        ("bce", nn.BCEWithLogitsLoss(), out2, yb, "bce_with_logits"),
        ("bce-weights", nn.BCEWithLogitsLoss(weight=w, pos_weight=pw), out2, yb, "bce_with_logits"),
        (
            "huber",
            nn.HuberLoss(delta=0.5),
            out2,
            torch.randn(5, 4, generator=g, dtype=DT),
            "generic",
        ),
        ("lambda", lambda o, y: ((o - y) ** 4).mean(), out2, yb, "generic"),
    ]


@pytest.mark.parametrize("case", _output_hessian_cases(), ids=lambda c: c[0])
def test_output_hessian_closed_forms(case):
    _, loss_fn, out, y, mode = case
    ol = OutputLoss(loss_fn)
    assert ol._mode(out, y) == mode
    # reverse-over-reverse reference: huber_loss_backward has no forward-mode formula
    H = jacrev(jacrev(lambda o: loss_fn(o.view(out.shape), y)))(out.reshape(-1))
    U = torch.randn(3, *out.shape, dtype=DT)
    HU = ol.hessian_product(out, y, U).reshape(3, -1)
    torch.testing.assert_close(HU, U.reshape(3, -1) @ H.T, rtol=1e-12, atol=1e-14)
    g = torch.func.grad(lambda o: loss_fn(o, y))(out)
    torch.testing.assert_close(ol.output_gradient(out, y), g, rtol=1e-12, atol=1e-14)
    if mode in ("ce_index", "ce_prob", "mse", "bce_with_logits"):
        # the Monte Carlo factors average to the output Hessian (per position blocks)
        gen = torch.Generator().manual_seed(0)
        M = 40000
        R = ol.mc_factors(out, y, ol.draw_samples(out, y, M, gen))
        B = out.shape[0]
        Rf = R.reshape(M, B, -1)
        est = torch.einsum("mbi,mbj->bij", Rf, Rf) / M
        Hb = H.view(B, -1, B, Rf.shape[-1]).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        assert (est - Hb).abs().max() < 0.05 * Hb.abs().max()


def test_loss_errors():
    model, _, inputs, targets = make_case("mlp", "ce")
    data = split(inputs, targets)
    with pytest.raises(ValueError, match="reduction='sum'.*MEAN loss"):
        dc.hessian(model, nn.CrossEntropyLoss(reduction="sum"), data)
    with pytest.raises(ValueError, match="kind='mc'.*HuberLoss"):
        dc.fisher(model, nn.HuberLoss(), data, kind="mc")
    with pytest.raises(ValueError, match="kind must be"):
        dc.fisher(model, nn.CrossEntropyLoss(), data, kind="true")
    with pytest.raises(ValueError, match="mc_samples must be a positive integer"):
        dc.fisher(model, nn.CrossEntropyLoss(), data, kind="mc", mc_samples=0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        dc.ggn(model, "ce", data)


def test_generic_loss_and_sequence_outputs_with_ignored_tokens():
    """Autodiff fallback (a lambda) and the closed form (SequenceCrossEntropyLoss) agree with the
    reference on (B, T, C) outputs; weights per batch by sample count."""
    model, _, inputs, targets = make_case("seq", "ce")
    lam_loss = lambda o, y: F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1))  # noqa: E731
    names = [n for n, _ in model.named_parameters()]
    data = split(inputs, targets)
    ref = Reference(model, lam_loss, inputs, targets, names)
    Hr, Gr, Fr = ref.hessian(), ref.ggn(), ref.empirical_fisher()
    for loss_fn in (lam_loss, dc.SequenceCrossEntropyLoss()):
        check_operator(dc.hessian(model, loss_fn, data), Hr)
        check_operator(dc.ggn(model, loss_fn, data), Gr, psd=True)
        check_operator(dc.fisher(model, loss_fn, data), Fr, psd=True)
    # a log-cosh regression head: GGN by automatic differentiation of the output Hessian
    model, _, inputs, targets = make_case("dict", "mse")
    names = [n for n, _ in model.named_parameters()]
    logcosh = lambda o, y: torch.log(torch.cosh(o - y)).mean()  # noqa: E731
    ref = Reference(model, logcosh, inputs, targets, names)
    data = split(inputs, targets)
    check_operator(dc.ggn(model, logcosh, data), ref.ggn(), psd=True)
    check_operator(dc.hessian(model, logcosh, data), ref.hessian())
    check_operator(dc.fisher(model, logcosh, data), ref.empirical_fisher(), psd=True)


def test_model_output_with_logits_attribute():
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return {"logits": self.inner(x), "hidden": x}

    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    data = split(inputs, targets)
    a = dc.ggn(Wrapped(model), loss_fn, data).to_dense()
    b = dc.ggn(model, loss_fn, data).to_dense()
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    class Tupled(nn.Module):
        def forward(self, x):
            return (x, x)

    bad = nn.Sequential(nn.Linear(4, 3), Tupled()).double()
    with pytest.raises(TypeError, match="returned a tuple on batch 0"):
        dc.hessian(bad, loss_fn, data).matvec(torch.zeros(15, dtype=DT))


# ------------------------------------------------------------------------------------------------
# data, dtype, device, cache


def test_float32_model_evaluated_in_float64_is_left_float32():
    model, loss_fn, inputs, targets = make_case("cnn", "mse")
    names = [n for n, _ in model.named_parameters()]
    ref = Reference(model, loss_fn, inputs, targets, names).hessian()
    model32 = model.float()
    before = state_of(model32)
    data32 = split(inputs.float(), targets.float())
    op = dc.hessian(model32, loss_fn, data32, dtype=torch.float64)
    assert op.dtype == torch.float64
    # float64 evaluation of the float32-rounded model: agrees with the reference to float32 rounding
    # of the parameters/inputs only, and exactly with a float64 reference of the rounded model
    model64 = copy.deepcopy(model32).double()
    ref64 = Reference(model64, loss_fn, inputs.float().double(), targets.float().double(), names)
    check_operator(op, ref64.hessian())
    assert rel_err(op.to_dense(), ref) < 1e-4
    assert_unchanged(model32, before)
    op32 = dc.hessian(model32, loss_fn, data32)  # default: the model's dtype
    assert op32.dtype == torch.float32
    assert rel_err(op32.to_dense().double(), ref64.hessian()) < 1e-4
    with pytest.raises(TypeError, match="float32 tensor but the operator works in torch.float64"):
        op.matvec(torch.zeros(op.num_params))


def test_dataloader_num_samples_and_cache():
    model, loss_fn, inputs, targets = make_case("mlp", "bce")
    ds = torch.utils.data.TensorDataset(inputs, targets)
    loader = torch.utils.data.DataLoader(ds, batch_size=BS, shuffle=False)
    op_list = dc.ggn(model, loss_fn, split(inputs, targets))
    op_loader = dc.ggn(model, loss_fn, loader)
    assert op_loader.num_samples == N and op_list.num_samples == N
    subset = torch.utils.data.SubsetRandomSampler(range(7))
    assert (
        dc.ggn(model, loss_fn, torch.utils.data.DataLoader(ds, 3, sampler=subset)).num_samples == 7
    )
    dropping = torch.utils.data.DataLoader(ds, batch_size=BS, drop_last=True)
    assert dc.ggn(model, loss_fn, dropping).num_samples == 8  # counted by a pass over the targets
    V = torch.randn(op_list.num_params, 3, dtype=DT)
    torch.testing.assert_close(op_loader.matmat(V), op_list.matmat(V), rtol=1e-13, atol=1e-15)

    class Counting:
        def __init__(self, batches):
            self.batches, self.passes = batches, 0

        def __iter__(self):
            self.passes += 1
            return iter(self.batches)

    counting = Counting(split(inputs, targets))
    op = dc.ggn(model, loss_fn, counting, cache=True)
    assert op.num_samples == N and counting.passes == 1  # no len(): counted by one pass
    r1 = op.matmat(V)
    r2 = op.matmat(V)
    assert counting.passes == 2  # the product after the first one used the cached batches
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    torch.testing.assert_close(r1, op_list.matmat(V), rtol=1e-13, atol=1e-15)
    with pytest.warns(UserWarning, match="shuffling DataLoader"):
        dc.hessian(
            model,
            loss_fn,
            torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True),
            bn_mode="train",
        )


def test_flatten_unflatten_roundtrip():
    model, loss_fn, inputs, targets = make_case("cnn", "ce")
    op = dc.ggn(model, loss_fn, split(inputs, targets), params="features.*")
    v = torch.arange(op.num_params, dtype=DT)
    parts = op.unflatten(v)
    assert [tuple(p.shape) for p in parts] == [
        tuple(dict(model.named_parameters())[n].shape) for n in op.param_names
    ]
    torch.testing.assert_close(op.flatten(parts), v)
    torch.testing.assert_close(op.flatten(dict(zip(op.param_names, parts, strict=False))), v)
    with pytest.raises(ValueError, match="unflatten expects a vector of shape"):
        op.unflatten(v[:-1])
    with pytest.raises(ValueError, match="flatten: the tensor for features.0.weight has shape"):
        op.flatten([p.reshape(-1) for p in parts])


# ------------------------------------------------------------------------------------------------
# bad input


def test_non_finite_loss_and_product_name_the_batch():
    model, loss_fn, inputs, targets = make_case("mlp", "mse")
    data = split(inputs, targets)
    bad = list(data)
    x1 = bad[1][0].clone()
    x1[2, 0] = float("nan")
    bad[1] = (x1, bad[1][1])
    v = torch.randn(51, dtype=DT)
    for make in (dc.hessian, dc.ggn, dc.fisher):
        op = make(model, loss_fn, bad)
        with pytest.raises(FloatingPointError, match="loss on batch 1 is not finite"):
            op.matvec(v)
    with pytest.raises(FloatingPointError, match="batch 1"):
        dc.hessian(model, loss_fn, bad).gradient()
    with pytest.raises(FloatingPointError, match="batch 1"):
        dc.hessian(model, loss_fn, bad).loss()

    class Root(nn.Module):  # sqrt(x^2) at x = 0: finite loss, NaN derivatives
        def forward(self, x):
            return torch.sqrt(x * x)

    flat = nn.Sequential(nn.Linear(4, 3), Root()).double()
    nn.init.zeros_(flat[0].weight)
    nn.init.zeros_(flat[0].bias)
    for make in (dc.hessian, dc.ggn):
        with pytest.raises(FloatingPointError, match="product on batch 0 is not finite"):
            make(flat, loss_fn, data).matvec(torch.randn(15, dtype=DT))


def test_bad_vectors_and_arguments():
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    data = split(inputs, targets)
    op = dc.hessian(model, loss_fn, data)
    with pytest.raises(ValueError, match=r"shape \(P,\) with P = 51"):
        op.matvec(torch.zeros(50, dtype=DT))
    with pytest.raises(ValueError, match=r"\(P, k\)"):
        op.matmat(torch.zeros(52, 2, dtype=DT))
    with pytest.raises(ValueError, match="bn_mode must be"):
        dc.hessian(model, loss_fn, data, bn_mode="training")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        dc.hessian(lambda x: x, loss_fn, data)
    with pytest.raises(TypeError, match="one-shot iterator"):
        dc.hessian(model, loss_fn, iter(data))
    with pytest.raises(TypeError, match="data must be an iterable of"):
        dc.hessian(model, loss_fn, inputs)
    with pytest.raises(TypeError, match="batch 0 is a tuple of length 3"):
        dc.hessian(model, loss_fn, [(inputs, targets, targets)]).matvec(torch.zeros(51, dtype=DT))
    with pytest.raises(TypeError, match="targets of batch 0 are a list"):
        dc.hessian(model, loss_fn, [(inputs, [1, 2])]).matvec(torch.zeros(51, dtype=DT))
    with pytest.raises(ValueError, match="yielded no batches"):
        dc.hessian(model, loss_fn, []).matvec(torch.zeros(51, dtype=DT))


# ------------------------------------------------------------------------------------------------
# blocks of columns, tied weights, progress


@pytest.mark.parametrize("kind", ["hessian", "hessian-forward", "ggn", "fisher", "fisher-mc"])
def test_every_block_width_gives_the_same_product(kind):
    model, loss_fn, inputs, targets = make_case("cnn", "ce")
    data = split(inputs, targets)
    make = {
        "hessian": lambda: dc.hessian(model, loss_fn, data),
        "hessian-forward": lambda: dc.hessian(model, loss_fn, data, engine="forward"),
        "ggn": lambda: dc.ggn(model, loss_fn, data),
        "fisher": lambda: dc.fisher(model, loss_fn, data),
        "fisher-mc": lambda: dc.fisher(model, loss_fn, data, kind="mc", mc_samples=2, seed=1),
    }[kind]
    op = make()
    V = torch.randn(op.num_params, 5, dtype=DT)
    ref = torch.stack([op.matvec(V[:, j]) for j in range(5)], dim=1)  # one column at a time
    for width in (1, 2, 3, 16, None):
        op.block_size = width
        assert rel_err(op.matmat(V), ref) <= 1e-12, width


def test_automatic_block_width_follows_the_activation_size(monkeypatch):
    # the block planning of autograd's route (a layer chain's own route needs none)
    monkeypatch.setattr(dc.CurvatureOperator, "chain_route", False)
    small, loss_fn, inputs, targets = make_case("mlp", "ce")
    op = dc.ggn(small, loss_fn, split(inputs, targets))
    op.matmat(torch.randn(op.num_params, 2, dtype=DT))
    assert op._activation_bytes < 2**12
    assert op._block_width(8, None, None, None) == 16
    H = dc.hessian(small, loss_fn, split(inputs, targets))
    H.matmat(torch.randn(H.num_params, 2, dtype=DT))
    assert H._block_width(8, None, None, None) == 16  # small activations: vmapped columns
    big = nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 64, 2)
    ).double()
    data = [(torch.randn(128, 1, 8, 8, dtype=DT), torch.randint(0, 2, (128,)))]
    op = dc.ggn(big, loss_fn, data)
    op.matmat(torch.randn(op.num_params, 2, dtype=DT))
    assert op._activation_bytes >= 128 * 64 * 64 * 8  # (128, 64, 8, 8) float64 = 4 MiB
    # independent rows: 16 columns, linearised in micro-batches of 16 MiB / (16 x 32 KiB) rows
    assert op._block_width(8, None, None, None) == 16
    block = Block(16, {}, None, {}, {})
    assert op._micro_size(block, None, None) == 32
    custom = dc.ggn(_Wrapped(big), loss_fn, data)  # a custom forward: whole batches
    custom.matmat(torch.randn(op.num_params, 2, dtype=DT))
    assert custom._block_width(8, None, None, None) == 4
    H = dc.hessian(big, loss_fn, data)
    H.matmat(torch.randn(H.num_params, 2, dtype=DT))
    assert H._block_width(8, None, None, None) == 1  # 4 MiB activations: one column at a time


class _Wrapped(nn.Module):
    """A model with its own forward (rows not known to be independent)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class _LegacySquare(torch.autograd.Function):
    """``x |x|`` as an old-style autograd.Function (no setup_context: torch.func cannot vmap it)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x.abs()


def test_hessian_falls_back_to_autograd_when_vmap_cannot_run_the_model():
    class Legacy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.b(_LegacySquare.apply(self.a(x)))

    torch.manual_seed(0)
    model = Legacy().double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (N,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    op = dc.hessian(model, loss_fn, split(x, y))
    theta = op.parameters_vector()

    def loss(t):
        p = dict(zip(op.param_names, op.unflatten(t), strict=True))
        return loss_fn(functional_call(model, p, (x,)), y)

    ref = torch.autograd.functional.hessian(loss, theta)
    V = torch.randn(op.num_params, 4, generator=g, dtype=DT)
    with pytest.warns(UserWarning, match="one at a time with torch.autograd"):
        assert rel_err(op.matmat(V), ref @ V) <= 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per operator
        assert rel_err(op.to_dense(), ref) <= 1e-10


def test_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.out = nn.Linear(4, 7, bias=False)
            self.out.weight = self.embed.weight  # tied

        def forward(self, input_ids, attention_mask):
            h = torch.tanh(self.embed(input_ids)).mean(1)
            return self.out(h)

    torch.manual_seed(0)
    model = Tied().double()
    g = torch.Generator().manual_seed(2)
    inputs = make_inputs("dict", N, g)
    targets = torch.randint(0, 7, (N,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    op = dc.hessian(model, loss_fn, split(inputs, targets))
    assert op.param_names == ["embed.weight"] and op.num_params == 28
    ref = Reference(model, loss_fn, inputs, targets, ["embed.weight"])
    check_operator(op, ref.hessian())
    check_operator(dc.ggn(model, loss_fn, split(inputs, targets)), ref.ggn(), psd=True)


def test_verbose_progress_bar(capsys):
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    op = dc.ggn(model, loss_fn, split(inputs, targets), verbose=True)
    op.matvec(torch.randn(op.num_params, dtype=DT))
    err = capsys.readouterr().err
    assert "ggn product" in err and "3/3" in err
    assert repr(op).startswith("GGNOperator(P=51")
    meta = op.metadata
    assert meta["curvature"] == "ggn" and meta["loss"] == "CrossEntropyLoss"
    assert meta["num_params"] == 51 and meta["bn_mode"] == "eval"


def test_public_building_blocks_evaluate_like_the_operator():
    model, loss_fn, inputs, targets = make_case("cnn", "ce")
    data = split(inputs, targets)
    model.eval()
    op = dc.hessian(model, loss_fn, data, bn_mode="train")
    selected, fixed = op.functional_state()
    assert list(selected) == op.param_names
    total = 0.0
    with op.evaluation_mode():
        assert model.features[1].training and not model.head.training
        for batch in op.batches():
            out = op.batch_output(selected, fixed, batch)
            total += batch.n * float(loss_fn(out, batch.targets))
    assert total / N == pytest.approx(op.loss(), rel=1e-12)
    assert not any(m.training for m in model.modules())  # restored


# ------------------------------------------------------------------------------------------------
# Conv -> BatchNorm pairs folded in eval mode


class SharedConv(nn.Module):
    """A Sequential's conv also used on its own (must stay unfolded there)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.block = nn.Sequential(self.conv, nn.BatchNorm2d(3), nn.Tanh())
        self.head = nn.Linear(2 * 3 * 16, 3)

    def forward(self, x):
        return self.head(torch.cat([self.block(x), self.conv(x)], 1).flatten(1))


def _folded_case(kind):
    torch.manual_seed(0)
    if kind == "registry-cnn":
        model = dc.get_model("cnn", num_classes=3, in_channels=2, input_size=4, width=2, blocks=2)
    elif kind == "shared":
        model = SharedConv()
    else:  # a hook on the conv: the pair must not be folded (the hook would not run)
        model = CNN(3)
        model.features[0].register_forward_hook(lambda m, i, o: None)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 2, 4, 4) * 2 + 0.5)  # non-trivial running statistics
    return model.double().eval()


@pytest.mark.parametrize("kind", ["registry-cnn", "shared", "hooked"])
def test_folded_conv_batch_norm_pairs_give_the_exact_hessian_and_ggn(kind):
    model = _folded_case(kind)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, 2, 4, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (N,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    before = state_of(model)
    H = dc.hessian(model, loss_fn, split(x, y))
    folded = [m for m in model.modules() if isinstance(m, nn.Sequential)]
    with H.evaluation_mode():
        patched = [m for m in folded if "forward" in m.__dict__]
        state, fixed = H.functional_state()
        out = torch.cat([H.batch_output(state, fixed, b) for b in H.batches()])
    assert len(patched) == (0 if kind == "hooked" else 1)
    assert all("forward" not in m.__dict__ for m in folded)  # restored
    with torch.no_grad():
        assert rel_err(out, model(x)) <= 1e-12  # the same function as the unfolded model
    ref = Reference(model, loss_fn, x, y, H.param_names)
    check_operator(H, ref.hessian())
    check_operator(dc.ggn(model, loss_fn, split(x, y)), ref.ggn(), psd=True)
    assert_unchanged(model, before)


def _sequential_cnn():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 3),
    ).double()
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 2, 4, 4, dtype=DT) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=DT), ignore_index=1),
        nn.MSELoss(),
    ],
    ids=["weighted-ce", "mse"],
)
def test_micro_batched_ggn_and_fisher_blocks_match_dense_references(loss_fn, monkeypatch):
    """Wide blocks linearised row by row (micro-batches of one row) are exact, any loss.

    The output-space weights are formed on the whole batch, so a weighted cross-entropy with
    ignored targets (not separable into micro-batch means) is exact too.
    """
    import deepcurvature.operators.output_space as output_space

    # micro-batches belong to autograd's route (a layer chain's own route: test_chain_products)
    monkeypatch.setattr(dc.CurvatureOperator, "chain_route", False)
    model = _sequential_cnn()
    g = torch.Generator().manual_seed(5)
    inputs = torch.randn(N, 2, 4, 4, generator=g, dtype=DT)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        targets = torch.randint(0, 3, (N,), generator=g)
    else:
        targets = torch.randn(N, 3, generator=g, dtype=DT)
    names = [n for n, _ in model.named_parameters()]
    data = [(inputs, targets)]  # one batch: a weighted mean over the data set is the batch's
    ref = Reference(model, loss_fn, inputs, targets, names)
    whole = {
        "ggn": dc.ggn(model, loss_fn, data),
        "fisher": dc.fisher(model, loss_fn, data),
        "mc": dc.fisher(model, loss_fn, data, kind="mc", mc_samples=2, seed=3),
    }
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(P, 5, generator=g, dtype=DT)
    V1 = torch.randn(P, generator=g, dtype=DT)
    expected = {k: op.matmat(V) for k, op in whole.items()}
    monkeypatch.setattr(output_space, "CPU_BLOCK_BYTES", 1)  # micro-batches of one row
    ops = {
        "ggn": dc.ggn(model, loss_fn, data),
        "fisher": dc.fisher(model, loss_fn, data),
        "mc": dc.fisher(model, loss_fn, data, kind="mc", mc_samples=2, seed=3),
    }
    assert ops["ggn"]._micro_rows()
    assert ops["ggn"]._block_width(5, None, None, None) == 16
    assert rel_err(ops["ggn"].matmat(V), ref.ggn() @ V) <= 1e-10
    assert rel_err(ops["ggn"].matvec(V1), ref.ggn() @ V1) <= 1e-10
    if isinstance(loss_fn, nn.MSELoss):  # per-sample losses as the reference defines them
        assert rel_err(ops["fisher"].matmat(V), ref.empirical_fisher() @ V) <= 1e-10
    for kind, op in ops.items():  # MC: the same sampled targets
        assert rel_err(op.matmat(V), expected[kind]) <= 1e-12, kind
    assert ops["ggn"]._micro_size(Block(5, {}, None, {}, {}), None, None) == 1


class _CountingModel(nn.Module):
    """Writes into a buffer in its forward (the operators evaluate copies of the buffers)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros((), dtype=DT))

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * (1 + self.calls / 10)


def test_cached_state_follows_in_place_changes_of_the_model():
    """Products see parameters changed in place between them, never the copies' own writes."""
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    data = split(inputs, targets)
    H = dc.hessian(model, loss_fn, data)
    v = torch.randn(H.num_params, dtype=DT)
    first = H.matvec(v)
    assert torch.equal(H.matvec(v), first)  # cached state: the same product
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)
    fresh = dc.hessian(model, loss_fn, data).matvec(v)
    assert torch.equal(H.matvec(v), fresh) and not torch.allclose(fresh, first)
    model.load_state_dict({k: t * 0.5 for k, t in model.state_dict().items()})
    assert torch.equal(H.matvec(v), dc.hessian(model, loss_fn, data).matvec(v))

    counting = _CountingModel().double()
    C = dc.hessian(counting, loss_fn, data)  # plain autograd: buffers may be written
    w = torch.randn(C.num_params, dtype=DT)
    a, b = C.matvec(w), C.matvec(w)  # every product starts from the model's buffer (0)
    assert torch.equal(a, b) and float(counting.calls) == 0.0


def test_an_error_mid_pass_leaves_the_model_as_it_was():
    """Products swap the parameters into the model once per pass: an error must restore them."""
    model, loss_fn, inputs, targets = make_case("mlp", "ce")
    params = dict(model.named_parameters())
    before = state_of(model)

    class Breaks(list):
        armed = False

        def __iter__(self):
            for i, batch in enumerate(list.__iter__(self)):
                if self.armed and i == 2:
                    raise RuntimeError("disk unplugged")
                yield batch

    for make in (dc.hessian, dc.ggn, dc.fisher):
        data = Breaks(split(inputs, targets))
        op = make(model, loss_fn, data)
        data.armed = True
        for V in (torch.randn(51, dtype=DT), torch.randn(51, 3, dtype=DT)):
            with pytest.raises(RuntimeError, match="disk unplugged"):
                op.matvec(V) if V.ndim == 1 else op.matmat(V)
            assert all(p is params[n] for n, p in model.named_parameters())  # the user's tensors
            assert_unchanged(model, before)
    # and while a pass runs, the model holds the product's leaves, not the user's parameters
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args: seen.append(next(iter(m.parameters())) is next(iter(params.values())))
    )
    dc.hessian(model, loss_fn, split(inputs, targets)).matvec(torch.randn(51, dtype=DT))
    hook.remove()
    assert seen and not any(seen)
    assert all(p is params[n] for n, p in model.named_parameters())
    assert_unchanged(model, before)


def test_batch_norm_with_large_running_mean_keeps_float32_precision(monkeypatch):
    from deepcurvature.operators import evaluation

    """Running-statistics batch norm is evaluated as (x - mean) * scale + b, not x * scale + shift.

    The second form cancels digits in float32 when |mean| is large against the spread of x.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(30.0)
        model[1].running_mean.fill_(30.0)
        model[1].running_var.fill_(0.5)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    data = [(x, torch.randint(0, 3, (64,), generator=g))]
    loss_fn = nn.CrossEntropyLoss()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=g, dtype=DT)
    exact = float(v @ dc.hessian(model, loss_fn, data, dtype=DT).matvec(v))
    chain = dc.hessian(model, loss_fn, data)  # the layer chain's own route: (x - mean) * scale
    assert chain.product_route == "chain"
    ours_chain = float(v @ chain.matvec(v.float()).double())
    monkeypatch.setattr(dc.CurvatureOperator, "chain_route", False)  # the evaluation context's
    ours = float(v @ dc.hessian(model, loss_fn, data).matvec(v.float()).double())
    monkeypatch.setattr(evaluation, "_AFFINE_NORMS", ())  # torch's own F.batch_norm
    plain = float(v @ dc.hessian(model, loss_fn, data).matvec(v.float()).double())
    # measured: 2.2e-7 relative against F.batch_norm's 1.6e-6 (x * scale + shift: 2.1e-6)
    assert abs(ours - exact) <= 0.5 * abs(plain - exact), (ours, plain, exact)
    assert abs(ours_chain - exact) <= 0.5 * abs(plain - exact), (ours_chain, plain, exact)
