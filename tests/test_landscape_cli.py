"""``deepcurvature landscape`` run for real: a subprocess on a real checkpoint and spectrum."""

import os

import numpy as np
import pytest

import deepcurvature as dc
from _helpers import cli as run_cli
from deepcurvature.cli.main import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(*args, cwd=None):
    return run_cli("landscape", *args, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real run: train_network, then a Hessian spectrum with eigenvectors."""
    d = tmp_path_factory.mktemp("run")
    res = dc.train_network(d, "digits", model="mlp", epochs=2, subsample=300, seed=0,
                           model_kwargs={"hidden": (12,)}, device="cpu", verbose=False)  # fmt: skip
    dc.compute_eigenspectrum("digits", None, "mlp", res.final_checkpoint, lanczos_iters=8,
                             save_spectrum_path=d / "spectrum", save_eigvec=True,
                             num_subsamples=200, seed=0, device="cpu",
                             model_kwargs={"hidden": (12,)}, verbose=False)  # fmt: skip
    dc.compute_eigenspectrum("digits", None, "mlp", res.final_checkpoint, lanczos_iters=4,
                             save_spectrum_path=d / "novec", num_subsamples=50, device="cpu",
                             model_kwargs={"hidden": (12,)}, verbose=False)  # fmt: skip
    return d, res.final_checkpoint


def test_landscape_along_eigenvectors_from_the_spectrum_alone(trained, tmp_path):
    d, ckpt = trained
    out = tmp_path / "land"
    proc = run("--spectrum", str(d / "spectrum.npz"), "--dist", "0.5", "--n-points", "5",
               "--directions", "largest:2", "smallest", "--out", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "Ritz #7" in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert names == {"landscape.npz", "landscape.json", "landscape.png", "landscape-accuracy.png"}
    res = dc.LandscapeResult.load(out / "landscape.npz")
    spec = dc.SpectrumResult.load(d / "spectrum")
    np.testing.assert_array_equal(res.eigenvalues, spec.ritz_values[[7, 6, 0]])
    assert res.train_loss.shape == (3, 5) and res.test_loss.shape == (3, 5)
    # the model, checkpoint and training subsample come from the spectrum's metadata
    assert res.config["checkpoint_path"] == str(ckpt) and res.info["N_train"] == 200
    assert (out / "landscape.png").read_bytes()[:4] == b"\x89PNG"


def test_plane_of_random_directions_with_bn_recompute_flag(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "plane"
    proc = run("--checkpoint", str(ckpt), "--plane", "random:2", "--n-points", "3",
               "--subsample", "64", "--bn-recompute", "--float64", "--out", str(out),
               "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = dc.LandscapeResult.load(out / "landscape")
    assert res.ndim == 2 and res.train_loss.shape == (3, 3)
    assert res.kinds == ["random", "random"] and res.config["dtype"] == "float64"
    assert res.config["bn_recompute"] is True and res.info["N_train"] == 64


def test_bad_arguments_exit_with_an_error_and_write_nothing(trained, tmp_path, capsys):
    d, ckpt = trained
    out = tmp_path / "never"
    proc = run("--spectrum", str(d / "spectrum.npz"), "--directions", "biggest", "--out", str(out))
    assert proc.returncode == 2
    assert "deepcurvature landscape: error: unknown direction 'biggest'" in proc.stderr
    assert not out.exists()
    cases = [
        (["--checkpoint", str(ckpt), "--dist", "-1"], "--dist must be a positive"),
        (["--checkpoint", str(ckpt), "--n-points", "1"], "--n-points must be at least 2"),
        (["--checkpoint", str(ckpt), "--directions", "largest"], "need --spectrum"),
        (["--spectrum", str(d / "novec.npz")], "has no eigenvectors"),
        (["--spectrum", str(tmp_path / "nothing.npz")], "no spectrum file"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "no checkpoint file"),
        ([], "no weights to analyse"),
        (["--checkpoint", str(ckpt), "--directions", "random", "--plane", "random:2"], "not both"),
        (["--spectrum", str(d / "spectrum.npz"), "--plane", "largest:3"], "exactly two"),
        (["--checkpoint", str(ckpt), "--model", "no-such-net"], "no-such-net"),
    ]
    for args, message in cases:
        code = main(["landscape", *args, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, args
        assert err.startswith("deepcurvature landscape: error:") and message in err, (args, err)
        assert not out.exists(), args
