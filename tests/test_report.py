"""``deepcurvature plot`` and ``deepcurvature report`` on a real run folder, and the HTML page."""

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import deepcurvature as dc
from _helpers import cli as run_cli
from _helpers import trained_run
from deepcurvature.cli.main import main
from deepcurvature.io import save_npz_json
from deepcurvature.report import detect_result, scan_run, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("x")</script> & <b>bold</b>'


def cli(*args, cwd=None):
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run folder: training, a spectrum with eigenvectors, a landscape, statistics."""
    root = tmp_path_factory.mktemp("report") / "mlp-digits"
    trained, _, spectrum = trained_run(root, save_eigvec=True)
    landscape = None
    if hasattr(dc, "build_loss_landscape"):
        landscape = root / "losslandscape-00002.npz"
        dc.build_loss_landscape(
            "digits",
            None,
            dist=0.5,
            n_points=5,
            spectrum_path=spectrum,
            checkpoint_path=trained.final_checkpoint,
            save_path=landscape,
            directions="extremes:1",
            num_subsamples=100,
            device="cpu",
            verbose=False,
        )
    stats = {
        "format": "deepcurvature-loss-stats",
        "config": {"model": "mlp", "note": EVIL},
        "columns": ["epoch", "loss", "grad_var", "curv_var", "curv_shrinkage"],
        "rows": [
            {"epoch": 0, "loss": 2.31, "grad_var": 0.5, "curv_var": 0.1, "curv_shrinkage": 0.3},
            {"epoch": 2, "loss": 2.1, "grad_var": 0.2, "curv_var": 0.05, "curv_shrinkage": 0.4},
        ],
        "layers": [
            {"net.1": {"grad_var": 0.3, "curv_var": 0.06, "curv_shrinkage": 0.2}},
            {"net.1": {"grad_var": 0.1, "curv_var": 0.03, "curv_shrinkage": 0.3}},
        ],
    }
    (root / "loss_stats.json").write_text(json.dumps(stats))
    (root / "extra.csv").write_text("epoch,loss\n0,2.3\n2,2.1\n")
    save_npz_json(  # an npz + JSON result of a kind without a figure
        root / "stats" / "layer_stats", {"grad_var": np.ones((3, 7))}, {"kind": "LossStats"}
    )
    (root / "notes.txt").write_text("free text")
    return {
        "root": root,
        "spectrum": spectrum.with_name(spectrum.name + ".npz"),
        "landscape": landscape,
        "checkpoint": trained.final_checkpoint,
    }


def _valid_png(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05  # not blank
    return img


# -- detection ------------------------------------------------------------------------------------
def test_detect_result_tells_the_kinds_apart(run, tmp_path):
    root = run["root"]
    assert detect_result(root) == ("training", root / "stats.json")
    assert detect_result(root / "stats.json")[0] == "training"
    npz = run["spectrum"]
    for source in (npz, npz.with_suffix(".json"), npz.with_suffix("")):
        assert detect_result(source) == ("spectrum", npz)
    assert detect_result(run["checkpoint"])[0] == "checkpoint"
    if run["landscape"] is not None:
        assert detect_result(run["landscape"]) == ("landscape", run["landscape"])
    with pytest.raises(ValueError, match="cannot tell what"):
        detect_result(root / "notes.txt")
    with pytest.raises(ValueError, match="'LossStats' result, which has no figure"):
        detect_result(root / "stats" / "layer_stats.npz")
    with pytest.raises(ValueError, match="'kind': 'Mystery'"):
        (tmp_path / "m.json").write_text('{"kind": "Mystery"}')
        detect_result(tmp_path / "m.json")
    with pytest.raises(ValueError, match="folder without stats.json"):
        detect_result(tmp_path)
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        detect_result(tmp_path / "missing.npz")


def test_scan_run_finds_every_result(run):
    found = scan_run(run["root"])
    root = run["root"]
    assert found.training == [root / "stats.json"]
    assert found.spectra == [run["spectrum"]]
    assert [p.name for p in found.checkpoints] == ["checkpoint-00000.pt", "checkpoint-00002.pt"]
    names = sorted(p.name for p in found.statistics)
    assert names == ["extra.csv", "layer_stats.json", "loss_stats.json"]
    others = [p.name for p in found.other]  # figures other tests write may be there too
    assert "notes.txt" in others and all(n.endswith((".png", ".pdf", ".txt")) for n in others)
    if run["landscape"] is not None:
        assert found.landscapes == [run["landscape"]]


# -- deepcurvature plot ---------------------------------------------------------------------------
def test_cli_plot_writes_the_matching_figures(run, tmp_path):
    root = run["root"]
    res = cli("plot", str(root))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(root / "training.png")
    _valid_png(root / "training.png")

    out = tmp_path / "figs" / "spectrum.png"
    res = cli("plot", str(run["spectrum"]), "--out", str(out), "--pdf", "--dpi", "60")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(out), str(out.with_suffix(".pdf"))]
    img = _valid_png(out)
    assert img.shape[:2] == (270, 420)  # 7 x 4.5 inches at 60 dpi
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in out.parent.iterdir()) == ["spectrum.pdf", "spectrum.png"]


@pytest.mark.skipif(not hasattr(dc, "plot_loss_landscape"), reason="no landscape plotting")
def test_cli_plot_dispatches_landscapes(run):
    res = cli("plot", str(run["landscape"]), "--metric", "accuracy")
    assert res.returncode == 0, res.stderr
    written = Path(res.stdout.strip())
    assert written == run["landscape"].with_name("losslandscape-00002-accuracy.png")
    _valid_png(written)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{root}/notes.txt"], "cannot tell what {root}/notes.txt holds from its name"),
        (["missing.npz"], "no file or folder"),
        (["{ckpt}"], "is a checkpoint"),
        (["{spectrum}", "--out", "{tmp}/x.jpg"], "--out must end with .png"),
        (["{root}", "--mode", "cdf"], "applies to spectra only"),
        (["{spectrum}", "--metric", "accuracy"], "applies to landscapes only"),
        (["{tmp}"], "folder without stats.json"),
    ],
)
def test_cli_plot_bad_arguments(run, tmp_path, capsys, args, message):
    fill = {"ckpt": run["checkpoint"], "spectrum": run["spectrum"], "root": run["root"]}
    args = [a.format(tmp=tmp_path, **fill) for a in args]
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcurvature plot: error: ") and message.format(**fill) in err
    assert not list(tmp_path.iterdir())  # nothing written


# -- deepcurvature report -------------------------------------------------------------------------
class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.text, self.hrefs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.hrefs.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    res = cli("report", str(run["root"]), "--out", str(out), "--title", "Run <1> & co")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    return out


def test_report_is_self_contained_with_valid_embedded_pngs(run, report):
    text = report.read_text()
    parser = _Collector()
    parser.feed(text)
    n_landscape = 2 if run["landscape"] is not None else 0  # loss and accuracy
    # training curves, spectrum, loss statistics, landscapes
    assert len(parser.images) == 3 + n_landscape
    assert any(img["alt"] == "loss statistics from loss_stats.json" for img in parser.images)
    for img in parser.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        _valid_png(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert img.get("alt")
    # no external resources, no scripts: only in-page anchors
    assert "script" not in parser.tags and "link" not in parser.tags
    assert all(h.startswith("#") for h in parser.hrefs)
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", text)
    # every section is there, with the numbers of the files
    visible = "".join(parser.text)
    for heading in ("Configuration", "Training", "Spectra", "Statistics", "Checkpoints"):
        assert heading in visible
    assert "checkpoint-00002.pt" in visible and "notes.txt" in visible
    summary = json.loads(run["spectrum"].with_suffix(".json").read_text())["summary"]
    assert f"{summary['lambda_max']:.6g}" in visible and f"{summary['P']}" in visible
    rows = json.loads((run["root"] / "stats.json").read_text())["rows"]
    assert f"{rows[-1]['train_loss']:.6g}" in visible
    if run["landscape"] is not None:
        assert "Loss landscapes" in visible
    assert "Arrays in layer_stats.npz" in visible and "[3, 7]" in visible


def test_report_escapes_all_text(report):
    text = report.read_text()
    assert EVIL not in text and "<script>" not in text
    assert html.escape(EVIL, quote=True) in text
    assert "<title>Run &lt;1&gt; &amp; co</title>" in text


def test_report_is_written_atomically_next_to_nothing_else(report):
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # no temporary files


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium): browser check skipped")
    # instrument a copy: record for every image whether the browser decoded it; the last image
    # is a deliberately broken one, to prove the check can fail
    probe = """<img src="data:image/png;base64,AAAA" alt="broken on purpose">
<script>
window.addEventListener('load', function () {
  var out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = JSON.stringify(Array.prototype.map.call(document.images, function (i) {
    return [i.complete && i.naturalWidth > 0, i.naturalWidth];
  }));
  document.body.appendChild(out);
});
</script></body>"""
    page = tmp_path / "instrumented.html"
    page.write_text(report.read_text().replace("</body>", probe))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    res = subprocess.run(
        [browser, *flags, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'<pre id="img-check">([^<]*)</pre>', res.stdout)
    assert match, f"no image report in the DOM: {res.stderr[-2000:]}"
    status = json.loads(match.group(1))
    *real, broken = status
    assert len(real) == report.read_text().count("<img ") >= 2
    assert all(ok and width > 100 for ok, width in real)
    assert broken == [False, 0]
    # a screenshot of the real page is not blank
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [browser, *flags, "--window-size=1200,1600", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), res.stderr[-2000:]
    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1600, 1200) and img[..., :3].std() > 0.05


def test_report_api_keeps_going_past_a_damaged_file(run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(run["root"], root)
    bad = root / "spectra" / "broken"
    (bad.with_suffix(".npz")).write_bytes(b"not an npz file")
    bad.with_suffix(".json").write_text(json.dumps({"kind": "SpectrumResult"}))
    with pytest.warns(UserWarning, match="could not plot spectra/broken.npz"):
        out = write_report(root)
    assert out == root / "report.html"
    text = out.read_text()
    assert 'class="error"' in text and "1 file(s) could not be shown" in text
    assert text.count("data:image/png;base64,") >= 2  # the good results are still there
    # a second report lists the first one among the other files, but not itself
    assert "report.html" in [p.name for p in scan_run(root).other]
    assert "report.html" not in [p.name for p in scan_run(root, exclude=[out]).other]


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", ["{tmp}/empty"], "no results found"),
        ("file", ["{tmp}/file.txt"], "use 'deepcurvature plot'"),
        ("missing", ["{tmp}/missing"], "no run folder"),
        ("run", ["{root}", "--out", "{tmp}/report.txt"], "end --out with .html"),
    ],
)
def test_cli_report_bad_arguments(run, tmp_path, capsys, setup, args, message):
    if setup == "empty":
        (tmp_path / "empty").mkdir()
    if setup == "file":
        (tmp_path / "file.txt").write_text("x")
    args = [a.format(tmp=tmp_path, root=run["root"]) for a in args]
    before = sorted(tmp_path.rglob("*"))
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcurvature report: error: ") and message in err
    assert sorted(tmp_path.rglob("*")) == before


def test_report_dpi_and_numbers_are_checked(run):
    with pytest.raises(ValueError, match="dpi"):
        write_report(run["root"], run["root"] / "x.html", dpi=0)
    assert not (run["root"] / "x.html").exists()
