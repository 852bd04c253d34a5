"""Reliability of training (issue 11): K-FAC defaults that do not blow up, divergence detection
at the step where it happens, loss-growth warnings, safe resumes, hyper-parameters checked before
anything is written, and failed runs that leave nothing behind that blocks a retry.

Real models and the real digits data throughout; failures are real ones (a NaN in the data, an
overflowing input scale, a learning rate that explodes, a file-size limit, SIGINT).
"""

import errno
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepcurvature as dc
from deepcurvature.training.stats import LOSS_GROWTH_FACTOR, loss_growth_warning
from deepcurvature.training.train import TrainingDivergedError

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread is fastest


def _snapshot(folder):
    """Every file of a folder with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _digits_tensors(n=256):
    bundle = dc.load_data("digits", batch_size=64, subsample=n, seed=0, augment=False)
    ds = bundle.train_loader.dataset
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    return x, y, bundle.test_loader


def _small_run(path, **kwargs):
    args = dict(epochs=3, save_freq=1, seed=0, verbose=False, subsample=200)
    return dc.train_network(path, "digits", **{**args, **kwargs})


# ----------------------------------------------------------------------------- 1. K-FAC
@pytest.mark.parametrize("lr", [0.001, 0.01, 0.05, 0.1])
def test_kfac_trains_stably_on_its_defaults(lr):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no loss-growth warning either
        res = dc.train_network(
            None, "digits", optimizer="KFAC", optimizer_kwargs={"lr": lr}, epochs=8, seed=0,
            verbose=False, eval_freq=8,
        )  # fmt: skip
    losses = res.column("train_loss")
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.3 * losses[0], losses
    assert all(b <= 1.5 * a for a, b in itertools.pairwise(losses)), losses
    assert res.stats[-1]["test_accuracy"] > 0.85, res.stats[-1]
    assert res.warnings == []
    kw = res.config["optimizer_kwargs"]
    assert (kw["damping"], kw["kl_clip"]) == (1e-2, 1e-3)


def test_kfac_defaults_are_the_same_by_name_and_by_class():
    defaults = dc.optimizer_defaults("KFAC")
    assert (defaults["damping"], defaults["kl_clip"]) == (1e-2, 1e-3)
    opt = dc.KFAC(nn.Sequential(nn.Linear(4, 3)))
    assert (opt.defaults["damping"], opt.defaults["kl_clip"]) == (1e-2, 1e-3)
    opt.remove_hooks()


def test_kfac_without_clipping_and_damping_diverges_and_says_where():
    """The old defaults (damping 1e-3, no KL clip) at lr=0.01: a loss of ~1e11 in epoch 1 (a
    warning, as it is finite), then a NaN at a named step instead of a crash in multinomial."""
    with pytest.warns(RuntimeWarning, match="grew by orders of magnitude"):
        with pytest.raises(TrainingDivergedError) as info:
            dc.train_network(
                None, "digits", optimizer="KFAC", epochs=3, seed=0, verbose=False,
                optimizer_kwargs={"lr": 0.01, "damping": 1e-3, "kl_clip": None},
            )  # fmt: skip
    text = str(info.value)
    assert text.startswith("training diverged at epoch 2, step ")
    assert "of 12: the training loss is nan" in text
    assert "lower the learning rate (lr=0.01)" in text and "raise damping (damping=0.001)" in text
    assert isinstance(info.value, ValueError) and isinstance(info.value, FloatingPointError)
    assert "\n" not in text


def test_kfac_non_finite_factor_is_a_divergence_naming_epoch_and_step(tmp_path):
    """Inputs of scale 1e20 give a finite loss but an overflowing factor A = E[a a^T]."""
    x, y, test = _digits_tensors()
    train = DataLoader(TensorDataset(x * 1e20, y), batch_size=64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError) as info:
        dc.train_network(
            tmp_path / "run", (train, test), model=model, optimizer="KFAC", epochs=2, seed=0,
            verbose=False,
        )  # fmt: skip
    text = str(info.value)
    assert text.startswith("training diverged at epoch 1, step 1 of 4: in the optimizer's step")
    assert "Kronecker factor A of layer '1' is not finite" in text
    assert "lower the learning rate" in text and "raise damping (damping=0.01)" in text
    assert not (tmp_path / "run").exists()
    assert not any(m._forward_hooks for m in model.modules())  # K-FAC's hooks removed


def test_kfac_step_refuses_a_non_finite_update_and_survives_nan_outputs():
    x, y, _ = _digits_tensors(64)
    x = x.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    opt = dc.KFAC(model, inv_update_freq=10)
    F.cross_entropy(model(x), y).backward()
    opt.step()  # factors and inverses from finite data
    bad = x.clone()
    bad[3] = float("nan")
    opt.zero_grad()
    out = model(bad)  # the Monte-Carlo labels are sampled from NaN outputs without an error
    loss = F.cross_entropy(out, y)
    assert math.isnan(loss.item())
    loss.backward()
    with pytest.raises(FloatingPointError, match=r"update of layer\(s\) \['0', '2'\] is not fin"):
        opt.step()
    opt.remove_hooks()


# ----------------------------------------------------------------------------- 2. divergence
def test_nan_loss_stops_the_run_at_its_step_before_the_update(tmp_path):
    x, y, test = _digits_tensors()
    x[150] = float("nan")  # in the third batch of 64
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    run = tmp_path / "a" / "b" / "run"
    with pytest.raises(TrainingDivergedError, match=r"^training diverged at epoch 1, step 3 of 4:"):
        dc.train_network(run, (train, test), model=model, epochs=2, seed=0, verbose=False)
    assert all(bool(p.isfinite().all()) for p in model.parameters())  # the NaN step not taken
    assert not (tmp_path / "a").exists()  # and no folder left behind


def test_nan_in_a_later_epoch_keeps_its_checkpoints_and_records_why(tmp_path):
    """An exploding learning rate from epoch 2 on: a finite loss growth warned at epoch 2, then an
    infinite loss in epoch 3; the checkpoints written so far stay, for a resume."""
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match=r"grew by orders of magnitude: .* in epoch 2 is"):
        with pytest.raises(TrainingDivergedError, match="at epoch 3, step 1 of "):
            _small_run(run, schedule=lambda t, T: 1.0 if t < 1 else 1e6)
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoint-00000.pt", "checkpoint-00001.pt", "checkpoint-00002.pt",
                     "stats.json"]  # fmt: skip
    doc = json.loads((run / "stats.json").read_text())
    assert [r["epoch"] for r in doc["rows"]] == [1, 2]
    assert [(w["epoch"], w["kind"]) for w in doc["warnings"]] == [(2, "loss_growth"),
                                                                  (3, "diverged")]  # fmt: skip
    assert doc["initial_loss"] == pytest.approx(math.log(10), rel=0.1)
    dc.load_checkpoint(run / "checkpoint-00002.pt")  # usable


def test_loss_growth_is_warned_recorded_and_shown(tmp_path, capsys):
    """Adam at lr=10 ends with a finite loss: a warning, not an error."""
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="grew by orders of magnitude") as record:
        res = dc.train_network(
            run, "digits", optimizer="Adam", optimizer_kwargs={"lr": 10.0}, epochs=3, seed=0,
            subsample=300,
        )  # fmt: skip
    assert len([w for w in record if "orders of magnitude" in str(w.message)]) == 1
    doc = json.loads((run / "stats.json").read_text())
    assert doc["warnings"] == res.warnings and len(doc["warnings"]) == 1
    first = doc["warnings"][0]
    assert first["kind"] == "loss_growth" and first["epoch"] == 1
    assert doc["rows"][0]["train_loss"] > LOSS_GROWTH_FACTOR * doc["initial_loss"]
    shown = " ".join(capsys.readouterr().out.split())
    assert "with Adam -> " in shown and "(WARNING: see below)" in shown
    assert "warning (epoch 1): the training loss grew by orders of magnitude" in shown
    # the checkpoints carry the warnings, so that a resumed run keeps them
    assert dc.read_checkpoint(run / "checkpoint-00003.pt")["warnings"] == doc["warnings"]


def test_a_healthy_run_has_no_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _small_run(tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert doc["warnings"] == [] == res.warnings
    assert doc["initial_loss"] == pytest.approx(math.log(10), rel=0.1)


def test_loss_growth_rule():
    assert loss_growth_warning(3, 229.0, 2.3) is None  # below 100 x
    text = loss_growth_warning(3, 231.0, 2.3, lr=0.5)
    assert "231 in epoch 3 is 100 times the initial loss 2.3" in text and "(lr=0.5)" in text
    assert loss_growth_warning(4, 500.0, 2.3, previous_loss=300.0) is None  # one per excursion
    assert loss_growth_warning(4, 500.0, 2.3, previous_loss=2.0) is not None
    assert loss_growth_warning(1, 1e9, None) is None and loss_growth_warning(1, 1e9, 0.0) is None


# ----------------------------------------------------------------------------- 3. resumes
@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "run"
    _small_run(run)
    return run


def test_resume_below_or_at_the_checkpoint_epoch_is_refused(three_epochs):
    before = _snapshot(three_epochs)
    last = three_epochs / "checkpoint-00003.pt"
    with pytest.raises(ValueError, match=r"is at epoch 3, epochs=2 is below it: give epochs > 3"):
        _small_run(three_epochs, resume=last, epochs=2)
    with pytest.raises(ValueError, match=r"already at epoch 3, .* nothing to train: give epochs >"):
        _small_run(three_epochs, resume=last, epochs=3)
    assert _snapshot(three_epochs) == before


def test_resume_from_an_earlier_checkpoint_into_its_folder_needs_overwrite(three_epochs, tmp_path):
    before = _snapshot(three_epochs)
    first = three_epochs / "checkpoint-00001.pt"
    with pytest.raises(ValueError) as info:
        _small_run(three_epochs, resume=first, epochs=5)
    text = str(info.value)
    assert "is not the latest checkpoint" in text
    assert "(later: checkpoint-00002.pt, checkpoint-00003.pt)" in text
    assert "resume from checkpoint-00003.pt, choose another dir, or pass overwrite=True" in text
    assert _snapshot(three_epochs) == before
    # into a new folder it branches off; into a folder holding another run it is refused
    res = _small_run(tmp_path / "branch", resume=first, epochs=4)
    assert [r["epoch"] for r in res.stats] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="already holds another training run"):
        _small_run(tmp_path / "branch", resume=first, epochs=5)
    assert _snapshot(three_epochs) == before


def test_resume_from_the_latest_checkpoint_continues_and_overwrite_allows_a_rewind(tmp_path):
    run = tmp_path / "run"
    _small_run(run)
    res = _small_run(run, resume=run / "checkpoint-00003.pt", epochs=4)
    assert [r["epoch"] for r in res.stats] == [1, 2, 3, 4]
    assert (run / "checkpoint-00004.pt").exists()
    res = _small_run(run, resume=run / "checkpoint-00002.pt", epochs=3, overwrite=True)
    assert [r["epoch"] for r in res.stats] == [1, 2, 3]


def test_resume_with_new_hyperparameters_uses_them_and_says_so(tmp_path):
    run = tmp_path / "run"
    _small_run(run, optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, schedule="constant")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint's own values: no warning
        same = _small_run(
            tmp_path / "same",
            resume=run / "checkpoint-00003.pt",
            epochs=4,
            optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
            schedule="constant",
        )
    assert same.stats[-1]["lr"] == 0.05
    with pytest.warns(RuntimeWarning, match=r"lr=0.01 \(checkpoint: 0.05\).*no longer matches"):
        res = _small_run(
            tmp_path / "new",
            resume=run / "checkpoint-00003.pt",
            epochs=4,
            optimizer_kwargs={"lr": 0.01, "momentum": 0.9},
            schedule="constant",
        )
    assert res.stats[-1]["lr"] == 0.01 and res.optimizer.param_groups[0]["lr"] == 0.01


def test_resume_with_another_optimizer_is_refused_up_front(three_epochs):
    before = _snapshot(three_epochs)
    last = three_epochs / "checkpoint-00003.pt"
    with pytest.raises(ValueError) as info:
        _small_run(three_epochs, resume=last, epochs=5, optimizer="KFAC")
    text = str(info.value)
    assert "was trained with 'SGD', not 'KFAC': resume with optimizer='SGD'" in text
    assert "momentum" not in text
    assert _snapshot(three_epochs) == before


# ----------------------------------------------------------------------------- 4. arguments
@pytest.mark.parametrize(
    ("optimizer", "kwargs", "message"),
    [
        ("SGD", {"lr": float("nan")}, r"lr=nan is not a finite number"),
        ("SGD", {"weight_decay": float("inf")}, r"weight_decay=inf is not a finite number"),
        ("SGD", {"momentum": float("nan")}, r"momentum=nan is not a finite number"),
        ("SGD", {"lr": -0.1}, r"lr must be positive, got -0.1"),
        ("SGD", {"lr": 0.0}, r"lr must be positive, got 0.0"),
        ("SGD", {"weight_decay": -1e-4}, r"weight_decay must be non-negative"),
        ("SGD", {"momentum": -0.5}, r"momentum must be non-negative"),
        ("Adam", {"betas": (float("nan"), 0.999)}, r"betas=\(nan, 0.999\) holds a non-finite"),
        ("KFAC", {"damping": float("inf")}, r"damping=inf is not a finite number"),
        ("KFAC", {"kl_clip": 0.0}, r"kl_clip must be positive"),
        (torch.optim.SGD, {"lr": float("inf")}, r"optimizer 'SGD': lr=inf is not a finite"),
    ],
)
def test_bad_hyperparameters_are_refused_before_any_folder(tmp_path, optimizer, kwargs, message):
    run = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match=message):
        dc.train_network(run, "digits", optimizer=optimizer, optimizer_kwargs=kwargs, epochs=1,
                         verbose=False, subsample=100)  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    if isinstance(optimizer, str):  # the registry refuses them too
        with pytest.raises(ValueError, match=message):
            dc.build_optimizer(optimizer, nn.Linear(3, 2), **kwargs)


def test_optimizer_errors_tell_given_arguments_from_defaults():
    with pytest.raises(ValueError) as info:
        dc.build_optimizer("Adam", nn.Linear(3, 2), betas=(1.5, 0.9))
    text = str(info.value)
    assert "beta" in text and "arguments given: {'betas': (1.5, 0.9)}" in text
    assert "defaults filled in: {'lr': 0.001}" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu9"}, r"^invalid device 'tpu9': use 'cpu', 'cuda' or 'cuda:1'$"),
        ({"model": "no-such-model"}, "no-such-model"),
        ({"dataset": "no-such-data"}, "no-such-data"),
        (
            {"schedule": "step", "schedule_kwargs": {"gamma": float("nan")}},
            r"^schedule_kwargs.gamma is not a finite number",
        ),
    ],
)
def test_bad_names_and_devices_leave_no_folder(tmp_path, kwargs, message):
    args = {"epochs": 1, "verbose": False, "subsample": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        dc.train_network(tmp_path / "x" / "y" / "run", **args)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 5. failed runs
_FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    import deepcurvature as dc
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        dc.train_network(sys.argv[1], "digits", epochs=2, seed=0, verbose=False, subsample=200)
    except OSError as exc:
        print(json.dumps({"errno": exc.errno}))
    """
)


@pytest.mark.parametrize("limit", [20_000, 80_000])  # fails at checkpoint-00000 / -00002
def test_a_full_disk_leaves_nothing_that_blocks_the_retry(tmp_path, limit):
    (tmp_path / "keep.txt").write_text("not ours")
    run = tmp_path / "a" / "b" / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(run), str(limit)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"errno": errno.EFBIG}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # no file, no folder
    res = dc.train_network(run, "digits", epochs=2, seed=0, verbose=False, subsample=200)
    assert [p.name for p in res.checkpoints] == ["checkpoint-00000.pt", "checkpoint-00002.pt"]


def test_a_failed_run_removes_only_the_files_it_created(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    x, y, test = _digits_tensors()
    x[0] = float("nan")
    train = DataLoader(TensorDataset(x, y), batch_size=64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 1 of 4"):
        dc.train_network(run, (train, test), model=model, epochs=2, verbose=False)
    assert _snapshot(run) == {"notes.txt": b"mine"}


def test_a_failed_resume_keeps_the_run_it_continues(tmp_path):
    run = tmp_path / "run"
    x, y, test = _digits_tensors()
    train = DataLoader(TensorDataset(x, y), batch_size=64)
    torch.manual_seed(0)
    dc.train_network(run, (train, test), model=_mlp(), epochs=2, seed=0, verbose=False)
    checkpoints = {k: v for k, v in _snapshot(run).items() if k.endswith(".pt")}
    x[70] = float("nan")
    bad = DataLoader(TensorDataset(x, y), batch_size=64)
    with pytest.raises(TrainingDivergedError, match="epoch 3, step 2 of 4"):
        dc.train_network(run, (bad, test), model=_mlp(), epochs=4, seed=0, verbose=False,
                         resume=run / "checkpoint-00002.pt")  # fmt: skip
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k.endswith(".pt")} == checkpoints
    doc = json.loads(after["stats.json"])
    assert [r["epoch"] for r in doc["rows"]] == [1, 2]
    assert [w["kind"] for w in doc["warnings"]] == ["diverged"]


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


_LONG_RUN = textwrap.dedent(
    """
    import sys
    import deepcurvature as dc
    dc.train_network(sys.argv[1], "digits", epochs=100000, seed=0, verbose=False, subsample=200)
    """
)


def test_an_interrupted_run_leaves_nothing_that_blocks_the_retry(tmp_path):
    run = tmp_path / "a" / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _LONG_RUN, str(run)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoint-00000.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.3)  # well into training: the next checkpoint is 100000 epochs away
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert list(tmp_path.iterdir()) == []
    res = dc.train_network(run, "digits", epochs=1, seed=0, verbose=False, subsample=200)
    assert res.final_checkpoint.name == "checkpoint-00001.pt"
