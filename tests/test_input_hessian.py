"""The input-Hessian operator against torch.func.hessian of the loss in the inputs (float64)."""

import pytest
import torch
from torch import nn
from torch.func import hessian

from deepcurvature.linalg.eigsh import eigsh
from deepcurvature.operators.input_hessian import input_hessian


def _mlp():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)
    )


def _cnn():
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Softplus(),
        nn.Conv2d(3, 2, 3),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    )


def _reference(model, loss_fn, x, y):
    """Per-sample dense Hessians (n, d, d) by torch.func.hessian of each sample's loss."""
    model = model.double().eval()
    blocks = []
    for i in range(x.shape[0]):
        shape = x[i].shape

        def f(flat, i=i, shape=shape):
            return loss_fn(model(flat.reshape(1, *shape)), y[i : i + 1])

        blocks.append(hessian(f)(x[i].reshape(-1).double()).detach())
    return torch.stack(blocks)


CASES = {
    "mlp-ce": (_mlp, (5, 3, 4), nn.CrossEntropyLoss(), "class"),
    "mlp-mse": (_mlp, (5, 3, 4), nn.MSELoss(), "real"),
    "cnn-ce": (_cnn, (4, 1, 4, 4), nn.CrossEntropyLoss(), "class"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_input_hessian_matches_dense(case):
    build, shape, loss_fn, kind = CASES[case]
    model = build()
    if case.startswith("cnn"):  # non-trivial running statistics of the batch norm
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()  # the operator must switch dropout off and use running statistics itself
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g)
    n = shape[0]
    y = torch.randint(0, 3, (n,), generator=g) if kind == "class" else torch.randn(n, 3)
    ref = _reference(build_copy(model), loss_fn, x, y)
    mean = input_hessian(model, loss_fn, x, y, dtype=torch.float64).to_dense()
    assert mean.shape == ref.shape[1:]
    scale = float(ref.abs().max())
    assert scale > 1e-3  # not a trivial (zero) Hessian
    assert torch.allclose(mean, ref.mean(0), rtol=0, atol=1e-10 * scale)
    per = input_hessian(model, loss_fn, x, y, reduction="per_sample", dtype=torch.float64)
    dense = per.to_dense()
    assert torch.allclose(dense, torch.block_diag(*ref), rtol=0, atol=1e-10 * scale)
    assert model.training and model[1 if case.startswith("cnn") else 3].training  # untouched


def build_copy(model):
    import copy

    return copy.deepcopy(model)


def test_input_hessian_eigsh_and_chunks():
    model = _mlp()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 3, 4, generator=g), torch.randint(0, 3, (9,), generator=g)
    op = input_hessian(model, nn.CrossEntropyLoss(), x, y, dtype=torch.float64, chunk_size=4)
    dense = _reference(build_copy(model), nn.CrossEntropyLoss(), x, y).mean(0)
    assert torch.allclose(op.to_dense(), dense, atol=1e-12)
    top = eigsh(op, 2, which="LA", seed=0, verbose=False).values
    exact = torch.linalg.eigvalsh(dense).numpy()[-2:]
    assert top == pytest.approx(exact, rel=1e-8)


def test_input_hessian_bad_input():
    model = _mlp()
    x = torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match="different lengths"):
        input_hessian(model, nn.CrossEntropyLoss(), x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        input_hessian(
            model, nn.CrossEntropyLoss(), x, torch.zeros(5, dtype=torch.long), reduction="sum"
        )
    # the loss itself must average over samples (as for every operator)
    with pytest.raises(ValueError, match="reduction='sum'.*MEAN loss"):
        input_hessian(model, nn.CrossEntropyLoss(reduction="sum"), x, torch.zeros(5).long())
