"""Small helpers shared by the tests (imported as ``from _helpers import ...``)."""

import numpy as np
import torch


def rotate(d, seed):
    """``U diag(d) U^T`` with ``U`` the Q factor of a Gaussian matrix (float64 tensor)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d.size, d.size)))
    A = (U * d) @ U.T
    return torch.as_tensor((A + A.T) / 2)


def dense_hessian_and_gradient(model, loss_fn, data):
    """``(P, P)`` Hessian and ``(P,)`` gradient of the mean loss over the concatenated batches.

    By ``torch.func`` on the flattened parameters (in ``model.parameters()`` order): the dense
    reference of the operator tests.
    """
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])

    def f(theta):
        tensors, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = int(np.prod(shape))
            tensors[name] = theta[offset : offset + k].view(shape)
            offset += k
        return loss_fn(functional_call(model, tensors, (x,)), y)

    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    return torch.func.hessian(f)(w), torch.func.grad(f)(w)


def cli(*args, cwd=None, env=None, timeout=600):
    """Run ``deepcurvature ARGS...`` for real, as a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "deepcurvature.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


SMALL_MLP = {"hidden": [16]}


def trained_run(root, *, save_eigvec=False):
    """A real run folder: a small MLP trained 2 epochs on a digits subsample (``root``), and its
    Hessian spectrum at the last checkpoint in ``root/spectra/spectrum-00002-hessian_lanczos``.

    Returns ``(train_result, spectrum_result, spectrum_path)`` (the path without suffix).
    """
    import deepcurvature as dc

    trained = dc.train_network(
        root,
        "digits",
        model="mlp",
        model_kwargs=SMALL_MLP,
        optimizer="SGD",
        optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
        epochs=2,
        subsample=300,
        seed=0,
        verbose=False,
    )
    spectrum = root / "spectra" / "spectrum-00002-hessian_lanczos"
    result = dc.compute_eigenspectrum(
        "digits",
        None,
        model="mlp",
        model_kwargs=SMALL_MLP,
        checkpoint_path=trained.final_checkpoint,
        lanczos_iters=10,
        save_spectrum_path=spectrum,
        save_eigvec=save_eigvec,
        num_subsamples=100,
        seed=0,
        device="cpu",
        verbose=False,
    )
    return trained, result, spectrum


class Vector(torch.nn.Module):
    """A parameter vector ``w`` as the output of the network (one row per sample)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.unsqueeze(0).expand(x.shape[0], -1)


def seeded_float64(model, seed=0):
    """``model`` (float64) with seeded parameters and running statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(
                    torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.2
                )
                m.running_var.copy_(
                    torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5
                )
    return model.eval()
