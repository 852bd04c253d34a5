"""Atomic writes: a failure leaves the old file (or none), never a partial one."""

import pytest

from deepcurvature.io import atomic_write, atomic_write_text, load_npz_json, save_npz_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_write(target, "w") as fh:
        fh.write("half written")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_npz_json_roundtrip(tmp_path):
    import numpy as np

    save_npz_json(tmp_path / "r", {"a": np.arange(3)}, {"k": np.float64(1.5), "p": tmp_path})
    arrays, meta = load_npz_json(tmp_path / "r.json")
    assert arrays["a"].tolist() == [0, 1, 2]
    assert meta["k"] == 1.5 and meta["p"] == str(tmp_path)


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
