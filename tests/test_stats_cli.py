"""``deepcurvature stats`` run for real as a subprocess."""

import json
import math
import os

import pytest

from _helpers import cli as run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(*args, cwd):
    return run_cli("stats", *args, cwd=cwd, env=ENV)


def test_default_run_trains_briefly_then_measures_first_and_last_checkpoint(tmp_path):
    out = run("--quiet", "--train-epochs", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("stats-")
    assert {p.name for p in folder.iterdir()} == {"loss_stats.json", "train"}
    doc = json.loads((folder / "loss_stats.json").read_text())
    assert doc["complete"] and [r["epoch"] for r in doc["rows"]] == [0, 2]
    first, last = doc["rows"]
    assert last["loss"] < first["loss"] and last["test_accuracy"] > 0.5
    assert first["matrix"] == "hessian" and first["probes"] == 4 and first["num_batches"] == 11
    assert 0 <= last["curv_shrinkage"] <= 1 and last["grad_var"] > 0
    assert set(doc["layers"][0]) == {"net.1", "net.3", "net.5"}
    # the table printed on stdout
    for text in ("train loss", "shrinkage rho", "epoch 0", "epoch 2", "loss_stats.json"):
        assert text in out.stdout

    # the run folder again: every checkpoint, the GGN, fewer batches, float64, per options
    other = tmp_path / "ggn"
    out = run("--checkpoint", str(folder / "train"), "--matrix", "ggn", "--probes", "2",
              "--batch-size", "64", "--num-batches", "3", "--float64", "--out", str(other),
              "--quiet", "--seed", "5", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads((other / "loss_stats.json").read_text())
    assert [r["epoch"] for r in doc["rows"]] == [0, 2]
    assert doc["config"]["curvature_matrix"] == "ggn" and doc["config"]["seed"] == 5
    assert all(r["num_batches"] == 3 and r["batch_size"] == 64 for r in doc["rows"])
    assert doc["config"]["dtype"] == "float64"
    assert not math.isnan(doc["rows"][1]["curv_var_se"])


BAD = [
    (["--probes", "0"], "--probes must be a positive integer"),
    (["--num-batches", "-1"], "--num-batches must be a positive integer"),
    (["--checkpoint", "missing.pt"], "no checkpoint file or run folder at missing.pt"),
    (["--checkpoint", "empty"], "holds no checkpoint-*.pt files"),
    (["--model", "nosuchnet"], "nosuchnet"),
    (["--out", "afile"], "exists and is not a folder"),
]


def _folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    return sorted(p.name for p in tmp_path.iterdir())


def test_bad_arguments_as_a_subprocess(tmp_path):
    before = _folder(tmp_path)
    out = run("--checkpoint", "empty", "--probes", "2", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "deepcurvature stats: error: the folder empty holds no checkpoint-*.pt" in out.stderr
    out = run("--matrix", "fisher", cwd=tmp_path)
    assert out.returncode == 2 and "invalid choice: 'fisher'" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/ folder, no file


@pytest.mark.parametrize("args, message", BAD, ids=[a[0][0].strip("-") + a[0][1] for a in BAD])
def test_bad_arguments_exit_2_with_a_message_and_write_nothing(
    tmp_path, monkeypatch, capsys, args, message
):
    from deepcurvature.cli.main import main

    before = _folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["stats", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcurvature stats: error:") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/ folder, no file
