"""Figures: plot_spectrum from files and modes, plot_comparison (Figure 5), plot_training.

Layout checks draw the figure with the Agg renderer and compare window extents (pixels): boxes
must not overlap each other, the data or the figure's edge.
"""

import itertools
import json
import math

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer, StemContainer
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredText
from matplotlib.ticker import PercentFormatter
from matplotlib.transforms import Bbox

import deepcurvature as dc
from _helpers import trained_run
from deepcurvature.analysis.landscape import LandscapeResult
from deepcurvature.plotting.style import PercentTickFormatter, percent_decimals


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run: an MLP trained 2 epochs on a digits subsample, and its Hessian spectrum."""
    run = tmp_path_factory.mktemp("plot-run") / "mlp-digits"
    trained, result, _ = trained_run(run)
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


def _drawn(fig):
    """Draw ``fig`` with Agg (layout engine included): window extents are then final."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _table_text(ax):
    """The summary table of plot_comparison: a box of its own, or the legend's title."""
    boxes = [a for a in ax.artists if isinstance(a, AnchoredText)]
    if boxes:
        return boxes[0].txt.get_text()
    return ax.get_legend().get_title().get_text()


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


# -- plot_spectrum: the mass axis of the histogram -------------------------------------------
@pytest.fixture(scope="module")
def marchenko_pastur_q2():
    """X X^T / T with P = 2T (q = 2): half of the exact eigenvalues are zero (an atom of 0.5)."""
    P, q = 300, 2.0
    H = dc.wishart(P, round(P / q), seed=5).numpy()
    exact = np.linalg.eigvalsh(H)
    density = dc.lanczos(H, 30, seed=6, verbose=False).density()
    return q, exact, density


def _mp_plot(mp, **kwargs):
    q, exact, density = mp
    return dc.plot_spectrum(
        density,
        exact_eigenvalues=exact,
        reference=lambda x: dc.marchenko_pastur_density(x, q),
        reference_atoms=[(0.0, dc.marchenko_pastur_atom(q))],
        bins=40,
        **kwargs,
    )


def _clipped_notes(mass_ax):
    return [t for t in mass_ax.texts if t.get_gid() == "clipped mass"]


def test_plot_spectrum_clips_the_mass_axis_to_the_bulk_below_an_atom(marchenko_pastur_q2):
    """Issue: an atom of mass 0.5 at zero flattened the bulk histogram to nothing."""
    _, exact, _ = marchenko_pastur_q2
    zero_mass = float(np.mean(np.abs(exact) < 1e-8))
    assert zero_mass == pytest.approx(0.5)
    fig = _mp_plot(marchenko_pastur_q2)
    ax, mass_ax = fig.axes
    assert fig.mass_axis is mass_ax and ax.mass_axis is mass_ax  # the twin axis, exposed
    (bars,) = _bars(mass_ax)
    heights = np.array([p.get_height() for p in bars.patches])
    assert heights.sum() == pytest.approx(1.0)  # the data is untouched: the bar at 0 holds 0.5
    k = int(np.argmax(heights))
    assert heights[k] == pytest.approx(zero_mass)
    bulk = np.delete(heights, k)
    top = mass_ax.get_ylim()[1]
    # the axis is the bulk's: its largest bar fills a good part of the axis (not 1/20 of it)
    assert mass_ax.get_ylim()[0] == 0.0 and bulk.max() < top < 5 * bulk.max()
    assert top < 0.25 * heights[k]
    # the bar at 0 is cut at the top of the bulk and its mass written there
    renderer = _drawn(fig)
    cut_px = bars.patches[k].get_clip_box().y1
    assert cut_px < mass_ax.bbox.y1 - 10
    assert cut_px == pytest.approx(mass_ax.transData.transform((0.0, 1.25 * bulk.max()))[1])
    (note,) = _clipped_notes(mass_ax)
    assert note.get_text() == "↑ mass 0.5 (law: 0.5)"
    assert note.get_window_extent(renderer).y0 >= cut_px - 1
    # the legend box holds the summary (narrow axes): it is above the note, not on it
    assert not note.get_window_extent(renderer).overlaps(
        ax.get_legend().get_window_extent(renderer)
    )
    # the atom's diamond is drawn at the cut, visible
    (atom,) = [ln for ln in mass_ax.get_lines() if ln.get_label() == "atom of the law"]
    assert atom.get_ydata()[0] == pytest.approx(1.25 * bulk.max())
    # clip_mass=False: the whole axis, the bulk flat; no note
    whole = _mp_plot(marchenko_pastur_q2, clip_mass=False).mass_axis
    assert whole.get_ylim()[1] > heights[k] and not _clipped_notes(whole)


def test_plot_spectrum_log_and_explicit_mass_axis(marchenko_pastur_q2, tmp_path):
    _, exact, _ = marchenko_pastur_q2
    fig = _mp_plot(marchenko_pastur_q2, mass_scale="log")
    mass_ax = fig.mass_axis
    assert mass_ax.get_yscale() == "log" and "log scale" in mass_ax.get_ylabel()
    lo, hi = mass_ax.get_ylim()
    assert lo <= 1.0 / exact.size and hi > 0.5  # one eigenvalue's bar and the atom's both show
    assert max(mass_ax.get_yticks()) <= 1.0 and not _clipped_notes(mass_ax)
    _not_blank(fig, tmp_path / "log-mass.png")
    fig = _mp_plot(marchenko_pastur_q2, mass_ylim=(0.0, 0.04))
    assert fig.mass_axis.get_ylim() == (0.0, 0.04) and not _clipped_notes(fig.mass_axis)
    # linear weights: the stems share the mass axis, which mass_ylim sets and nothing clips
    fig = _mp_plot(marchenko_pastur_q2, log_weights=False, mass_ylim=(0.0, 0.6))
    (ax,) = fig.axes
    assert fig.mass_axis is ax and ax.get_ylim() == (0.0, 0.6)
    assert _mp_plot(marchenko_pastur_q2, log_weights=False).mass_axis.get_ylim()[1] > 0.5
    # nothing in mass: no mass axis
    _, _, density = marchenko_pastur_q2
    assert dc.plot_spectrum(density).mass_axis is None


def test_plot_spectrum_does_not_clip_a_spectrum_without_atoms(wigner):
    _, exact, density = wigner
    fig = dc.plot_spectrum(density, exact_eigenvalues=exact, bins=30)
    mass_ax = fig.mass_axis
    (bars,) = _bars(mass_ax)
    assert mass_ax.get_ylim()[1] > max(p.get_height() for p in bars.patches)
    assert not _clipped_notes(mass_ax)
    assert all(p.get_clip_box().y1 >= mass_ax.bbox.y1 - 1 for p in bars.patches)


def test_plot_spectrum_mass_axis_bad_options(marchenko_pastur_q2):
    _, _, density = marchenko_pastur_q2
    with pytest.raises(ValueError, match="mass_scale must be"):
        _mp_plot(marchenko_pastur_q2, mass_scale="sqrt")
    with pytest.raises(ValueError, match="keep log_weights=True"):
        _mp_plot(marchenko_pastur_q2, mass_scale="log", log_weights=False)
    with pytest.raises(ValueError, match="pair"):
        _mp_plot(marchenko_pastur_q2, mass_ylim=0.5)
    with pytest.raises(ValueError, match="low < high"):
        _mp_plot(marchenko_pastur_q2, mass_ylim=(0.5, 0.1))
    with pytest.raises(ValueError, match="needs mass_ylim"):
        _mp_plot(marchenko_pastur_q2, mass_scale="log", mass_ylim=(0.0, 1.0))
    with pytest.raises(ValueError, match="exact_eigenvalues, reference"):
        dc.plot_spectrum(density, mass_ylim=(0.0, 1.0))


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
    text = _table_text(ax)
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
    with pytest.raises(ValueError, match="placement must be one of"):
        dc.plot_comparison(density, exact_eigenvalues=exact, placement="left")


def _data_extents(ax, renderer):
    """Window extents of the bars' and stems' tops: what a box in the axes must not cover."""
    out = [p.get_window_extent(renderer) for bars in _bars(ax) for p in bars.patches]
    (stems,) = _stems(ax)
    xy = ax.transData.transform(np.column_stack(stems.markerline.get_data()))
    out += [Bbox([p - 2.0, p + 2.0]) for p in xy]  # markers: +-2 pixels
    return [e for e in out if e.height > 0]


@pytest.mark.parametrize(
    ("figsize", "panels", "placement"),
    [
        ((16.0, 5.0), 2, "side"),
        ((12.0, 5.0), 2, "stacked"),
        ((7.5, 4.8), 1, "stacked"),  # plot_comparison's own figure size
        ((10.0, 5.0), 2, None),  # borderline: the first panel is judged before the second is
        ((8.0, 5.5), 2, "below"),
        ((4.2, 4.5), 1, "below"),  # the legend's labels on two lines, the title wrapped
    ],
)
def test_plot_comparison_legend_and_table_never_overlap(wigner, figsize, panels, placement):
    """Issue: on axes ~7 in wide or less the table (upper left) and legend (upper right)
    overlapped, hiding the "2nd moment" column. Now they go side by side only when they fit,
    else in one box in the corner, else below the x label; nothing overlaps, nothing is cut."""
    H, exact, density = wigner
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        dc.plot_comparison(density, exact_eigenvalues=exact, diagonal=np.diag(H), ax=ax)
    renderer = _drawn(fig)
    figbox = fig.bbox
    all_boxes = []
    for ax in axes:
        leg = ax.get_legend()
        tables = [a for a in ax.artists if isinstance(a, AnchoredText)]
        boxes = [leg.get_window_extent(renderer)]
        boxes += [t.get_window_extent(renderer) for t in tables]
        table = _table_text(ax)
        assert "2nd moment" in table.splitlines()[0]  # the whole table, in one box or another
        assert {ln.split()[0] for ln in table.splitlines()[1:]} == {"Lanczos", "exact", "diagonal"}
        below = leg.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0
        if placement == "side":
            assert len(tables) == 1 and not leg.get_title().get_text()
        elif placement is not None:  # the table is the title of the legend: one box
            assert not tables and leg.get_title().get_text() == table
            assert below == (placement == "below")
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)
        for box in [*boxes, ax.title.get_window_extent(renderer)]:  # all in the figure
            assert figbox.x0 - 1 <= box.x0 and box.x1 <= figbox.x1 + 1
            assert figbox.y0 - 1 <= box.y0 and box.y1 <= figbox.y1 + 1
        axbox = ax.get_window_extent(renderer)
        if below:  # under the tick labels and the x label
            xaxis = ax.xaxis.get_tightbbox(renderer)
            assert boxes[0].y1 <= xaxis.y0 + 1 and boxes[0].y1 < axbox.y0
        else:  # in the axes, above the bars and stems
            for box in boxes:
                assert axbox.contains(box.x0 + 1, box.y0 + 1) and box.y1 <= axbox.y1 + 1
                for data in _data_extents(ax, renderer):
                    assert not box.overlaps(data), (box, data)
        all_boxes += boxes
    for a, b in itertools.combinations(all_boxes, 2):  # nor across panels
        assert not a.overlaps(b)


def test_plot_comparison_forced_placements(wigner):
    _, exact, density = wigner
    fig = Figure(figsize=(12.0, 5.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    dc.plot_comparison(density, exact_eigenvalues=exact, ax=left, placement="stacked")
    dc.plot_comparison(density, exact_eigenvalues=exact, ax=right, placement="below")
    for ax in (left, right):
        assert not [a for a in ax.artists if isinstance(a, AnchoredText)]
        assert _table_text(ax).splitlines()[1].startswith("Lanczos")
        assert len(ax.get_legend().get_texts()) == 2
    renderer = _drawn(fig)
    assert right.get_legend().get_window_extent(renderer).y1 < right.bbox.y0
    assert left.bbox.contains(*left.get_legend().get_window_extent(renderer).p0)
    # only the table (no legend): alone, in the upper left corner
    fig = dc.plot_comparison(density, exact_eigenvalues=exact, legend=False)
    (ax,) = fig.axes
    assert ax.get_legend() is None
    (box,) = [a for a in ax.artists if isinstance(a, AnchoredText)]
    assert "2nd moment" in box.txt.get_text()
    # the y-limits follow the axes as drawn: a shorter figure leaves more room for the box ...
    tallest = max(p.get_height() for p in _bars(ax)[0].patches)
    renderer = _drawn(fig)
    top = ax.get_ylim()[1]
    assert ax.transData.transform((0, tallest))[1] < box.get_window_extent(renderer).y0
    fig.set_size_inches(7.5, 3.0)
    renderer = _drawn(fig)
    assert ax.get_ylim()[1] > 1.05 * top
    assert ax.transData.transform((0, tallest))[1] < box.get_window_extent(renderer).y0
    # ... and limits set by hand are kept
    ax.set_ylim(0.0, 2.0)
    _drawn(fig)
    assert ax.get_ylim() == (0.0, 2.0)


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


# -- plot_loss_landscape: percent tick labels ----------------------------------------------------
def _accuracy_landscape(low, high):
    """A 1-D landscape along two directions whose accuracies span [low, high]."""
    t = np.linspace(-0.5, 0.5, 11)
    up = low + (high - low) * (1 - 4 * t**2)  # peaks at high
    line = low + (high - low) * (t + 0.5)
    acc = np.stack([up, line])
    return LandscapeResult(
        t=t,
        labels=["Ritz #1", "Ritz #0"],
        kinds=["eigen", "eigen"],
        eigenvalues=np.array([2.0, -0.1]),
        ritz_indices=np.array([1, 0]),
        norms=np.ones(2),
        slopes=np.zeros(2),
        uhu=np.diag([2.0, -0.1]),
        thetas=np.array([2.0, -0.1]),
        train_loss=np.stack([1 + t**2, 1 - 0.05 * t**2]),
        train_accuracy=acc,
        test_accuracy=acc - 0.002,
    )


def _shown_tick_labels(ax):
    lo, hi = ax.get_ylim()
    ticks = ax.yaxis.get_major_ticks()
    return [
        t.label1.get_text()
        for t, loc in zip(ticks, ax.get_yticks(), strict=True)
        if lo <= loc <= hi
    ]


@pytest.mark.parametrize(("low", "high", "decimals"), [(0.215, 0.236, 1), (0.6, 1.0, 0)])
def test_plot_loss_landscape_accuracy_tick_labels_are_unique(low, high, decimals):
    """Issue: "22%" twice on a narrow accuracy range (ticks 22.0 and 22.5, 0 decimals)."""
    fig = dc.plot_loss_landscape(_accuracy_landscape(low, high), metric="accuracy")
    _drawn(fig)
    for ax in fig.axes:
        labels = _shown_tick_labels(ax)
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
        assert all(lab.endswith("%") for lab in labels)
        # as many decimals as the spacing needs: "22.5%", and "95%" rather than "95.0%"
        assert {len(lab.split(".")[1]) - 1 if "." in lab else 0 for lab in labels} == {decimals}
        locs = [loc for loc in ax.get_yticks() if ax.get_ylim()[0] <= loc <= ax.get_ylim()[1]]
        np.testing.assert_allclose([float(lab[:-1]) for lab in labels], locs, atol=1e-9)
    if decimals:  # the old formatter (0 decimals) writes these ticks with a repeat
        ax = fig.axes[0]
        old = PercentFormatter(decimals=0)
        locs = [loc for loc in ax.get_yticks() if ax.get_ylim()[0] <= loc <= ax.get_ylim()[1]]
        assert len({old.format_pct(x, 100) for x in locs}) < len(locs)


def test_percent_tick_formatter():
    assert percent_decimals([20.0, 22.5, 25.0]) == 1
    assert percent_decimals([60.0, 70.0, 80.0]) == 0
    assert percent_decimals([0.1, 0.2, 0.1 + 0.2]) == 1  # float noise is not a decimal
    assert percent_decimals([21.75, 22.0, 22.25]) == 2
    assert percent_decimals([5.0]) == 0
    fmt = PercentTickFormatter()
    fmt.set_locs([97.5, 98.0, 98.5])
    assert [fmt(x) for x in (97.5, 98.0)] == ["97.5%", "98.0%"]
    assert fmt.format_data_short(97.512) == "97.512%"


# -- plot_training: several runs, training error, wall-clock time (Figure 1) ----------------------
def _timed_stats(optimizer, lr, accuracies, times):
    rows = [
        {"epoch": e, "train_accuracy": a, "train_loss": 1.0 - a, "time": t}
        for e, (a, t) in enumerate(zip(accuracies, times, strict=True), start=1)
    ]
    config = {"optimizer": optimizer, "optimizer_kwargs": {"lr": lr}}
    return {"format": "deepcurvature-stats", "version": 1, "config": config, "rows": rows}


def test_plot_training_overlays_runs_against_epoch_and_time(run_dir, tmp_path):
    newton = _timed_stats("LanczosNewton", 0.1, [0.5, 0.8, 0.9], [4.0, 4.0, 5.0])
    adam = _timed_stats("Adam", 1e-3, [0.2, 0.4, 0.6], [0.5, 0.5, 0.5])
    fig = Figure(figsize=(10, 4), layout="constrained")
    by_epoch, by_time = fig.subplots(1, 2)
    out = dc.plot_training([newton, adam], ax=by_epoch)
    assert out is fig and len(fig.axes) == 2
    x, y = _line(by_epoch, "LanczosNewton (lr=0.1)")
    np.testing.assert_allclose(x, [1, 2, 3])
    np.testing.assert_allclose(y, [50.0, 20.0, 10.0])  # training error 1 - accuracy, in percent
    np.testing.assert_allclose(_line(by_epoch, "Adam (lr=0.001)")[1], [80.0, 60.0, 40.0])
    assert by_epoch.get_xlabel() == "epoch" and by_epoch.get_ylabel() == "training error (%)"
    # wall-clock: the cumulative training time; labels from a mapping's keys
    dc.plot_training({"Newton": newton, "Adam": adam}, x="time", ax=by_time, title="time")
    np.testing.assert_allclose(_line(by_time, "Newton")[0], [4.0, 8.0, 13.0])
    np.testing.assert_allclose(_line(by_time, "Adam")[0], [0.5, 1.0, 1.5])
    assert "time" in by_time.get_xlabel() and by_time.get_title() == "time"
    # any column as the metric; a new figure without ax
    loss_fig = dc.plot_training([newton], metric="train_loss", labels=["N"], log_loss=False)
    np.testing.assert_allclose(_line(loss_fig.axes[0], "N")[1], [0.5, 0.2, 0.1])
    acc_fig = dc.plot_training([newton], metric="train_accuracy")
    np.testing.assert_allclose(_line(acc_fig.axes[0], "LanczosNewton (lr=0.1)")[1], [50, 80, 90])
    assert acc_fig.axes[0].get_ylabel() == "train accuracy (%)"
    # a real run's stats.json: per-epoch times are recorded, and the single-run panels take x
    run, _, _ = run_dir
    rows = json.loads((run / "stats.json").read_text())["rows"]
    single = dc.plot_training(run, x="time")
    np.testing.assert_allclose(
        _line(single.axes[0], "train")[0], np.cumsum([r["time"] for r in rows])
    )
    assert all("time" in a.get_xlabel() for a in single.axes)
    _not_blank(fig, tmp_path / "comparison.png")


def test_plot_training_comparison_bad_input():
    newton = _timed_stats("LanczosNewton", 0.1, [0.5, 0.8], [1.0, 1.0])
    with pytest.raises(ValueError, match="x must be one of"):
        dc.plot_training([newton], x="step")
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        dc.plot_training([newton], labels=["a", "b"])
    with pytest.raises(ValueError, match="no numeric 'test_loss'"):
        dc.plot_training([newton], metric="test_loss")
    with pytest.raises(ValueError, match="at least one run"):
        dc.plot_training([])
    del newton["rows"][1]["time"]
    with pytest.raises(ValueError, match="epoch 2 has no training 'time'"):
        dc.plot_training([newton], x="time")
