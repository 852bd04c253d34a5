"""``deepcurvature train`` run for real as a subprocess."""

import json
import os

import pytest
import torch

from _helpers import cli as run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(*args, cwd=None):
    return run_cli("train", *args, cwd=cwd, env=ENV)


def test_no_arguments_trains_the_default_mlp_on_digits(tmp_path):
    out = run("--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("train-") and len(folder.name) == len("train-20250101-120000")
    assert str(folder.relative_to(tmp_path)) in out.stdout
    assert {p.name for p in folder.iterdir()} == {
        "checkpoint-00000.pt", "checkpoint-00020.pt", "stats.json",
    }  # fmt: skip
    rows = json.loads((folder / "stats.json").read_text())["rows"]
    assert len(rows) == 20 and rows[-1]["train_loss"] < 0.25 * rows[0]["train_loss"]
    assert rows[-1]["test_accuracy"] > 0.85
    ckpt = torch.load(folder / "checkpoint-00020.pt", weights_only=True)
    assert ckpt["config"]["model"] == "mlp" and ckpt["config"]["dataset"] == "digits"


def test_train_two_epochs_then_resume(tmp_path):
    d = tmp_path / "run"
    out = run("--epochs", "3", "--dir", str(d), "--save-freq", "1", "--lr", "0.02",
              "--optimizer-kwargs", '{"nesterov": true}', "--seed", "4")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "epoch" in out.stdout and "wrote 4 checkpoint(s)" in out.stdout  # summary table
    names = sorted(p.name for p in d.iterdir())
    assert names == [f"checkpoint-0000{i}.pt" for i in range(4)] + ["stats.json"]
    first = json.loads((d / "stats.json").read_text())["rows"]
    cfg = torch.load(d / "checkpoint-00003.pt", weights_only=True)["config"]
    assert cfg["optimizer_kwargs"] == {"lr": 0.02, "momentum": 0.9, "nesterov": True}
    # resume from epoch 1 into another folder: the options come from the checkpoint
    d2 = tmp_path / "resumed"
    out = run("--resume", str(d / "checkpoint-00001.pt"), "--dir", str(d2), "--quiet")
    assert out.returncode == 0, out.stderr
    again = json.loads((d2 / "stats.json").read_text())["rows"]
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in first]
    a = torch.load(d / "checkpoint-00003.pt", weights_only=True)["state_dict"]
    b = torch.load(d2 / "checkpoint-00003.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--optimizer", "nope"], "unknown optimizer 'nope'"),
        (["--epochs", "-1"], "--epochs must be 0 or a positive integer"),
        (["--optimizer-kwargs", "{bad"], "--optimizer-kwargs is not valid JSON"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--dataset", "cifar10", "--data-path", "nowhere"], "cifar"),
        (["--schedule", "nope"], "unknown schedule"),
    ],
)
def test_bad_arguments_exit_nonzero_without_files(tmp_path, args, message):
    d = tmp_path / "run"
    out = run("--dir", str(d), "--quiet", *args)
    assert out.returncode != 0
    assert "deepcurvature train: error:" in out.stderr and message.lower() in out.stderr.lower()
    assert "Traceback" not in out.stderr
    assert not d.exists()
