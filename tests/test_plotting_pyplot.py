"""Figures through pyplot (issue 16, section 2), ``ax=`` everywhere, the loss-statistics figure,
and command-line help that states each default once (section 4).

The backend is the non-interactive Agg (``conftest.py``): ``plt.show()`` returns at once.
"""

import inspect
import math
import re
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest

import deepcurvature as dc
import deepcurvature.plotting as plotting
from _helpers import cli
from deepcurvature.analysis.landscape import LandscapeResult
from deepcurvature.analysis.local_statistics import local_statistics
from deepcurvature.analysis.outliers import outliers
from deepcurvature.cli.main import build_parser, main
from deepcurvature.linalg.maxent import maxent_density
from deepcurvature.plotting.loss_stats import plot_loss_stats


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def wigner():
    H = dc.wigner(120, seed=3).numpy()
    exact = np.linalg.eigvalsh(H)
    density = dc.lanczos(H, 20, seed=4, verbose=False).density()
    return exact, density


def _landscape(ndim=1):
    t = np.linspace(-0.5, 0.5, 9)
    if ndim == 1:
        grid = np.stack([1 + t**2, 1 - 0.05 * t**2])
    else:
        grid = 1 + t[:, None] ** 2 + 0.5 * t[None, :] ** 2
    return LandscapeResult(
        t=t,
        labels=["Ritz #1", "Ritz #0"],
        kinds=["eigen", "eigen"],
        eigenvalues=np.array([2.0, 1.0]),
        ritz_indices=np.array([1, 0]),
        norms=np.ones(2),
        slopes=np.zeros(2),
        uhu=np.diag([2.0, 1.0]),
        thetas=np.array([2.0, 1.0]),
        train_loss=grid,
        test_loss=grid + 0.1,
        ndim=ndim,
    )


def _training_doc():
    rows = [
        {"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 1 - 0.5 / e, "lr": 0.1}
        for e in range(1, 6)
    ]
    return {"format": "deepcurvature-stats", "version": 1, "config": {}, "rows": rows}


def _loss_stats_doc(layers=True):
    rows, per_layer = [], []
    for j, epoch in enumerate((0, 5, 10)):
        scale = 10.0**-j
        rows.append({"epoch": epoch, "checkpoint": f"run/checkpoint-{epoch:05d}.pt",
                     "matrix": "hessian", "grad_var": 3.0 * scale, "curv_var": 0.2 * scale,
                     "curv_shrinkage": 0.3 + 0.1 * j, "curv_shrinkage_se": 0.02})  # fmt: skip
        per_layer.append(
            {
                name: {"grad_var": f * scale, "curv_var": 0.1 * f * scale, "curv_shrinkage": 0.2}
                for name, f in (("net.1", 1.0), ("net.3", 2.0))
            }
        )
    return {
        "format": "deepcurvature-loss-stats",
        "version": 1,
        "complete": True,
        "config": {"model": "mlp", "dataset": "digits", "curvature_matrix": "hessian"},
        "columns": list(rows[0]),
        "rows": rows,
        "layers": per_layer if layers else [],
    }


# -- section 2: the paper's display code shows its figures ----------------------------------------
def test_paper_snippet_registers_figures_with_pyplot(wigner, tmp_path):
    _, density = wigner
    spectrum = density.save(tmp_path / "spectrum-00100-ggn_lanczos")
    landscape = _landscape().save(tmp_path / "losslandscape-00300")
    assert plt.get_fignums() == []
    # Appendix C/D of the paper
    plotting.plot_spectrum("lanczos", path=spectrum)
    plotting.plot_loss_landscape(landscape)
    assert len(plt.get_fignums()) == 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")
        plt.show()  # Agg: returns at once
    assert plt.gcf().axes  # the last figure drawn is pyplot's current figure


@pytest.mark.parametrize(
    "name",
    ["spectrum", "cdf", "comparison", "landscape-1d", "landscape-2d", "training", "maxent",
     "outliers", "local-statistics", "loss-stats"],
)  # fmt: skip
def test_ax_draws_into_the_given_axes(name, wigner, tmp_path):
    exact, density = wigner
    spectrum = density.save(tmp_path / "spectrum")
    fig, ax = plt.subplots()
    calls = {
        "spectrum": lambda: dc.plot_spectrum(density, ax=ax),
        "cdf": lambda: dc.plot_spectrum("cdf", path=spectrum, ax=ax),
        "comparison": lambda: dc.plot_comparison(density, exact_eigenvalues=exact, ax=ax),
        "landscape-1d": lambda: dc.plot_loss_landscape(_landscape(), ax=ax),
        "landscape-2d": lambda: dc.plot_loss_landscape(_landscape(2), ax=ax, title="plane"),
        "training": lambda: dc.plot_training(_training_doc(), ax=ax),
        "maxent": lambda: plotting.plot_maxent(
            maxent_density(np.array([1.0, 0.0, 1.0, 0.0, 2.0]), (-2.2, 2.2)), density, ax=ax
        ),
        "outliers": lambda: plotting.plot_outliers(outliers(exact, "gap"), exact, ax=ax),
        "local-statistics": lambda: plotting.plot_local_statistics(local_statistics(exact), ax=ax),
        "loss-stats": lambda: plot_loss_stats(_loss_stats_doc(), ax=ax),
    }
    assert calls[name]() is fig
    assert plt.get_fignums() == [fig.number]  # no other figure was opened
    assert ax.lines or ax.collections or ax.patches or ax.containers
    if name == "landscape-2d":
        assert ax.get_title() == "plane"


def test_every_public_plot_function_accepts_ax():
    names = [n for n in plotting.__all__ if n.startswith("plot_")]
    assert {"plot_loss_landscape", "plot_training", "plot_loss_stats"} <= set(names)
    for n in names:
        assert "ax" in inspect.signature(getattr(plotting, n)).parameters, n


def test_landscape_into_one_axes_per_panel_and_bad_axes():
    fig, axes = plt.subplots(1, 2)
    assert dc.plot_loss_landscape(_landscape(), ax=axes) is fig
    assert [a.get_title() for a in axes] == ["Training loss", "Test loss"]
    _, three = plt.subplots(1, 3)
    with pytest.raises(ValueError, match="one matplotlib Axes or 2"):
        dc.plot_loss_landscape(_landscape(), ax=three)


def test_save_figure_close(tmp_path):
    fig = plot_loss_stats(_loss_stats_doc())
    assert plt.get_fignums() == [fig.number]
    dc.save_figure(fig, tmp_path / "kept.png")
    assert plt.get_fignums() == [fig.number]  # the default keeps it for plt.show()
    dc.save_figure(fig, tmp_path / "closed.png", close=True)
    assert plt.get_fignums() == [] and (tmp_path / "closed.png").stat().st_size > 0


# -- plot_loss_stats -----------------------------------------------------------------------------
def test_plot_loss_stats_panels():
    fig = dc.plot_loss_stats(_loss_stats_doc())
    grad, curv, rho = fig.axes
    assert "Gradient noise" in grad.get_title() and "Curvature noise" in curv.get_title()
    assert "Shrinkage" in rho.get_title() and rho.get_ylim() == (-0.02, 1.02)
    labels = [ln.get_label() for ln in grad.get_lines()]
    assert labels == ["whole model", "net.1", "net.3"]
    x, y = grad.get_lines()[0].get_data()
    np.testing.assert_array_equal(x, [0, 5, 10])
    np.testing.assert_allclose(y, [3.0, 0.3, 0.03])
    assert grad.get_yscale() == "log" and curv.get_yscale() == "log"  # two decades
    assert rho.containers  # the standard error of the whole model's shrinkage
    assert "Hessian" in fig.get_suptitle() and "mlp on digits" in fig.get_suptitle()
    assert dc.plot_loss_stats(_loss_stats_doc(), log=False).axes[0].get_yscale() == "linear"
    # without per-layer values: the whole model only; one quantity
    fig = dc.plot_loss_stats(_loss_stats_doc(layers=False), quantities=["curv_shrinkage"])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["whole model"]


def test_plot_loss_stats_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not a loss statistics file"):
        dc.plot_loss_stats({"format": "deepcurvature-stats", "rows": []})
    with pytest.raises(ValueError, match="no rows"):
        dc.plot_loss_stats({**_loss_stats_doc(), "rows": [], "layers": []})
    with pytest.raises(ValueError, match="quantities must be among"):
        dc.plot_loss_stats(_loss_stats_doc(), quantities=["loss"])
    with pytest.raises(FileNotFoundError):
        dc.plot_loss_stats(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="compute_loss_stats"):
        dc.plot_loss_stats(42)
    assert plt.get_fignums() == []


def test_cli_plot_of_a_real_loss_stats_file_closes_its_figures(tmp_path, capsys):
    out = cli("stats", "--quiet", "--train-epochs", "1", "--probes", "2", "--num-batches", "2",
              "--out", str(tmp_path / "st"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    file = tmp_path / "st" / "loss_stats.json"
    kind, found = dc.report.detect_result(file)
    assert (kind, found) == ("loss-stats", file)
    kept = plt.figure()  # a figure of the caller stays open
    assert main(["plot", str(file), "--pdf"]) == 0
    png = tmp_path / "st" / "loss_stats.png"
    assert png.stat().st_size > 0 and png.with_suffix(".pdf").is_file()
    assert str(png) in capsys.readouterr().out
    assert plt.get_fignums() == [kept.number]  # nothing drawn by the command stays open
    # the figure itself: the file's rows, one line per layer
    fig = dc.plot_loss_stats(file)
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["whole model", "net.1", "net.3", "net.5"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [0, 1])
    assert all(math.isfinite(v) for v in lines[0].get_ydata())


def test_report_closes_its_figures(wigner, tmp_path):
    _, density = wigner
    density.save(tmp_path / "spectrum")
    _landscape().save(tmp_path / "landscape")
    kept = plt.figure()
    html = dc.report.render_report(tmp_path, dpi=30)
    assert html.count("<img") >= 2
    assert plt.get_fignums() == [kept.number]


# -- section 4: each default once in the command-line help ----------------------------------------
def test_cli_help_states_each_default_once():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert {"spectrum", "train", "stats", "landscape", "plot"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = p.format_help()
        options = re.split(r"\n  (?=-)", text)
        for option in options[1:]:
            flat = " ".join(option.split())
            assert flat.count("(default") <= 1, (name, flat)
    train = " ".join(sub.choices["train"].format_help().split())
    assert "number of epochs (default 20)" in train and "(default 20) (default" not in train
    assert "(default: False)" in train  # argparse still adds the defaults not stated in words
