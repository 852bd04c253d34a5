"""Hessian products on one batch with the gradient graph kept (used by the Lanczos Newton
optimisers): equal to the operator's products in float64, and no forward pass per product."""

import math

import pytest
import torch
from torch import nn

import deepcurvature as dc
from deepcurvature.operators.retained import retained_hessian

DT = torch.float64


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    cnn = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).double()  # fmt: skip
    return [(mlp, torch.randn(20, 6, dtype=DT)), (cnn, torch.randn(20, 2, 5, 5, dtype=DT))]


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
@pytest.mark.parametrize("which", [0, 1])
def test_products_equal_the_operator(which, bn_mode):
    model, x = _models()[which]
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    loss = nn.CrossEntropyLoss()
    for kwargs in ({}, {"weight_decay": 0.01, "params": ["0.*"]}):
        op = dc.hessian(model, loss, [(x, y)], bn_mode=bn_mode, **kwargs)
        R = retained_hessian(op)
        assert R.shape == op.shape and R.num_samples == 20
        assert R.loss == pytest.approx(op.loss(include_weight_decay=False), rel=1e-12)
        V = torch.randn(op.shape[0], 3, dtype=DT, generator=torch.Generator().manual_seed(2))
        expected = op.matmat(V)
        for _ in range(2):  # the graph survives any number of products
            got = R.matmat(V)
            assert torch.linalg.norm(got - expected) <= 1e-12 * torch.linalg.norm(expected)
        assert torch.allclose(R.matvec(V[:, 0]), expected[:, 0], rtol=1e-12, atol=1e-14)


def test_no_forward_pass_per_product_and_buffers_untouched():
    model, x = _models()[1]
    y = torch.randint(0, 3, (20,))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    before = {n: b.clone() for n, b in model.named_buffers()}
    R = retained_hessian(dc.hessian(model, nn.CrossEntropyLoss(), [(x, y)], bn_mode="train"))
    assert len(calls) == 1
    res = dc.lanczos(R, 10, seed=0, verbose=False)
    assert len(calls) == 1 and len(res.alphas[0]) == 10
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n])


def test_bad_input():
    model, x = _models()[0]
    y = torch.randint(0, 3, (20,))
    loss = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match="Hessian operator"):
        retained_hessian(dc.ggn(model, loss, [(x, y)]))
    with pytest.raises(ValueError, match="exactly one batch"):
        retained_hessian(dc.hessian(model, loss, [(x[:10], y[:10]), (x[10:], y[10:])]))
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="loss of the batch is not finite"):
        retained_hessian(dc.hessian(model, loss, [(bad, y)]))
