r"""One self-contained HTML page summarising a run folder.

:func:`write_report` scans a folder recursively (see :func:`scan_run`) and writes one HTML file:
the configuration (from ``stats.json`` or the latest checkpoint), the training curves with a table
of the last epoch, every spectrum (stem plot, summary table, configuration), every loss landscape,
statistics files (JSON and CSV tables) and a list of the other files. Figures are embedded as
base64 PNG ``data:`` URIs and the style sheet is inline: the page needs no other file and loads
nothing from the network, so it can be mailed or archived. Every piece of text taken from the
files is escaped with :func:`html.escape`, and bytes of file names that are not UTF-8 are shown
escaped (``bad-\xff.txt``). A file that cannot be read is reported in the page with the reason
(and as one warning), and the rest of the report is still written.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from .._version import __version__
from ..io import atomic_write_text
from .page import _CSS, _esc, _Page
from .scan import RunContents, scan_run
from .sections import (
    _checkpoint_section,
    _configuration_section,
    _landscape_section,
    _negative_mass_rows,  # noqa: F401  (re-exported: imported from here)
    _other_section,
    _spectrum_section,
    _statistics_section,
    _training_section,
)

__all__ = ["RunContents", "render_report", "scan_run", "write_report"]


# -- the page ---------------------------------------------------------------------------------
def render_report(
    run_dir: str | os.PathLike,
    *,
    title: str | None = None,
    dpi: int = 100,
    exclude: Sequence[Path] = (),
) -> str:
    """The HTML text of the report on ``run_dir`` (see :func:`write_report`).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
        ValueError: the folder holds no result of any kind, or ``dpi`` is not an integer >= 10.
    """
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi must be an integer >= 10, got {dpi!r}")
    contents = scan_run(run_dir, exclude=exclude)
    root = contents.root
    if contents.is_empty():
        raise ValueError(
            f"no results found in {root}: expected stats.json, checkpoint-*.pt, spectrum or "
            f"landscape files (.npz + .json) or statistics files (.json, .csv), in the folder "
            f"or its sub-folders"
        )
    page = _Page(root, dpi)
    c = contents
    sections = (
        ("Configuration", c.training or c.checkpoints, lambda: _configuration_section(page, c)),
        ("Training", c.training, lambda: _training_section(page, c.training)),
        ("Spectra", c.spectra, lambda: _spectrum_section(page, c.spectra)),
        ("Loss landscapes", c.landscapes, lambda: _landscape_section(page, c.landscapes)),
        ("Statistics", c.statistics, lambda: _statistics_section(page, c.statistics)),
        ("Checkpoints", c.checkpoints, lambda: _checkpoint_section(page, c.checkpoints)),
        ("Other files", c.other, lambda: _other_section(page, c.other, c.unreadable)),
    )
    from ..plotting.style import closing_new_figures

    with closing_new_figures():  # also the figures of a section that failed half way
        for name, present, render in sections:
            if present:
                page.heading(2, name)
                render()

    title = title or f"deepcurvature report: {page.folder(root)}"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    counts = ", ".join(
        f"{len(paths)} {one if len(paths) == 1 else many}"
        for one, many, paths in (
            ("training run", "training runs", c.training),
            ("checkpoint", "checkpoints", c.checkpoints),
            ("spectrum", "spectra", c.spectra),
            ("landscape", "landscapes", c.landscapes),
            ("statistics file", "statistics files", c.statistics),
        )
        if paths
    )
    toc = "".join(
        f'<li><a href="#{a}">{_esc(text)}</a></li>' for level, a, text in page.toc if level == 2
    )
    failed = list(dict.fromkeys(page.problems))
    problems = (
        f'<p class="error">{len(failed)} file(s) could not be shown '
        f"({_esc(', '.join(failed[:10]))}{' ...' if len(failed) > 10 else ''}): see the red "
        "notes below.</p>\n"
        if failed
        else ""
    )
    head = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="deepcurvature {_esc(__version__)}">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
    )
    top = (
        f"<h1>{_esc(title)}</h1>\n"
        f'<p class="meta">Folder <span class="path">{_esc(root.resolve())}</span>: '
        f"{_esc(counts)}. Generated {_esc(stamp)} by deepcurvature {_esc(__version__)}.</p>\n"
        f"{problems}<nav><ul>{toc}</ul></nav>\n"
    )
    body = "\n".join(page.parts)
    return f"{head}<body>\n<main>\n{top}{body}\n</main>\n</body>\n</html>\n"


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write one self-contained HTML page summarising everything in ``run_dir``, atomically.

    Args:
        run_dir: the run folder (scanned recursively).
        out: the HTML file (default ``run_dir/report.html``); must end in ``.html``/``.htm``.
        title: page title (default: ``deepcurvature report: <folder name>``).
        dpi: resolution of the embedded PNG figures.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
        ValueError: nothing to report, or ``out`` does not end in ``.html``.
    """
    root = Path(run_dir)
    path = Path(out) if out is not None else root / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML page: end --out with .html (got {path.name!r})")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the HTML file to write")
    text = render_report(root, title=title, dpi=dpi, exclude=[path])
    atomic_write_text(path, text)
    return path
