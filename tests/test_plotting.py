"""Figures: plot_spectrum from files and modes, plot_comparison (Figure 5), plot_training."""

import json
import math

import matplotlib.image
import numpy as np
import pytest
from matplotlib.container import BarContainer, StemContainer
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText

import deepcurvature as dc

MLP = {"hidden": [16]}


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run: an MLP trained 2 epochs on a digits subsample, and its Hessian spectrum."""
    run = tmp_path_factory.mktemp("plot-run") / "mlp-digits"
    trained = dc.train_network(
        run,
        "digits",
        model="mlp",
        model_kwargs=MLP,
        optimizer="SGD",
        optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
        epochs=2,
        subsample=300,
        seed=0,
        verbose=False,
    )
    result = dc.compute_eigenspectrum(
        "digits",
        None,
        model="mlp",
        model_kwargs=MLP,
        checkpoint_path=trained.final_checkpoint,
        lanczos_iters=10,
        save_spectrum_path=run / "spectra" / "spectrum-00002-hessian_lanczos",
        num_subsamples=100,
        seed=0,
        device="cpu",
        verbose=False,
    )
    return run, trained, result


@pytest.fixture(scope="module")
def wigner():
    P = 200
    H = dc.wigner(P, seed=3).numpy()
    exact = np.linalg.eigvalsh(H)
    density = dc.lanczos(H, 30, seed=4, verbose=False).density()
    return H, exact, density


def _stems(ax):
    return [c for c in ax.containers if isinstance(c, StemContainer)]


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _not_blank(fig, path):
    dc.save_figure(fig, path, dpi=50)
    img = matplotlib.image.imread(path)
    assert img[..., :3].std() > 0.05


# -- plot_spectrum from files ------------------------------------------------------------------
def test_plot_spectrum_paper_call_on_a_saved_spectrum_result(run_dir, tmp_path):
    run, _, result = run_dir
    npz = run / "spectra" / "spectrum-00002-hessian_lanczos.npz"
    fig = dc.plot_spectrum("lanczos", path=npz)  # the paper's call (Appendix D)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    (stems,) = _stems(ax)
    x, y = stems.markerline.get_data()
    np.testing.assert_allclose(np.sort(x), np.sort(result.density.nodes))
    np.testing.assert_allclose(np.sort(y), np.sort(np.maximum(result.density.weights, y.min())))
    title = ax.get_title()
    P = result.info["P"]
    assert "Hessian" in title and "mlp on digits" in title
    assert "m=10" in title and f"P = {P:,}" in title and "N = 100" in title
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "eigenvalue λ"
    # the same figure from the .json, from the name without suffix, from the path alone
    for source in (npz.with_suffix(".json"), npz.with_suffix("")):
        other = dc.plot_spectrum("lanczos", path=source)
        assert other.axes[0].get_title() == title
    assert dc.plot_spectrum(str(npz)).axes[0].get_title() == title
    # a SpectrumResult object gives the same title
    assert dc.plot_spectrum(result).axes[0].get_title() == title
    _not_blank(fig, tmp_path / "lanczos.png")


def test_plot_spectrum_from_a_spectral_density_file(wigner, tmp_path):
    _, _, density = wigner
    path = density.save(tmp_path / "wigner-density")
    fig = dc.plot_spectrum("lanczos", path=path)
    (stems,) = _stems(fig.axes[0])
    np.testing.assert_allclose(np.sort(stems.markerline.get_data()[0]), np.sort(density.nodes))
    assert fig.axes[0].get_title().startswith("Spectral density")
    assert "Lanczos m=30, 1 probe" in fig.axes[0].get_title()


def test_plot_spectrum_smooth_mode_default_width(wigner, tmp_path):
    _, _, density = wigner
    path = density.save(tmp_path / "d")
    fig = dc.plot_spectrum("smooth", path=path)
    _, mass_ax = fig.axes
    sigma = (density.lambda_max - density.lambda_min) / 50
    (line,) = [ln for ln in mass_ax.get_lines() if "Thm 5" in ln.get_label()]
    assert f"σ={sigma:.3g}" in line.get_label()
    # the smoothed curve is density.smooth(sigma) times the bin width
    gx, gy = line.get_data()
    _, expected = density.smooth(sigma, gx)
    width = float(mass_ax.get_ylabel().split("bin width ")[1].rstrip(")"))
    np.testing.assert_allclose(gy, expected * width, rtol=1e-2)


def test_plot_spectrum_cdf_mode_is_the_cumulative_mass(tmp_path):
    nodes = np.array([-2.0, -0.5, 0.5, 1.0, 3.0])
    weights = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    path = dc.SpectralDensity(nodes, weights, dim=5).save(tmp_path / "toy")
    fig = dc.plot_spectrum("cdf", path=path)
    ax = fig.axes[0]
    step = next(ln for ln in ax.get_lines() if ln.get_drawstyle() == "steps-post")
    x, y = step.get_data()
    np.testing.assert_allclose(x[1:-1], nodes)
    np.testing.assert_allclose(y[1:-1], np.cumsum(weights))
    assert y[0] == 0.0 and y[-1] == pytest.approx(1.0)
    (mark,) = [ln for ln in ax.get_lines() if "negative mass" in ln.get_label()]
    assert mark.get_data()[1][0] == pytest.approx(0.3)  # mass of the two negative nodes
    assert "F(λ)" in ax.get_ylabel()


def test_plot_spectrum_bad_calls(wigner, tmp_path):
    _, _, density = wigner
    path = density.save(tmp_path / "d")
    with pytest.raises(ValueError, match="needs the spectrum file"):
        dc.plot_spectrum("lanczos")
    with pytest.raises(ValueError, match="unknown plot_spectrum mode"):
        dc.plot_spectrum("histogram", path=path)
    with pytest.raises(ValueError, match="not both"):
        dc.plot_spectrum(density, path=path)
    with pytest.raises(FileNotFoundError, match="no result file"):
        dc.plot_spectrum("lanczos", path=tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", t=np.zeros(3))
    with pytest.raises(ValueError, match="not a spectrum file"):
        dc.plot_spectrum("lanczos", path=tmp_path / "other.npz")


# -- plot_comparison (Figure 5) ---------------------------------------------------------------
def test_plot_comparison_draws_three_normalised_distributions(wigner, tmp_path):
    H, exact, density = wigner
    diag = np.diag(H)
    fig = dc.plot_comparison(density, exact_eigenvalues=exact, diagonal=diag, bins=40)
    (ax,) = fig.axes
    (stems,) = _stems(ax)
    np.testing.assert_allclose(np.sort(stems.markerline.get_data()[0]), np.sort(density.nodes))
    np.testing.assert_allclose(np.sort(stems.markerline.get_data()[1]), np.sort(density.weights))
    exact_bars, diag_bars = _bars(ax)
    for bars in (exact_bars, diag_bars):
        assert len(bars.patches) == 40
        assert sum(p.get_height() for p in bars.patches) == pytest.approx(1.0)
    # common bin edges
    np.testing.assert_allclose(
        [p.get_x() for p in exact_bars.patches], [p.get_x() for p in diag_bars.patches]
    )
    # the bars hold the right masses: the diagonal histogram from numpy with the same edges
    edges = [p.get_x() for p in diag_bars.patches] + [diag_bars.patches[-1].get_x()]
    edges[-1] += diag_bars.patches[-1].get_width()
    counts, _ = np.histogram(diag, bins=np.array(edges))
    np.testing.assert_allclose([p.get_height() for p in diag_bars.patches], counts / diag.size)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("Lanczos m=30") and "weights sum to 1" in labels[0]
    assert "exact eigenvalues (P=200)" in labels[1] and "bar masses sum to 1" in labels[1]
    assert labels[2].startswith("diagonal approximation")
    assert "probability mass" in ax.get_ylabel() and ax.get_yscale() == "linear"
    # the summary table: ranges and second moments of each (equation 10: tr(H^2)/P vs mean H_ii^2)
    (box,) = [a for a in ax.artists if isinstance(a, AnchoredText)]
    text = box.txt.get_text()
    lines = {ln.split()[0]: ln for ln in text.splitlines()[1:]}
    assert f"[{exact.min():.3g}, {exact.max():.3g}]" in lines["exact"]
    assert f"{np.mean(exact**2):.3g}" in lines["exact"]
    assert f"[{diag.min():.3g}, {diag.max():.3g}]" in lines["diagonal"]
    assert f"{np.mean(diag**2):.3g}" in lines["diagonal"]
    assert f"{density.moment(2):.3g}" in lines["Lanczos"]
    _not_blank(fig, tmp_path / "cmp.png")


def test_plot_comparison_several_diagonals_log_scale_and_result_objects(wigner):
    H, _, density = wigner

    class DiagonalResult:  # the shape of a diagonal-approximation result object
        name = "Hutchinson diagonal"
        value = np.diag(H) + 0.1

    fig = dc.plot_comparison(
        density, diagonal={"exact diagonal": np.diag(H), "noisy": DiagonalResult()}, log_scale=True
    )
    (ax,) = fig.axes
    assert len(_bars(ax)) == 2 and ax.get_yscale() == "log"
    assert max(ax.get_yticks()) <= 1.0  # no tick above the largest possible mass
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1].startswith("exact diagonal") and labels[2].startswith("noisy")
    fig = dc.plot_comparison(density, diagonal=DiagonalResult())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[1].startswith("Hutchinson diagonal")


def test_plot_comparison_from_a_file_names_the_matrix(run_dir):
    run, _, result = run_dir
    npz = run / "spectra" / "spectrum-00002-hessian_lanczos.npz"
    fig = dc.plot_comparison(npz, diagonal=np.zeros(result.info["P"]))
    assert fig.axes[0].get_title().startswith("Hessian: Lanczos density vs")


def test_plot_comparison_bad_input(wigner):
    _, exact, density = wigner
    with pytest.raises(ValueError, match="needs something to compare"):
        dc.plot_comparison(density)
    with pytest.raises(ValueError, match="finite"):
        dc.plot_comparison(density, diagonal=[1.0, math.inf])
    with pytest.raises(ValueError, match="bins"):
        dc.plot_comparison(density, exact_eigenvalues=exact, bins=0)
    with pytest.raises(TypeError, match="SpectralDensity"):
        dc.plot_comparison(exact, exact_eigenvalues=exact)


# -- plot_training ------------------------------------------------------------------------------
def _line(ax, label):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return line.get_data()


def test_plot_training_on_a_real_run(run_dir, tmp_path):
    run, trained, _ = run_dir
    rows = json.loads((run / "stats.json").read_text())["rows"]
    fig = dc.plot_training(run)
    loss_ax, acc_ax, lr_ax, norm_ax = fig.axes
    epochs = [r["epoch"] for r in rows]
    x, y = _line(loss_ax, "train")
    np.testing.assert_allclose(x, epochs)
    np.testing.assert_allclose(y, [r["train_loss"] for r in rows])
    np.testing.assert_allclose(_line(loss_ax, "test")[1], [r["test_loss"] for r in rows])
    np.testing.assert_allclose(
        _line(acc_ax, "test")[1], [100 * r["test_accuracy"] for r in rows]
    )  # percent
    np.testing.assert_allclose(
        _line(acc_ax, "test top-5")[1], [100 * r["test_top5_accuracy"] for r in rows]
    )
    np.testing.assert_allclose(_line(lr_ax, "learning rate")[1], [r["lr"] for r in rows])
    np.testing.assert_allclose(_line(norm_ax, "‖w‖₂")[1], [r["weight_l2"] for r in rows])
    assert loss_ax.get_ylabel() == "loss (cross-entropy)" and acc_ax.get_ylabel() == "accuracy (%)"
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert lr_ax.get_yscale() == "linear"  # 0.05 -> 0.0255: less than a decade
    suptitle = fig.get_suptitle()
    assert "mlp on digits" in suptitle and "SGD (lr=0.05, momentum=0.9)" in suptitle
    # the stats.json path and the TrainResult give the same curves
    for source in (run / "stats.json", trained):
        other = dc.plot_training(source)
        np.testing.assert_allclose(_line(other.axes[0], "train")[1], y)
    _not_blank(fig, tmp_path / "training.png")


def _synthetic_stats(epochs=30, swa_start=20):
    rows = []
    for e in range(1, epochs + 1):
        row = {
            "epoch": e,
            "lr": 0.1 * 0.85 ** (e - 1),  # spans more than a decade
            "train_loss": 2.0 / e,
            "train_accuracy": 1 - 0.5 / e,
            "test_loss": None,
            "test_accuracy": None,
            "test_top5_accuracy": None,
        }
        if e % 5 == 0:  # eval_freq = 5
            row.update(test_loss=2.2 / e, test_accuracy=0.9 - 0.5 / e, test_top5_accuracy=0.99)
        if e > swa_start:
            row.update(swa_test_loss=0.05, swa_test_accuracy=0.93, swa_test_top5_accuracy=0.995)
        rows.append(row)
    config = {"model": "vgg16", "dataset": "cifar100", "swa": True, "swa_start": swa_start}
    return {"format": "deepcurvature-stats", "version": 1, "config": config, "rows": rows}


def test_plot_training_swa_gaps_and_log_learning_rate():
    doc = _synthetic_stats()
    fig = dc.plot_training(doc)
    loss_ax, acc_ax, lr_ax = fig.axes  # no weight norm recorded: three panels
    x, y = _line(loss_ax, "test")
    np.testing.assert_allclose(x, [5, 10, 15, 20, 25, 30])  # evaluated epochs only
    np.testing.assert_allclose(y, [2.2 / e for e in x])
    np.testing.assert_array_equal(_line(loss_ax, "SWA test")[0], np.arange(21, 31))
    assert {"SWA test", "SWA test top-5"} <= {ln.get_label() for ln in acc_ax.get_lines()}
    assert lr_ax.get_yscale() == "log" and "log scale" in lr_ax.get_ylabel()
    assert loss_ax.get_yscale() == "log"  # 2.0 -> 0.05 spans more than a decade
    for ax in fig.axes:  # the epoch SWA starts is marked on every panel
        assert "SWA from epoch 20" in [ln.get_label() for ln in ax.get_lines()]
    assert dc.plot_training(doc, log_loss=False).axes[0].get_yscale() == "linear"


def test_plot_training_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no stats.json"):
        dc.plot_training(tmp_path)
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        dc.plot_training(tmp_path / "stats.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        dc.plot_training(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"kind": "SpectrumResult"}))
    with pytest.raises(ValueError, match="not a training statistics file"):
        dc.plot_training(tmp_path / "other.json")
    with pytest.raises(ValueError, match="no epochs yet"):
        dc.plot_training({"format": "deepcurvature-stats", "rows": []})
    with pytest.raises(TypeError, match="run folder"):
        dc.plot_training(42)
