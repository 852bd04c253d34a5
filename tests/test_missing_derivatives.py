"""Losses whose derivatives torch lacks: written out, checked against torch's own first derivatives.

torch 2.13 has no forward-mode derivative of the gradient of ``huber_loss``,
``soft_margin_loss``, ``multi_margin_loss`` and ``multilabel_margin_loss``, and no double backward
of the last two. The references below use only torch's own losses and their first derivatives
(central differences of torch's gradient, float64), never the written forms.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepcurvature as dc
from _helpers import dense_hessian_and_gradient
from deepcurvature.operators.input_hessian import input_hessian
from deepcurvature.operators.missing_derivatives import elementary_loss, missing_derivative

DT = torch.float64
C = 4


def _targets(kind, n, gen):
    if kind == "real":
        return torch.randn(n, C, generator=gen, dtype=DT)
    if kind == "sign":
        return torch.randint(0, 2, (n, C), generator=gen).to(DT) * 2 - 1
    if kind == "class":
        return torch.randint(0, C, (n,), generator=gen)
    # multilabel: class indices, each row ended by -1 after a random count (none, some, all)
    t = torch.stack([torch.randperm(C, generator=gen) for _ in range(n)])
    counts = torch.arange(n) % (C + 1)
    return torch.where(torch.arange(C) < counts.unsqueeze(1), t, torch.full_like(t, -1))


LOSSES = {
    "mse": (lambda: nn.MSELoss(), "real"),
    "huber": (lambda: nn.HuberLoss(delta=0.7), "real"),
    "soft-margin": (lambda: nn.SoftMarginLoss(), "sign"),
    "multi-margin": (lambda: nn.MultiMarginLoss(), "class"),
    "multi-margin-p2": (
        lambda: nn.MultiMarginLoss(p=2, margin=0.6, weight=torch.tensor([0.5, 1.0, 2.0, 1.5])),
        "class",
    ),
    "multilabel-margin": (lambda: nn.MultiLabelMarginLoss(), "multilabel"),
}


_LAYOUTS = [(name, False) for name in sorted(LOSSES)] + [
    (name, True) for name in sorted(LOSSES) if LOSSES[name][1] in ("class", "multilabel")
]


@pytest.mark.parametrize(("name", "one_sample"), _LAYOUTS)
def test_written_losses_match_torch(name, one_sample):
    """Same value and output gradient as torch's loss (which has first derivatives)."""
    make, kind = LOSSES[name]
    loss_fn = make().double() if name == "multi-margin-p2" else make()
    gen = torch.Generator().manual_seed(3)
    out = torch.randn(9, C, generator=gen, dtype=DT) * 2
    y = _targets(kind, 9, gen)
    if one_sample:  # (C,) and a target of one sample
        out, y = out[2], y[2]
    written = elementary_loss(loss_fn, out, y)
    assert written is not None
    torch.testing.assert_close(written, loss_fn(out, y), rtol=1e-13, atol=1e-15)
    ours = torch.func.grad(lambda o: elementary_loss(loss_fn, o, y))(out)
    ref = torch.func.grad(lambda o: loss_fn(o, y))(out)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-15)


def _case(name):
    make, kind = LOSSES[name]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, C)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=gen, dtype=DT)
    y = _targets(kind, 12, gen)
    loss_fn = make()
    if name == "multi-margin-p2":
        loss_fn = loss_fn.double()
    return model, loss_fn, [(x[:7], y[:7]), (x[7:], y[7:])]


def _torch_gradient(model, loss_fn, data, theta):
    """The mean loss's gradient at flat parameters ``theta``, by torch's own backward."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    params, offset = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = shape.numel()
        params[name] = theta[offset : offset + size].view(shape).clone().requires_grad_(True)
        offset += size
    n = sum(len(b[1]) for b in data)
    total = sum(
        loss_fn(torch.func.functional_call(model, params, (x,)), y) * len(y) / n for x, y in data
    )
    grads = torch.autograd.grad(total, list(params.values()))
    return torch.cat([g.reshape(-1) for g in grads])


def _finite_difference_products(model, loss_fn, data, V, eps=1e-5):
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    cols = [
        (
            _torch_gradient(model, loss_fn, data, theta + eps * v)
            - _torch_gradient(model, loss_fn, data, theta - eps * v)
        )
        / (2 * eps)
        for v in V.T
    ]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("name", ["huber", "soft-margin", "multi-margin", "multi-margin-p2",
                                  "multilabel-margin"])  # fmt: skip
def test_hessian_products_where_torch_lacks_second_derivatives(name):
    """Both engines and both routes (autograd's at one column, the chain's at four) give torch's
    Hessian: before, the forward engine failed on all five and every route on the margins."""
    model, loss_fn, data = _case(name)
    gen = torch.Generator().manual_seed(2)
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(P, 4, generator=gen, dtype=DT)
    ref = _finite_difference_products(model, loss_fn, data, V)
    assert ref.norm() > 1e-3  # not a vanishing Hessian
    for engine in ("reverse", "forward"):
        H = dc.hessian(model, loss_fn, data, engine=engine)
        torch.testing.assert_close(H.matvec(V[:, 0]), ref[:, 0], rtol=1e-6, atol=1e-8)
        got = H.matmat(V)
        if engine == "reverse":
            assert H.product_route == "chain"  # a tanh MLP: the chain route from 4 columns
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-8)


FUNCTIONS = {
    "huber": F.huber_loss,
    "soft-margin": F.soft_margin_loss,
    "multi-margin": F.multi_margin_loss,
    "multilabel-margin": F.multilabel_margin_loss,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_forms_of_the_losses_have_their_curvature(name):
    """``loss_fn=F.multi_margin_loss`` (and the others) is the module with default arguments:
    torch's Hessian by both engines and both routes, and the GGN (before: a ValueError for the
    margins, and for all four with ``engine="forward"``)."""
    model, _, data = _case(name)
    fn = FUNCTIONS[name]
    if name == "huber":  # the function's default delta (1.0): make the case's data use both parts
        data = [(x, y * 3) for x, y in data]
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(P, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    ref = _finite_difference_products(model, fn, data, V)  # torch's function, differenced
    assert ref.norm() > 1e-3
    for engine in ("reverse", "forward"):
        H = dc.hessian(model, fn, data, engine=engine)
        torch.testing.assert_close(H.matvec(V[:, 0]), ref[:, 0], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(H.matmat(V), ref, rtol=1e-6, atol=1e-8)
    module = type(dc.hessian(model, fn, data).objective.loss_fn)
    got, same = dc.ggn(model, fn, data).matmat(V), dc.ggn(model, module(), data).matmat(V)
    torch.testing.assert_close(got, same, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["multi-margin", "multi-margin-p2", "multilabel-margin"])
def test_ggn_of_margin_losses(name):
    """``J^T H_out J`` with ``H_out`` from central differences of torch's output gradient; zero
    for the hinge losses (piecewise linear in the output), not for the squared hinge."""
    model, loss_fn, data = _case(name)
    G = dc.ggn(model, loss_fn, data)
    P = G.num_params
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    params = {n: p.detach() for n, p in model.named_parameters()}
    J = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    J = torch.cat([j.reshape(len(y) * C, -1) for j in J.values()], 1)  # (n C, P)
    out = model(x).detach().reshape(-1)

    def out_gradient(o):
        o = o.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(o.view(len(y), C), y), o)
        return g

    eps = 1e-6
    cols = [
        (out_gradient(out + eps * e) - out_gradient(out - eps * e)) / (2 * eps)
        for e in torch.eye(out.numel(), dtype=DT)
    ]
    H_out = torch.stack(cols, 1)
    dense = J.T @ H_out @ J
    got = G.to_dense()
    torch.testing.assert_close(got, dense, rtol=1e-6, atol=1e-9)
    assert (dense.norm() > 1e-3) == (name == "multi-margin-p2")
    assert got.shape == (P, P)


def test_missing_derivatives_raise_one_clear_error():
    """A custom loss through an operation torch cannot differentiate twice: the error names the
    operation and the fix, for every product that needs it (not a torch traceback)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, C)).double()
    x = torch.randn(8, 3, dtype=DT)
    y = _targets("multilabel", 8, torch.Generator().manual_seed(0))
    custom = lambda o, t: F.multilabel_margin_loss(o, t)  # noqa: E731 (not recognised: custom)
    data = [(x, y)]
    P = 3 * C + C
    for k in (1, 4):
        H = dc.hessian(model, custom, data)
        with pytest.raises(ValueError, match="cannot differentiate multilabel_margin_loss twice"):
            H.matmat(torch.ones(P, k, dtype=DT))
        H = dc.hessian(model, custom, data, engine="forward")
        with pytest.raises(ValueError, match="engine='forward'.*use engine='reverse'"):
            H.matmat(torch.ones(P, k, dtype=DT))
    with pytest.raises(ValueError, match="the ggn needs second derivatives"):
        dc.ggn(model, custom, data).matvec(torch.ones(P, dtype=DT))
    with pytest.raises(ValueError, match="the input Hessian needs second derivatives"):
        input_hessian(model, custom, x, y, dtype=DT).matvec(torch.ones(3, dtype=DT))
    # other "not implemented" errors pass through unchanged (e.g. a target that needs a gradient)
    error = RuntimeError("the derivative for 'target' is not implemented.")
    assert missing_derivative(error, "hessian") is None
    # the built-in module is written out instead: the same operator works
    H = dc.hessian(model, nn.MultiLabelMarginLoss(), data)
    assert torch.isfinite(H.matvec(torch.ones(P, dtype=DT))).all()


def test_input_hessian_of_squared_hinge():
    """The input Hessian with a loss torch cannot differentiate twice, against differences."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, C)).double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=gen, dtype=DT)
    y = _targets("class", 6, gen)
    loss_fn = nn.MultiMarginLoss(p=2)
    got = input_hessian(model, loss_fn, x, y, dtype=DT).to_dense()

    def gradient(z):
        z = z.clone().requires_grad_(True)
        total = sum(loss_fn(model(z.view(6, 3)[i : i + 1]), y[i : i + 1]) for i in range(6)) / 6
        return torch.autograd.grad(total, z)[0].view(6, 3).sum(0)

    eps, flat = 1e-6, x.reshape(-1)
    ref = torch.stack(
        [
            (gradient(flat + eps * e.repeat(6)) - gradient(flat - eps * e.repeat(6))) / (2 * eps)
            for e in torch.eye(3, dtype=DT)
        ],
        1,
    )
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)
    assert ref.norm() > 1e-3


def test_kl_div_batchmean_is_a_mean_over_samples():
    """``KLDivLoss(reduction="batchmean")`` is accepted (it averages over samples): its Hessian
    is the dense one of the whole data set's batchmean loss, and C times that of "mean"."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, C), nn.LogSoftmax(-1)).double()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(11, 3, generator=gen, dtype=DT)
    q = torch.randn(11, C, generator=gen, dtype=DT).softmax(-1)
    data = [(x[:7], q[:7]), (x[7:], q[7:])]
    loss_fn = nn.KLDivLoss(reduction="batchmean")
    dense, _ = dense_hessian_and_gradient(model, loss_fn, data)
    H = dc.hessian(model, loss_fn, data)
    torch.testing.assert_close(H.to_dense(), dense, rtol=1e-10, atol=1e-12)
    with pytest.warns(UserWarning, match="batchmean"):  # torch's own advice on "mean"
        mean = dc.hessian(model, nn.KLDivLoss(), data).to_dense()
    torch.testing.assert_close(mean * C, dense, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="reduction='sum'"):
        dc.hessian(model, nn.KLDivLoss(reduction="sum"), data)
