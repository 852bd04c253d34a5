"""Reliability of the numerics: clear errors for bad operators, honest negative mass, clamps.

Issue 11: a NaN matrix reads "not finite" (not "not symmetric"), complex input is refused rather
than losing its imaginary part, a float32 function works behind the default float64 operator,
clamped Lanczos steps show in the summary, and round-off never reads as negative curvature.
"""

import json
import warnings

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText
from torch import nn

import deepcurvature as dc
from deepcurvature.linalg.density import (
    NEGATIVE_MASS_RTOL,
    NEGATIVE_MASS_RTOL_BY_PRECISION,
    is_psd_matrix,
)

NEGATIVE_KEYS = (
    "negative_mass",
    "negative_mass_tol",
    "negative_mass_rtol",
    "negative_mass_strict",
    "psd_by_construction",
    "note",
)
COMPLEX = "complex matrices are not supported: the curvature operators are real symmetric"


def sym(P=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, P, generator=g, dtype=torch.float64)
    return (A + A.T) / 2


def float32_rtol(P):
    """The negative-mass tolerance of a float32 computation of dimension P: ten round-offs of
    a P-term sum, between float64's 1e-6 and the cap 1e-3."""
    return min(NEGATIVE_MASS_RTOL_BY_PRECISION["float32"], max(10 * 2.0**-24 * P**0.5, 1e-6))


def test_the_float32_tolerance_grows_with_p_up_to_its_cap():
    d = dc.SpectralDensity(np.array([-1.0, 2.0]), np.array([0.5, 0.5]), dim=8970)
    d.metadata["precision"] = "float32"
    assert d.negative_mass_rtol == pytest.approx(5.645e-5, rel=1e-3)
    d.dim = 15_200_000  # VGG-16: the cap
    assert d.negative_mass_rtol == 1e-3
    d.metadata["precision"] = "float64"
    assert d.negative_mass_rtol == 1e-6
    d.dim, d.metadata["precision"] = None, "float32"
    assert d.negative_mass_rtol == 1e-3


def wishart(P=400, rank=50, seed=0):
    """``X X^T / rank``: PSD with a null space of dimension ``P - rank``; also ``X``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, rank, generator=g, dtype=torch.float64)
    return X @ X.T / rank, X


def rotated(eigenvalues, seed=0):
    """``Q diag(eigenvalues) Q^T`` for a random orthogonal ``Q``; also ``Q``."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((eigenvalues.size, eigenvalues.size)))
    A = (Q * eigenvalues) @ Q.T
    return torch.as_tensor((A + A.T) / 2), Q


# ---------------------------------------------------------------- 1. errors of bad operators
def _run_every_algorithm(op):
    """Each linalg algorithm that takes an operator, on ``op``."""
    return [
        lambda: dc.lanczos(op, 3, seed=0, verbose=False),
        lambda: dc.eigsh(op, 1, seed=0, verbose=False),
        lambda: dc.power_iteration(op, 1, seed=0, max_iters=3, verbose=False),
        lambda: dc.trace(op, 3, seed=0, verbose=False),
        lambda: dc.diagonal(op, 3, seed=0, verbose=False),
        lambda: dc.as_operator(op),
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("kind", ["torch", "numpy", "sparse"])
def test_a_dense_matrix_with_nan_is_not_finite_rather_than_not_symmetric(bad, kind):
    A = sym()
    A[2, 5] = bad  # also breaks the symmetry: finiteness is checked first
    A[7, 1] = bad
    x = {"torch": A, "numpy": A.numpy(), "sparse": scipy.sparse.csr_matrix(A.numpy())}[kind]
    for run in _run_every_algorithm(x):
        with pytest.raises(ValueError, match="not finite") as err:
            run()
        msg = str(err.value)
        assert "2 of its 144 entries are NaN or infinite" in msg
        assert "the first at row 2, column 5" in msg
        assert "nan_to_num" in msg  # the fix
        assert "symmetric" not in msg


def test_a_non_finite_product_stops_lanczos_at_its_step():
    A = sym(10)
    calls = []

    def product(v, value):
        calls.append(1)
        out = A @ v
        if len(calls) >= 3:
            out[4] = value
        return out

    for value in (float("nan"), float("inf")):
        calls.clear()
        op = dc.as_operator(lambda v, value=value: product(v, value), shape=(10, 10))
        with pytest.raises(FloatingPointError) as err:
            dc.lanczos(op, steps=6, probes=1, seed=0, verbose=False)
        msg = str(err.value)
        assert msg.startswith("the operator's product is not finite at step 3 (probe 0:")
        assert "NaN or infinity" in msg
    # several probes share one product: the step is named with a probe
    calls.clear()
    op = dc.as_operator(
        lambda V: torch.stack([product(V[:, i], float("nan")) for i in range(V.shape[1])], 1),
        shape=(10, 10),
        batched=True,
    )
    with pytest.raises(FloatingPointError, match="not finite at step 2 "):
        dc.lanczos(op, steps=6, probes=2, seed=0, verbose=False)


def _complex_inputs():
    A = sym(6)
    Ac = A.to(torch.complex128) + 1j * torch.eye(6, dtype=torch.complex128)
    An = Ac.numpy()
    return {
        "torch": lambda: Ac,
        "torch_to_float64": lambda: dc.as_operator(Ac, dtype=torch.float64),
        "numpy": lambda: An,
        "sparse": lambda: scipy.sparse.csr_matrix(An),
        "scipy_linop": lambda: scipy.sparse.linalg.aslinearoperator(An),
        "callable_torch": lambda: dc.as_operator(lambda v: Ac @ v.to(Ac.dtype), shape=(6, 6)),
        "callable_numpy": lambda: dc.as_operator(lambda v: An @ v.numpy(), shape=(6, 6)),
        "dtype": lambda: dc.as_operator(lambda v: v, shape=(6, 6), dtype=torch.complex128),
    }


@pytest.mark.parametrize("kind", list(_complex_inputs()))
def test_complex_input_is_refused_not_cast_to_its_real_part(kind):
    make = _complex_inputs()[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "discards the imaginary part" on the way
        with pytest.raises(TypeError, match=COMPLEX) as err:
            dc.lanczos(make(), 3, seed=0, verbose=False)
        assert "pass the real part explicitly" in str(err.value)
        with pytest.raises(TypeError, match=COMPLEX):
            dc.trace(make(), 2, seed=0, verbose=False)


def test_a_float32_function_works_behind_the_default_float64_operator():
    A = sym(40, seed=3)
    A32 = A.float()
    exact = np.linalg.eigvalsh(A32.double().numpy())
    for batched in (False, True):
        op = dc.as_operator(lambda v: A32 @ v, shape=(40, 40), batched=batched)  # addmv: float32
        assert op.dtype == torch.float64
        with pytest.warns(UserWarning, match="works in torch.float32, not in the operator's"):
            res = dc.lanczos(op, 40, seed=0, verbose=False)
        assert op.input_dtype == torch.float32 and op.product_dtype == torch.float32
        theta = np.sort(res.ritz_values[0])
        np.testing.assert_allclose(theta, exact, atol=1e-4 * np.abs(exact).max())
        assert res.precision == "float32"  # the tolerance of the negative mass follows
        assert res.density().negative_mass_rtol == float32_rtol(40)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not at every product
            v = torch.ones(40, dtype=torch.float64)
            torch.testing.assert_close(op.matvec(v), (A32 @ v.float()).double())
    # a function that converts by itself and returns float32: products converted, no warning
    op = dc.as_operator(lambda v: A32 @ v.float(), shape=(40, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = dc.lanczos(op, 40, seed=0, verbose=False)
    assert op.product_dtype == torch.float32 and res.precision == "float32"
    np.testing.assert_allclose(np.sort(res.ritz_values[0]), exact, atol=1e-4 * np.abs(exact).max())
    # the float64 default: a float64 function keeps float64 precision
    res = dc.lanczos(dc.as_operator(lambda v: A @ v, shape=(40, 40)), 5, seed=0, verbose=False)
    assert res.precision == "float64"


def test_a_function_failing_in_every_dtype_names_the_dtypes_and_the_fix():
    calls = []

    def never(v):
        calls.append(v.dtype)
        raise RuntimeError("expected scalar type Int but found " + str(v.dtype))

    op = dc.as_operator(never, shape=(5, 5))
    with pytest.raises(TypeError, match="fails on torch.float64 vectors with a dtype error") as e:
        dc.lanczos(op, 2, seed=0, verbose=False)
    assert "dtype=torch.float32" in str(e.value)
    assert calls[0] == torch.float64 and len(calls) == 4  # every floating dtype tried once

    def broken(v):  # other errors are the function's own: raised at once, never retried
        calls.append(1)
        raise RuntimeError("CUDA out of memory")

    calls.clear()
    with pytest.raises(RuntimeError, match="out of memory"):
        dc.lanczos(dc.as_operator(broken, shape=(5, 5)), 2, seed=0, verbose=False)
    assert calls == [1]


# ---------------------------------------------------------------- 2. clamped steps are visible
def test_steps_clamped_to_P_show_in_the_result_summary_config_and_files(tmp_path):
    A = sym(6)
    with pytest.warns(UserWarning, match="exceeds the dimension"):
        res = dc.lanczos(A, 50, seed=0, verbose=False)
    assert (res.steps, res.steps_requested) == (6, 50)
    assert res.density().metadata["steps_requested"] == 50
    with pytest.warns(UserWarning, match="exceeds the dimension"):
        spec = dc.spectrum(A, steps=50, seed=0, verbose=False)
    s = spec.summary()
    assert (s["steps"], s["steps_requested"]) == (6, 50)
    assert spec.config["steps_requested"] == 50 and spec.info["steps_clamped"] is True
    meta = json.loads(spec.save(tmp_path / "s").with_suffix(".json").read_text())
    assert (meta["summary"]["steps"], meta["summary"]["steps_requested"]) == (6, 50)
    # not clamped: both the same
    s = dc.spectrum(A, steps=4, seed=0, verbose=False).summary()
    assert (s["steps"], s["steps_requested"]) == (4, 4)


# ---------------------------------------------------------------- 3. honest negative mass
def test_round_off_negatives_of_a_psd_matrix_with_a_null_space_are_not_negative_mass():
    A, X = wishart()  # float64, rank 50 of 400
    # the null space moved to -1e-12, the size of float64 round-off here (P eps max|theta| =
    # 1.3e-12), so that its Ritz values are negative whatever the machine's rounding (without
    # the shift their signs are the rounding's: 2 of the 4 probes' on an AMD EPYC machine, at
    # least 3 on the machines before it)
    A = A - 1e-12 * torch.eye(A.shape[0], dtype=A.dtype)
    res = dc.lanczos(A, 80, probes=4, seed=0, verbose=False)
    d = res.density()
    s = d.summary()
    radius = float(np.abs(d.nodes).max())
    # the Ritz values of the null space come out slightly negative ...
    assert s["negative_mass_strict"] > 0.5
    assert d.lambda_min < 0 and d.lambda_min > -1e-12 * radius
    # ... and are not counted: the summary says below which threshold it counts
    assert s["negative_mass"] == 0.0
    assert s["negative_mass_rtol"] == NEGATIVE_MASS_RTOL == 1e-6
    assert s["negative_mass_tol"] == pytest.approx(1e-6 * radius, rel=1e-12)
    assert s["psd_by_construction"] is False  # a plain matrix: nothing known
    assert "round-off" in s["note"]
    assert d.negative_mass() == 0.0 and d.negative_mass(0.0) == s["negative_mass_strict"]
    assert d.negative_mass(tol=1e-20) == s["negative_mass_strict"]  # an explicit absolute tol
    # the round-off mass is the null space's: the exact share of each probe in it
    U = torch.linalg.svd(X, full_matrices=True)[0][:, 50:]  # (P, P - rank) null space basis
    V = dc.draw_probes(400, 4, seed=0)
    exact = ((V @ U) ** 2).sum(1) / (V**2).sum(1)
    near_zero = d.weights[np.abs(d.nodes) <= 1e-9 * radius].sum()
    assert near_zero == pytest.approx(float(exact.mean()), abs=1e-9)


def test_a_float32_computation_counts_below_the_float32_tolerance():
    A, _ = wishart()
    d = dc.lanczos(A.float(), 80, probes=2, seed=0, verbose=False).density()
    assert d.metadata["precision"] == "float32"
    s = d.summary()
    assert s["negative_mass_rtol"] == float32_rtol(400) == pytest.approx(1.19e-5, rel=1e-2)
    assert s["negative_mass_tol"] == pytest.approx(float32_rtol(400) * np.abs(d.nodes).max())
    assert s["negative_mass_strict"] > 0.1 and s["negative_mass"] == 0.0
    # a float64 basis does not make float32 products more precise
    d = dc.lanczos(A.float(), 10, seed=0, basis_dtype=torch.float64, verbose=False).density()
    assert d.metadata["precision"] == "float32"
    # nor does a float32 basis under float64 products escape its own precision
    d = dc.lanczos(A, 10, seed=0, basis_dtype=torch.float32, verbose=False).density()
    assert d.metadata["precision"] == "float32"


@pytest.mark.parametrize("steps", [20, 40])
def test_negative_mass_of_an_indefinite_matrix_matches_the_exact_fraction(steps):
    rng = np.random.default_rng(0)
    P, n_neg = 600, 180  # 30% clearly negative
    lam = np.concatenate([rng.uniform(-2.0, -0.5, n_neg), rng.uniform(0.5, 3.0, P - n_neg)])
    A, Q = rotated(lam)
    probes = 8
    res = dc.lanczos(A, steps, probes=probes, seed=1, verbose=False)
    d = res.density()
    # exact: the share of each probe in the negative eigenspace, v^T 1[A < 0] v / v^T v
    proj = (dc.draw_probes(P, probes, seed=1).numpy() @ Q) ** 2
    exact = proj[:, lam < 0].sum(1) / proj.sum(1)
    tol = d.negative_mass_tol()
    for i in range(probes):
        theta, w = res.ritz_values[i], res.weights[i]
        below = theta < -tol
        slq = w[below].sum()
        # Chebyshev-Markov-Stieltjes: the Gauss weights bracket the true distribution, the
        # error is at most the weights of the two nodes around 0 (ascending theta)
        j = int(below.sum())
        assert abs(slq - exact[i]) <= w[max(j - 1, 0)] + w[j] + 1e-12
    assert d.negative_mass() == pytest.approx(exact.mean(), abs=2e-3)
    assert d.summary()["negative_mass"] == d.negative_mass()
    assert d.summary()["negative_mass_strict"] == d.negative_mass()  # nothing near zero
    assert d.negative_mass() == pytest.approx(n_neg / P, abs=0.03)  # the probes' sampling error


def test_psd_by_construction_reports_zero_negative_mass_and_says_why():
    nodes = np.array([-2e-9, -1e-10, 0.5, 3.0])
    density = dc.SpectralDensity(nodes, np.full(4, 0.25), dim=4, metadata={"matrix": "ggn"})
    for matrix, psd in [("ggn", True), ("fisher", True), ("fisher_mc", True), ("hessian", False)]:
        spec = dc.SpectrumResult(
            density, [np.zeros(4)], [np.zeros(3)], nodes, config={"matrix": matrix}
        )
        s = spec.summary()
        assert set(NEGATIVE_KEYS) <= set(s)
        assert s["psd_by_construction"] is psd
        assert s["negative_mass_strict"] == 0.5
        assert s["negative_mass"] == 0.0  # round-off either way: -2e-9 is far below 1e-6 * 3
        if psd:
            assert "positive semi-definite by construction" in s["note"]
            assert "round-off" in s["note"]
    # clearly negative nodes of a PSD matrix: still 0, but the note flags the operator
    ggn = {"matrix": "ggn"}
    bad = dc.SpectralDensity(np.array([-0.5, 1.0]), np.array([0.5, 0.5]), metadata=ggn)
    s = bad.summary()
    assert s["negative_mass"] == 0.0 and s["negative_mass_strict"] == 0.5
    assert "check the precision of the operator's products" in s["note"]
    # the same nodes of an indefinite matrix: counted
    s = dc.SpectralDensity(np.array([-0.5, 1.0]), np.array([0.5, 0.5])).summary()
    assert s["negative_mass"] == 0.5 and s["psd_by_construction"] is False and s["note"] is None
    assert [is_psd_matrix(m) for m in ("GGN", "gauss-newton", "empirical_fisher", "mc_fisher")] == [
        True
    ] * 4
    assert not is_psd_matrix("hessian") and not is_psd_matrix(None)


def test_the_ggn_of_a_network_has_no_negative_mass(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))  # float32, P = 75
    data = [(torch.randn(4, 5), torch.tensor([0, 1, 2, 1]))]  # GGN rank <= 8
    loss = nn.CrossEntropyLoss()
    res = dc.spectrum(model, loss, data, matrix="ggn", steps=30, probes=3, seed=0, verbose=False)
    s = res.summary()
    assert s["psd_by_construction"] is True and res.density.metadata["psd_by_construction"]
    assert s["negative_mass_strict"] > 0  # the null space's Ritz values came out below 0
    assert s["negative_mass"] == 0.0
    assert s["negative_mass_rtol"] == float32_rtol(75)  # a float32 model
    # the operator passed directly is named too
    op = dc.ggn(model, loss, data)
    assert dc.spectrum(op, steps=5, seed=0, verbose=False).summary()["psd_by_construction"]
    op = dc.hessian(model, loss, data)
    assert not dc.spectrum(op, steps=5, seed=0, verbose=False).summary()["psd_by_construction"]
    # the JSON file holds the keys the CLI and the report read
    meta = json.loads(res.save(tmp_path / "ggn").with_suffix(".json").read_text())
    assert meta["summary"]["negative_mass"] == 0.0 and meta["summary"]["psd_by_construction"]
    assert set(NEGATIVE_KEYS) <= set(meta["summary"])
    assert meta["density_metadata"]["precision"] == "float32"


def test_density_files_record_the_tolerance(tmp_path):
    d = dc.SpectralDensity(np.array([-1e-9, -0.3, 2.0]), np.array([0.5, 0.25, 0.25]), dim=3)
    meta = json.loads(d.save(tmp_path / "d").with_suffix(".json").read_text())
    s = meta["summary"]
    assert s["negative_mass"] == 0.25 and s["negative_mass_strict"] == 0.75
    assert s["negative_mass_tol"] == pytest.approx(2e-6) and s["negative_mass_rtol"] == 1e-6


def _old_spectrum_file(tmp_path):
    """A spectrum file as written before the tolerance, precision and clamp were recorded."""
    A, _ = wishart(P=120, rank=20)
    res = dc.spectrum(A.float(), steps=30, probes=2, seed=0, verbose=False)
    res.config["matrix"] = "ggn"
    json_path = res.save(tmp_path / "old").with_suffix(".json")
    meta = json.loads(json_path.read_text())
    for key in (*NEGATIVE_KEYS, "steps_requested"):
        meta["summary"].pop(key, None)
    meta["summary"]["negative_mass"] = meta["summary"].pop("negative_mass_strict", 0.6)
    for key in ("precision", "psd_by_construction", "steps_requested", "matrix"):
        meta["density_metadata"].pop(key, None)
    meta["config"].pop("steps_requested")
    meta["info"].pop("steps_clamped")
    json_path.write_text(json.dumps(meta))
    return json_path.with_suffix(".npz")


def test_old_result_files_without_the_new_keys_load_and_plot(tmp_path):
    npz = _old_spectrum_file(tmp_path)
    back = dc.SpectrumResult.load(npz)
    s = back.summary()
    assert s["steps_requested"] is None and s["steps"] == 30  # unknown, not made up
    assert s["psd_by_construction"] is True and s["negative_mass"] == 0.0
    assert back.density.metadata["precision"] == "float32"  # from config["dtype"]
    assert s["negative_mass_rtol"] == float32_rtol(back.density.dim)
    assert dc.SpectralDensity.load(npz).psd_by_construction  # from config["matrix"]
    density, _ = dc.read_spectrum(npz)
    assert density.metadata["matrix"] == "ggn"
    for mode in ("lanczos", "smooth", "cdf"):
        assert dc.plot_spectrum(mode, path=npz).axes
    text = _summary_box_text(dc.plot_spectrum(npz).axes[0])
    assert "negative mass = 0 (PSD by construction)" in text
    fig = dc.plot_comparison(npz, exact_eigenvalues=np.linalg.eigvalsh(wishart(120, 20)[0]))
    assert fig.axes


def _summary_box_text(ax):
    """The summary box: an AnchoredText of its own, or the legend's title (narrow axes)."""
    boxes = [a for a in ax.artists if isinstance(a, AnchoredText)]
    if boxes:
        return boxes[0].txt._text.get_text()
    return ax.get_legend().get_title().get_text()


def _round_off_and_negative_density(metadata=None):
    # 0.2 clearly negative, 0.3 of round-off below 0, the rest positive; max|theta| = 4
    nodes = np.array([-1.0, -3e-12, -1e-13, 0.5, 4.0])
    weights = np.array([0.2, 0.2, 0.1, 0.3, 0.2])
    return dc.SpectralDensity(nodes, weights, dim=100, metadata=metadata or {})


@pytest.mark.parametrize("figsize", [(4.0, 3.2), (8.0, 4.5)])  # summary in the legend / a box
def test_plot_spectrum_shows_the_tolerance_based_negative_mass(figsize):
    density = _round_off_and_negative_density()
    ax = Figure(figsize=figsize, layout="constrained").add_subplot()
    dc.plot_spectrum(density, ax=ax)
    text = _summary_box_text(ax)
    assert "negative mass = 0.2 (θ < −4e-06); 0.5 with any θ < 0" in text
    if figsize[0] < 5:
        assert text == ax.get_legend().get_title().get_text()  # in the legend box
    psd = _round_off_and_negative_density({"matrix": "fisher"})
    ax = Figure(figsize=figsize, layout="constrained").add_subplot()
    dc.plot_spectrum(psd, ax=ax)
    text = _summary_box_text(ax)
    assert "negative mass = 0 (PSD by construction)" in text and "0.2" not in text


def test_plot_spectrum_cdf_marks_the_mass_below_the_tolerance(tmp_path):
    path = _round_off_and_negative_density().save(tmp_path / "indefinite")
    ax = dc.plot_spectrum("cdf", path=path).axes[0]
    (mark,) = [ln for ln in ax.get_lines() if "negative mass" in ln.get_label()]
    assert mark.get_label() == "negative mass F(−4e-06⁻) = 0.2"
    assert mark.get_data()[0][0] == pytest.approx(-4e-6) and mark.get_data()[1][0] == 0.2
    path = _round_off_and_negative_density({"matrix": "ggn"}).save(tmp_path / "psd")
    ax = dc.plot_spectrum("cdf", path=path).axes[0]
    (mark,) = [ln for ln in ax.get_lines() if "PSD by construction" in ln.get_label()]
    assert mark.get_data()[1][0] == pytest.approx(0.5)  # F(0-): the round-off, labelled so
