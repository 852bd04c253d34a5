"""Optimisers: K-FAC factors against exact Fisher blocks, SWATS switching, Gadam averaging,
the registry, and state dicts that survive weights_only loading."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepcurvature as dc


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _digits(n=256):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:n], dtype=torch.int64)
    return ((x - x.mean(0)) / (x.std(0) + 1e-3))[:n], y


def _mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).to(dtype)


def _reload(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _flat_grad(layer):
    g = layer.weight.grad.reshape(layer.weight.shape[0], -1)
    return torch.cat([g, layer.bias.grad[:, None]], 1).reshape(-1)  # row-major vec([W | b])


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    names = dc.list_optimizers()
    for n in ("SGD", "Adam", "AdamW", "KFAC", "SWATS", "Gadam", "GadamW"):
        assert n in names
    m = _mlp()
    assert isinstance(dc.build_optimizer("sgd", m, lr=0.1), torch.optim.SGD)
    assert isinstance(dc.build_optimizer("kfac", m), dc.KFAC)
    opt = dc.build_optimizer("SGD", m, lr=0.1, nesterov=True, weight_decay=1e-4)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"]
    with pytest.raises(ValueError, match="unknown optimizer 'nope'.*SGD"):
        dc.build_optimizer("nope", m)
    with pytest.raises(ValueError, match=r"does not take \['betas'\].*momentum"):
        dc.build_optimizer("SGD", m, betas=(0.9, 0.9))
    with pytest.raises(ValueError, match="needs the model"):
        dc.build_optimizer("KFAC", m.parameters())
    with pytest.raises(ValueError, match="lr"):
        dc.build_optimizer("SWATS", m, lr=-1.0)


# ----------------------------------------------------------------------------- K-FAC
@pytest.mark.parametrize("layer_index", [0, 2])
def test_kfac_factors_equal_exact_fisher_block_for_one_sample(layer_index):
    """One sample: the per-sample gradient of [W | b] is g a^T, so its outer product is exactly
    G (x) A (row-major vec); the empirical K-FAC factors must reproduce it."""
    x, y = _digits(1)
    model = _mlp(torch.float64)
    opt = dc.KFAC(model, fisher="empirical", lr=0.1)
    loss = F.cross_entropy(model(x.double()), y)
    loss.backward()
    layer = model[layer_index]
    vec = _flat_grad(layer)
    exact = torch.outer(vec, vec)
    opt.step()
    A, G = opt.factors(layer)
    assert A.shape == (layer.in_features + 1,) * 2 and G.shape == (layer.out_features,) * 2
    torch.testing.assert_close(torch.kron(G, A), exact, rtol=1e-10, atol=1e-14)


def test_kfac_conv_factors_exact_for_one_location():
    """A Conv2d whose kernel covers the whole input (one location) is a Linear layer on the
    unfolded patch: the factors must again give the exact per-sample Fisher block."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, kernel_size=3)
    model = nn.Sequential(conv, nn.Flatten(), nn.Tanh(), nn.Linear(3, 4)).double()
    opt = dc.KFAC(model, fisher="empirical")
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    F.cross_entropy(model(x), torch.tensor([2])).backward()
    vec = _flat_grad(conv)
    opt.step()
    A, G = opt.factors(0)
    torch.testing.assert_close(torch.kron(G, A), torch.outer(vec, vec), rtol=1e-10, atol=1e-14)


def test_kfac_conv_factor_A_is_mean_over_patches():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, kernel_size=2, padding=1, stride=2)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).double()
    opt = dc.KFAC(model, fisher="empirical")
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    # reference G: per-sample output gradients summed over locations, averaged over samples
    out = conv(x).detach().requires_grad_(True)
    loss = F.cross_entropy(model[2](model[1](out)), torch.tensor([1, 3]))
    (g,) = torch.autograd.grad(loss, out)
    rows = (g * 2).permute(0, 2, 3, 1).reshape(-1, 3)
    F.cross_entropy(model(x), torch.tensor([1, 3])).backward()
    opt.step()
    A, G = opt.factors(0)
    xp = F.pad(x, (1, 1, 1, 1))
    patches = []
    for b in range(2):
        for i in range(3):
            for j in range(3):
                p = xp[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1)
                patches.append(torch.cat([p, p.new_ones(1)]))
    P = torch.stack(patches)
    torch.testing.assert_close(A, P.T @ P / len(patches))
    torch.testing.assert_close(G, rows.T @ rows / 2)


def test_kfac_mc_fisher_is_unbiased_for_the_output_layer():
    """With sampled labels, E[g g^T] for the logits is diag(p) - p p^T (the true Fisher)."""
    torch.manual_seed(3)
    model = _mlp(torch.float64, seed=3)
    opt = dc.KFAC(model, fisher="mc")
    x, y = _digits(1)
    xs = x.double().repeat(4000, 1)
    with torch.no_grad():
        p = torch.softmax(model(x.double()), -1)[0]
    F.cross_entropy(model(xs), y.repeat(4000)).backward()
    opt.step()
    _, G = opt.factors(model[2])
    expected = torch.diag(p) - torch.outer(p, p)
    err = (G - expected).abs().max().item()
    assert err < 0.012, err
    # the empirical factor would be (p - e_y)(p - e_y)^T: far from the Fisher
    e = p.clone()
    e[y] -= 1
    assert (torch.outer(e, e) - expected).abs().max().item() > 0.1


@pytest.mark.parametrize("mode", ["pi", "factored", "eigen"])
def test_kfac_preconditioner_solves_the_damped_kronecker_system(mode):
    x, y = _digits(32)
    model = _mlp(torch.float64)
    lam = 1e-2
    opt = dc.KFAC(
        model, fisher="empirical", damping=lam, damping_mode=mode, momentum=0.0, kl_clip=None
    )  # unclipped, so that the step is exactly -lr V
    F.cross_entropy(model(x.double()), y).backward()
    layer = model[0]
    grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).clone()
    w0 = layer.weight.detach().clone()
    opt.step()
    A, G = opt.factors(0)
    if mode == "eigen":
        M = torch.kron(G, A) + lam * torch.eye(A.shape[0] * G.shape[0], dtype=A.dtype)
    else:
        pi = (torch.trace(A) / A.shape[0] / (torch.trace(G) / G.shape[0])).sqrt()
        pi = pi if mode == "pi" else torch.tensor(1.0, dtype=A.dtype)
        Ad = A + pi * lam**0.5 * torch.eye(A.shape[0], dtype=A.dtype)
        Gd = G + lam**0.5 / pi * torch.eye(G.shape[0], dtype=G.dtype)
        M = torch.kron(Gd, Ad)
    v = torch.linalg.solve(M, grad.reshape(-1)).reshape(grad.shape)
    torch.testing.assert_close(opt.precondition(0, grad), v, rtol=1e-8, atol=1e-12)
    # the step applied exactly -lr * V to the weights (first momentum step)
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.05 * v[:, :-1], rtol=1e-8, atol=1e-12)


def test_kfac_kl_clip_limits_the_step():
    x, y = _digits(64)
    moved = []
    for clip in (None, 1e-6):
        model = _mlp(torch.float64)
        w0 = model[0].weight.detach().clone()
        opt = dc.KFAC(model, lr=0.5, kl_clip=clip, momentum=0.0)
        F.cross_entropy(model(x.double()), y).backward()
        opt.step()
        moved.append((model[0].weight.detach() - w0).norm().item())
    assert moved[1] < 0.5 * moved[0]


def test_kfac_other_layers_get_plain_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    opt = dc.KFAC(model, lr=0.1, momentum=0.0)
    assert [lay.name for lay in opt.layers] == ["0", "2"]
    F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
    w0, g = model[1].weight.detach().clone(), model[1].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(model[1].weight.detach(), w0 - 0.1 * g)
    opt.remove_hooks()
    assert not model[0]._forward_hooks


# ----------------------------------------------------------------------------- SWATS
def test_swats_switches_when_the_projection_converges_then_uses_sgd():
    torch.manual_seed(0)
    A = torch.randn(20, 5, dtype=torch.float64)
    b = torch.randn(20, dtype=torch.float64)
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    beta1, beta2, tol = 0.9, 0.999, 1e-3
    opt = dc.SWATS([w], lr=0.01, betas=(beta1, beta2), eps=1e-12, switch_tol=tol)
    ref_w = w.detach().clone().requires_grad_(True)
    adam = torch.optim.Adam([ref_w], lr=0.01, betas=(beta1, beta2), eps=1e-12)
    lam, expected_switch, k = 0.0, None, 0
    while opt.param_groups[0]["phase"] == "adam" and k < 500:
        k += 1
        for p, o in ((w, opt), (ref_w, adam)):
            o.zero_grad()
            (0.5 * (A @ p - b).pow(2).mean()).backward()
        g = w.grad.clone()
        before = w.detach().clone()
        opt.step()
        adam.step()
        torch.testing.assert_close(w.detach(), ref_w.detach(), rtol=1e-7, atol=1e-10)
        p_k = w.detach() - before
        gamma = (p_k @ p_k / -(p_k @ g)).item()
        lam = beta2 * lam + (1 - beta2) * gamma
        if expected_switch is None and k > 1 and abs(lam / (1 - beta2**k) - gamma) < tol:
            expected_switch, expected_lr = k, lam / (1 - beta2**k)
    group = opt.param_groups[0]
    assert expected_switch is not None and expected_switch > 1
    assert group["switch_step"] == expected_switch
    assert group["sgd_lr"] == pytest.approx(expected_lr, rel=1e-12)
    # afterwards: SGD with momentum beta1 and step (1 - beta1) * Lambda
    v = torch.zeros(5, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        (0.5 * (A @ w - b).pow(2).mean()).backward()
        g, before = w.grad.clone(), w.detach().clone()
        opt.step()
        v = beta1 * v + g
        torch.testing.assert_close(w.detach(), before - (1 - beta1) * expected_lr * v)
    state = _reload(opt.state_dict())
    assert state["param_groups"][0]["phase"] == "sgd"


# ----------------------------------------------------------------------------- Gadam
@pytest.mark.parametrize("cls", [dc.Gadam, dc.GadamW])
def test_gadam_average_is_the_mean_of_iterates_since_start(cls):
    x, y = _digits(64)
    model = _mlp(torch.float64)
    opt = cls(model.parameters(), lr=1e-2, average_start=3)
    iterates = []
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x.double()), y).backward()
        opt.step()
        iterates.append([p.detach().clone() for p in model.parameters()])
    assert opt.n_averaged == 7
    means = [torch.stack(ps).mean(0) for ps in zip(*iterates[3:], strict=True)]
    current = [p.detach().clone() for p in model.parameters()]
    with opt.averaged() as swapped:
        assert swapped
        for p, m in zip(model.parameters(), means, strict=True):
            torch.testing.assert_close(p.detach(), m, rtol=1e-12, atol=1e-14)
    for p, c in zip(model.parameters(), current, strict=True):
        assert torch.equal(p.detach(), c)
    # the average survives a weights_only round trip of the state dict
    model2 = _mlp(torch.float64)
    opt2 = cls(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(_reload(opt.state_dict()))
    assert opt2.n_averaged == 7
    assert opt2.swap_average()
    for p, m in zip(model2.parameters(), means, strict=True):
        torch.testing.assert_close(p.detach(), m, rtol=1e-12, atol=1e-14)


def test_gadam_epoch_start():
    model = _mlp()
    opt = dc.Gadam(model.parameters(), average_start_epoch=2)
    x, y = _digits(16)
    for epoch in range(3):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        opt.epoch_end(epoch + 1)
    assert opt.n_averaged == 2  # only the steps of the third epoch
    assert not dc.Gadam(_mlp().parameters()).swap_average()  # nothing averaged yet


# ----------------------------------------------------------------------------- all of them
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "KFAC", "SWATS", "Gadam", "GadamW"])
def test_state_dict_round_trip_continues_identically(name):
    """Save after 3 steps, load (weights_only) into a fresh optimiser, continue: identical."""
    x, y = _digits(64)
    kw = {"switch_tol": 1e-2} if name == "SWATS" else {}

    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    model = _mlp()
    opt = dc.build_optimizer(name, model, **kw)
    run(model, opt, 3)
    saved_model = _reload(model.state_dict())
    saved_opt = _reload(opt.state_dict())
    torch.manual_seed(7)
    run(model, opt, 3)
    model2 = _mlp(seed=1)
    model2.load_state_dict(saved_model)
    opt2 = dc.build_optimizer(name, model2, **kw)
    opt2.load_state_dict(saved_opt)
    torch.manual_seed(7)
    run(model2, opt2, 3)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_kfac_inverses_are_recomputed_every_inv_update_freq_steps():
    x, y = _digits(64)
    model = _mlp(torch.float64)
    opt = dc.KFAC(model, fisher="empirical", inv_update_freq=3, stat_decay=0.5)
    A_seen, inv_seen = [], []
    for i in range(4):
        opt.zero_grad()
        batch = slice(16 * i, 16 * (i + 1))
        F.cross_entropy(model(x[batch].double()), y[batch]).backward()
        opt.step()
        A_seen.append(opt.factors(0)[0].clone())
        inv_seen.append(opt.state[model[0].weight]["A_inv"].clone())
    assert not torch.equal(A_seen[0], A_seen[1])  # the factors move every step...
    assert torch.equal(inv_seen[0], inv_seen[1]) and torch.equal(inv_seen[1], inv_seen[2])
    assert not torch.equal(inv_seen[2], inv_seen[3])  # ...the inverses at steps 0 and 3
