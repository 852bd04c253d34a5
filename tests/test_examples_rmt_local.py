"""Examples of local spectral statistics and outliers, and the ``local-stats`` command."""

import importlib.util
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from _helpers import cli
from deepcurvature.analysis.local_statistics import (
    GOE_MEAN_RATIO,
    POISSON_MEAN_RATIO,
    LocalStatistics,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, out):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(small=True, out=out)


def assert_png(path):
    path = Path(path)
    assert path.is_file() and 0 < path.stat().st_size < 250_000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05


def test_local_statistics_digits(tmp_path):
    res = run_example("local_statistics_digits", tmp_path)
    assert res["hessian_check"] < 1e-10  # the dense Hessian is dc.hessian's
    assert res["accuracy"] > 0.95
    h, d = res["hessian"], res["diagonal"]
    # the Hessian's bulk: GOE level repulsion, far from Poisson
    assert h["closer_to"] == "GOE"
    assert h["ks_goe"] < 0.1 < 0.2 < h["ks_poisson"]
    assert abs(h["mean_ratio"] - GOE_MEAN_RATIO) < 4 * h["stderr"]
    assert h["mean_ratio"] - POISSON_MEAN_RATIO > 6 * h["stderr"]
    # its diagonal as levels: independent, Poisson
    assert d["closer_to"] == "Poisson"
    assert abs(d["mean_ratio"] - POISSON_MEAN_RATIO) < 3 * d["stderr"]
    assert_png(res["figure"])


def test_ggn_outliers_digits(tmp_path):
    res = run_example("ggn_outliers_digits", tmp_path)
    rows = {r["C"]: r for r in res["rows"]}
    assert set(rows) == {10, 3}
    for r in rows.values():
        assert r["ggn_check"] < 1e-10  # the matrix is dc.ggn's
        assert r["top"] == sorted(r["top"], reverse=True)
        assert len(r["outlier_values"]) == r["outliers"]
    # Papyan: C - 1 or C outliers for 10 classes (holds at this scale, every seed tried)
    assert rows[10]["outliers"] in (9, 10)
    assert rows[10]["gap_ratio"] >= 8
    assert_png(res["figure"])


# -- the local-stats command ------------------------------------------------------------------
def _goe_values(P, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((P, P))
    return np.linalg.eigvalsh((A + A.T) / 2)


def test_cli_local_stats_eigenvalue_files(tmp_path):
    values = _goe_values(400)
    np.save(tmp_path / "eigs.npy", values)
    proc = cli("local-stats", tmp_path / "eigs.npy", "--out", tmp_path / "ls")
    assert proc.returncode == 0, proc.stderr
    assert "GOE" in proc.stdout and "<r~>" in proc.stdout
    res = LocalStatistics.load(tmp_path / "ls")
    assert res.ratios.size == 318 and res.closer_to == "GOE"
    assert (tmp_path / "ls.png").is_file()
    # a text file, one eigenvalue a line, and the JSON summary on stdout
    np.savetxt(tmp_path / "eigs.txt", values[::-1])
    proc = cli("local-stats", tmp_path / "eigs.txt", "--json", "--trim", "0.2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n_window"] == 240 and summary["closer_to"] == "GOE"


def test_cli_local_stats_too_few_eigenvalues(tmp_path):
    np.save(tmp_path / "few.npy", np.arange(30.0) ** 1.3)
    proc = cli("local-stats", tmp_path / "few.npy")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "at least 50 eigenvalues" in lines[0] and "at least 63" in lines[0]


def test_cli_local_stats_refuses_ritz_values(tmp_path):
    import deepcurvature as dc

    dens = dc.lanczos(np.diag(np.arange(1.0, 201.0)), 20, seed=0, verbose=False).density()
    dens.save(tmp_path / "spectrum")
    proc = cli("local-stats", tmp_path / "spectrum.npz")
    assert proc.returncode == 2
    assert "Ritz values" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"1 2\n3 4\n5 6\n"])
def test_cli_local_stats_bad_files(tmp_path, content):
    (tmp_path / "bad.txt").write_bytes(content)
    proc = cli("local-stats", tmp_path / "bad.txt")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "bad.txt" in proc.stderr
