"""The stem plot, figure files, ``run_demo`` and the ``deepcurvature demo`` command."""

import json
import math

import matplotlib.image
import numpy as np
import pytest
from matplotlib.container import BarContainer, StemContainer
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText

import deepcurvature as dc
from _helpers import cli as run_cli
from deepcurvature.demo import DEMO_FILES, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(*args, cwd=None):
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def wigner_density():
    P = 120
    H = dc.wigner(P, seed=1)
    exact = np.linalg.eigvalsh(H.numpy())
    return P, exact, dc.lanczos(H, 20, seed=2, verbose=False).density()


# -- plot_spectrum / save_figure -------------------------------------------------------------------
def test_plot_spectrum_draws_stems_histogram_law_and_summary(wigner_density):
    P, exact, dens = wigner_density
    R = dc.wigner_radius(P)
    fig = dc.plot_spectrum(
        dens,
        exact_eigenvalues=exact,
        reference=lambda x: dc.semicircle_density(x, R),
        reference_label="semicircle",
        bins=25,
        smooth_sigma=1.0,
        title="Wigner",
    )
    assert isinstance(fig, Figure)
    ax, mass_ax = fig.axes  # stems in front (log weights), mass per bin on a twin axis
    assert ax.get_yscale() == "log" and mass_ax.get_yscale() == "linear"
    stems = [c for c in ax.containers if isinstance(c, StemContainer)]
    assert len(stems) == 1
    x, _ = stems[0].markerline.get_data()
    np.testing.assert_allclose(np.sort(x), np.sort(dens.nodes))
    assert len(stems[0].stemlines.get_segments()) == dens.nodes.size
    bars = [c for c in mass_ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and len(bars[0].patches) == 25
    heights = np.array([p.get_height() for p in bars[0].patches])
    assert heights.sum() == pytest.approx(1.0)  # bar masses sum to 1, like the weights
    labels = [line.get_label() for line in mass_ax.get_lines()]
    assert "semicircle" in labels
    assert any("Thm 5" in lab for lab in labels)  # the smoothing warns about moment bias
    # the reference curve is density * bin width: its area in bins sums to ~1
    ref = next(line for line in mass_ax.get_lines() if line.get_label() == "semicircle")
    gx, gy = ref.get_data()
    width = (gx.max() - gx.min()) / 25
    assert np.trapezoid(gy, gx) / width == pytest.approx(1.0, abs=0.01)
    legend_texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend_texts[0].startswith("Lanczos") and len(legend_texts) == 4
    assert ax.get_xlabel() == "eigenvalue λ" and "weight" in ax.get_ylabel()
    assert ax.get_title() == "Wigner"
    boxes = [a for a in ax.artists if isinstance(a, AnchoredText)]
    assert len(boxes) == 1 and "λ_max" in boxes[0].txt.get_text()


def test_plot_spectrum_linear_weights_into_given_axes(wigner_density):
    _, _, dens = wigner_density
    fig = Figure()
    ax = fig.add_subplot()
    out = dc.plot_spectrum(dens, ax=ax, log_weights=False, show_summary=False)
    assert out is fig and fig.axes == [ax] and ax.get_yscale() == "linear"
    assert not ax.artists  # no summary box
    (stem,) = [c for c in ax.containers if isinstance(c, StemContainer)]
    _, y = stem.markerline.get_data()
    np.testing.assert_allclose(np.sort(y), np.sort(dens.weights))
    assert ax.get_title().startswith("Spectral density, Lanczos m=20")


def test_plot_spectrum_rejects_bad_input(wigner_density):
    _, _, dens = wigner_density
    with pytest.raises(TypeError, match="SpectralDensity"):
        dc.plot_spectrum(np.ones(3))
    with pytest.raises(ValueError, match="bins"):
        dc.plot_spectrum(dens, bins=0)
    with pytest.raises(ValueError, match="smooth_sigma"):
        dc.plot_spectrum(dens, smooth_sigma=-1.0)
    with pytest.raises(ValueError, match="finite"):
        dc.plot_spectrum(dens, exact_eigenvalues=[1.0, math.nan])


def test_save_figure_writes_readable_png_and_pdf(tmp_path, wigner_density):
    _, exact, dens = wigner_density
    fig = dc.plot_spectrum(dens, exact_eigenvalues=exact)
    png = dc.save_figure(fig, tmp_path / "sub" / "stems.png", dpi=80)
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(png)
    assert img.shape[0] == 360 and img.shape[1] == 560  # 7 x 4.5 inches at 80 dpi
    assert img[..., :3].std() > 0.05  # not a blank canvas
    pdf = dc.save_figure(fig, tmp_path / "stems.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="suffix|end the file name"):
        dc.save_figure(fig, tmp_path / "stems.jpeg")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["stems.pdf", "stems.png", "sub"]


# -- the command line and run_demo -----------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = cli("demo", "--out", str(out), "--sizes", "100", "--quiet")
    return proc, out


def test_demo_cli_writes_figures_and_summary(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)  # --quiet prints only the folder
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)
    for name in DEMO_FILES[:-1]:
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and min(img.shape[:2]) > 300 and img[..., :3].std() > 0.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sizes"] == [100] and summary["steps"] == 30 and summary["seed"] == 0
    names = [e["name"] for e in summary["experiments"]]
    assert names == [
        "wigner",
        "marchenko_pastur_q0.5",
        "marchenko_pastur_q2",
        "synthetic_m5",
        "synthetic_m30",
    ]
    by = {e["name"]: e for e in summary["experiments"]}
    # what was computed is coherent: Ritz values inside the exact spectrum, theory recorded
    for e in summary["experiments"]:
        span = e["exact_max"] - e["exact_min"]
        assert e["exact_min"] - 1e-9 * span <= e["ritz_min"] <= e["ritz_max"]
        assert e["ritz_max"] <= e["exact_max"] + 1e-9 * span
    assert by["wigner"]["theory_edges"] == [-20.0, 20.0]
    assert by["marchenko_pastur_q2"]["theory_zero_mass"] == 0.5
    assert by["marchenko_pastur_q2"]["exact_zero_mass"] == 0.5
    assert abs(by["marchenko_pastur_q2"]["slq_zero_mass"] - 0.5) < 0.25
    assert by["synthetic_m30"]["outliers_resolved"] >= by["synthetic_m5"]["outliers_resolved"]


def test_run_demo_in_process_reproduces_the_command(demo_run, tmp_path):
    _, out = demo_run
    paths = run_demo(tmp_path / "again", sizes=(100,), steps=30, seed=0, verbose=False)
    assert [p.name for p in paths] == list(DEMO_FILES)
    ours = json.loads(paths[-1].read_text())
    theirs = json.loads((out / "summary.json").read_text())
    # deterministic given the seed: the same seeds, sizes and results, up to the round-off
    # that differs between thread counts (the subprocess may use more BLAS threads)
    assert len(ours["experiments"]) == len(theirs["experiments"])
    for a, b in zip(ours["experiments"], theirs["experiments"], strict=True):
        assert a.keys() == b.keys()
        for key, va in a.items():
            vb = b[key]
            if isinstance(va, float):
                assert va == pytest.approx(vb, rel=1e-6, abs=1e-9), key
            else:
                assert va == vb, key


def test_run_demo_rejects_bad_arguments_before_writing(tmp_path):
    for bad, match in (
        (dict(steps=0), "steps must be a positive integer"),
        (dict(sizes=(10,)), "sizes must lie in"),
        (dict(sizes=(60,), steps=40), "too large for the smallest size"),
        (dict(sizes=(60, 70, 80, 90, 100)), "at most 4"),
        (dict(sizes=()), "at least one"),
        (dict(seed=-1), "seed"),
    ):
        kwargs = {"sizes": (60,), "steps": 10, "seed": 0, **bad}
        with pytest.raises(ValueError, match=match):
            run_demo(tmp_path / "bad", verbose=False, **kwargs)
    assert not (tmp_path / "bad").exists()


def test_demo_cli_help():
    proc = cli("demo", "--help")
    assert proc.returncode == 0
    for flag in ("--out", "--steps", "--sizes", "--seed", "--quiet"):
        assert flag in proc.stdout


def test_demo_cli_bad_steps_exits_nonzero_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = cli("demo", "--out", str(out), "--steps", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "deepcurvature demo: error: --steps must be a positive integer" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "5"], "sizes must lie in"),
        (["--sizes", "100", "--steps", "60"], "too large for the smallest size"),
        (["--sizes", "abc"], "invalid int value"),
    ],
)
def test_demo_command_bad_arguments_in_process(tmp_path, capsys, args, message):
    # the same entry point as the script, called in-process to keep the suite fast
    from deepcurvature.cli.main import main

    out = tmp_path / "never"
    try:
        status = main(["demo", "--out", str(out), *args])
    except SystemExit as exc:  # argparse's own type errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "demo" in err
    assert not out.exists()
