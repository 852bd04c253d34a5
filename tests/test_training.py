"""train_network, schedules, checkpoints, statistics, SWA/Gadam averaging and exact resumes."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepcurvature as dc


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _digits_sets(n_train=320, n_test=120):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    train = TensorDataset(x[:n_train], y[:n_train])
    test = TensorDataset(x[-n_test:], y[-n_test:])
    return train, test


def _loaders(batch_size=64, generator_seed=None):
    train, test = _digits_sets()
    gen = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(test, batch_size=100),
    )


def _mlp(dropout=0.0, bn=False):
    layers = [nn.Flatten(), nn.Linear(64, 32)]
    if bn:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10)]
    return nn.Sequential(*layers)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def _state(path):
    return torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- schedules
def test_linear_schedule_matches_equation_11_at_its_breakpoints():
    T, r = 300, 0.01
    sched = dc.get_schedule("linear", T, r=r)
    assert sched(0) == 1.0
    assert sched(0.5 * T) == 1.0
    assert sched(0.7 * T) == pytest.approx(1 - (1 - r) * 0.2 / 0.4)  # 0.505
    assert sched(0.9 * T) == pytest.approx(r)
    assert sched(T) == pytest.approx(r)
    assert sched(0.5 * T + 1e-9) == pytest.approx(1.0)  # continuous at both ends of the decay
    assert sched(0.9 * T + 1e-9) == pytest.approx(r)
    assert dc.get_schedule("LINEAR", 10)(9.5) == pytest.approx(0.01)  # default r
    assert dc.linear_schedule(210, 300, r=0.1) == pytest.approx(1 - 0.9 * 0.5)


def test_other_schedules_at_their_breakpoints():
    step = dc.get_schedule("step", 100, milestones=[30, 60], gamma=0.5)
    assert [step(t) for t in (0, 29.9, 30, 59, 60, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    default_step = dc.get_schedule("step", 100)
    assert [default_step(t) for t in (49, 50, 75)] == pytest.approx([1, 0.1, 0.01])
    cos = dc.get_schedule("cosine", 100, r=0.2)
    assert cos(0) == 1.0 and cos(100) == pytest.approx(0.2) and cos(50) == pytest.approx(0.6)
    assert dc.get_schedule("constant", 10)(7) == 1.0
    custom = dc.get_schedule(lambda t, T: 1 - t / T, 10)
    assert custom(5) == 0.5 and custom.config()["name"] == "custom"
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        dc.get_schedule("nope", 10)
    with pytest.raises(ValueError, match=r"does not take \['gamma'\]"):
        dc.get_schedule("linear", 10, gamma=0.1)
    with pytest.raises(ValueError, match="positive"):
        dc.get_schedule("linear", 0)


def test_learning_rates_follow_the_schedule_per_epoch_and_per_iteration():
    res = dc.train_network(
        None, _loaders(), model=_mlp(), epochs=10, seed=0, verbose=False,
        optimizer_kwargs={"lr": 0.1}, eval_freq=10,
    )  # fmt: skip
    lrs = res.column("lr")
    expected = [0.1 * dc.linear_schedule(e, 10) for e in range(10)]
    assert lrs == pytest.approx(expected)
    assert res.column("test_loss")[:9] == [None] * 9 and res.stats[-1]["test_loss"] is not None
    res = dc.train_network(
        None, _loaders(), model=_mlp(), epochs=2, seed=0, verbose=False,
        optimizer_kwargs={"lr": 0.1}, schedule="cosine", schedule_unit="iteration",
    )  # fmt: skip
    n = 2 * 5  # 320 samples / 64 per batch = 5 batches per epoch
    assert res.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * dc.cosine_schedule(n - 1, n))


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("SGD", {"lr": 0.05, "momentum": 0.9}),
        ("Adam", {"lr": 3e-3}),
        ("AdamW", {"lr": 3e-3}),
        ("KFAC", {"lr": 0.05, "damping": 0.03}),
        ("SWATS", {"lr": 3e-3}),
        ("Gadam", {"lr": 3e-3}),
        ("GadamW", {"lr": 3e-3}),
    ],
)
def test_each_optimizer_reduces_the_training_loss(name, kwargs):
    torch.manual_seed(0)
    model = _cnn() if name == "KFAC" else _mlp()
    res = dc.train_network(
        None, _loaders(), model=model, optimizer=name, optimizer_kwargs=kwargs, epochs=4,
        schedule="constant", seed=0, verbose=False, eval_freq=4,
    )  # fmt: skip
    losses = res.column("train_loss")
    assert losses[-1] < 0.75 * losses[0], losses
    assert res.stats[-1]["test_accuracy"] > 0.3  # chance: 0.1


def test_run_folder_checkpoints_and_stats(tmp_path):
    run = tmp_path / "run"
    res = dc.train_network(
        run, _loaders(), model=_mlp(), epochs=4, save_freq=3, seed=1, verbose=False,
        eval_freq=2,
    )  # fmt: skip
    names = sorted(p.name for p in run.iterdir())
    assert names == [
        "checkpoint-00000.pt", "checkpoint-00003.pt", "checkpoint-00004.pt", "stats.json",
    ]  # fmt: skip
    assert [p.name for p in res.checkpoints] == names[:3]
    ckpt = torch.load(run / "checkpoint-00004.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["config"]["optimizer"] == "SGD"
    assert ckpt["config"]["seed"] == 1 and ckpt["config"]["in_channels"] == 1
    json.dumps(ckpt["config"])  # JSON-serialisable
    for k, v in res.model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)
    doc = json.loads((run / "stats.json").read_text())
    rows = doc["rows"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["test_loss"] is None and rows[1]["test_loss"] is not None
    for col in ("train_loss", "train_accuracy", "lr", "time", "weight_l2", "weight_linf"):
        assert all(isinstance(r[col], float) for r in rows), col
    last = rows[-1]
    assert 0 <= last["test_accuracy"] <= last["test_top5_accuracy"] <= 1
    flat = torch.cat([p.detach().reshape(-1) for p in res.model.parameters()])
    assert last["weight_l2"] == pytest.approx(flat.norm().item(), rel=1e-6)
    assert last["weight_linf"] == pytest.approx(flat.abs().max().item(), rel=1e-6)
    ev = dc.evaluate(res.model, _loaders()[1], nn.CrossEntropyLoss())
    assert last["test_loss"] == pytest.approx(ev["loss"], rel=1e-6)
    # a second run into the same folder is refused without resume/overwrite
    with pytest.raises(ValueError, match="already holds a training run"):
        dc.train_network(run, _loaders(), model=_mlp(), epochs=1, verbose=False)


def test_stats_file_is_valid_after_every_epoch(tmp_path):
    seen = []
    base = nn.CrossEntropyLoss()

    def loss_fn(out, y):  # reads stats.json while training runs
        path = tmp_path / "stats.json"
        if path.exists():
            seen.append(len(json.loads(path.read_text())["rows"]))
        return base(out, y)

    dc.train_network(
        tmp_path, _loaders(), model=_mlp(), epochs=3, seed=0, verbose=False, loss_fn=loss_fn
    )
    assert sorted(set(seen)) == [0, 1, 2]  # written at the start, then one more row per epoch
    assert len(json.loads((tmp_path / "stats.json").read_text())["rows"]) == 3
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """Dropout, shuffling with the loader's own generator and SWA all consume randomness:
    resuming from epoch 2 must still give identical losses and weights."""

    def run(dir, resume=None):
        torch.manual_seed(123)  # a different model init: the checkpoint must override it
        return dc.train_network(
            dir, _loaders(generator_seed=5), model=_mlp(dropout=0.2, bn=True), epochs=4,
            save_freq=2, seed=3, verbose=False, resume=resume, swa=True, swa_start=1,
        )  # fmt: skip

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=tmp_path / "full" / "checkpoint-00002.pt")
    assert [r["epoch"] for r in resumed.stats] == [1, 2, 3, 4]
    for key in ("train_loss", "test_loss", "swa_test_loss", "weight_l2"):
        assert resumed.column(key) == full.column(key), key
    for a, b in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for a, b in zip(
        full.swa_model.state_dict().values(), resumed.swa_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_swa_average_is_the_mean_of_the_snapshots(tmp_path):
    res = dc.train_network(
        tmp_path, _loaders(), model=_mlp(bn=True), epochs=5, save_freq=1, seed=0,
        verbose=False, swa=True, swa_start=1, swa_c_epochs=2, swa_lr=0.01,
    )  # fmt: skip
    assert int(res.swa_model.n_averaged) == 3  # after epochs 1, 3, 5
    snaps = [_state(tmp_path / f"checkpoint-{e:05d}.pt")["state_dict"] for e in (1, 3, 5)]
    avg = dc.load_checkpoint(tmp_path / "checkpoint-00005.pt", _mlp(bn=True), weights="swa")
    swa_state = avg["swa_state"]
    for name, _ in res.model.named_parameters():
        mean = torch.stack([s[name] for s in snaps]).mean(0)
        torch.testing.assert_close(swa_state["module." + name], mean, rtol=1e-6, atol=1e-7)
    assert res.column("lr")[1:] == [0.01] * 4
    assert res.stats[-1]["swa_test_accuracy"] is not None
    assert res.column("swa_n_averaged") == [1, 1, 2, 2, 3]
    # batch-norm statistics of the averaged model were recomputed (differ from the iterate's)
    bn_key = "module.2.running_mean"
    assert not torch.equal(swa_state[bn_key], snaps[-1]["2.running_mean"])


def test_gadam_average_in_training_and_checkpoints(tmp_path):
    res = dc.train_network(
        tmp_path, _loaders(), model=_mlp(), optimizer="Gadam", epochs=3, seed=0,
        optimizer_kwargs={"lr": 3e-3, "average_start_epoch": 1}, verbose=False,
        schedule="constant",
    )  # fmt: skip
    assert res.column("n_averaged") == [0, 5, 10]
    assert res.stats[0].get("avg_test_loss") is None and res.stats[-1]["avg_test_loss"] > 0
    model = _mlp()
    dc.load_checkpoint(res.final_checkpoint, model, weights="average")
    with res.optimizer.averaged():
        for a, b in zip(model.parameters(), res.model.parameters(), strict=True):
            assert torch.equal(a, b)
        ev = dc.evaluate(res.model, _loaders()[1], nn.CrossEntropyLoss())
    assert res.stats[-1]["avg_test_loss"] == pytest.approx(ev["loss"], rel=1e-6)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_mismatch_error(tmp_path):
    model = _mlp()
    opt = dc.build_optimizer("SGD", model)
    path = dc.save_checkpoint(
        dc.checkpoint_path(tmp_path, 7), model, opt, epoch=7,
        config={"model": "mlp", "model_kwargs": {"hidden": [32]}, "num_classes": 10},
    )  # fmt: skip
    assert path.name == "checkpoint-00007.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 7 and raw["format"] == "deepcurvature-checkpoint"
    other = _mlp()
    dc.load_checkpoint(path, other, dc.build_optimizer("SGD", other))
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    wrong.add_module("extra", nn.Linear(2, 2))
    with pytest.raises(ValueError) as info:
        dc.load_checkpoint(path, wrong)
    msg = str(info.value)
    assert "made for model 'mlp'" in msg and "hidden" in msg
    assert "missing keys (4): 3.weight, 3.bias, extra.weight, extra.bias" in msg
    assert "unexpected keys (2): 4.weight, 4.bias" in msg
    assert "1.weight: checkpoint (32, 64) vs model (16, 64)" in msg
    with pytest.raises(FileNotFoundError):
        dc.load_checkpoint(tmp_path / "nope.pt", model)
    with pytest.raises(ValueError, match="no SWA weights"):
        dc.load_checkpoint(path, model, weights="swa")
    # a bare state dict is accepted; pickled objects are refused
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    dc.load_checkpoint(tmp_path / "bare.pt", _mlp())
    torch.save({"state_dict": model.state_dict(), "obj": nn.Linear(1, 1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="weights_only"):
        dc.load_checkpoint(tmp_path / "bad.pt", model)
    assert dc.list_checkpoints(tmp_path) == [path]


def test_rng_state_round_trip():
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(9)
    state = dc.get_rng_state([gen])
    state = torch.load(_bytes(state), weights_only=True)
    a = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))  # noqa: NPY002
    dc.set_rng_state(state, [gen])
    b = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert torch.equal(a[3], b[3])


def _bytes(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_zero_epochs_writes_the_seeded_initial_weights_only(tmp_path):
    res = dc.train_network(tmp_path / "run", _loaders(), model=_mlp(), epochs=0, seed=3,
                           verbose=False)  # fmt: skip
    assert [p.name for p in res.checkpoints] == ["checkpoint-00000.pt"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint-00000.pt",
        "stats.json",
    ]
    assert res.stats == []
    saved = dc.load_checkpoint(res.final_checkpoint)["state_dict"]
    for k, v in res.model.state_dict().items():  # untouched: no step was taken
        assert torch.equal(saved[k], v.cpu()), k


# ----------------------------------------------------------------------------- bad input
def test_bad_arguments_fail_before_writing(tmp_path):
    run = tmp_path / "run"
    cases = [
        ({"epochs": -1}, "epochs must be 0 or a positive integer"),
        ({"optimizer": "nope"}, "unknown optimizer"),
        ({"optimizer_kwargs": {"betas": 1}}, "does not take"),
        ({"schedule": "nope"}, "unknown schedule"),
        ({"swa": True, "swa_start": 9, "epochs": 3}, "swa_start"),
        ({"dataset": [1, 2, 3]}, r"\(train, test\) pair"),
        ({"device": "foo"}, "invalid device"),
        ({"schedule_kwargs": {"r": 2.0}}, "r must be in"),
    ]
    for kwargs, match in cases:
        args = {"dataset": _loaders(), "model": _mlp(), "verbose": False, **kwargs}
        with pytest.raises(ValueError, match=match):
            dc.train_network(run, **args)
        assert not run.exists(), kwargs


def test_divergence_is_reported(tmp_path):
    model = _mlp()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="diverged"):
        dc.train_network(None, _loaders(), model=model, epochs=2, verbose=False)


def test_registry_names_model_and_dataset(tmp_path):
    res = dc.train_network(
        tmp_path, "digits", model="cnn", optimizer="KFAC", epochs=2, seed=0, verbose=False,
        subsample=256, optimizer_kwargs={"lr": 0.05, "damping": 0.03},
    )  # fmt: skip
    cfg = res.config
    assert (cfg["model"], cfg["dataset"], cfg["num_classes"], cfg["in_channels"]) == (
        "cnn", "digits", 10, 1,
    )  # fmt: skip
    assert cfg["input_size"] == [8, 8] and cfg["optimizer"] == "KFAC"
    losses = res.column("train_loss")
    assert losses[1] < losses[0]
    assert not any(m._forward_hooks for m in res.model.modules())  # K-FAC hooks removed
    # the checkpoint rebuilds from its recorded config, and refuses a different model
    model = dc.get_model(
        cfg["model"], num_classes=cfg["num_classes"], in_channels=cfg["in_channels"],
        input_size=tuple(cfg["input_size"]),
    )  # fmt: skip
    dc.load_checkpoint(res.final_checkpoint, model)
    with pytest.raises(ValueError, match="made for model 'cnn'"):
        dc.load_checkpoint(
            res.final_checkpoint, dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8)
        )


@pytest.mark.parametrize("chunk", [2**22, 7, 1000])
def test_weight_norms_match_a_float64_reference(monkeypatch, chunk):
    from deepcurvature.training import stats

    monkeypatch.setattr(stats, "_NORM_CHUNK", chunk)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 3).double(), nn.LayerNorm(3).double())
    with torch.no_grad():
        model[0].weight[3, 4] = -9.5  # the L-inf entry, negative
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    l2, linf = stats.weight_norms(model)
    assert l2 == pytest.approx(float(flat.norm()), rel=1e-14)
    assert linf == 9.5
    assert stats.weight_norms(nn.ReLU()) == (0.0, 0.0)
