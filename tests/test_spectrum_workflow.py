"""The spectrum workflow on networks: compute_eigenspectrum and the `deepcurvature spectrum` job."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _helpers import cli as run_cli


def cli(*args, cwd=None):
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny MLP trained for 2 epochs on a digits subsample, with its checkpoints on disk."""
    run_dir = tmp_path_factory.mktemp("run")
    res = dc.train_network(
        run_dir,
        "digits",
        model="mlp",
        model_kwargs={"hidden": (12,)},
        epochs=2,
        subsample=200,
        seed=0,
        verbose=False,
    )
    return run_dir, res


def test_compute_eigenspectrum_matches_exact_hessian(trained_run, tmp_path):
    _, res = trained_run
    ckpt = res.final_checkpoint
    out = tmp_path / "spec"
    spec = dc.compute_eigenspectrum(
        "digits",
        None,
        "mlp",
        ckpt,
        curvature_matrix="hessian_lanczos",
        lanczos_iters=40,
        save_spectrum_path=out,
        save_eigvec=True,
        probes=4,
        seed=0,
        dtype=torch.float64,
        model_kwargs={"hidden": (12,)},
        verbose=False,
    )
    assert spec.info["N"] == 200  # the run's subsample, recorded in the checkpoint
    # the same Hessian built independently: same data subset, dense torch.func.hessian
    bundle = dc.load_data(
        "digits", batch_size=128, augment=False, shuffle_train=False, subsample=200, seed=0
    )
    xs, ys = zip(*bundle.train_loader, strict=True)
    x, y = torch.cat(xs).double(), torch.cat(ys)
    model = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(12,))
    dc.load_checkpoint(ckpt, model)
    model = model.double().eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        parts = torch.split(theta, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    H = torch.func.hessian(loss)(theta0)
    exact = np.linalg.eigvalsh(H.numpy())
    top = exact[-1]
    # extremal Ritz values converge first: lambda_max to high accuracy after 40 steps
    assert spec.density.lambda_max == pytest.approx(top, rel=1e-6)
    assert spec.density.lambda_min >= exact[0] - 1e-8 * top
    # the SLQ trace estimate is unbiased; four probes are within a loose band
    assert spec.summary()["trace_estimate"] == pytest.approx(np.trace(H.numpy()), rel=0.35)
    back = dc.SpectrumResult.load(out)
    assert back.ritz_vectors.shape == (theta0.numel(), 40)
    u = back.ritz_vectors[:, -1].double()
    assert (u @ H @ u).item() == pytest.approx(spec.ritz_values[-1], rel=1e-8)
    assert back.config["checkpoint_path"] == str(ckpt)


def test_ggn_spectrum_has_no_negative_nodes(trained_run):
    _, res = trained_run
    spec = dc.compute_eigenspectrum(
        "digits",
        None,
        "mlp",
        res.final_checkpoint,
        curvature_matrix="ggn_lanczos",
        lanczos_iters=30,
        num_subsamples=100,
        seed=1,
        dtype=torch.float64,
        model_kwargs={"hidden": (12,)},
        verbose=False,
    )
    assert spec.density.lambda_min > -1e-10 * spec.density.lambda_max


def test_checkpoint_that_does_not_fit_lists_keys(trained_run):
    _, res = trained_run
    other = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=(8, 8))
    with pytest.raises(ValueError, match="does not fit") as info:  # the default width, not 12
        dc.compute_eigenspectrum(
            "digits", None, other, res.final_checkpoint, lanczos_iters=5, verbose=False
        )
    assert "shape mismatches" in str(info.value)


def test_unknown_curvature_matrix_is_rejected():
    with pytest.raises(ValueError, match="unknown curvature_matrix"):
        dc.compute_eigenspectrum("digits", curvature_matrix="hessian_power", verbose=False)


def test_cli_default_main_job(tmp_path):
    out = tmp_path / "default"
    proc = cli("spectrum", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("spectrum.npz", "spectrum.json", "spectrum.png"):
        assert (out / name).is_file()
    assert (out / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "spectrum.json").read_text())
    assert meta["config"]["matrix"] == "hessian" and meta["config"]["steps"] == 100
    assert meta["info"]["P"] > 1000
    for word in ("lambda_max", "negative mass", "trace estimate", "P (parameters)"):
        assert word in proc.stdout
    spec = dc.SpectrumResult.load(out / "spectrum")
    assert spec.density.weights.sum() == pytest.approx(1.0)


def cli_spectrum(*args, cwd=None):
    return cli("spectrum", *args, cwd=cwd)


def test_cli_on_saved_checkpoint_with_ggn(trained_run, tmp_path):
    _, res = trained_run
    out = tmp_path / "ggn"
    proc = cli_spectrum(
        "--checkpoint",
        str(res.final_checkpoint),
        "--matrix",
        "ggn",
        "--steps",
        "15",
        "--probes",
        "2",
        "--subsample",
        "100",
        "--float64",
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "spectrum.json").read_text())
    assert meta["config"]["model"] == "mlp"  # read from the checkpoint
    assert meta["config"]["model_kwargs"] == {"hidden": [12]}
    assert meta["config"]["probes"] == 2
    assert not (out / "train").exists()  # nothing was trained
    d = dc.SpectralDensity.load(out / "spectrum.npz")
    assert d.lambda_min > -1e-8 * d.lambda_max


def test_cli_cache_forward_gives_the_same_spectrum(trained_run, tmp_path):
    """``--cache forward`` keeps each batch's forward pass between the steps (the chain route
    with 4 probes); the spectrum is bit-identical to that of a run without it."""
    _, res = trained_run
    runs = {}
    for cache in ("none", "forward"):
        out = tmp_path / cache
        proc = cli_spectrum(
            "--checkpoint", str(res.final_checkpoint), "--steps", "12", "--probes", "4",
            "--subsample", "150", "--batch-size", "64", "--cache", cache, "--out", str(out),
            "--quiet",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        meta = json.loads((out / "spectrum.json").read_text())
        assert meta["config"]["cache"] == (False if cache == "none" else "forward")
        assert meta["info"]["product_route"] == "chain"
        with np.load(out / "spectrum.npz") as f:
            runs[cache] = {k: f[k] for k in f.files}
    assert runs["none"].keys() == runs["forward"].keys()
    for key, value in runs["none"].items():
        if value.dtype.kind == "f" and "time" not in key:
            assert np.array_equal(runs["forward"][key], value), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--cache", "activations"], "invalid choice: 'activations'"),
        (["--model", "nosuchnet"], "unknown model"),
        (["--dataset", "imagenet"], "unknown data set"),
        (["--checkpoint", "missing.pt"], "no checkpoint file"),
        (["--dataset", "cifar10", "--data-path", "nodata"], "download"),
    ],
)
def test_cli_bad_arguments_fail_cleanly(tmp_path, args, message):
    out = tmp_path / "out"
    proc = cli_spectrum(*args, "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
