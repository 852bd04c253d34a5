"""Run reports: the figure that matches a result file, and one HTML page per run folder.

This is a top layer (like ``cli``): it reads the files the other layers write.
"""

from .detect import detect_result, plot_result
from .html import RunContents, render_report, scan_run, write_report

__all__ = [
    "RunContents",
    "detect_result",
    "plot_result",
    "render_report",
    "scan_run",
    "write_report",
]
