"""The real CLI, used as a careless or hostile user would (issue 11): results are never lost and
every failure is one line on stderr, with no traceback and no files left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import cli, trained_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("DEEPCURVATURE_DEBUG", None)


def run(*args, cwd, env=None):
    return cli(*args, cwd=cwd, env=env or ENV)


def snapshot(root):
    """Every file and folder under ``root`` with its bytes (folders map to None)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


def one_line_failure(proc, *fragments, status=None):
    """The command failed with exactly one line on stderr containing ``fragments``."""
    assert proc.returncode != 0, proc.stdout
    if status is not None:
        assert proc.returncode == status, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in fragments:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch MLP run with a saved spectrum (with Ritz vectors) at its last checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    trained, _, spectrum = trained_run(root, save_eigvec=True)
    return root, trained.final_checkpoint, spectrum


SPECTRUM = ("--steps", "4", "--subsample", "60", "--quiet")


# ------------------------------------------------------------------ 1. never lose a result
def test_default_folders_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    from deepcurvature.io.outputs import OutputFolder

    monkeypatch.chdir(tmp_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    later = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() + 1))
    (tmp_path / "runs" / f"spectrum-{stamp}").mkdir(parents=True)  # an earlier run's folder
    (tmp_path / "runs" / f"spectrum-{later}").mkdir()
    first = OutputFolder.claim(None, kind="spectrum", outputs=["spectrum.npz"])
    second = OutputFolder.claim(None, kind="spectrum", outputs=["spectrum.npz"])
    names = {first.path.name, second.path.name}
    assert len(names) == 2 and all(n.startswith("spectrum-") for n in names)
    assert not names & {f"spectrum-{stamp}", f"spectrum-{later}"}
    assert all(p.is_dir() for p in (first.path, second.path))


def test_output_folder_cleans_up_only_what_this_run_wrote(tmp_path):
    from deepcurvature.io.outputs import OutputExistsError, OutputFolder

    out = tmp_path / "a" / "b"
    outputs = ["result.npz", "train/checkpoint-*.pt", "train"]
    with pytest.raises(KeyboardInterrupt), OutputFolder.claim(out, kind="x", outputs=outputs):
        (out / "result.npz").write_bytes(b"partial")
        (out / ".result.npz.1234.tmp").write_bytes(b"temporary")
        (out / "train").mkdir()
        (out / "train" / "checkpoint-00001.pt").write_bytes(b"ckpt")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # the parents it made are gone too

    out.mkdir(parents=True)
    (out / "notes.txt").write_text("the user's")
    (out / "result.npz").write_bytes(b"an earlier result")
    with pytest.raises(OutputExistsError, match=r"result\.npz.*pass overwrite=True"):
        OutputFolder.claim(out, kind="x", outputs=outputs)
    folder = OutputFolder.claim(out, kind="x", outputs=outputs, overwrite=True)
    (out / "train").mkdir()
    (out / "train" / "checkpoint-00002.pt").write_bytes(b"new")
    folder.cleanup()  # an overwritten earlier result stays, this run's new files go
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "result.npz"]
    assert (out / "result.npz").read_bytes() == b"an earlier result"

    folder = OutputFolder.claim(out, kind="x", outputs=outputs, overwrite=True)
    assert folder.stale() == [out / "result.npz"]
    (out / "result.npz").write_bytes(b"rewritten")  # not an atomic rename: same inode
    os.utime(out / "result.npz", ns=(1, 1))
    assert folder.stale() == []  # the modification time changed
    assert folder.remove_stale() == []


def test_two_concurrent_runs_keep_both_results(run_dir, tmp_path):
    _, ckpt, _ = run_dir
    cmd = [sys.executable, "-m", "deepcurvature.cli.main", "spectrum", "--checkpoint", ckpt]
    procs = [
        subprocess.Popen([*cmd, *SPECTRUM, "--seed", str(s)], cwd=tmp_path, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for s in (1, 2)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    seeds = {json.loads((f / "spectrum.json").read_text())["config"]["seed"] for f in folders}
    assert seeds == {1, 2}
    for f in folders:
        assert {p.name for p in f.iterdir()} == {"spectrum.npz", "spectrum.json", "spectrum.png"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_removes_only_its_own_files(tmp_path, sig):
    other = tmp_path / "runs" / "spectrum-20000101-000000"  # another run's finished results
    other.mkdir(parents=True)
    (other / "spectrum.npz").write_bytes(b"earlier result")
    before = snapshot(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepcurvature.cli.main", "spectrum", "--train-epochs", "200",
         "--subsample", "200", "--quiet"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is training inside its own folder
        mine = [p for p in (tmp_path / "runs").iterdir() if p != other]
        if mine and list(mine[0].glob("train/checkpoint-*.pt")):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the run did not start training")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    one_line_failure(done, "interrupted", "partial files", status=143 if sig == 15 else 130)
    assert snapshot(tmp_path) == before  # its own folder is gone, the other run is untouched


def test_explicit_out_holding_results_is_refused_by_every_command(run_dir, tmp_path):
    root, ckpt, spectrum = run_dir
    out = tmp_path / "out"
    out.mkdir()
    for name in ("spectrum.npz", "loss_stats.json", "landscape.npz", "wigner.png"):
        (out / name).write_bytes(b"an earlier result")
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"an earlier figure")
    report = tmp_path / "report.html"
    report.write_bytes(b"an earlier report")
    before = snapshot(tmp_path)
    cases = [
        ("spectrum", "--checkpoint", ckpt, *SPECTRUM, "--out", out),
        ("stats", "--checkpoint", ckpt, "--probes", "1", "--quiet", "--out", out),
        ("landscape", "--spectrum", spectrum, "--n-points", "3", "--quiet", "--out", out),
        ("demo", "--sizes", "40", "--steps", "5", "--quiet", "--out", out),
        ("plot", f"{spectrum}.npz", "--out", figure),
        ("report", root, "--out", report),
        ("train", "--dir", root, "--epochs", "1", "--quiet"),
    ]
    for args in cases:
        proc = run(*args, cwd=tmp_path)
        line = one_line_failure(proc, "--overwrite", status=2)
        assert "overwrite=True" not in line
    assert snapshot(tmp_path) == before
    assert snapshot(root)  # the training run is still there


def test_overwrite_replaces_the_earlier_results_and_their_stale_files(tmp_path):
    out = tmp_path / "out"
    proc = run("spectrum", "--train-epochs", "2", "--subsample", "60", "--steps", "3",
               "--quiet", "--out", out, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    old = snapshot(out)
    assert "train/checkpoint-00002.pt" in old
    proc = run("spectrum", "--train-epochs", "1", "--subsample", "60", "--steps", "3",
               "--quiet", "--out", out, cwd=tmp_path)  # fmt: skip
    one_line_failure(proc, "already holds results", "--overwrite")
    assert snapshot(out) == old  # refused: the training run in out/train is untouched
    proc = run("spectrum", "--train-epochs", "1", "--subsample", "60", "--steps", "3",
               "--quiet", "--out", out, "--overwrite", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    new = snapshot(out)
    assert "train/checkpoint-00002.pt" not in new  # no stale checkpoint beside the new run
    assert {"train/checkpoint-00000.pt", "train/checkpoint-00001.pt"} <= set(new)
    rows = json.loads((out / "train" / "stats.json").read_text())["rows"]
    assert [r["epoch"] for r in rows] == [1]


def test_a_bad_argument_leaves_no_folder_behind_not_even_parents(run_dir, tmp_path):
    _, ckpt, _ = run_dir
    proc = run("spectrum", "--checkpoint", ckpt, *SPECTRUM, "--params", "nosuch.*",
               "--out", "a/b/c", cwd=tmp_path)  # fmt: skip
    one_line_failure(proc, "nosuch", status=2)
    assert list(tmp_path.iterdir()) == []
    proc = run("spectrum", "--checkpoint", ckpt, *SPECTRUM, "--params", "nosuch.*", cwd=tmp_path)
    one_line_failure(proc, "nosuch", status=2)
    assert list(tmp_path.iterdir()) == []  # no runs/ folder either


# ------------------------------------------------------------------ 2. one line per failure
@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04" + b"\x00" * 40, np.random.default_rng(0).bytes(4096)],
    ids=["empty", "truncated-zip", "random-bytes"],
)
def test_garbage_checkpoint_is_one_line_naming_the_file(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    for command in ("spectrum", "stats", "landscape"):
        proc = run(command, "--checkpoint", bad, "--quiet", "--out", "o", cwd=tmp_path)
        line = one_line_failure(proc, "bad.pt", status=2)
        assert "weights_only" not in line and "unsafe" not in line.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_hostile_pickle_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    bad = tmp_path / "hostile.pt"
    torch.save({"state_dict": {}, "x": Payload()}, bad)
    proc = run("spectrum", "--checkpoint", bad, "--quiet", cwd=tmp_path)
    line = one_line_failure(proc, "hostile.pt", status=2)
    assert "weights_only" not in line and "False" not in line
    assert not (tmp_path / "pwned").exists()


def test_truncated_result_file_to_plot_and_landscape(run_dir, tmp_path):
    _, _, spectrum = run_dir
    data = Path(f"{spectrum}.npz").read_bytes()
    bad = tmp_path / "spectrum.npz"
    bad.write_bytes(data[: len(data) // 2])
    (tmp_path / "spectrum.json").write_bytes(Path(f"{spectrum}.json").read_bytes())
    before = snapshot(tmp_path)
    line = one_line_failure(run("plot", bad, cwd=tmp_path), "spectrum.npz")
    assert "allow_pickle" not in line
    proc = run("landscape", "--spectrum", bad, "--quiet", "--out", "o", cwd=tmp_path)
    one_line_failure(proc, "spectrum.npz", status=2)
    assert snapshot(tmp_path) == before


def _mount_tmpfs(path, size):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small file system here (needs root): {proc.stderr.strip()}")


@pytest.fixture()
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, "48k")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_and_the_retry_works(small_disk, tmp_path):
    # a 48 KiB file system: the first checkpoint (about 40 KiB) and stats.json do not both fit
    run_path = small_disk / "run"
    proc = run("train", "--dir", run_path, "--epochs", "1", "--subsample", "100",
               "--model-kwargs", '{"hidden": [32]}', "--quiet", cwd=tmp_path)  # fmt: skip
    one_line_failure(proc, "disk is full", status=1)
    assert list(small_disk.iterdir()) == []  # nothing that blocks the retry
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    proc = run("train", "--dir", run_path, "--epochs", "1", "--subsample", "100",
               "--model-kwargs", '{"hidden": [32]}', "--quiet", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (run_path / "checkpoint-00001.pt").is_file()


def test_read_only_and_file_parent_outputs_are_one_line(run_dir, tmp_path):
    _, ckpt, spectrum = run_dir
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        proc = run("spectrum", "--checkpoint", ckpt, *SPECTRUM, "--out", ro / "x", cwd=tmp_path)
        one_line_failure(proc, "read-only", status=1)
        proc = run("plot", f"{spectrum}.npz", "--out", ro / "f.png", cwd=tmp_path)
        one_line_failure(proc, "read-only", status=1)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    (tmp_path / "afile").write_text("x")
    proc = run("spectrum", "--checkpoint", ckpt, *SPECTRUM, "--out", "afile/sub", cwd=tmp_path)
    one_line_failure(proc, "afile", "not a folder", status=2)
    proc = run("plot", f"{spectrum}.npz", "--out", "afile/f.png", cwd=tmp_path)
    one_line_failure(proc, "afile", "not a folder", status=2)


def test_nan_weights_and_bad_device_are_one_line(run_dir, tmp_path):
    _, ckpt, _ = run_dir
    data = torch.load(ckpt, weights_only=True)
    first = next(iter(data["state_dict"]))
    data["state_dict"][first][0, 0] = float("nan")
    nan_ckpt = tmp_path / "nan.pt"
    torch.save(data, nan_ckpt)
    proc = run("spectrum", "--checkpoint", nan_ckpt, *SPECTRUM, "--out", "o", cwd=tmp_path)
    one_line_failure(proc, "not finite", status=1)
    proc = run("spectrum", "--checkpoint", ckpt, *SPECTRUM, "--device", "tpu9", cwd=tmp_path)
    one_line_failure(proc, "tpu9", status=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--lr", "nan"], "--lr"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--swa-start", "3"], "--swa"),
        (["--device", "tpu9"], "tpu9"),
    ],
)
def test_bad_training_options_are_one_line_and_leave_no_folder(tmp_path, args, fragment):
    proc = run("train", "--epochs", "1", "--subsample", "60", "--quiet", *args, cwd=tmp_path)
    one_line_failure(proc, fragment, status=2)
    assert list(tmp_path.iterdir()) == []


def test_resume_with_another_optimizer_or_fewer_epochs_is_refused(tmp_path):
    run_path = tmp_path / "run"
    proc = run("train", "--dir", run_path, "--epochs", "3", "--save-freq", "1",
               "--subsample", "60", "--quiet", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    before = snapshot(run_path)
    last = run_path / "checkpoint-00003.pt"
    proc = run("train", "--resume", last, "--optimizer", "KFAC", "--epochs", "5", "--quiet",
               cwd=tmp_path)  # fmt: skip
    line = one_line_failure(proc, "SGD", "--optimizer", status=2)
    assert "momentum" not in line
    # Adam does not take the checkpoint's momentum: still named as the other optimizer
    proc = run("train", "--resume", last, "--optimizer", "Adam", "--epochs", "5", "--quiet",
               cwd=tmp_path)  # fmt: skip
    line = one_line_failure(proc, "trained with 'SGD', not 'Adam'", status=2)
    assert "momentum" not in line
    proc = run("train", "--resume", last, "--epochs", "2", "--quiet", cwd=tmp_path)
    one_line_failure(proc, "--epochs", status=2)
    proc = run("train", "--resume", run_path / "checkpoint-00001.pt", "--epochs", "5",
               "--quiet", cwd=tmp_path)  # fmt: skip
    one_line_failure(proc, "checkpoint-00003.pt", "--overwrite", status=2)
    assert snapshot(run_path) == before  # stats.json and every checkpoint untouched


def test_absurd_sizes_are_refused_up_front(run_dir, tmp_path):
    _, ckpt, spectrum = run_dir
    proc = run("spectrum", "--checkpoint", ckpt, "--probes", "100000000", "--steps", "100",
               "--quiet", cwd=tmp_path)  # fmt: skip
    one_line_failure(proc, "--probes", "memory", status=2)
    proc = run("stats", "--checkpoint", ckpt, "--probes", "1000000000", "--quiet", cwd=tmp_path)
    one_line_failure(proc, "--probes", "memory", status=2)
    proc = run("plot", f"{spectrum}.npz", "--dpi", "100000", "--out", "f.png", cwd=tmp_path)
    one_line_failure(proc, "--dpi", status=2)
    proc = run("landscape", "--spectrum", spectrum, "--n-points", "100000", cwd=tmp_path)
    one_line_failure(proc, "--n-points", status=2)
    assert list(tmp_path.iterdir()) == []


def test_steps_clamped_to_p_say_so_in_the_summary(run_dir, tmp_path):
    _, ckpt, _ = run_dir
    out = tmp_path / "o"
    proc = run("spectrum", "--checkpoint", ckpt, "--steps", "5000", "--subsample", "60",
               "--params", "net.3.bias", "--quiet", "--out", out, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "asked for 5000" in proc.stdout and "clamped to P" in proc.stdout
    summary = json.loads((out / "spectrum.json").read_text())["summary"]
    assert summary["steps"] == 10 and summary["steps_requested"] == 5000


def test_conflicting_options_are_refused_or_warned(run_dir, tmp_path):
    root, ckpt, spectrum = run_dir
    for command in ("spectrum", "stats"):
        proc = run(command, "--checkpoint", ckpt, "--train-epochs", "3", "--quiet", cwd=tmp_path)
        one_line_failure(proc, "--train-epochs", "--checkpoint", status=2)
    assert list(tmp_path.iterdir()) == []
    first = root / "checkpoint-00000.pt"  # the spectrum was computed at epoch 2
    proc = run("landscape", "--spectrum", spectrum, "--checkpoint", first, "--n-points", "3",
               "--directions", "largest", "--subsample", "60", "--quiet", "--out", "o",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "checkpoint-00002.pt" in proc.stderr


def test_paths_in_result_files_resolve_from_another_folder(run_dir, tmp_path):
    _, ckpt, _ = run_dir
    work = tmp_path / "work"
    work.mkdir()
    rel = os.path.relpath(ckpt, work)
    proc = run("spectrum", "--checkpoint", rel, *SPECTRUM, "--save-eigvec", "--out", "s",
               cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stored = json.loads((work / "s" / "spectrum.json").read_text())["config"]["checkpoint_path"]
    assert Path(stored).is_absolute() and Path(stored).samefile(ckpt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run("landscape", "--spectrum", work / "s", "--n-points", "3", "--directions",
               "largest", "--subsample", "60", "--quiet", "--out", "l", cwd=elsewhere)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    proc = run("spectrum", "--checkpoint", bad, "--debug", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("deepcurvature spectrum: error:")
    proc = run("spectrum", "--checkpoint", bad, cwd=tmp_path,
               env={**ENV, "DEEPCURVATURE_DEBUG": "1"})  # fmt: skip
    assert "Traceback" in proc.stderr


def test_unexpected_errors_are_one_line_internal_errors():
    from deepcurvature.cli.failures import exit_status, failure_line

    line = failure_line("spectrum", AttributeError("'NoneType' object has no attribute 'x'"))
    assert line.startswith("deepcurvature spectrum: error: internal error (AttributeError)")
    assert "--debug" in line and "\n" not in line
    assert exit_status(AttributeError()) == 1
    msg = failure_line("x", ValueError("a\nb\n\nc Re-running with weights_only=False will work."))
    assert msg == "deepcurvature x: error: a; b"
    err = OSError(28, os.strerror(28), "/some/file")
    assert failure_line("x", err).endswith("No space left on device (the disk is full: free "
                                           "some space or choose an output folder on another "
                                           "disk)")  # fmt: skip
    assert failure_line("train", ValueError("pass overwrite=True")).endswith("pass --overwrite")
    line = failure_line("train", ValueError("epochs must be positive; resume=<checkpoint>"))
    assert line.endswith("--epochs must be positive; --resume CHECKPOINT")
    line = failure_line("spectrum", ValueError("epochs must be positive, lanczos_iters=3"))
    assert line.endswith("--train-epochs must be positive, --steps 3")


class _FailingClose:
    """A writer whose clean-up fails when a block ends early (like a stream left half written)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if exc_info[0] is not None:
            raise RuntimeError("could not finish the file")


@pytest.mark.parametrize("stop, how, status", [("term", "SIGTERM", 143), ("int", "Ctrl-C", 130)])
def test_an_interrupt_that_surfaces_as_another_error_is_still_reported_as_one(stop, how, status):
    from deepcurvature.cli.failures import Terminated, exit_status, failure_line, interruption

    raised = Terminated() if stop == "term" else KeyboardInterrupt()
    with pytest.raises(RuntimeError) as info, _FailingClose():
        raise raised
    exc = info.value  # what the command sees: the clean-up's error, the interrupt its context
    assert interruption(exc) is raised
    assert exit_status(exc) == status
    # under torchrun a SIGTERM is how another rank's failure reaches this one, wrapped or not
    from deepcurvature.cli.launch import _is_consequence

    assert _is_consequence(exc) == (stop == "term")
    assert failure_line("spectrum", exc) == (
        f"deepcurvature spectrum: interrupted ({how}); partial files of this run removed"
    )
    raised.cli_note = "the Lanczos state after step 3 is in o: resume with --resume o"
    assert failure_line("spectrum", exc).endswith(f"({how}); {raised.cli_note}")
    alone = RuntimeError("could not finish the file")  # no interrupt behind it: a failed run
    assert interruption(alone) is None and exit_status(alone) == 1
    assert "error: could not finish the file" in failure_line("spectrum", alone)


# ------------------------------------------------------------------ 5. honest summaries
def test_spectrum_at_initialisation_with_zero_training_epochs(tmp_path):
    out = tmp_path / "o"
    proc = run("spectrum", "--train-epochs", "0", "--subsample", "60", "--steps", "3",
               "--quiet", "--out", out, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "spectrum.json").read_text())
    assert Path(meta["config"]["checkpoint_path"]).name == "checkpoint-00000.pt"
    assert [p.name for p in (out / "train").glob("checkpoint-*.pt")] == ["checkpoint-00000.pt"]
    again = tmp_path / "again"  # seeded: the same initial weights, the same spectrum
    proc = run("spectrum", "--train-epochs", "0", "--subsample", "60", "--steps", "3",
               "--quiet", "--out", again, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a = np.load(out / "spectrum.npz")["nodes"]
    b = np.load(again / "spectrum.npz")["nodes"]
    np.testing.assert_array_equal(a, b)


def test_damaged_files_through_the_python_api_are_one_line(run_dir, tmp_path):
    import deepcurvature as dc
    from deepcurvature.analysis.landscape import LandscapeResult
    from deepcurvature.plotting.spectrum import read_spectrum

    _, _, spectrum = run_dir
    data = Path(f"{spectrum}.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 3])
    for load in (read_spectrum, dc.SpectrumResult.load, LandscapeResult.load):
        with pytest.raises(ValueError, match=r"cut\.npz is not a valid") as info:
            load(cut)
        assert "\n" not in str(info.value) and "allow_pickle" not in str(info.value)
    np.savez(tmp_path / "other.npz", t=np.zeros(3))  # a landscape file without its arrays
    with pytest.raises(ValueError, match=r"other.npz is not a valid .* \(no 'eigenvalues' array"):
        LandscapeResult.load(tmp_path / "other.npz")
    bad = tmp_path / "stats.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="stats.json is not a valid stats.json file"):
        dc.StatsLog.load(bad)


def test_training_runs_store_their_data_path_absolute(tmp_path, monkeypatch):
    import deepcurvature as dc

    monkeypatch.chdir(tmp_path)
    res = dc.train_network("run", "digits", "data", epochs=0, subsample=50, verbose=False)
    stored = res.config["data_path"]
    assert Path(stored).is_absolute() and Path(stored) == tmp_path / "data"
    saved = dc.read_checkpoint(tmp_path / "run" / "checkpoint-00000.pt")["config"]
    assert saved["data_path"] == stored
