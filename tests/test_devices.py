"""The products, Lanczos and the command line on every device this machine has.

Parametrised over ``cpu`` and ``cuda``; the ``cuda`` cases are skipped (with a line saying so)
where torch sees no GPU, as on the CI machine, and run as they are on one: ``python -m pytest
tests/test_devices.py``. The model and the data live on the CPU in float32, as a user holds
them; the operators evaluate a float64 copy on the device. References are dense and computed on
the CPU in float64 (``torch.func``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _helpers import cli, dense_hessian_and_gradient

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_GPU)]


class _Residual(nn.Module):
    """An MLP with a skip connection: not a chain, so its products take autograd's route."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        return self.c(h + torch.tanh(self.b(h)))


def _case(name: str) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "cnn":  # a chain with batch norm and max pooling: the chain route
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 3),
        )  # fmt: skip
        with torch.no_grad():  # running statistics of a few batches, then evaluation mode
            model.train()
            model(torch.randn(16, 2, 6, 6, generator=gen))
        x = torch.randn(10, 2, 6, 6, generator=gen)
    else:
        model = _Residual()
        x = torch.randn(10, 5, generator=gen)
    model.eval()
    y = torch.randint(0, 3, (10,), generator=gen)
    return model, [(x[:6], y[:6]), (x[6:], y[6:])]


def _dense_ggn(model: nn.Module, data: list) -> torch.Tensor:
    """``J^T H_out J`` of the mean cross-entropy, built explicitly (CPU, float64)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.cat([b[0] for b in data])
    J = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    n, c = x.shape[0], 3
    J = torch.cat([j.reshape(n * c, -1) for j in J.values()], 1)
    p = torch.softmax(model(x).detach(), 1)
    H_out = torch.block_diag(*[(torch.diag(q) - torch.outer(q, q)) / n for q in p])
    return J.T @ H_out @ J


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["cnn", "residual"])
def test_products_on_the_device_match_the_dense_reference(device, name):
    model, data = _case(name)
    reference = model.double()
    data64 = [(x.double(), y) for x, y in data]
    H_dense, _ = dense_hessian_and_gradient(reference, nn.CrossEntropyLoss(), data64)
    G_dense = _dense_ggn(reference, data64)
    model.float()  # the user's model, as it was
    P = H_dense.shape[0]
    V = torch.randn(P, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for make, dense in ((dc.hessian, H_dense), (dc.ggn, G_dense)):
        op = make(model, nn.CrossEntropyLoss(), data, dtype=torch.float64, device=device)
        assert op.device.type == device
        for cols in (V[:, :1], V):  # one column and a block (the chain route from one column)
            got = op.matmat(cols.to(device))
            assert got.device.type == device
            torch.testing.assert_close(got.cpu(), dense @ cols, rtol=1e-9, atol=1e-11)
        assert op.product_route == ("chain" if name == "cnn" else "autograd")
    cached = dc.hessian(
        model, nn.CrossEntropyLoss(), data, dtype=torch.float64, device=device, cache="forward"
    )
    for _ in range(2):  # the second product reads the kept forward passes
        torch.testing.assert_close(
            cached.matmat(V.to(device)).cpu(), H_dense @ V, rtol=1e-9, atol=1e-11
        )
    assert next(model.parameters()).device.type == "cpu"  # the model was not moved


@pytest.mark.parametrize("device", DEVICES)
def test_lanczos_bases_on_the_device_host_and_disk_agree(device, tmp_path):
    model, data = _case("cnn")
    H = dc.hessian(model, nn.CrossEntropyLoss(), data, dtype=torch.float64, device=device)
    runs = {
        "device": dc.lanczos(H, 24, probes=2, seed=3, verbose=False),
        "host": dc.lanczos(H, 24, probes=2, seed=3, basis_device="cpu", verbose=False),
        "disk": dc.lanczos(H, 24, probes=2, seed=3, basis="disk", basis_dir=tmp_path,
                           verbose=False),
    }  # fmt: skip
    first = runs["device"].density()
    for result in runs.values():
        density = result.density()
        np.testing.assert_allclose(density.nodes, first.nodes, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(density.weights, first.weights, rtol=1e-8, atol=1e-10)
    H_dense, _ = dense_hessian_and_gradient(model.double(), nn.CrossEntropyLoss(),
                                            [(x.double(), y) for x, y in data])  # fmt: skip
    lam = torch.linalg.eigvalsh(H_dense).numpy()  # P = 190
    assert first.nodes.min() >= lam[0] - 1e-10 and first.nodes.max() <= lam[-1] + 1e-10
    assert abs(first.nodes.max() - lam[-1]) < 1e-8 * abs(lam[-1])  # converged in 24 steps
    assert list(tmp_path.iterdir()) == []  # the disk basis removed its file


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NO_GPU)])
def test_cli_spectrum_on_the_device(device, tmp_path):
    out = tmp_path / "run"
    r = cli("spectrum", "--device", device, "--subsample", "60", "--train-epochs", "0",
            "--steps", "4", "--quiet", "--out", out, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with np.load(out / "spectrum.npz") as f:
        assert np.isfinite(f["nodes"]).all()
