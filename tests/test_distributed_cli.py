"""The command line under ``torchrun`` (2 gloo processes on the CPU) against one process.

``python -m torch.distributed.run --nnodes 1 --nproc-per-node 2 -m deepcurvature ...`` on small
digits runs: the spectrum equals the single-process one, only rank 0 writes and prints, training
with DistributedDataParallel writes its checkpoints once and resumes, and a failure on one or all
ranks is one line per rank (naming it) and a non-zero exit, never a hang. Each launch is bounded
by a subprocess timeout and a process-group timeout.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcurvature.data.sharding import shard_indices
from deepcurvature.io.outputs import OutputFolder

TIMEOUT = 150  # seconds per launch (the machine is shared and loaded)
SMALL = ["--subsample", "120", "--train-epochs", "0", "--steps", "6", "--float64", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", DEEPCURVATURE_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    env.pop("DEEPCURVATURE_DEBUG", None)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**_env(), **(env or {})},
        timeout=TIMEOUT,
        check=False,
    )


def _torchrun(
    *args: str, cwd: Path, logs: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``torchrun --nnodes 1 --nproc-per-node 2 ARGS`` (``-m deepcurvature`` unless a script)."""
    for _ in range(3):  # another test may take the free port before torchrun binds it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
        cmd += ["--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
        cmd += ["--master-port", str(_free_port())]
        if logs is not None:  # every rank's stdout and stderr in its own file
            cmd += ["--log-dir", str(logs), "--redirects", "3"]
        if not args[0].endswith(".py"):
            cmd += ["-m", "deepcurvature"]
        out = _run([*cmd, *args], cwd, env)
        if "address already in use" not in (out.stderr + out.stdout).lower():
            break
    return out


def _rank_logs(logs: Path, rank: int) -> tuple[str, str]:
    (folder,) = logs.glob(f"*/attempt_0/{rank}")
    return (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("deepcurvature ")]


# ------------------------------------------------------------------------------------------------
# without torchrun


def test_python_m_deepcurvature_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "deepcurvature", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.startswith("deepcurvature ")


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (2, 3), (12, 4)])
def test_shards_cover_the_data_once_in_order(n, world):
    parts = [list(shard_indices(n, r, world)) for r in range(world)]
    assert [i for part in parts for i in part] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_followed_output_folder_never_writes_or_removes(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "spectrum.json").write_text("{}")
    folder = OutputFolder.follow(out, ["spectrum.*"])
    (out / "spectrum.npz").write_text("")  # rank 0 writes it
    folder.cleanup()
    assert folder.remove_stale() == []
    assert sorted(p.name for p in out.iterdir()) == ["spectrum.json", "spectrum.npz"]


def test_hooked_optimizers_are_refused_for_data_parallel_training():
    from deepcurvature.optim import build_optimizer
    from deepcurvature.training.data_parallel import check_optimizer_data_parallel

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    opt = build_optimizer("KFAC", net, lr=0.1)
    try:
        with pytest.raises(ValueError, match="one process"):
            check_optimizer_data_parallel(opt, "KFAC")
    finally:
        opt.remove_hooks()
    check_optimizer_data_parallel(torch.optim.SGD(net.parameters(), lr=0.1), "SGD")


# ------------------------------------------------------------------------------------------------
# under torchrun


def test_torchrun_spectrum_equals_one_process_and_only_rank0_writes(tmp_path):
    import deepcurvature as dc

    ckpt = dc.train_network(tmp_path / "ckpt", "digits", epochs=0, seed=0, verbose=False)
    single = dc.compute_eigenspectrum(
        "digits",
        model="mlp",
        checkpoint_path=ckpt.final_checkpoint,
        lanczos_iters=6,
        num_subsamples=120,
        subsample_seed=0,
        seed=0,
        dtype=torch.float64,
        device="cpu",
        verbose=False,
    )
    logs = tmp_path / "logs"
    args = ["--checkpoint", str(ckpt.final_checkpoint), "--subsample", "120", "--steps", "6"]
    multi = _torchrun("spectrum", *args, "--float64", cwd=tmp_path, logs=logs)
    assert multi.returncode == 0, multi.stderr + multi.stdout

    (out,) = (tmp_path / "runs").iterdir()  # one output folder, made by rank 0
    assert sorted(p.name for p in out.iterdir()) == [
        "spectrum.json",
        "spectrum.npz",
        "spectrum.png",
    ]
    got = np.load(out / "spectrum.npz")
    np.testing.assert_allclose(got["nodes"], single.density.nodes, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["weights"], single.density.weights, rtol=1e-9, atol=1e-12)
    summary = json.loads((out / "spectrum.json").read_text())["summary"]
    assert summary["N"] == 120 and summary["P"] == single.summary()["P"]

    out0, _ = _rank_logs(logs, 0)
    out1, err1 = _rank_logs(logs, 1)
    assert "lambda_max" in out0
    assert out1 == "" and err1 == ""  # rank 1 is quiet


def test_torchrun_train_writes_checkpoints_once_and_resumes(tmp_path):
    common = ["--subsample", "200", "--batch-size", "64", "--quiet", "--seed", "3"]
    first = _torchrun("train", "--epochs", "1", "--dir", "run", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-00000.pt",
        "checkpoint-00001.pt",
        "stats.json",
    ]
    assert first.stdout.count("wrote 2 checkpoint(s)") == 1  # rank 0 only
    ckpt = torch.load(run / "checkpoint-00001.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # unwrapped

    resumed = _torchrun(
        "train", "--epochs", "2", "--resume", str(run / "checkpoint-00001.pt"), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert (run / "checkpoint-00002.pt").is_file()
    stats = json.loads((run / "stats.json").read_text())
    assert [r["epoch"] for r in stats["rows"]] == [1, 2]
    assert stats["config"]["data_parallel"]["world_size"] == 2
    assert all(r["test_accuracy"] is not None for r in stats["rows"])
    assert not list(run.glob(".*.tmp"))


SCRIPT = """
import os, sys
import deepcurvature.suite.eigenspectrum as es

if os.environ.get("RANK") == "1":
    def broken(*args, **kwargs):
        raise FileNotFoundError("no data set files at /nowhere (only on this rank)")
    es.evaluation_data = broken

from deepcurvature.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failing_rank_stops_every_rank_with_one_line_naming_it(tmp_path):
    script = tmp_path / "fail_on_rank1.py"
    script.write_text(SCRIPT)
    logs = tmp_path / "logs"  # the brief training (0 epochs) passes, the spectrum's data fails
    res = _torchrun(str(script), "spectrum", "--out", "out", *SMALL, cwd=tmp_path, logs=logs)
    assert res.returncode != 0
    _, err0 = _rank_logs(logs, 0)
    _, err1 = _rank_logs(logs, 1)
    assert _errors(err1) == [
        "deepcurvature spectrum: error: rank 1 of 2: no data set files at /nowhere (only on this "
        "rank)"
    ]
    assert _errors(err0) == [
        "deepcurvature spectrum: error: rank 0 of 2 stopped: rank 1 failed: no data set files at "
        "/nowhere (only on this rank)"
    ]
    assert "Traceback" not in err0 + err1
    assert not (tmp_path / "out").exists()  # rank 0 removed the folder it made


def test_a_missing_data_set_is_one_line_on_every_rank(tmp_path):
    logs = tmp_path / "logs"
    res = _torchrun(
        "spectrum", "--dataset", "mnist", "--data-path", str(tmp_path / "missing"), *SMALL,
        cwd=tmp_path, logs=logs,
    )  # fmt: skip
    assert res.returncode != 0
    for rank in (0, 1):
        _, err = _rank_logs(logs, rank)
        (line,) = _errors(err)
        assert line.startswith(f"deepcurvature spectrum: error: rank {rank} of 2")
        assert "mnist" in line.lower() and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


HANG = """
import os, sys, time
import deepcurvature.suite.eigenspectrum as es

if os.environ.get("RANK") == "1":
    def stuck(*args, **kwargs):
        time.sleep(120)  # never reaches the products: rank 0's collectives time out
    es.evaluation_data = stuck

from deepcurvature.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_timed_out_collective_ends_the_rank_with_its_one_line_and_status(tmp_path):
    """Rank 1 never joins: rank 0's collective times out (the 5 s group timeout). Its group is
    then broken, and tearing it down could abort the process (SIGABRT, "terminate called ...")
    after the line: the rank leaves with exactly its one line and exit status 1."""
    script = tmp_path / "hang_on_rank1.py"
    script.write_text(HANG)
    logs = tmp_path / "logs"
    env = {"DEEPCURVATURE_DIST_TIMEOUT": "5"}
    res = _torchrun(str(script), "spectrum", "--out", "out", *SMALL, cwd=tmp_path, logs=logs,
                    env=env)  # fmt: skip
    assert res.returncode != 0
    _, err0 = _rank_logs(logs, 0)
    _, err1 = _rank_logs(logs, 1)
    lines = [line for line in err0.splitlines() if line.strip()]  # no C++ warnings either
    assert len(lines) == 1, err0
    assert lines[0].startswith("deepcurvature spectrum: error: rank 0 of 2: rank 0 timed out")
    status = re.search(r"rank\s*:\s*0 \(local_rank: 0\)\s*exitcode\s*:\s*(-?\d+)", res.stderr)
    assert status is not None and status.group(1) == "1", res.stderr  # not -6 (SIGABRT)
    assert [line for line in err1.splitlines() if line.strip()] == [
        "deepcurvature spectrum: rank 1 of 2: interrupted (SIGTERM); partial files of this run "
        "removed"
    ]  # torchrun stopped the stuck rank
    assert not (tmp_path / "out").exists()
