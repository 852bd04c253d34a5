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
from _chains import CASES, Residual, cnn_case, conv1d_case
from deepcurvature.linalg.operator import ShiftedOperator
from deepcurvature.operators import chain_products
from deepcurvature.operators.chain import chain_layers
from deepcurvature.operators.taylor import taylor_quadratic_forms

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def autograd_products(monkeypatch):
    """The reference products ``H z`` by autograd, not by the chain route (tested on its own)."""
    monkeypatch.setattr(chain_products, "ENABLED", False)


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


def test_bad_probes_are_named():
    model, data, loss = cnn_case()
    H = dc.hessian(model, loss, data)
    with pytest.raises(ValueError, match=r"quadratic_forms expects a tensor of shape \(P, k\)"):
        H.quadratic_forms(torch.zeros(3, 2, dtype=DT))
    with pytest.raises(TypeError, match="quadratic_forms got a torch.float32 tensor"):
        H.quadratic_forms(torch.zeros(H.shape[0], 2))
