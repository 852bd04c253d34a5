"""The exact Hessian diagonal of piecewise-linear networks from per-sample Jacobians.

For a network piecewise linear in every parameter (ReLU, convolutions, pooling, batch norm with
running statistics) the Hessian diagonal equals the GGN diagonal; the references are the dense
float64 Hessians of torch.func.
"""

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _helpers import dense_hessian_and_gradient
from deepcurvature.analysis.piecewise_linear import piecewise_linear_obstacle

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def cnn(act=nn.ReLU):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        act(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).to(DT)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(torch.randn(3, generator=g, dtype=DT) * 0.2)
        bn.running_var.copy_(torch.rand(3, generator=g, dtype=DT) + 0.5)
        bn.weight.copy_(torch.rand(3, generator=g, dtype=DT) + 0.5)
        bn.bias.copy_(torch.randn(3, generator=g, dtype=DT) * 0.1)
    return model.eval()


def data(out=3, regression=False, n=14):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 2, 6, 6, generator=g, dtype=DT)
    y = torch.randn(n, out, generator=g, dtype=DT) if regression else torch.randint(0, out, (n,))
    return [(x[i : i + 5], y[i : i + 5]) for i in range(0, n, 5)]  # an unequal last batch


@pytest.mark.parametrize(
    "loss_fn, regression", [(nn.CrossEntropyLoss(), False), (nn.MSELoss(), True)], ids=["ce", "mse"]
)
def test_relu_cnn_hessian_diagonal_is_exact_from_per_sample_jacobians(loss_fn, regression):
    model, batches = cnn(), data(regression=regression)
    assert piecewise_linear_obstacle(model) is None
    H, _ = dense_hessian_and_gradient(model, loss_fn, batches)
    d = dc.hessian_diagonal(model, loss_fn, batches, verbose=False)
    assert d.name == "hessian" and d.metadata["method"].startswith("gauss-newton")
    assert d.metadata["data_passes"] == 1  # not P Hessian-vector products
    torch.testing.assert_close(d.value, torch.diagonal(H), rtol=0, atol=1e-11)
    assert d.trace == pytest.approx(float(torch.trace(H)), rel=1e-11)
    units = dc.hessian_diagonal(model, loss_fn, batches, method="unit-vectors", verbose=False)
    assert units.metadata["method"] == "unit vectors"
    torch.testing.assert_close(units.value, d.value, rtol=0, atol=1e-11)
    # only the diagonal: the Hessian is not the GGN here (off-diagonal residual terms)
    G = dc.ggn(model, loss_fn, batches).to_dense()
    assert float((G - H).abs().max()) > 1e-3


def test_a_smooth_network_falls_back_to_unit_vectors_and_gauss_newton_would_be_wrong():
    model, batches, loss_fn = cnn(act=nn.Tanh), data(), nn.CrossEntropyLoss()
    H, _ = dense_hessian_and_gradient(model, loss_fn, batches)
    d = dc.hessian_diagonal(model, loss_fn, batches, verbose=False)
    assert d.metadata["method"] == "unit vectors"
    assert "2 (Tanh) is not a known piecewise-linear layer" in d.metadata["not_piecewise_linear"]
    torch.testing.assert_close(d.value, torch.diagonal(H), rtol=0, atol=1e-11)
    # asserting the property for a network without it gives the GGN diagonal, not the Hessian's
    wrong = dc.hessian_diagonal(model, loss_fn, batches, method="gauss-newton", verbose=False)
    assert float((wrong.value - torch.diagonal(H)).abs().max()) > 1e-4


def test_obstacles_are_named():
    relu = nn.ReLU()
    lin = nn.Linear(3, 3)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) * self.fc(x)  # quadratic in fc's parameters

    assert piecewise_linear_obstacle(nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 2))) is None
    assert "is the same module object as 0" in piecewise_linear_obstacle(
        nn.Sequential(lin, relu, lin)
    )
    assert "Custom) is not a known" in piecewise_linear_obstacle(nn.Sequential(Custom()))
    assert "the model (Custom)" in piecewise_linear_obstacle(Custom())
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    assert piecewise_linear_obstacle(bn, "eval") is None
    assert "batch statistics" in piecewise_linear_obstacle(bn, "train")
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight  # tied
    assert "same tensor" in piecewise_linear_obstacle(nn.Sequential(a, nn.ReLU(), b))
    for layer in (nn.GELU(), nn.LayerNorm(3), nn.Softmax(-1)):
        assert "not a known piecewise-linear layer" in piecewise_linear_obstacle(
            nn.Sequential(nn.Linear(3, 3), layer)
        )


def test_batch_statistics_fall_back_and_errors_name_the_fix():
    model, batches, loss_fn = cnn(), data(), nn.CrossEntropyLoss()
    d = dc.hessian_diagonal(model, loss_fn, batches, bn_mode="train", verbose=False)
    assert d.metadata["method"] == "unit vectors"
    op = dc.hessian(model, loss_fn, batches, bn_mode="train")
    np.testing.assert_allclose(d.value.numpy(), torch.diagonal(op.to_dense()).numpy(), atol=1e-11)
    with pytest.raises(ValueError, match="unknown method='exact'.*'gauss-newton'"):
        dc.hessian_diagonal(model, loss_fn, batches, method="exact", verbose=False)
    tanh = cnn(act=nn.Tanh)
    with pytest.raises(
        ValueError,
        match=r"not recognised as piecewise linear.*\(2 \(Tanh\).*"
        r"method='gauss-newton'",
    ):
        dc.hessian_diagonal(tanh, loss_fn, batches, max_params=10, verbose=False)
