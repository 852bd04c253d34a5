"""``deepcurvature density`` on real spectrum files; ``deepcurvature plot`` on analysis results."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from _helpers import cli
from deepcurvature.cli.main import main
from deepcurvature.report import detect_result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ("maxent.npz", "maxent.json", "maxent.png", "outliers.npz", "outliers.json", "outliers.png")
SPECTRUM = ("--subsample", "120", "--train-epochs", "1", "--steps", "20", "--probes", "3")


def _error_line(res):
    """The single error line of a failed run (and nothing else on stderr)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepcurvature density: error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def ggn_spectrum(tmp_path_factory):
    """A real ``deepcurvature spectrum`` run (GGN of a small MLP on digits): its ``.npz``."""
    root = tmp_path_factory.mktemp("spectrum")
    res = cli("spectrum", *SPECTRUM, "--matrix", "ggn", "--float64", "--quiet", "--out", "sp",
              cwd=root)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return root / "sp" / "spectrum.npz"


@pytest.fixture(scope="module")
def wishart_run(tmp_path_factory):
    """A Lanczos run on a Marcenko-Pastur matrix and its density saved as a SpectralDensity."""
    root = tmp_path_factory.mktemp("wishart")
    run = dc.lanczos(dc.wishart(200, 400, seed=0), 20, probes=30, seed=0, verbose=False)
    npz = run.density().save(root / "wishart")
    return run, npz


def test_density_of_a_network_spectrum_matches_the_python_api(ggn_spectrum, tmp_path):
    out = tmp_path / "dens"
    res = cli("density", ggn_spectrum, "--outliers", "mp", "--logdet-shift", "0.01",
              "--logdet-shift", "1", "--json", "--out", out)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    for name in FILES:
        assert (out / name).is_file(), name
    for name in ("maxent.png", "outliers.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE

    density = dc.SpectralDensity.load(ggn_spectrum)
    fit, expected = dc.MaxEntResult.load(out / "maxent"), density.maxent(10)
    for key in ("multipliers", "constraints", "achieved", "grid", "density"):
        np.testing.assert_allclose(getattr(fit, key), getattr(expected, key), rtol=1e-12)
    assert fit.support == pytest.approx(expected.support, rel=1e-14)
    assert doc["maxent"]["n_moments"] == 10
    assert doc["maxent"]["max_error"] == pytest.approx(expected.max_error, rel=1e-6, abs=1e-14)

    found, ref = dc.OutlierResult.load(out / "outliers"), dc.outliers(density, "mp")
    assert found.method == "mp" and found.count == ref.count == doc["outliers"]["count"]
    np.testing.assert_allclose(found.values, ref.values, rtol=1e-14)
    assert (found.lower_edge, found.upper_edge) == pytest.approx((ref.lower_edge, ref.upper_edge))

    # SLQ from the stored nodes and weights: P sum_j w_lj log(theta_lj + shift), per probe
    P, probes = density.dim, np.unique(density.probe_index)
    assert P > 1000 and probes.size == 3
    for entry, shift in zip(doc["logdet"], (0.01, 1.0), strict=True):
        per_probe = [
            P
            * np.sum(density.weights[i] * np.log(density.nodes[i] + shift))
            / density.weights[i].sum()
            for i in (density.probe_index == p for p in probes)
        ]
        assert entry["shift"] == shift and entry["dim"] == P and entry["probes"] == 3
        assert entry["value"] == pytest.approx(np.mean(per_probe), rel=1e-12)
        assert entry["standard_error"] == pytest.approx(np.std(per_probe, ddof=1) / math.sqrt(3))

    # the summary text names the results
    again = cli("density", ggn_spectrum.with_suffix(".json"), "--logdet-shift", "1", "--out",
                tmp_path / "text")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "maximum-entropy density: 10 moments" in again.stdout
    assert "outliers (gap):" in again.stdout and "log det(A + 1 I) = " in again.stdout


def test_density_logdet_equals_dc_logdet_of_the_lanczos_run(wishart_run, tmp_path):
    run, npz = wishart_run
    res = cli("density", npz, "--moments", "8", "--logdet-shift", "1", "--logdet-shift", "0.5",
              "--json", "--out", tmp_path / "w")  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    for entry, shift in zip(doc["logdet"], (1.0, 0.5), strict=True):
        est = dc.logdet(run, shift=shift, method="slq")
        assert entry["value"] == pytest.approx(est.value, rel=1e-12)
        assert entry["standard_error"] == pytest.approx(est.standard_error, rel=1e-9)
        exact = np.linalg.slogdet(dc.wishart(200, 400, seed=0).numpy() + shift * np.eye(200))[1]
        assert abs(entry["value"] - exact) < 4 * entry["standard_error"]
    expected = run.density().maxent(8)
    fit = dc.MaxEntResult.load(tmp_path / "w" / "maxent.npz")
    np.testing.assert_allclose(fit.multipliers, expected.multipliers, rtol=1e-12)
    # the default folder is a new runs/density-TIME folder
    default = cli("density", npz, "--moments", "8", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.startswith("density-") and sorted(p.name for p in made.iterdir()) == sorted(
        FILES
    )


def test_density_refuses_bad_input_with_one_line(wishart_run, tmp_path):
    _, npz = wishart_run
    notes = tmp_path / "notes.txt"
    notes.write_text("not a spectrum\n")
    assert "cannot tell what" in _error_line(cli("density", notes, "--out", tmp_path / "a"))
    fit_npz = dc.MaxEntResult.save(dc.SpectralDensity.load(npz).maxent(4), tmp_path / "fit")
    line = _error_line(cli("density", fit_npz, "--out", tmp_path / "a"))
    assert "is a maxent result, not a spectrum" in line
    # a Wigner matrix has Ritz values near -2: A + 1 I is not positive definite
    wigner = dc.lanczos(dc.wigner(200, seed=0, normalize=True), 15, probes=2, seed=0, verbose=False)
    wnpz = wigner.density().save(tmp_path / "wigner")
    line = _error_line(cli("density", wnpz, "--logdet-shift", "1", "--out", tmp_path / "a"))
    assert "--logdet-shift 1: A + LAMBDA*I is not positive definite" in line
    assert "give --logdet-shift" in line
    assert not (tmp_path / "a").exists()  # nothing written by a failed run
    # an existing output is kept unless --overwrite
    out = tmp_path / "b"
    assert cli("density", npz, "--moments", "6", "--out", out).returncode == 0
    before = (out / "maxent.npz").read_bytes()
    line = _error_line(cli("density", npz, "--moments", "4", "--out", out))
    assert "already holds results" in line and "--overwrite" in line
    assert (out / "maxent.npz").read_bytes() == before
    assert cli("density", npz, "--moments", "4", "--out", out, "--overwrite").returncode == 0
    assert dc.MaxEntResult.load(out / "maxent").n_moments == 4
    # more moments than a few atoms have: the library's error, in the command line's words
    atoms = dc.SpectralDensity(np.array([-1.0, 0.0, 0.5, 1.0]), np.full(4, 0.25), dim=4)
    line = _error_line(cli("density", atoms.save(tmp_path / "atoms"), "--out", tmp_path / "c"))
    assert "stopped at n = " in line and "--moments <=" in line and "n_moments" not in line
    assert "--moments must be a positive" in _error_line(
        cli("density", npz, "--moments", "0", cwd=tmp_path)
    )
    assert not (tmp_path / "c").exists() and not (tmp_path / "runs").exists()


def _batch_extremes(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = torch.randn(200, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    res = dc.batch_hessian_extremes(
        model, lambda f, t: 0.5 * ((f - t) ** 2).mean(), (X, y), [20, 50], batches_per_size=2,
        seed=0, tol=1e-4, verbose=False,
    )  # fmt: skip
    return res.save(root / "batch")


def test_plot_draws_every_analysis_result(wishart_run, tmp_path, capsys):
    _, npz = wishart_run
    density = dc.SpectralDensity.load(npz)
    fit = density.maxent(8)
    fit.metadata["spectrum_file"] = str(npz)  # as `deepcurvature density` records it
    eigenvalues = np.linalg.eigvalsh(dc.wigner(150, seed=1).numpy())
    files = {
        "maxent": fit.save(tmp_path / "fit"),
        "outliers": dc.outliers(density, "mp").save(tmp_path / "out"),
        "local-statistics": dc.local_statistics(eigenvalues).save(tmp_path / "ls"),
        "batch-extremes": _batch_extremes(tmp_path),
    }
    for kind, file in files.items():
        assert detect_result(file) == (kind, file)
        assert detect_result(file.with_suffix(".json")) == (kind, file)
        png = tmp_path / f"{kind}.png"
        assert main(["plot", str(file), "--out", str(png)]) == 0, kind
        assert png.read_bytes()[:8] == PNG_SIGNATURE, kind
    # a real subprocess, default figure beside the file
    res = cli("plot", files["outliers"].with_suffix(""))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.png").read_bytes()[:8] == PNG_SIGNATURE
    # a log-determinant has no figure: one line
    ld = dc.logdet(dc.wishart(50, 100, seed=0), shift=1.0, probes=2, steps=8, seed=0)
    res = cli("plot", ld.save(tmp_path / "ld"))
    assert res.returncode == 2 and "'LogdetResult' result, which has no figure" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
