"""Damaged, foreign and hostile files on disk (issue 11): every loader answers with one line that
names the file, says what is wrong and what to do, and never passes on advice to load a file
unsafely; the run report survives odd folders; progress is plain text outside a terminal."""

import argparse
import errno
import json
import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import deepcurvature as dc
from deepcurvature import progress
from deepcurvature.cli.main import main
from deepcurvature.data.cifar import read_cifar
from deepcurvature.data.mnist import read_idx
from deepcurvature.io import load_npz_json, save_npz_json
from deepcurvature.io.errors import escape_surrogates, read_failure
from deepcurvature.plotting.landscape import plot_loss_landscape
from deepcurvature.progress import ProgressBar
from deepcurvature.report import plot_result, scan_run, write_report
from deepcurvature.report.html import _negative_mass_rows
from deepcurvature.training.checkpoint import (
    checkpoint_is_finite,
    load_checkpoint,
    nonfinite_weights,
    read_checkpoint,
    save_checkpoint,
)

#: Words of torch's and numpy's advice to load a file unsafely; none may reach a user.
UNSAFE = (
    "Re-running",
    "WeightsUnpickler",
    "weights_only` set to `False",
    "allow_pickle=",
    "unsafely",
    "pickle.load()",
    "add_safe_globals",
    "safe_globals",
    "\x1b[",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("DEEPCURVATURE_DEBUG", None)


def one_line(exc_info, path, *fragments):
    """The message is one line, names ``path``, holds ``fragments`` and no unsafe advice."""
    msg = str(exc_info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    for text in fragments:
        assert text in msg, msg
    for text in UNSAFE:
        assert text not in msg, msg
    return msg


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture()
def checkpoint(tmp_path):
    """A real checkpoint (model and SGD-with-momentum state) and its bytes."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(
        tmp_path / "checkpoint-00001.pt", model, opt, epoch=1, config={"model": "mlp"}
    )
    return path, path.read_bytes()


# ------------------------------------------------------------------ 1. garbage checkpoints
GARBAGE = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "cut-after-header": lambda good: good[:40],
    "random-bytes": lambda good: np.random.default_rng(0).bytes(3000),
    "text": lambda good: b"hello, this is not a checkpoint\n",
    "zeros": lambda good: b"\x00" * 512,
    "plain-pickle": lambda good: pickle.dumps({"state_dict": [1, 2, 3]}, protocol=4),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_checkpoint_is_one_clean_line(checkpoint, tmp_path, kind):
    _, good = checkpoint
    bad = tmp_path / f"{kind}.pt"
    bad.write_bytes(GARBAGE[kind](good))
    for load in (read_checkpoint, lambda p: load_checkpoint(p, _mlp())):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's warnings about the pickle are not shown
            with pytest.raises(ValueError) as info:
                load(bad)
        msg = one_line(
            info, bad, "is not a valid deepcurvature checkpoint", "(truncated or not a torch file)"
        )
        assert msg.startswith(f"{bad} is not a valid")
        assert "weights_only" not in msg  # the file is garbage: nothing about loading modes
        if kind == "empty":
            assert "the file is empty" in msg


def test_checkpoint_with_pickled_objects_is_refused_without_unsafe_advice(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"state_dict": _mlp().state_dict(), "x": Payload()}, hostile)
    with pytest.raises(ValueError) as info:
        load_checkpoint(hostile, _mlp())
    one_line(
        info,
        hostile,
        "is not a safe deepcurvature checkpoint",
        "pickled Python objects (posix.system)" if os.name == "posix" else "pickled",
        "only loads tensors, dicts, lists, numbers and strings",
        "dc.save_checkpoint",
    )
    assert not (tmp_path / "pwned").exists()

    objects = tmp_path / "namespace.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, objects)
    with pytest.raises(ValueError) as info:
        read_checkpoint(objects)
    one_line(info, objects, "(argparse.Namespace)")


def test_checkpoint_folder_missing_and_unreadable_files(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    with pytest.raises(ValueError) as info:
        read_checkpoint(tmp_path)
    one_line(info, tmp_path, "is a folder, not a checkpoint file", "checkpoint-00001.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        read_checkpoint(tmp_path / "missing.pt")

    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any file
        path.chmod(0)
        try:
            with pytest.raises(ValueError) as info:
                read_checkpoint(path)
            one_line(info, path, "permission denied")
        finally:
            path.chmod(0o644)

    real_open = pathlib.Path.open

    def refusing_open(self, *args, **kwargs):
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refusing_open)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, _mlp())
    one_line(info, path, "cannot be read (permission denied)", "fix its permissions")


def test_mutated_checkpoints_load_or_fail_with_one_line(checkpoint, tmp_path):
    _, good = checkpoint
    rng = np.random.default_rng(1)
    bad = tmp_path / "mutated.pt"
    failures = 0
    for i in range(60):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        elif i % 3 == 1:
            for _ in range(int(rng.integers(1, 12))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        else:
            start = int(rng.integers(len(data)))
            data[start : start + 48] = rng.bytes(48)
        bad.write_bytes(bytes(data))
        try:
            read_checkpoint(bad)
        except ValueError as exc:
            failures += 1
            msg = str(exc)
            assert "\n" not in msg and str(bad) in msg
            assert not any(text in msg for text in UNSAFE), msg
    assert failures > 30


def test_checkpoint_that_does_not_fit_is_one_line_and_nonfinite_weights_are_found(checkpoint):
    path, _ = checkpoint
    other = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, other)
    msg = one_line(
        info,
        path,
        "does not fit the given model",
        "made for model 'mlp'",
        "; shape mismatches (3): 0.weight: checkpoint (8, 4) vs model (5, 4)",
    )
    assert msg.count("; ") >= 1

    ckpt = read_checkpoint(path)
    assert checkpoint_is_finite(ckpt) and nonfinite_weights(ckpt) == []
    ckpt["state_dict"]["2.bias"][1] = float("nan")
    ckpt["state_dict"]["0.weight"][0, 0] = float("inf")
    assert not checkpoint_is_finite(ckpt)
    assert nonfinite_weights(ckpt) == ["0.weight", "2.bias"]


# ------------------------------------------------------------------ 2. garbage result files
@pytest.fixture()
def spectrum(tmp_path):
    """A real spectral density (Lanczos on a dense symmetric matrix) saved as .npz + .json."""
    A = torch.as_tensor(np.diag(np.linspace(-0.5, 3.0, 40)))
    density = dc.lanczos(A, 8, seed=0, verbose=False).density()
    npz = density.save(tmp_path / "good" / "spectrum")
    return Path(npz)


def _object_npz(path):
    np.savez(path, nodes=np.array([{"x": 1}, None], dtype=object), weights=np.ones(2))


def _zip_with_text(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("nodes", "1 2 3")  # a member that is not an .npy array


def _renamed_npy(path):
    with path.open("wb") as fh:
        np.save(fh, np.arange(3.0))


BAD_NPZ = {
    "empty": (lambda p, good: p.write_bytes(b""), "the file is empty"),
    "truncated": (lambda p, good: p.write_bytes(good[: len(good) // 2]), "BadZipFile"),
    "random-bytes": (
        lambda p, good: p.write_bytes(np.random.default_rng(2).bytes(900)),
        "not a zip archive of numpy arrays",
    ),
    "object-arrays": (lambda p, good: _object_npz(p), "pickled Python objects"),
    "npy-not-npz": (lambda p, good: _renamed_npy(p), "not a zip archive"),
    "zip-of-text": (lambda p, good: _zip_with_text(p), "is not a numpy array"),
}


@pytest.mark.parametrize("kind", sorted(BAD_NPZ))
def test_damaged_npz_is_one_clean_line(spectrum, tmp_path, kind):
    write, fragment = BAD_NPZ[kind]
    bad = tmp_path / "spectrum.npz"
    write(bad, spectrum.read_bytes())
    (tmp_path / "spectrum.json").write_bytes(spectrum.with_suffix(".json").read_bytes())
    for load in (load_npz_json, dc.SpectralDensity.load, lambda p: plot_result(p)):
        with pytest.raises(ValueError) as info:
            load(bad)
        msg = one_line(info, bad, "is not a valid deepcurvature result file", fragment)
        assert msg.startswith(str(bad))
    if kind == "object-arrays":
        assert "never unpickles" in msg


BAD_JSON = {
    "invalid-json": (b'{"kind": "SpectralDensity", ', "not valid JSON"),
    "invalid-utf8": (b'{"kind": "Spectral\xffDensity"}', "not UTF-8 text: byte 0xff"),
    "a-list": (b"[1, 2, 3]", "its JSON is a list, not an object"),
    "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(BAD_JSON))
def test_damaged_json_sidecar_is_one_clean_line(spectrum, tmp_path, kind):
    content, fragment = BAD_JSON[kind]
    npz = tmp_path / "spectrum.npz"
    npz.write_bytes(spectrum.read_bytes())
    sidecar = tmp_path / "spectrum.json"
    sidecar.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_npz_json(npz)
    one_line(info, sidecar, "is not a valid deepcurvature result file", fragment)
    if kind != "a-list":  # the plot command reads the sidecar first
        with pytest.raises(ValueError) as info:
            plot_result(npz)
        one_line(info, sidecar, fragment)


def _landscape(**changes):
    t = np.linspace(-0.5, 0.5, 5)
    fields = {
        "t": t,
        "labels": ["Ritz #0", "Ritz #1"],
        "kinds": ["eigen", "eigen"],
        "eigenvalues": np.array([2.0, 0.5]),
        "ritz_indices": np.array([1, 0]),
        "norms": np.ones(2),
        "slopes": np.zeros(2),
        "uhu": np.diag([2.0, 0.5]),
        "thetas": np.array([2.0, 0.5]),
        "train_loss": np.stack([1 + t**2, 1 + 0.25 * t**2]),
    }
    fields.update(changes)
    return dc.LandscapeResult(**fields)


def test_damaged_landscape_files_are_one_clean_line(tmp_path):
    good = Path(_landscape().save(tmp_path / "good"))
    assert plot_loss_landscape(good).axes

    def truncated(stem):
        stem.with_suffix(".npz").write_bytes(good.read_bytes()[:300])
        stem.with_suffix(".json").write_bytes(good.with_suffix(".json").read_bytes())

    cases = {
        "truncated": (truncated, "BadZipFile"),
        "shapes": (
            lambda stem: _landscape(train_loss=np.ones((3, 7))).save(stem),
            "train_loss has shape (3, 7), not (2, 5)",
        ),
        "missing-array": (
            lambda stem: save_npz_json(stem, {"t": np.ones(3)}, {"kind": "LandscapeResult"}),
            "no 'eigenvalues' array",
        ),
    }
    for name, (write, fragment) in cases.items():
        write(tmp_path / name)
        npz = tmp_path / f"{name}.npz"
        for plot in (plot_loss_landscape, plot_result):
            with pytest.raises(ValueError) as info:
                plot(npz)
            one_line(info, npz, "is not a valid deepcurvature result file", fragment)


def test_read_failure_keeps_the_diagnosis_and_drops_the_advice():
    torch_text = (
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the "
        "`weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` "
        "with `weights_only` set to `False` will likely succeed, but it can result in arbitrary "
        "code execution.\nPlease file an issue: WeightsUnpickler error: \n\nUnsupported operand 149"
        "\n\nCheck the documentation"
    )
    assert read_failure(pickle.UnpicklingError(torch_text)) == (
        "unreadable pickle data (Unsupported operand 149)",
        False,
    )
    numpy_text = (
        "This file contains pickled (object) data. If you trust the file you can load it "
        "unsafely using the `allow_pickle=` keyword argument or `pickle.load()`."
    )
    assert read_failure(ValueError(numpy_text)).objects
    assert read_failure(EOFError()) == ("EOFError", False)
    assert read_failure(IndexError("list index out of range")).reason == (
        "IndexError: list index out of range"
    )
    assert escape_surrogates("bad-\udcff.txt") == "bad-\\xff.txt"


# ------------------------------------------------------------------ 3. hostile pickles
# Protocol opcodes, written out by hand so that the pickles hold exactly what the test says.
MARK, TUPLE, TUPLE1, TUPLE3, TUPLE2 = b"(", b"t", b"\x85", b"\x87", b"\x86"
REDUCE, BUILD, NONE, FALSE, TRUE, STOP = b"R", b"b", b"N", b"\x89", b"\x88", b"."


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _bytes(data):
    return b"C" + bytes([len(data)]) + data


def _int(i):
    return b"K" + bytes([i])


def _put(i):
    return b"q" + bytes([i])


def _get(i):
    return b"h" + bytes([i])


def hostile_dtype_pickles(flags):
    """Pickles of a ``numpy.dtype('V8')`` whose BUILD state sets ``flags`` (63: every flag,
    "holds Python objects" among them), alone, before an array uses it, and after."""
    dtype = _global("numpy", "dtype") + _text("V8") + FALSE + TRUE + TUPLE3 + REDUCE
    state = MARK + _int(3) + _text("|") + NONE + NONE + NONE + _int(8) + _int(1)
    state += _int(flags) + TUPLE
    array = (
        _global("numpy.core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + _int(0)
        + TUPLE1
        + _bytes(b"b")
        + TUPLE3
        + REDUCE
    )
    array_state = (
        MARK + _int(1) + _int(1) + TUPLE1 + _get(0) + FALSE + _bytes(b"\x08" * 8) + TUPLE + BUILD
    )
    head = b"\x80\x03"
    return {
        "dtype": head + dtype + state + BUILD + STOP,
        "dtype-then-array": head + dtype + state + BUILD + _put(0) + array + array_state + STOP,
        "array-then-dtype": head
        + dtype
        + _put(0)
        + array
        + array_state
        + _get(0)
        + state
        + BUILD
        + TUPLE2
        + STOP,
    }


def test_crafted_dtype_pickle_really_sets_the_object_flag():
    d = pickle.loads(hostile_dtype_pickles(63)["dtype"])  # the plain unpickler: no array made
    assert isinstance(d, np.dtype) and d.hasobject and d.itemsize == 8


def test_dtype_whose_state_sets_the_object_flag_is_refused(tmp_path):
    """In a subprocess: a mistake would crash the interpreter (garbage pointers), not fail."""
    cases = {
        f"{name}-{flags}": data
        for flags in (63, 1)
        for name, data in hostile_dtype_pickles(flags).items()
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.pkl").write_bytes(data)
    script = textwrap.dedent(f"""
        import pathlib, deepcurvature as dc
        for path in sorted(pathlib.Path({str(tmp_path)!r}).glob("*.pkl")):
            try:
                dc.safe_load_pickle(path)
                print(path.stem, "LOADED")
            except dc.UnsafePickleError as exc:
                print(path.stem, "REFUSED", str(exc).replace(chr(10), " "))
        """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert sorted(lines) == sorted(cases)
    for name, outcome in lines.items():
        assert outcome.startswith("REFUSED"), (name, outcome)
        assert f"{name}.pkl" in outcome and "numpy dtype" in outcome


def test_restricted_unpickler_refuses_build_on_other_objects_and_bad_data(tmp_path):
    build_dict = b"\x80\x02}" + MARK + _text("a") + _int(1) + b"d" + BUILD + STOP
    with pytest.raises(dc.UnsafePickleError, match="set the state of a dict"):
        dc.safe_load_pickle(build_dict)
    ndarray_call = b"\x80\x02" + _global("numpy", "ndarray") + MARK + _int(4) + TUPLE + REDUCE
    with pytest.raises((dc.UnsafePickleError, ValueError)):
        dc.safe_load_pickle(ndarray_call + STOP)  # numpy.ndarray only names the array type
    structured = pickle.dumps(np.zeros(2, dtype=[("a", "f8"), ("b", "i4")]), protocol=2)
    with pytest.raises(dc.UnsafePickleError, match="structured numpy dtype"):
        dc.safe_load_pickle(structured)
    ok = dc.safe_load_pickle(pickle.dumps({"x": np.arange(6, dtype=np.uint8).reshape(2, 3)}, 2))
    np.testing.assert_array_equal(ok["x"], np.arange(6).reshape(2, 3))

    good = pickle.dumps({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [1, 2]}, 2)
    truncated = tmp_path / "data_batch_1"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError) as info:
        dc.safe_load_pickle(truncated)
    one_line(
        info,
        truncated,
        "is not a valid pickle file (the data ends too early)",
        "download the data set again",
    )


def _cifar_folder(root, batch_bytes):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(good)
    (folder / "data_batch_3").write_bytes(batch_bytes)
    (folder / "test_batch").write_bytes(good)
    return folder / "data_batch_3"


CIFAR_BAD = {
    "truncated": (
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, 2)[:-40],
        "is not a valid pickle file",
    ),
    "random-bytes": (np.random.default_rng(3).bytes(2000), "is not a valid pickle file"),
    "no-data": (pickle.dumps({b"labels": [0, 1]}, 2), "missing key 'data'"),
    "labels-none": (
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [None, 1]}, 2),
        "is not a CIFAR batch",
    ),
    "a-list": (pickle.dumps([1, 2], 2), "it holds a list"),
    "wrong-shape": (
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, 2),
        "must be a uint8 array of shape (N, 3072)",
    ),
}


@pytest.mark.parametrize("kind", sorted(CIFAR_BAD))
def test_malformed_cifar_batches_are_one_line_naming_the_file(tmp_path, kind):
    content, fragment = CIFAR_BAD[kind]
    bad = _cifar_folder(tmp_path, content)
    with pytest.raises(ValueError) as info:
        read_cifar(tmp_path, "cifar10", train=True)
    one_line(info, bad, fragment)


def test_malformed_mnist_files_are_one_line_naming_the_file(tmp_path):
    import gzip

    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 5) + bytes(range(5))
    assert read_idx(_write(tmp_path / "ok-idx1-ubyte", raw)).tolist() == [0, 1, 2, 3, 4]
    cases = {
        "cut.gz": (gzip.compress(raw)[:-6], "is not a valid gzip file"),
        "badcrc.gz": (gzip.compress(raw)[:-8] + b"\x00" * 8, "is not a valid gzip file"),
        "short": (raw[:-2], "truncated or corrupt"),
        "huge-header": (
            b"\x00\x00\x08\x04" + struct.pack(">IIII", *[2**32 - 1] * 4),
            "truncated or corrupt",
        ),
    }
    for name, (content, fragment) in cases.items():
        path = _write(tmp_path / name, content)
        with pytest.raises(ValueError) as info:
            read_idx(path)
        one_line(info, path, fragment)
    with pytest.raises(ValueError) as info:
        read_idx(tmp_path)
    one_line(info, tmp_path, "is a folder")


def _write(path, data):
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ 4. stats.json rows
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 2-epoch run folder (stats.json and checkpoints)."""
    root = tmp_path_factory.mktemp("run") / "run"
    dc.train_network(
        root,
        "digits",
        model="mlp",
        model_kwargs={"hidden": [8]},
        epochs=2,
        optimizer="SGD",
        optimizer_kwargs={"lr": 0.05},
        subsample=120,
        seed=0,
        verbose=False,
    )
    return root


def _stats_with_bad_rows(trained, folder):
    doc = json.loads((trained / "stats.json").read_text())
    good = doc["rows"]
    doc["rows"] = [
        {**good[0], "epoch": None},
        {k: v for k, v in good[1].items() if k != "epoch"},
        *good,
        {**good[-1], "epoch": "three"},
        "not a row",
    ]
    folder.mkdir()
    path = folder / "stats.json"
    path.write_text(json.dumps(doc))
    return path, [r["epoch"] for r in good]


def test_stats_rows_without_a_numeric_epoch_are_skipped_with_one_warning(trained, tmp_path):
    path, epochs = _stats_with_bad_rows(trained, tmp_path / "bad-rows")
    with pytest.warns(UserWarning, match=r"skipped 4 of \d+ rows without a numeric 'epoch'") as w:
        fig = dc.plot_training(path)
    assert len(w) == 1 and str(path) in str(w[0].message)
    train_line = fig.axes[0].get_lines()[0]
    assert list(train_line.get_xdata()) == epochs

    # the command line draws the figure too, warning once on stderr
    proc = subprocess.run(
        [sys.executable, "-m", "deepcurvature.cli.main", "plot", str(path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (path.parent / "training.png").read_bytes()[:4] == b"\x89PNG"
    warning_lines = [ln for ln in proc.stderr.splitlines() if "skipped" in ln]
    assert len(warning_lines) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[1, 2]", "not a training statistics file (it holds list)"),
        (b'{"format": "deepcurvature-stats", "rows": {"epoch": 1}}', "without a list of rows"),
        (b'{"rows": [{"epoch": null}, {"loss": 1}]}', "no row has a numeric 'epoch' entry"),
        (b'{"rows": [{"epoch": 1, "train_loss": 0.5}', "not valid JSON"),
        (b'{"rows": [{"epoch": 1, "note": "\xff"}]}', "not UTF-8 text"),
    ],
)
def test_stats_json_that_is_not_a_stats_object_is_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "stats.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        dc.plot_training(path)
    one_line(info, path, fragment)
    assert main(["plot", str(path)]) == 2  # (it may say it cannot tell what the file holds)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and err[0].startswith("deepcurvature plot: error")


# ------------------------------------------------------------------ 5. the run report
def test_report_survives_undecodable_names_and_damaged_files(trained, spectrum, tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    for name in ("stats.json", "checkpoint-00002.pt"):
        (root / name).write_bytes((trained / name).read_bytes())
    (root / "spectrum.npz").write_bytes(spectrum.read_bytes())
    (root / "spectrum.json").write_bytes(spectrum.with_suffix(".json").read_bytes())
    fd = os.open(os.fsencode(root) + b"/bad-\xff<b>.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 10)
    os.close(fd)
    sub = os.fsencode(root) + b"/sub-\xfe"
    os.mkdir(sub)
    (Path(os.fsdecode(sub)) / "notes.txt").write_text("hello")
    _object_npz(root / "objects.npz")  # a bare .npz that holds pickled objects
    (root / "cut.npz").write_bytes(spectrum.read_bytes()[:200])  # a spectrum cut short
    (root / "cut.json").write_bytes(spectrum.with_suffix(".json").read_bytes())
    (root / "broken.json").write_bytes(b'{"kind": ')
    os.symlink(root / "nowhere", root / "dangling.txt")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for name in ("objects.npz", "cut.npz", "broken.json"):
        assert (
            sum(f"could not plot {name}" in m or f"could not read {name}" in m for m in messages)
            == 1
        ), messages
    assert len(messages) == 3, "\n".join(messages)
    assert not any(text in m for m in messages for text in UNSAFE), messages

    text = out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert "bad-\\xff&lt;b&gt;.txt" in text and "<b>.txt" not in text
    assert "sub-\\xfe/notes.txt" in text
    assert "3 file(s) could not be shown" in text
    assert "objects.npz" in text and "pickled Python objects" in text
    assert "dangling.txt" in text
    assert text.count("data:image/png;base64,") >= 2  # the training curves and the spectrum

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepcurvature.cli.main",
            "report",
            str(root),
            "--out",
            str(tmp_path / "again.html"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "could not" in ln]) == 3


def test_scan_run_notes_unreadable_npz_files(spectrum, tmp_path):
    root = tmp_path / "scan"
    root.mkdir()
    (root / "a.npz").write_bytes(b"PK\x03\x04 cut")
    (root / "good.npz").write_bytes(spectrum.read_bytes())
    found = scan_run(root)
    assert [p.name for p in found.spectra] == ["good.npz"]
    assert list(found.unreadable) == [root / "a.npz"]
    assert "a.npz is not a valid deepcurvature result file" in found.unreadable[root / "a.npz"]


def test_report_shows_the_tolerance_of_the_negative_mass(tmp_path):
    nodes = np.array([-1e-9, -0.2, 0.5, 3.0])
    density = dc.SpectralDensity(nodes, np.full(4, 0.25), dim=4)
    computed = density.summary()
    new = {
        "negative_mass": 0.25,
        "negative_mass_tol": 3e-6,
        "negative_mass_rtol": 1e-6,
        "negative_mass_strict": 0.5,
        "psd_by_construction": False,
    }
    rows = _negative_mass_rows(computed, new)
    assert rows == {
        "negative mass (below −3e-06 = 1e-06·max|θ|)": 0.25,
        "negative mass (any θ < 0)": 0.5,
    }
    psd = _negative_mass_rows(computed, {**new, "negative_mass": 0.0, "psd_by_construction": True})
    assert psd["negative mass"] == "0 (PSD by construction)"
    old = {"negative_mass": 0.5}  # a file written before the tolerance was recorded
    rows = _negative_mass_rows(computed, old)
    if computed.get("negative_mass_tol") is None:
        assert rows == {"negative mass": 0.5}
    else:  # counted again from the nodes, with the tolerance it was counted below
        label = next(iter(rows))
        assert (
            label.startswith("negative mass (below −") and rows[label] == computed["negative_mass"]
        )

    # in a real report, from a spectrum file whose summary records the tolerance
    npz = Path(density.save(tmp_path / "spectrum"))
    meta = json.loads(npz.with_suffix(".json").read_text())
    meta["summary"].update(new)
    npz.with_suffix(".json").write_text(json.dumps(meta))
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "negative mass (below −3e-06 = 1e-06·max|θ|)" in text
    meta["summary"].update(psd_by_construction=True, negative_mass=0.0)
    npz.with_suffix(".json").write_text(json.dumps(meta))
    text = write_report(tmp_path, tmp_path / "psd.html").read_text(encoding="utf-8")
    assert "PSD by construction" in text


# ------------------------------------------------------------------ 6. progress in a log
PLAIN_LINE = re.compile(r"^[\w ()/-]+: \d+/\d+ steps(, [0-9.e+-]+ s/step)?(, .+)?$")


def _lanczos_stderr(verbose, interval):
    script = textwrap.dedent(f"""
        import numpy as np, torch, deepcurvature as dc
        A = torch.as_tensor(np.diag(np.linspace(-1.0, 2.0, 50)))
        dc.lanczos(A, 6, seed=0, verbose={verbose})
        """)
    env = {
        **ENV,
        "DEEPCURVATURE_PROGRESS_INTERVAL": str(interval),
        "TERM": "xterm-256color",
        "FORCE_COLOR": "1",
    }
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode()


def test_progress_outside_a_terminal_is_plain_lines():
    every_step = _lanczos_stderr(True, 0)
    assert "\r" not in every_step and "\x1b" not in every_step
    lines = every_step.splitlines()
    assert len(lines) >= 6, every_step
    assert all(PLAIN_LINE.match(line) for line in lines), lines
    assert lines[0].startswith("Lanczos: 1/6 steps") and "6/6 steps" in lines[-1]

    at_the_end = _lanczos_stderr(True, 60).splitlines()  # quicker than the interval
    assert len(at_the_end) == 1 and "6/6 steps" in at_the_end[0] and "s/step" in at_the_end[0]
    assert _lanczos_stderr(False, 0) == ""


def test_progress_bar_lines_in_time_and_nested_bars_stay_quiet(capsys, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    with ProgressBar(40, "epoch 1/5", interval=5.0) as bar:
        for step in range(40):
            clock[0] += 0.5
            with ProgressBar(3, "data pass", interval=5.0) as inner:  # 3 x 0.01 s: no line
                for _ in range(3):
                    clock[0] += 0.01
                    inner.advance()
            bar.advance()
            if step % 10 == 9:
                bar.set_info("loss 1.23  acc 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "epoch 1/5: 10/40 steps, 0.53 s/step"
    assert lines[1] == "epoch 1/5: 20/40 steps, 0.53 s/step, loss 1.23 acc 0.5"
    assert lines[-1] == "epoch 1/5: 40/40 steps, 0.53 s/step, loss 1.23 acc 0.5"
    assert len(lines) == 4 and not any("data pass" in line for line in lines)
    with ProgressBar(3, "quiet", verbose=False) as bar:
        bar.advance()
    assert capsys.readouterr().err == ""
