"""Resumable Lanczos runs: a checkpoint continues BIT-IDENTICALLY, and only for the same run.

In the API, a run is stopped by a real ``KeyboardInterrupt`` raised from inside a product (by a
wrapper operator around a real Hessian, which is what a Ctrl-C during a data pass does); on the
command line, real ``deepcurvature spectrum`` processes are killed with SIGKILL, SIGINT and
SIGTERM and resumed with ``--resume DIR``.
"""

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
from torch import nn

import deepcurvature as dc
from _helpers import cli
from deepcurvature.linalg.operator import LinearOperator


class Interrupting(LinearOperator):
    """A real operator's products, with a Ctrl-C (KeyboardInterrupt) at product ``after``."""

    def __init__(self, inner, after=None):
        super().__init__(inner.shape, inner.dtype, inner.device, symmetric=True)
        self.inner, self.after, self.calls = inner, after, 0

    @property
    def metadata(self):
        return self.inner.metadata

    @property
    def num_samples(self):
        return self.inner.num_samples

    def parameters_vector(self):
        return self.inner.parameters_vector()

    def _matmat(self, V):
        self.calls += 1
        if self.after is not None and self.calls == self.after:
            raise KeyboardInterrupt
        return self.inner.matmat(V)


def small_problem(dtype=torch.float64, n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    data = [(X[i : i + 20].to(dtype), y[i : i + 20]) for i in range(0, n, 20)]
    return net, data


def interrupted_then_resumed(op, state, *, stop_at, **kw):
    with pytest.raises(KeyboardInterrupt):
        dc.lanczos(Interrupting(op, after=stop_at), checkpoint=state, verbose=False, **kw)
    assert state.is_file()
    return dc.lanczos(Interrupting(op), checkpoint=state, verbose=False, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("basis", "probes"), [("memory", 1), ("memory", 3), ("disk", 2)])
def test_resumed_run_is_bit_identical(dtype, basis, probes, tmp_path):
    net, data = small_problem(dtype)
    H = dc.hessian(net, nn.CrossEntropyLoss(), data)
    kw = {"steps": 25, "probes": probes, "seed": 7, "checkpoint_every": 4, "basis": basis}
    full = dc.lanczos(Interrupting(H), verbose=False, **kw)
    state = tmp_path / "state.pt"
    res = interrupted_then_resumed(H, state, stop_at=11, **kw)
    assert res.resumed_from == 8  # the last state before product 11
    for i in range(probes):
        assert np.array_equal(res.alphas[i], full.alphas[i])
        assert np.array_equal(res.betas[i], full.betas[i])
        assert np.array_equal(res.ritz_values[i], full.ritz_values[i])
        assert np.array_equal(res.weights[i], full.weights[i])
    assert np.array_equal(res.start_norms, full.start_norms)
    assert len(res.step_times) == 25 and res.seed == 7
    assert os.listdir(tmp_path) == []  # the state (and a disk basis file) removed at the end


def test_resumed_run_with_ritz_vectors_and_breakdown(tmp_path):
    # a rank-4 matrix: the probe breaks down at step 4 of 12, before the first state at step 3
    # is superseded; the Ritz vectors of the resumed run equal the uninterrupted run's
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    A = X @ X.T
    kw = {"steps": 12, "probes": 2, "seed": 0, "checkpoint_every": 3, "store_vectors": True}
    full = dc.lanczos(A, verbose=False, **kw)
    state = tmp_path / "s.pt"
    with pytest.raises(KeyboardInterrupt):
        dc.lanczos(DenseInterrupting(A, after=4), checkpoint=state, verbose=False, **kw)
    res = dc.lanczos(DenseInterrupting(A), checkpoint=state, verbose=False, **kw)
    assert res.resumed_from == 3
    assert res.broke_down.tolist() == full.broke_down.tolist() == [True, True]
    for i in range(2):
        assert torch.equal(res.ritz_vectors[i], full.ritz_vectors[i])
        assert np.array_equal(res.alphas[i], full.alphas[i])


def test_state_file_loads_with_weights_only_and_holds_the_recurrence(tmp_path):
    net, data = small_problem()
    H = dc.hessian(net, nn.CrossEntropyLoss(), data)
    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        dc.lanczos(Interrupting(H, after=8), 20, seed=1, checkpoint=state, checkpoint_every=3,
                   verbose=False)  # fmt: skip
    st = torch.load(state, weights_only=True)
    assert st["done"] == 6 and st["run"]["steps"] == 20 and st["run"]["seed"] == 1
    assert st["alphas"].shape == (1, 20) and st["basis_vectors"][0].shape == (7, H.shape[0])
    assert st["fingerprint"]["N"] == 80 and st["fingerprint"]["metadata"]["curvature"] == "hessian"
    assert len(st["step_times"]) == 6
    # the saved basis is orthonormal: it is the run's, not garbage
    Q = st["basis_vectors"][0]
    assert torch.allclose(Q @ Q.T, torch.eye(7, dtype=torch.float64), atol=1e-12)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary left


def _stopped_state(tmp_path, **kw):
    net, data = small_problem()
    H = dc.hessian(net, nn.CrossEntropyLoss(), data)
    state = tmp_path / "state.pt"
    args = {"steps": 15, "seed": 3, "checkpoint_every": 2, **kw}
    with pytest.raises(KeyboardInterrupt):
        dc.lanczos(Interrupting(H, after=6), checkpoint=state, verbose=False, **args)
    return net, data, state, args


def _refused(op, state, args, match):
    before = state.read_bytes()
    with pytest.raises(ValueError, match=match) as info:
        dc.lanczos(op, checkpoint=state, verbose=False, **args)
    text = str(info.value)
    assert "\n" not in text and "delete" in text and "original arguments" in text
    assert state.read_bytes() == before  # never removed or rewritten by a refused run
    return text


def test_mismatched_runs_are_refused_naming_the_difference(tmp_path):
    net, data, state, args = _stopped_state(tmp_path)
    loss = nn.CrossEntropyLoss()

    def hessian(model, batches, **kw):  # the same operator class as the stopped run's
        return Interrupting(dc.hessian(model, loss, batches, **kw))

    H = hessian(net, data)
    _refused(H, state, {**args, "seed": 4}, r"seed \(3 saved, 4 now\)")
    _refused(H, state, {**args, "steps": 16}, r"steps \(15 saved, 16 now\)")
    _refused(H, state, {**args, "probes": 2}, r"probes \(1 saved, 2 now\)")
    _refused(H, state, {**args, "basis_chunk": 1}, r"basis_chunk \(\d+ saved, 1 now\)")
    _refused(H, state, {**args, "basis_dtype": torch.float32}, r"basis_dtype \(float64 saved")
    _refused(hessian(net, data[:2]), state, args, r"number of samples N \(80 saved, 40 now\)")
    ggn = Interrupting(dc.ggn(net, loss, data))
    _refused(ggn, state, args, r"matrix kind \(hessian saved, ggn now\)")
    sub = hessian(net, data, params=["2.*"])
    _refused(sub, state, args, r"the dimension P \(83 saved, 27 now\)")
    _refused(hessian(small_problem(seed=1)[0], data), state, args, "the model parameters differ")
    _refused(dc.hessian(net, loss, data), state, args, r"the operator class")
    original = net[0].bias.detach().clone()
    with torch.no_grad():
        net[0].bias[0] += 1e-12  # one parameter, slightly
    _refused(H, state, args, "the model parameters differ")
    with torch.no_grad():
        net[0].bias.copy_(original)
    assert dc.lanczos(H, checkpoint=state, verbose=False, **args).resumed_from == 4
    assert not state.exists()


def test_a_file_that_is_not_a_state_is_refused_and_kept(tmp_path):
    net, data = small_problem()
    H = dc.hessian(net, nn.CrossEntropyLoss(), data)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)  # a user's model checkpoint at the state path
    before = path.read_bytes()
    with pytest.raises(ValueError, match="is not a Lanczos state file"):
        dc.lanczos(H, 5, checkpoint=path, verbose=False)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a Lanczos state file"):
        dc.lanczos(H, 5, checkpoint=garbage, verbose=False)
    assert path.read_bytes() == before and garbage.read_bytes() == b"not a torch file"


def test_disk_basis_file_kept_for_the_state_and_checked(tmp_path):
    net, data, state, args = _stopped_state(tmp_path, basis="disk")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[1] == "state.pt" and files[0].startswith("lanczos-basis-")
    basis_file = tmp_path / files[0]
    H = Interrupting(dc.hessian(net, nn.CrossEntropyLoss(), data))
    _refused(H, state, {**args, "basis": "memory"}, "basis storage")
    raw = bytearray(basis_file.read_bytes())
    raw[3] ^= 1  # one bit of the first vector
    basis_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="was changed since the state was saved"):
        dc.lanczos(H, checkpoint=state, verbose=False, **args)
    raw[3] ^= 1
    basis_file.write_bytes(bytes(raw))
    assert dc.lanczos(H, checkpoint=state, verbose=False, **args).resumed_from == 4
    assert os.listdir(tmp_path) == []


def test_dense_matrices_are_identified_by_their_entries(tmp_path):
    A = torch.randn(30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A = A + A.T
    B = A.clone()
    B[0, 0] += 1.0
    state = tmp_path / "s.pt"
    plain = {"steps": 10, "seed": 0, "checkpoint_every": 2}
    with pytest.raises(KeyboardInterrupt):
        dc.lanczos(DenseInterrupting(A, after=5), checkpoint=state, verbose=False, **plain)
    _refused(DenseInterrupting(B), state, plain, "the matrix entries differ")
    _refused(dc.as_operator(A), state, plain, "the operator class")
    full = dc.lanczos(A, verbose=False, **plain)
    res = dc.lanczos(DenseInterrupting(A), checkpoint=state, verbose=False, **plain)
    assert res.resumed_from == 4 and np.array_equal(res.alphas[0], full.alphas[0])


class DenseInterrupting(dc.linalg.DenseOperator):
    """A dense matrix operator whose product ``after`` is interrupted (Ctrl-C)."""

    def __init__(self, A, after=None):
        super().__init__(A)
        self.after, self.calls = after, 0

    def _matmat(self, V):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return super()._matmat(V)


# -- the command line -------------------------------------------------------------------------

BASE = [
    "spectrum", "--model", "mlp", "--dataset", "digits", "--subsample", "200", "--steps", "30",
    "--batch-size", "2", "--save-state-every", "2", "--quiet",
]  # fmt: skip
ARGS = [*BASE, "--train-epochs", "0"]  # trains 0 epochs into OUT/train: the seeded weights


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(out, cwd, *extra, args=ARGS):
    return subprocess.Popen(
        [sys.executable, "-m", "deepcurvature.cli.main", *args, "--out", str(out), *extra],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_after_first_state(proc, out, sig):
    """Send ``sig`` once the run's first Lanczos state exists; return (status, stderr)."""
    state = out / "lanczos-state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _ritz(out):
    with np.load(out / "spectrum.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    r = cli(*ARGS, "--out", root / "run", cwd=root, env=_env())
    assert r.returncode == 0, r.stderr
    return _ritz(root / "run"), root / "run" / "train" / "checkpoint-00000.pt"


@pytest.mark.parametrize("basis", ["memory", "disk"])
def test_cli_sigkill_then_resume_is_bit_identical(uninterrupted, basis, tmp_path):
    # the reference ran with the memory basis: the disk basis gives the same bits
    out = tmp_path / "run"
    proc = _start(out, tmp_path, "--basis", basis)
    status, _ = _stop_after_first_state(proc, out, signal.SIGKILL)
    assert status == -signal.SIGKILL
    state = dc.linalg.load_state(out / "lanczos-state.pt")
    done = state["done"]
    assert 2 <= done < 30
    assert (out / "spectrum-args.json").is_file() and not (out / "spectrum.npz").exists()
    if basis == "disk":  # the memory-mapped basis is kept beside the state, for the resume
        assert Path(state["basis_file"]["path"]).parent == out.resolve()
    r = cli("spectrum", "--resume", out, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    got, expected = _ritz(out), uninterrupted[0]
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(got[key], value), key  # nodes, weights, Ritz values, alphas, betas
    meta = json.loads((out / "spectrum.json").read_text())
    assert meta["info"]["resumed_from_step"] == done
    assert sorted(p.name for p in out.iterdir()) == [
        "spectrum.json", "spectrum.npz", "spectrum.png", "train"
    ]  # fmt: skip


def test_cli_sigint_prints_one_line_and_conflicting_resumes_are_refused(tmp_path):
    out = tmp_path / "run"
    status, err = _stop_after_first_state(_start(out, tmp_path), out, signal.SIGINT)
    assert status == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("deepcurvature spectrum: interrupted (Ctrl-C); the Lanczos state")
    assert f"is kept in {out}/lanczos-state.pt" in lines[0]
    assert lines[0].endswith(f"resume with: deepcurvature spectrum --resume {out}")
    kept = sorted(p.name for p in out.iterdir())
    assert kept == ["lanczos-state.pt", "spectrum-args.json", "train"]

    r = cli("spectrum", "--resume", out, "--steps", "40", cwd=tmp_path, env=_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert "--steps 40 (the run has 30) conflicts with the run's arguments" in r.stderr

    # the model the state was computed on changes: refused by its fingerprint
    ckpt = out / "train" / "checkpoint-00000.pt"
    saved = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in saved["state_dict"].items() if v.is_floating_point())
    saved["state_dict"][key] = saved["state_dict"][key] + 1e-3
    torch.save(saved, ckpt)
    r = cli("spectrum", "--resume", out, cwd=tmp_path, env=_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "the model parameters differ" in r.stderr and "lanczos-state.pt" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == kept  # nothing removed


def test_cli_sigterm_of_a_checkpoint_run_then_resume(uninterrupted, tmp_path):
    expected, checkpoint = uninterrupted  # analyse the reference run's model checkpoint
    out = tmp_path / "run"
    proc = _start(out, tmp_path, "--checkpoint", checkpoint, args=BASE)
    status, err = _stop_after_first_state(proc, out, signal.SIGTERM)
    assert status == 143 and err.count("\n") == 1, (status, err)
    assert "interrupted (SIGTERM); the Lanczos state after step" in err
    assert sorted(p.name for p in out.iterdir()) == ["lanczos-state.pt", "spectrum-args.json"]
    r = cli("spectrum", "--resume", out, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    got = _ritz(out)
    assert all(np.array_equal(got[key], value) for key, value in expected.items())
    r = cli("spectrum", "--resume", out, cwd=tmp_path, env=_env())  # the run is complete
    assert r.returncode == 2 and "no spectrum-args.json" in r.stderr
