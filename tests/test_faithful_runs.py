"""A checkpoint records its run's data and model; resuming and analysing it use them (issue 16)."""

import json
import os
import shutil

import pytest
import torch

import deepcurvature as dc
from _helpers import cli as run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WIDTH = {"hidden": [24]}  # not the default width: the checkpoint's model_kwargs are needed


def cli(*args, cwd):
    return run_cli(*args, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``deepcurvature train --epochs 3 --save-freq 1 --subsample 300`` (uninterrupted)."""
    root = tmp_path_factory.mktemp("faithful")
    out = cli(
        "train", "--dir", "ra", "--epochs", "3", "--save-freq", "1", "--subsample", "300",
        "--model-kwargs", '{"hidden": [24]}', "--quiet", cwd=root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return root


def _load(path):
    return torch.load(path, weights_only=True)


def test_the_checkpoint_records_the_data_and_model_options(run_dir):
    cfg = _load(run_dir / "ra" / "checkpoint-00001.pt")["config"]
    assert cfg["subsample"] == 300 and cfg["subsample_seed"] == 0
    assert cfg["augment"] is True and cfg["batch_size"] == 128
    assert cfg["model_kwargs"] == WIDTH and cfg["dataset"] == "digits"
    assert cfg["batchnorm"] is False and cfg["data_kwargs"] == {}


def test_resuming_a_subsampled_run_is_bit_identical(run_dir):
    (run_dir / "rb").mkdir()
    shutil.copy(run_dir / "ra" / "checkpoint-00001.pt", run_dir / "rb")
    out = cli("train", "--resume", "rb/checkpoint-00001.pt", "--epochs", "3", cwd=run_dir)
    assert out.returncode == 0, out.stderr
    assert "from the checkpoint rb/checkpoint-00001.pt: subsample=300" in out.stdout
    a = _load(run_dir / "ra" / "checkpoint-00003.pt")
    b = _load(run_dir / "rb" / "checkpoint-00003.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_l2")
    assert [[r[k] for k in keys] for r in a["stats"]] == [[r[k] for k in keys] for r in b["stats"]]


def test_resuming_with_another_subsample_is_refused_in_one_line(run_dir):
    (run_dir / "rc").mkdir()
    shutil.copy(run_dir / "ra" / "checkpoint-00001.pt", run_dir / "rc")
    out = cli(
        "train", "--resume", "rc/checkpoint-00001.pt", "--epochs", "3", "--subsample", "500",
        cwd=run_dir,
    )  # fmt: skip
    assert out.returncode != 0
    line = out.stderr.strip()
    assert "\n" not in line and "--subsample 500" in line and "300" in line
    assert "leave it out" in line
    assert sorted(p.name for p in (run_dir / "rc").iterdir()) == ["checkpoint-00001.pt"]


def test_api_resume_refuses_a_conflicting_option(run_dir, tmp_path):
    shutil.copy(run_dir / "ra" / "checkpoint-00001.pt", tmp_path)
    with pytest.raises(ValueError, match=r"augment=False conflicts with the value True"):
        dc.train_network(
            tmp_path, resume=tmp_path / "checkpoint-00001.pt", epochs=2, augment=False,
            verbose=False,
        )  # fmt: skip


def test_spectrum_from_the_checkpoint_uses_the_recorded_n_and_width(run_dir):
    res = dc.compute_eigenspectrum(
        "digits",
        model="mlp",
        checkpoint_path=run_dir / "ra" / "checkpoint-00003.pt",
        lanczos_iters=3,
        verbose=False,
    )
    assert res.info["N"] == 300
    taken = res.config["from_checkpoint"]
    assert taken["num_subsamples"] == 300 and taken["model_kwargs"] == WIDTH
    assert res.config["model_kwargs"] == WIDTH


def test_cli_spectrum_says_what_came_from_the_checkpoint(run_dir):
    out = cli(
        "spectrum", "--checkpoint", "ra/checkpoint-00003.pt", "--steps", "3", "--out", "sp",
        "--quiet", cwd=run_dir,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "from the checkpoint" in out.stdout and "num_subsamples=300" in out.stdout
    text = " ".join(out.stdout.split())
    assert "N (samples) │ 300" in text
    mib = json.loads((run_dir / "sp" / "spectrum.json").read_text())["summary"]["peak_memory_mb"]
    assert mib > 10 and f"peak memory (MiB) │ {mib:,.0f} (host RSS)" in text


def test_cli_spectrum_refuses_a_conflicting_subsample_in_one_line(run_dir):
    out = cli(
        "spectrum", "--checkpoint", "ra/checkpoint-00003.pt", "--steps", "3", "--out", "sp2",
        "--subsample", "500", "--quiet", cwd=run_dir,
    )  # fmt: skip
    assert out.returncode != 0
    line = out.stderr.strip()
    assert "\n" not in line and "--subsample 500" in line and "300" in line
    assert not (run_dir / "sp2").exists()


def test_a_smaller_subsample_is_drawn_from_the_runs_own_samples(run_dir):
    ckpt = run_dir / "ra" / "checkpoint-00003.pt"
    res = dc.compute_eigenspectrum(
        "digits", model="mlp", checkpoint_path=ckpt, lanczos_iters=3, num_subsamples=100,
        verbose=False,
    )  # fmt: skip
    assert res.info["N"] == 100 and res.config["subsample_within"] == 300
    with pytest.raises(ValueError, match=r"subsample_seed=5 conflicts with the value 0"):
        dc.compute_eigenspectrum(
            "digits", model="mlp", checkpoint_path=ckpt, lanczos_iters=3, subsample_seed=5,
            verbose=False,
        )  # fmt: skip


def test_an_older_checkpoint_without_data_options_still_loads(run_dir, tmp_path):
    ckpt = _load(run_dir / "ra" / "checkpoint-00003.pt")
    for key in ("subsample", "subsample_seed", "augment", "val_fraction", "batchnorm"):
        ckpt["config"].pop(key)
    old = tmp_path / "checkpoint-00003.pt"
    torch.save(ckpt, old)
    res = dc.compute_eigenspectrum(
        "digits", model="mlp", checkpoint_path=old, lanczos_iters=3, verbose=False
    )
    assert res.info["N"] == 1437  # today's behaviour: the whole training set
    assert "records no data options" in res.config["checkpoint_note"]


def test_another_data_set_or_model_name_is_refused_in_one_line(run_dir):
    ckpt = run_dir / "ra" / "checkpoint-00003.pt"
    with pytest.raises(ValueError, match=r"dataset='cifar10' conflicts with .* 'digits'") as e:
        dc.compute_eigenspectrum("cifar10", None, "mlp", ckpt, lanczos_iters=3, verbose=False)
    assert "\n" not in str(e.value) and "pass dataset='digits'" in str(e.value)
    with pytest.raises(ValueError, match=r"model='cnn' conflicts with the model 'mlp'"):
        dc.compute_eigenspectrum("digits", None, "cnn", ckpt, lanczos_iters=3, verbose=False)
    with pytest.raises(ValueError, match=r"model='logistic' conflicts with the model 'mlp'"):
        dc.build_loss_landscape("digits", model="logistic", checkpoint_path=ckpt, verbose=False)
    with pytest.raises(ValueError, match=r"dataset='CIFAR-10' conflicts"):
        dc.compute_loss_stats("CIFAR-10", checkpoint_paths=[ckpt], verbose=False)
    out = cli(
        "spectrum", "--checkpoint", "ra/checkpoint-00003.pt", "--steps", "3", "--out", "sp3",
        "--dataset", "cifar10", "--quiet", cwd=run_dir,
    )  # fmt: skip
    assert out.returncode != 0
    line = out.stderr.strip()
    assert "\n" not in line and "--dataset cifar10" in line and "--dataset digits" in line
    assert not (run_dir / "sp3").exists()


def test_the_landscape_validation_split_is_the_runs(run_dir, tmp_path):
    ckpt = _load(run_dir / "ra" / "checkpoint-00003.pt")
    ckpt["config"].update(use_test=False, val_fraction=0.25, subsample=None, subsample_seed=7)
    path = tmp_path / "checkpoint-00003.pt"
    torch.save(ckpt, path)
    kw = dict(checkpoint_path=path, directions="random:1", n_points=3, verbose=False)
    res = dc.build_loss_landscape("digits", use_test=False, **kw)
    taken = res.config["from_checkpoint"]
    assert taken["val_fraction"] == 0.25 and taken["subsample_seed"] == 7
    assert res.config["val_fraction"] == 0.25 and res.config["test_is_validation"]
    assert res.info["N_test"] == round(0.25 * 1437) and res.info["N_train"] == 1437 - 359
    split = dc.load_data("digits", use_test=False, val_fraction=0.25, seed=7, augment=False)
    net = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8, **WIDTH)
    net.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        loss = sum(
            torch.nn.functional.cross_entropy(net(x), y, reduction="sum").item()
            for x, y in split.test_loader
        ) / len(split.test_set)
    assert res.test_loss[0][1] == pytest.approx(loss, rel=1e-5)  # t = 0 on the run's split
    with pytest.raises(ValueError, match=r"val_fraction=0.1 conflicts with the value 0.25"):
        dc.build_loss_landscape("digits", use_test=False, val_fraction=0.1, **kw)
    res = dc.build_loss_landscape("digits", **kw)  # the test set; training data without the split
    taken = res.config["from_checkpoint"]
    assert "val_fraction" not in taken and taken["holdout"] == 0.25
    assert res.info["N_train"] == 1437 - 359 and res.info["N_test"] == 360
    assert res.config["validation_held_out"] == 0.25 and not res.config["test_is_validation"]


def test_analyses_of_a_run_with_a_validation_split_leave_the_split_out(run_dir, tmp_path):
    from deepcurvature.suite._network import checkpoint_options, evaluation_data

    ckpt = _load(run_dir / "ra" / "checkpoint-00003.pt")
    ckpt["config"].update(use_test=False, val_fraction=0.25, subsample=300, subsample_seed=7)
    path = tmp_path / "checkpoint-00003.pt"
    torch.save(ckpt, path)
    run = dc.load_data("digits", use_test=False, val_fraction=0.25, subsample=300, seed=7)
    trained_on = sorted(run.train_set.indices)
    held_out = set(run.test_set.indices)
    given = {"num_subsamples": None, "subsample_seed": None, "data_kwargs": None}
    values, taken, _ = checkpoint_options(path, given)
    assert taken == {"holdout": 0.25, "num_subsamples": 300, "subsample_seed": 7}
    bundle = evaluation_data(
        "digits", None, batch_size=64, num_subsamples=values["num_subsamples"],
        subsample_seed=values["subsample_seed"], download=False, holdout=values["holdout"],
    )  # fmt: skip
    assert sorted(bundle.train_set.indices) == trained_on  # exactly the run's training samples
    assert len(bundle.test_set) == 360 and not bundle.test_is_validation
    # a smaller subsample is drawn from the run's own samples, never from its validation split
    values, _, _ = checkpoint_options(path, {**given, "num_subsamples": 50})
    bundle = evaluation_data(
        "digits", None, batch_size=64, num_subsamples=50, subsample_seed=values["subsample_seed"],
        download=False, holdout=values["holdout"], within=values["within"],
    )  # fmt: skip
    base = [bundle.train_set.dataset.indices[i] for i in bundle.train_set.indices]
    assert len(base) == 50 and set(base) <= set(trained_on) and not set(base) & held_out
    res = dc.compute_eigenspectrum(
        "digits", model="mlp", checkpoint_path=path, lanczos_iters=3, verbose=False
    )
    assert res.info["N"] == 300 and res.config["validation_held_out"] == 0.25
    assert res.config["from_checkpoint"]["holdout"] == 0.25


def test_cli_batch_lr_uses_the_recorded_subsample(run_dir):
    common = ("batch-lr", "--checkpoint", "ra/checkpoint-00003.pt", "--batch-sizes", "16", "32")
    out = cli(*common, "--subsample", "500", "--out", "bl1", "--quiet", cwd=run_dir)
    assert out.returncode != 0
    line = out.stderr.strip()
    assert "\n" not in line and "--subsample 500" in line and "300" in line
    assert not (run_dir / "bl1").exists()
    out = cli(*common, "--batches-per-size", "1", "--out", "bl2", "--quiet", cwd=run_dir)
    assert out.returncode == 0, out.stderr
    assert "num_subsamples=300" in out.stdout and "from the checkpoint" in out.stdout
    assert "N=300" in out.stdout
