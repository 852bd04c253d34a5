"""The Lanczos basis backends (memory, host, disk) against each other and dense float64 references.

The three backends run the same chunked Gram-Schmidt arithmetic (same chunks, same order) on the
same device, so their alphas, betas, Ritz values and Ritz vectors are compared BITWISE: any
difference would mean that a backend computes something else, not round-off.
"""

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

import deepcurvature as dc
from deepcurvature.linalg.basis import DiskBasis, dot64, open_basis
from deepcurvature.suite._network import device_memory
from deepcurvature.suite.eigenspectrum import check_basis_memory

BACKENDS = [
    {"basis": "memory"},
    {"basis": "host"},
    {"basis_device": "cpu"},
    {"basis": "disk"},
]


def random_symmetric(P, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, P, generator=g, dtype=torch.float64)
    return ((A + A.T) / 2).to(dtype)


def run(A, backend, tmp_path=None, **kw):
    extra = dict(backend)
    if backend.get("basis") == "disk" and tmp_path is not None:
        extra["basis_dir"] = tmp_path
    return dc.lanczos(A, verbose=False, **extra, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("probes", "chunk"), [(1, None), (3, 4), (2, 1)])
def test_backends_are_bitwise_identical(dtype, probes, chunk, tmp_path):
    A = random_symmetric(150, seed=1, dtype=dtype)
    results = [
        run(A, b, tmp_path, steps=40, probes=probes, seed=2, basis_chunk=chunk, store_vectors=True)
        for b in BACKENDS
    ]
    ref = results[0]
    for res in results[1:]:
        for i in range(probes):
            assert np.array_equal(res.alphas[i], ref.alphas[i])
            assert np.array_equal(res.betas[i], ref.betas[i])
            assert np.array_equal(res.ritz_values[i], ref.ritz_values[i])
            assert torch.equal(res.ritz_vectors[i], ref.ritz_vectors[i])
            assert torch.equal(res.basis[i], ref.basis[i])
            assert torch.equal(res.residuals[i], ref.residuals[i])
    assert [r.basis_kind for r in results] == ["memory", "host", "memory", "disk"]
    assert os.listdir(tmp_path) == []  # the disk basis file is gone


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_against_dense_eigenvalues(backend, tmp_path):
    A = random_symmetric(60, seed=4)
    res = run(A, backend, tmp_path, steps=60, seed=0, basis_chunk=7)
    exact = np.linalg.eigvalsh(A.numpy())
    scale = np.abs(exact).max()
    np.testing.assert_allclose(np.sort(res.ritz_values[0]), exact, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_ritz_vectors_and_decomposition(backend, tmp_path):
    P, m, probes = 90, 25, 2
    A = random_symmetric(P, seed=11)
    res = run(A, backend, tmp_path, steps=m, probes=probes, seed=5, store_vectors=True)
    norm = torch.linalg.matrix_norm(A, 2).item()
    for i in range(probes):
        Q, r, Y = res.basis[i], res.residuals[i], res.ritz_vectors[i]
        assert Q.shape == (P, m) and Y.shape == (P, m)
        T = torch.as_tensor(res.tridiagonal(i))
        E = A @ Q - Q @ T  # A Q = Q T + r e_m^T
        E[:, -1] -= r
        assert E.abs().max().item() <= 1e-10 * norm
        assert (Q.T @ Q - torch.eye(m, dtype=torch.float64)).abs().max().item() <= 1e-10
        theta = torch.as_tensor(res.ritz_values[i])
        _, S = dc.tridiagonal_eigh(res.alphas[i], res.betas[i])
        assert torch.allclose(Y, Q @ torch.as_tensor(S), atol=1e-12)
        # A y - theta y = r s_m for every Ritz pair
        R = A @ Y - Y * theta
        expected = torch.outer(r, torch.as_tensor(S[-1, :]))
        assert (R - expected).abs().max().item() <= 1e-9 * norm


def test_chunked_and_unchunked_reorthogonalisation_agree_to_round_off():
    # chunking changes the order of the update w -= Q h: not bitwise, but to round-off
    A = random_symmetric(120, seed=3)
    one = dc.lanczos(A, 50, seed=1, verbose=False)
    many = dc.lanczos(A, 50, seed=1, verbose=False, basis_chunk=3)
    scale = np.abs(one.ritz_values[0]).max()
    np.testing.assert_allclose(many.ritz_values[0], one.ritz_values[0], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(many.alphas[0], one.alphas[0], rtol=0, atol=1e-12 * scale)


def test_disk_basis_is_a_file_of_the_whole_basis_while_running(tmp_path):
    P, m, k = 70, 12, 2
    A = random_symmetric(P, seed=6, dtype=torch.float32)
    seen = []

    def product(V):
        seen.append(sorted((n, os.path.getsize(tmp_path / n)) for n in os.listdir(tmp_path)))
        return A @ V

    op = dc.as_operator(product, shape=(P, P), dtype=torch.float32, batched=True)
    dc.lanczos(op, m, probes=k, seed=0, basis="disk", basis_dir=tmp_path, verbose=False)
    assert len(seen) == m
    (name, size), *others = seen[0]
    assert not others and name.startswith("lanczos-basis-") and size == k * m * P * 4
    assert os.listdir(tmp_path) == []


def test_disk_basis_file_removed_on_failure_and_default_folder_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where temporary folders go
    A = random_symmetric(40, seed=7)
    calls = []

    def failing(V):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("the product failed")
        return A @ V

    op = dc.as_operator(failing, shape=(40, 40), batched=True)
    with pytest.raises(RuntimeError, match="the product failed"):
        dc.lanczos(op, 20, seed=0, basis="disk", verbose=False)
    assert os.listdir(tmp_path) == []
    dc.lanczos(A, 20, seed=0, basis="disk", verbose=False)
    assert os.listdir(tmp_path) == []


def test_float32_basis_of_float64_operator_matches_memory_on_disk(tmp_path):
    A = random_symmetric(100, seed=8)
    kw = {"steps": 30, "seed": 3, "basis_dtype": torch.float32, "verbose": False}
    mem = dc.lanczos(A, **kw)
    disk = dc.lanczos(A, basis="disk", basis_dir=tmp_path, **kw)
    assert np.array_equal(mem.alphas[0], disk.alphas[0])
    assert mem.precision == disk.precision == "float32"


def test_dot64_accumulates_in_float64_without_full_copies():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 700_001, generator=g, dtype=torch.float32)
    y = torch.randn(2, 700_001, generator=g, dtype=torch.float32)
    exact = (x.double() * y.double()).sum(dim=1)
    assert torch.allclose(dot64(x, y), exact, rtol=1e-12, atol=0)


def test_bad_basis_arguments(tmp_path):
    A = random_symmetric(10, seed=0)
    with pytest.raises(ValueError, match="basis must be one of memory, host, disk"):
        dc.lanczos(A, 3, basis="ssd", verbose=False)
    with pytest.raises(ValueError, match="basis_dir applies to basis='disk' only"):
        dc.lanczos(A, 3, basis_dir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="basis_device must be 'cpu'"):
        dc.lanczos(A, 3, basis="disk", basis_device="cuda", verbose=False)


def test_disk_basis_refuses_a_file_of_another_size(tmp_path):
    path = tmp_path / "basis.bin"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="has 100 bytes, expected 240"):
        DiskBasis(path, (1, 3, 10), torch.float64, create=False, owned=False)
    assert path.read_bytes() == b"\0" * 100  # not ours: untouched
    with pytest.raises(ValueError, match="basis must be one of"):
        open_basis("tape", (1, 3, 10), torch.float64, device=torch.device("cpu"))


def test_check_memory_counts_the_basis_where_it_is_kept(tmp_path):
    ram = device_memory(torch.device("cpu"))
    free = shutil.disk_usage(tmp_path).free
    P = int(0.9 * ram) // (4 * 10)  # a float32 basis of 10 vectors: 90% of the RAM
    kw = {"probes": 1, "steps": 10, "dim": P, "itemsize": 4, "save_eigvec": False}
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="basis='disk'"):
        check_basis_memory("memory", None, None, None, device=cpu, **kw)
    with pytest.raises(ValueError, match="cpu memory"):
        check_basis_memory("host", None, None, None, device=cpu, **kw)
    huge = {**kw, "dim": free // 4 + 1, "steps": 1}
    with pytest.raises(ValueError, match="of disk space in"):
        check_basis_memory("disk", None, tmp_path, None, device=cpu, **huge)
    if 10 * P * 4 >= free:
        pytest.skip("the disk is smaller than the RAM here: cannot show a disk basis passing")
    check_basis_memory("disk", None, tmp_path, None, device=cpu, **kw)  # not refused for RAM


def test_compute_eigenspectrum_with_host_and_disk_bases(tmp_path):
    torch.manual_seed(0)
    net = dc.get_model("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(8,))
    kw = {
        "model": net,  # copied by each call: the same weights for the three runs
        "lanczos_iters": 12,
        "num_subsamples": 60,
        "seed": 0,
        "device": "cpu",
        "verbose": False,
        "save_eigvec": True,
    }
    mem = dc.compute_eigenspectrum("digits", None, **kw)
    host = dc.compute_eigenspectrum("digits", None, basis="host", **kw)
    disk = dc.compute_eigenspectrum(
        "digits", None, basis="disk", basis_dir=tmp_path / "basis", **kw
    )
    for res in (host, disk):
        assert np.array_equal(res.alphas[0], mem.alphas[0])
        assert np.array_equal(res.ritz_values, mem.ritz_values)
        assert torch.equal(res.ritz_vectors, mem.ritz_vectors)
    assert [r.info["basis"] for r in (mem, host, disk)] == ["memory", "host", "disk"]
    assert not (tmp_path / "basis").exists()  # the folder was made for the file: both gone
    with pytest.raises(ValueError, match="basis_dir applies to basis='disk' only"):
        dc.compute_eigenspectrum("digits", None, basis_dir=tmp_path, **kw)
