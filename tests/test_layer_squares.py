"""The layer-by-layer per-sample squares against the per-sample (vmap) route, in float64.

The vmap route is itself tested against dense references in test_diagonals.py; here every
supported layer kind (linear on sequences, 1-D and 2-D convolutions with stride, dilation and
padding, batch norm with and without affine parameters, layers without bias) must give the same
GGN, Monte Carlo GGN and empirical Fisher diagonals to rounding, and unsupported networks must
take the vmap route.
"""

import pytest
import torch
from torch import nn

import deepcurvature as dc
import deepcurvature.analysis.exact_diagonals as ed
from _helpers import seeded_float64 as seeded
from deepcurvature.analysis.layer_squares import chain_layers

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def conv2d_case():
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, dilation=1, padding=2),
        nn.BatchNorm2d(4, affine=False),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 2 * 2, 3)),
    ).to(DT)
    x = torch.randn(11, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    return seeded(model), x, nn.CrossEntropyLoss(), torch.randint(0, 3, (11,))


def conv1d_case():
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, stride=2, dilation=2, padding=1),
        nn.BatchNorm1d(4),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(4 * 5, 5),
        nn.BatchNorm1d(5),
        nn.Softplus(),
        nn.Linear(5, 2, bias=False),
    ).to(DT)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3, 11, generator=g, dtype=DT)
    return seeded(model), x, nn.MSELoss(), torch.randn(9, 2, generator=g, dtype=DT)


def sequence_case():
    model = nn.Sequential(nn.Linear(4, 6), nn.SiLU(), nn.Linear(6, 3)).to(DT)  # (n, T, in)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, 4, generator=g, dtype=DT)
    return seeded(model), x, nn.MSELoss(), torch.randn(7, 5, 3, generator=g, dtype=DT)


CASES = {"conv2d": conv2d_case, "conv1d": conv1d_case, "sequence": sequence_case}
DIAGONALS = {
    "ggn": lambda *a, **k: dc.ggn_diagonal(*a, **k),
    "mc": lambda *a, **k: dc.mc_ggn_diagonal(*a, mc_samples=3, seed=5, **k),
    "empirical": lambda *a, **k: dc.empirical_fisher_diagonal(*a, **k),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", DIAGONALS)
def test_layerwise_route_matches_the_per_sample_route(case, kind, monkeypatch):
    model, x, loss_fn, y = CASES[case]()
    if kind == "mc" and case != "conv2d":
        loss_fn = nn.MSELoss()
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert chain_layers(model, "eval") is not None
    fast = DIAGONALS[kind](model, loss_fn, data, verbose=False)
    assert fast.metadata["per_sample_route"] == "layerwise"
    monkeypatch.setattr(ed, "LAYERWISE", False)
    slow = DIAGONALS[kind](model, loss_fn, data, verbose=False)
    assert slow.metadata["per_sample_route"] == "vmap"
    torch.testing.assert_close(fast.value, slow.value, rtol=1e-12, atol=1e-15)
    assert float(fast.value.abs().max()) > 1e-3  # not trivially zero
    if fast.std_error is not None:
        torch.testing.assert_close(fast.std_error, slow.std_error, rtol=1e-10, atol=1e-15)


def test_a_parameter_selection_keeps_the_other_layers_fixed(monkeypatch):
    model, x, loss_fn, y = conv2d_case()
    data = [(x, y)]
    params = ["3.weight", "7.2.bias", "1.weight"]
    fast = dc.ggn_diagonal(model, loss_fn, data, params=params, verbose=False)
    monkeypatch.setattr(ed, "LAYERWISE", False)
    slow = dc.ggn_diagonal(model, loss_fn, data, params=params, verbose=False)
    assert fast.param_names == ["1.weight", "3.weight", "7.2.bias"]
    torch.testing.assert_close(fast.value, slow.value, rtol=1e-12, atol=1e-15)


def test_unsupported_networks_take_the_per_sample_route():
    lin = nn.Linear(3, 3)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    unsupported = {
        "custom forward": Custom(),
        "custom module in a chain": nn.Sequential(nn.Linear(3, 3), Custom()),
        "grouped convolution": nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)),
        "'same' padding": nn.Sequential(nn.Conv2d(2, 4, 3, padding="same")),
        "circular padding": nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")),
        "3-D convolution": nn.Sequential(nn.Conv3d(2, 4, 3)),
        "embedding": nn.Sequential(nn.Embedding(5, 3)),
        "layer norm": nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)),
        "softmax over the batch?": nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=0)),
        "a module used twice": nn.Sequential(lin, nn.ReLU(), lin),
        "tied weights": nn.Sequential(a, nn.ReLU(), b),
        "no running statistics": nn.Sequential(
            nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)
        ),
    }
    for what, model in unsupported.items():
        assert chain_layers(model, "eval") is None, what
    assert chain_layers(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), "train") is None
    # the result of such a network still comes, one sample at a time
    model = Custom().to(DT)
    x = torch.randn(6, 3, dtype=DT)
    d = dc.ggn_diagonal(
        model, nn.CrossEntropyLoss(), [(x, torch.randint(0, 2, (6,)))], verbose=False
    )
    assert d.metadata["per_sample_route"] == "vmap" and d.value.shape == (8,)


def test_a_float32_model_evaluated_in_float64(monkeypatch):
    model, x, loss_fn, y = conv2d_case()
    model = model.float()
    data = [(x.float(), y)]
    fast = dc.ggn_diagonal(model, loss_fn, data, dtype=DT, verbose=False)
    monkeypatch.setattr(ed, "LAYERWISE", False)
    slow = dc.ggn_diagonal(model, loss_fn, data, dtype=DT, verbose=False)
    assert fast.value.dtype == DT and next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(fast.value, slow.value, rtol=1e-12, atol=1e-15)


def test_layer_inputs_recomputed_when_they_do_not_fit(monkeypatch):
    from deepcurvature.analysis import layer_squares as ls

    model, x, loss_fn, y = conv2d_case()
    data = [(x[:6], y[:6]), (x[6:], y[6:])]
    kept = dc.ggn_diagonal(model, loss_fn, data, verbose=False)
    monkeypatch.setattr(ls, "CACHE_BYTES", 0)  # every unfolded input formed per output vector
    again = dc.ggn_diagonal(model, loss_fn, data, verbose=False)
    assert again.metadata["per_sample_route"] == "layerwise"
    torch.testing.assert_close(again.value, kept.value, rtol=1e-13, atol=0.0)
    # the size estimate used for that decision is the size of what is formed
    for conv in (nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), nn.Conv2d(3, 5, (3, 2))):
        conv = conv.to(DT)
        inp = torch.randn(2, 3, *((9,) if isinstance(conv, nn.Conv1d) else (7, 6)), dtype=DT)
        layer = ls.Layer("c", conv, True)
        p = dict(conv.named_parameters())
        assert ls._input_numel(layer, inp, conv(inp)) == ls._layer_input(layer, p, inp).numel()
