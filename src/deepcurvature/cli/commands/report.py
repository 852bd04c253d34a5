"""``deepcurvature report``: one self-contained HTML page summarising a run folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ...io.outputs import OutputFolder
from ..errors import CommandError
from ._common import check_dpi

NAME = "report"
HELP = "write one self-contained HTML page summarising a run folder"
DESCRIPTION = (
    "Scan RUN_DIR and its sub-folders and write one HTML page with the configuration, the "
    "training curves, every spectrum (stem plot and summary table), every loss landscape, "
    "statistics files (JSON, CSV) and a list of the other files. Figures are embedded as PNG "
    "data URIs and the style is inline: the page needs no other file and no network. Written "
    "atomically to --out (default RUN_DIR/report.html); the path is printed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder to summarise")
    parser.add_argument(
        "--out", default=None, help="HTML file (default: RUN_DIR/report.html)%(default).0s"
    )
    parser.add_argument(
        "--title", default=None, help="page title (default: the folder name)%(default).0s"
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the figures")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing report (refused otherwise)"
    )


def run(args: argparse.Namespace) -> int:
    from ...report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        hint = " (a file: use 'deepcurvature plot' for one result)" if run_dir.is_file() else ""
        raise CommandError(f"no run folder at {run_dir}{hint}")
    check_dpi(args.dpi)
    out = Path(args.out) if args.out else run_dir / "report.html"
    if out.is_dir():
        raise CommandError(f"--out {out} is a folder: give the HTML file to write")
    with (
        OutputFolder.claim(
            out.parent,
            kind="report",
            outputs=[out.name],
            overwrite=args.overwrite,
            fix="pass --overwrite",
        ),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        path = write_report(run_dir, out, title=args.title, dpi=args.dpi)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(path)
    return 0
