"""Taylor-mode quadratic forms ``z^T H z`` of layer chains against Hessian products and dense
Hessians, in float64.

Every supported layer kind (1-D and 2-D convolutions with stride, dilation and padding, narrow
and wide patches, batch norm with and without affine parameters, layers without bias, linear
layers on sequences, piecewise-linear and smooth activations, max and average pooling, padding)
and loss must give ``z^T (H z)`` to rounding; unsupported networks and inputs must fall back to
the products; Hutchinson's estimate must not depend on the route.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

import deepcurvature as dc
from _helpers import seeded_float64 as seeded
from deepcurvature.linalg.operator import ShiftedOperator
from deepcurvature.operators.chain import chain_layers
from deepcurvature.operators.taylor import taylor_quadratic_forms

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def cnn_case():
    """Narrow first convolution (patches route), wide second one, in-place activations."""
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, stride=2, dilation=1, padding=2, bias=False),
        nn.BatchNorm2d(4, affine=False),
        nn.LeakyReLU(0.1, inplace=True),
        nn.ConstantPad2d(1, 3.0),
        nn.AvgPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 2 * 2, 3)),
    ).to(DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(13, 2, 8, 8, generator=g, dtype=DT)
    return seeded(model), batches(x, torch.randint(0, 3, (13,), generator=g), 5), F.cross_entropy


def conv1d_case():
    """Smooth activations (second-order sources), a 1-D convolution, adaptive max pooling."""
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, stride=2, dilation=2, padding=1),
        nn.BatchNorm1d(4),
        nn.GELU(),
        nn.AdaptiveMaxPool1d(3),
        nn.Conv1d(4, 9, 2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(9 * 2, 5),
        nn.BatchNorm1d(5),
        nn.Softplus(),
        nn.ReLU6(),
        nn.Linear(5, 2, bias=False),
    ).to(DT)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3, 11, generator=g, dtype=DT)
    return seeded(model, 3), batches(x, torch.randn(9, 2, generator=g, dtype=DT), 4), nn.MSELoss()


def sequence_case():
    """Linear layers on (n, T, d) inputs, sigmoid and SiLU, a binary cross-entropy loss."""
    model = nn.Sequential(
        nn.Linear(4, 6), nn.SiLU(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)
    ).to(DT)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 7, 4, generator=g, dtype=DT)
    y = torch.rand(10, 7, 3, generator=g, dtype=DT)
    return seeded(model, 5), batches(x, y, 6), nn.BCEWithLogitsLoss()


def custom_loss_case():
    """A loss without a closed form (differentiated automatically), a 2-D max pool at the end."""
    model = nn.Sequential(
        nn.Conv2d(1, 3, 2),
        nn.Hardtanh(-0.5, 0.5),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    ).to(DT)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 1, 5, 5, generator=g, dtype=DT)

    def loss(out, y):
        return ((out - y) ** 4).mean() + out.logsumexp(1).mean()

    return seeded(model, 7), batches(x, torch.randn(8, 2, generator=g, dtype=DT), 3), loss


def overlapping_pools_case():
    """Max pooling with overlapping windows (a position taken twice) after batch norm and
    smooth activations, then a second pool with ``ceil_mode``."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Dropout(0.2),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Softplus(),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    ).to(DT)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 2, 5, 5, generator=g, dtype=DT)
    return seeded(model, 9), batches(x, torch.randint(0, 4, (7,), generator=g), 4), F.cross_entropy


CASES = {
    "overlapping-pools": overlapping_pools_case,
    "cnn": cnn_case,
    "conv1d": conv1d_case,
    "sequence": sequence_case,
    "custom-loss": custom_loss_case,
}


def probes(P, k, seed=0):
    return torch.randn(P, k, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_quadratic_forms_equal_the_products(case):
    model, data, loss = CASES[case]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = [x.clone() for x, _ in data]
    H = dc.hessian(model, loss, data, weight_decay=0.3)
    assert H.quadratic_route == "taylor"
    V = probes(H.shape[0], 7)
    forms = H.quadratic_forms(V)
    reference = (V * H.matmat(V)).sum(0)
    assert forms.dtype == torch.float64 and forms.shape == (7,)
    torch.testing.assert_close(forms, reference, rtol=1e-11, atol=1e-11 * reference.abs().max())
    # nothing of the user's was touched (in-place activations work on copies)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for (x, _), x_before in zip(data, inputs, strict=True):
        assert torch.equal(x, x_before)


def test_quadratic_forms_equal_the_dense_hessian():
    model, data, loss = cnn_case()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def total(flat):
        parts, o = {}, 0
        for n in names:
            parts[n] = flat[o : o + params[n].numel()].view_as(params[n])
            o += params[n].numel()
        return loss(functional_call(model, parts, (x,)), y)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    dense = hessian(total)(flat)
    H = dc.hessian(model, loss, data)
    V = probes(H.shape[0], 5, seed=1)
    expected = torch.einsum("pk,pq,qk->k", V, dense, V)
    torch.testing.assert_close(H.quadratic_forms(V), expected, rtol=1e-11, atol=0.0)


def test_a_parameter_selection_probes_only_the_selected_layers():
    model, data, loss = conv1d_case()
    for params in (["4.weight"], ["8.bias", "11.weight"], ["1.weight", "7.weight"]):
        H = dc.hessian(model, loss, data, params=params)
        V = probes(H.shape[0], 4)
        reference = (V * H.matmat(V)).sum(0)
        torch.testing.assert_close(H.quadratic_forms(V), reference, rtol=1e-11, atol=1e-14)


def test_chunks_of_probes_give_the_same_forms():
    model, data, loss = cnn_case()
    H = dc.hessian(model, loss, data)
    layers = chain_layers(model, "eval")
    state, fixed = H.functional_state()
    tensors = {**fixed, **state}
    parts = H.layout.columns_to_dict(probes(H.shape[0], 5))
    batch = next(H.batches())
    with H.evaluation_mode():
        whole, value = taylor_quadratic_forms(layers, tensors, parts, batch, H.objective)
        one_by_one, _ = taylor_quadratic_forms(
            layers, tensors, parts, batch, H.objective, chunk_bytes=1
        )
    torch.testing.assert_close(whole, one_by_one, rtol=1e-13, atol=0.0)
    with torch.no_grad():
        assert float(value) == pytest.approx(float(loss(model(batch.inputs), batch.targets)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        return x + torch.tanh(self.a(x))


def test_other_networks_and_inputs_fall_back_to_products():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=DT)
    y = torch.randint(0, 3, (8,), generator=g)
    residual = nn.Sequential(Residual(), nn.Linear(3, 3)).to(DT)
    H = dc.hessian(residual, F.cross_entropy, [(x, y)])
    assert H.quadratic_route == "products"
    V = probes(H.shape[0], 3)
    torch.testing.assert_close(H.quadratic_forms(V), (V * H.matmat(V)).sum(0), rtol=0, atol=0)

    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).to(DT)
    assert dc.hessian(bn, F.cross_entropy, [(x, y)], bn_mode="train").quadratic_route == (
        "products"
    )
    # a chain called with keyword inputs: the first pass notices and takes the products
    chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).to(DT)
    H = dc.hessian(chain, F.cross_entropy, [{"input": x, "labels": y}], targets="labels")
    V = probes(H.shape[0], 3)
    reference = (V * H.matmat(V)).sum(0)
    torch.testing.assert_close(H.quadratic_forms(V), reference, rtol=0, atol=0)
    assert H.quadratic_route == "products"


def test_hutchinson_does_not_depend_on_the_route():
    model, data, loss = cnn_case()
    H = dc.hessian(model, loss, data)
    fast = dc.trace(H, 12, seed=3, block_size=5, verbose=False)
    reference = dc.trace(dc.as_operator(H.to_dense()), 12, seed=3, block_size=5, verbose=False)
    assert fast.route == "taylor" and reference.route == "products"
    assert fast.n_matvec == 12 and fast.n_passes == 3
    torch.testing.assert_close(
        torch.as_tensor(fast.samples), torch.as_tensor(reference.samples), rtol=1e-10, atol=1e-12
    )
    # a shifted and scaled Hessian keeps the route: 2 H + 0.5 I
    shifted = dc.trace(ShiftedOperator(H, 2.0, 0.5), 12, seed=3, block_size=5, verbose=False)
    assert shifted.route == "taylor"
    P = H.shape[0]
    torch.testing.assert_close(
        torch.as_tensor(shifted.samples),
        2.0 * torch.as_tensor(reference.samples) + 0.5 * P,
        rtol=1e-10,
        atol=1e-10,
    )


def test_a_non_finite_loss_is_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT)
    x = torch.randn(6, 3, dtype=DT)
    x[4, 0] = float("nan")
    H = dc.hessian(
        model,
        F.cross_entropy,
        [(x[:3], torch.zeros(3, dtype=torch.long)), (x[3:], torch.zeros(3, dtype=torch.long))],
    )
    with pytest.raises(FloatingPointError, match="batch 1"):
        H.quadratic_forms(probes(H.shape[0], 2))
