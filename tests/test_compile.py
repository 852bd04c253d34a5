"""``compile=True``: the torch.compile'd per-batch products equal dense float64 references.

Real models (an MLP, a small CNN with batch norm in eval mode), several batches with a smaller
last one, float64; references: ``torch.func.hessian`` of the mean loss, the GGN built from the
Jacobian of the outputs, the empirical Fisher from per-sample gradients; every product also
compared with the eager operator.
"""

import math

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.func import functional_call, hessian, jacrev

import deepcurvature as dc

TOL = 1e-10


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 3),
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def data_for(model, n=12):
    g = torch.Generator().manual_seed(1)
    shape = (n, 5) if isinstance(model[0], nn.Linear) else (n, 2, 4, 4)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, [(x[i : i + 4], y[i : i + 4]) for i in range(0, n, 4)]


def flat_fn(model, fn):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = {n: b for n, b in model.named_buffers()}

    def params(theta):
        out, o = dict(buffers), 0
        for n, s in zip(names, shapes, strict=True):
            k = math.prod(s)
            out[n] = theta[o : o + k].view(s)
            o += k
        return out

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return theta, lambda t, x: fn(functional_call(model, params(t), (x,)))


def references(model, n):
    x, y, _ = data_for(model, n)
    loss_fn = nn.CrossEntropyLoss()
    theta, call = flat_fn(model, lambda out: out)
    H = hessian(lambda t: loss_fn(call(t, x), y))(theta)
    out = call(theta, x).detach()
    J = jacrev(lambda t: call(t, x))(theta).reshape(out.numel(), -1)
    Hout = hessian(lambda o: loss_fn(o.view(out.shape), y))(out.reshape(-1))
    G = J.T @ Hout @ J
    grads = torch.stack(
        [
            torch.func.grad(lambda t, i=i: loss_fn(call(t, x[i : i + 1]), y[i : i + 1]))(theta)
            for i in range(len(y))
        ]
    )
    F = grads.T @ grads / len(y)
    return {"hessian": H, "ggn": G, "fisher": F}


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def compiled_graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def check(model, n, names, products):
    """Compiled products against the dense references and the eager operator (float64)."""
    torch._dynamo.reset()  # every operator compiles its own product
    refs = references(model, n)
    _, _, data = data_for(model, n)
    loss_fn = nn.CrossEntropyLoss()
    builders = {
        "hessian": dc.hessian,
        "ggn": dc.ggn,
        "fisher": dc.fisher,
    }
    P = refs["hessian"].shape[0]
    g = torch.Generator().manual_seed(2)
    v = torch.randn(P, generator=g, dtype=torch.float64)
    V = torch.randn(P, 5, generator=g, dtype=torch.float64)
    for name in names:
        before = compiled_graphs()
        op = builders[name](model, loss_fn, data, compile=True)
        eager = builders[name](model, loss_fn, data)
        assert op.compile and not eager.compile
        assert op.metadata["compile"] is True and "compile" not in eager.metadata
        ref = refs[name]
        if "matvec" in products:
            assert rel(op.matvec(v), ref @ v) <= TOL, name
            assert rel(op.matvec(v), eager.matvec(v)) <= TOL, name
        if "matmat" in products:
            assert rel(op.matmat(V), ref @ V) <= TOL, name
            assert rel(op.matmat(V), eager.matmat(V)) <= TOL, name
        assert compiled_graphs() > before, f"{name}: nothing was compiled"


def test_compiled_hessian_ggn_fisher_of_an_mlp_match_dense_references():
    check(mlp(), 12, ("hessian", "ggn", "fisher"), ("matvec", "matmat"))


def test_compiled_hessian_of_a_cnn_with_batch_norm_and_a_smaller_last_batch():
    check(cnn(), 11, ("hessian",), ("matmat",))  # batches of 4, 4 and 3


def test_compile_flag_is_validated_and_recorded():
    model = mlp()
    _, _, data = data_for(model, 4)
    with pytest.raises(TypeError, match="compile must be True or False"):
        dc.hessian(model, nn.CrossEntropyLoss(), data, compile="yes")
    op = dc.ggn(model, nn.CrossEntropyLoss(), data, compile=True)
    assert op.compile is True
    with pytest.raises(ValueError, match="not available for kind='mc'"):
        dc.fisher(model, nn.CrossEntropyLoss(), data, kind="mc", compile=True)
