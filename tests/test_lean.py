"""Lean second derivatives of ReLU, 2-D max pooling and convolutions of the data (lean.py).

Exact: Hessian products through them against torch.func.hessian of the mean loss in float64,
for every argument form they take over and the ones they must leave to PyTorch. Leaner: the
column pass of a Hessian product creates no activation-sized zero tensors and no transposed
convolution back to the data.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.func import hessian as func_hessian
from torch.utils._python_dispatch import TorchDispatchMode

import deepcurvature as dc
from deepcurvature.operators.lean import has_lean_layers, lean_derivatives


class Modules(nn.Module):
    """nn modules: data conv -> ReLU -> MaxPool2d -> grouped conv -> ReLU -> linear."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1, groups=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 3),
        )

    def forward(self, x):
        return self.body(x)


class Functional(nn.Module):
    """Every call form: positional and keyword arguments, strides, dilation, ceil mode,
    unbatched pooling, and the calls left to PyTorch (in-place ReLU, pooling with indices,
    'same' padding)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3, 2, 3, 3, generator=g) / 3)
        self.b1 = nn.Parameter(torch.randn(3, generator=g) / 3)
        self.w2 = nn.Parameter(torch.randn(2, 2, 3, 3, generator=g) / 3)
        self.same = nn.Conv2d(2, 2, 3, padding="same")
        self.circular = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", bias=False)
        self.head = nn.Linear(88, 3)

    def forward(self, x):
        a = F.conv2d(x, self.w1, self.b1, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        a = F.max_pool2d(F.relu(a), 3, stride=2, padding=1, ceil_mode=True).relu()
        b = torch.relu(torch.conv2d(x, self.w2, None, 1, "valid"))
        b = F.relu(b.clone(), inplace=True)  # left to PyTorch
        b, _ = F.max_pool2d(b, 2, return_indices=True)  # left to PyTorch
        c = torch.max_pool2d(torch.tanh(self.same(x)), (2, 2), (2, 2))  # conv left to PyTorch
        d = F.max_pool2d(self.circular(x), kernel_size=4)  # conv on the padded data
        e = torch.stack([F.max_pool2d(s, 3, 3) for s in torch.tanh(a)])  # unbatched (C, H, W)
        parts = (a.flatten(1), b.flatten(1), c.flatten(1), d.flatten(1), e.flatten(1))
        return self.head(torch.cat(parts, 1))


class OtherDims(nn.Module):
    """conv1d and conv3d on the data, with groups and strides."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 4, 3, stride=2, groups=2)
        self.c3 = nn.Conv3d(1, 2, 2, padding=1, bias=False)
        self.head = nn.Linear(4 * 3 + 2 * 27, 3)

    def forward(self, x):
        seq, vol = x[:, :28].view(-1, 4, 7), x[:, 28:].view(-1, 1, 2, 2, 2)
        parts = (torch.relu(self.c1(seq)).flatten(1), torch.relu(self.c3(vol)).flatten(1))
        return self.head(torch.cat(parts, 1))


CASES = {
    "modules": (Modules, (2, 6, 6)),
    "functional": (Functional, (2, 9, 9)),
    "conv1d-conv3d": (OtherDims, (36,)),
}


def make(case, n=10):
    cls, shape = CASES[case]
    torch.manual_seed(0)
    model = cls().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def dense_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss(t):
        p, o = {}, 0
        for n, s in zip(names, shapes, strict=True):
            p[n] = t[o : o + s.numel()].view(s)
            o += s.numel()
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    return func_hessian(loss)(theta)


@pytest.mark.parametrize("case", list(CASES))
def test_hessian_products_through_lean_rules_match_the_dense_hessian(case):
    model, x, y = make(case)
    ref = dense_hessian(model, x, y)
    data = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]  # unequal last batch
    H = dc.hessian(model, nn.CrossEntropyLoss(), data)
    P = H.num_params
    g = torch.Generator().manual_seed(2)
    v, V = torch.randn(P, generator=g, dtype=torch.float64), torch.randn(P, 5, generator=g)
    V = V.double()
    scale = ref.abs().max()
    assert float((H.matvec(v) - ref @ v).abs().max() / scale) <= 1e-8
    H.block_size = 1  # every column through plain autograd (the lean rules)
    assert float((H.matmat(V) - ref @ V).abs().max() / scale) <= 1e-8
    H.block_size = None
    assert float((H.matmat(V) - ref @ V).abs().max() / scale) <= 1e-8


def graph_nodes(output):
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(f for f, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


def test_lean_rules_replace_exactly_the_calls_they_cover_and_keep_value_and_gradient():
    model, x, y = make("functional")
    with lean_derivatives():
        lean_out = model(x)
    plain_out = model(x)
    nodes = graph_nodes(lean_out)
    assert {"_ReLUBackward", "_MaxPool2dBackward", "_DataConvBackward"} <= nodes
    # in-place ReLU, pooling with indices and 'same' padding stay PyTorch's
    assert {"ReluBackward0", "MaxPool2DWithIndicesBackward0", "ConvolutionBackward0"} <= nodes
    assert torch.equal(lean_out, plain_out)
    params = list(model.parameters())
    lean_grad = torch.autograd.grad(F.cross_entropy(lean_out, y), params)
    plain_grad = torch.autograd.grad(F.cross_entropy(plain_out, y), params)
    for a, b in zip(lean_grad, plain_grad, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class CountOps(TorchDispatchMode):
    """Activation-sized zero tensors and transposed convolutions back to the data's shape."""

    def __init__(self, activation_numel, data_shape):
        super().__init__()
        self.activation_numel, self.data_shape = activation_numel, data_shape
        self.zeros = self.back_to_data = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("zeros_like", "zeros", "new_zeros", "fill_", "zero_") and isinstance(
            out, torch.Tensor
        ):
            self.zeros += out.numel() >= self.activation_numel
        if name == "convolution" and args[6] and tuple(out.shape) == self.data_shape:
            self.back_to_data += 1
        return out


@pytest.mark.parametrize("lean", [True, False])
def test_the_column_pass_makes_no_zero_activations_and_no_data_gradient(lean):
    model, x, y = make("modules", n=8)
    params = list(model.parameters())
    with lean_derivatives() if lean else contextlib.nullcontext():
        out = model(x)
    grads = torch.autograd.grad(F.cross_entropy(out, y), params, create_graph=True)
    counter = CountOps(8 * 4 * 6 * 6 // 4, tuple(x.shape))  # a pooled activation or more
    with counter:
        torch.autograd.grad(grads, params, [torch.randn_like(p) for p in params])
    if lean:
        assert counter.zeros == 0 and counter.back_to_data == 0
    else:  # PyTorch's own rules: what the lean ones remove
        assert counter.zeros >= 3 and counter.back_to_data == 1


def test_the_operator_enters_the_lean_mode_only_for_models_with_such_layers():
    tanh_mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert not has_lean_layers(tanh_mlp)
    assert has_lean_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    assert has_lean_layers(Modules()) and has_lean_layers(OtherDims())
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    assert not dc.hessian(tanh_mlp, nn.CrossEntropyLoss(), data)._lean
    model, x, y = make("modules")
    assert dc.hessian(model, nn.CrossEntropyLoss(), [(x, y)])._lean
