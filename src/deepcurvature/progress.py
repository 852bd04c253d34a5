"""Progress of long computations, silenced with ``verbose=False``.

On a terminal (or in Jupyter) a rich progress bar is drawn. Anywhere else (a CI log, a file,
``| tee``) a bar would be redrawn into broken lines, so plain lines are printed to stderr instead,
one every few seconds and one at the end::

    epoch 1/5: 12/40 steps, 0.03 s/step, loss 1.23

The interval is 5 seconds, or ``DEEPCURVATURE_PROGRESS_INTERVAL`` seconds when that environment
variable is set (``interval=`` overrides both). A bar started while another is running (a data
pass inside a Lanczos step) prints its final line only if it printed a line before.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import ClassVar, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["DEFAULT_INTERVAL", "INTERVAL_VARIABLE", "ProgressBar"]

#: Seconds between two plain progress lines (outside a terminal).
DEFAULT_INTERVAL = 5.0
#: Environment variable that sets that interval.
INTERVAL_VARIABLE = "DEEPCURVATURE_PROGRESS_INTERVAL"


class _SecondsPerStep(ProgressColumn):
    """Seconds per completed step."""

    def render(self, task: Task) -> Text:
        if not task.completed or task.elapsed is None:
            return Text("-- s/step", style="progress.data.speed")
        return Text(f"{task.elapsed / task.completed:.3g} s/step", style="progress.data.speed")


def _interval() -> float:
    text = os.environ.get(INTERVAL_VARIABLE, "").strip()
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def _is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (or the output of a Jupyter cell, which rich draws in)."""
    if Console(file=stream).is_jupyter:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """Progress over ``total`` steps with the time per step; a no-op when not verbose.

    Use as a context manager and call :meth:`advance` once per step; extra ``info`` text (for
    example the current loss) can be set with :meth:`set_info`. On a terminal it is a rich
    progress bar; elsewhere plain lines go to stderr every ``interval`` seconds and at the end
    (module docstring).

    Args:
        total: the number of steps.
        description: what is progressing (``"epoch 1/5"``).
        verbose: show anything at all.
        interval: seconds between plain lines (default: ``DEEPCURVATURE_PROGRESS_INTERVAL``,
            else 5).
    """

    _plain_depth: ClassVar[int] = 0  # plain bars running now (nested bars stay quiet)

    def __init__(
        self, total: int, description: str, verbose: bool = True, *, interval: float | None = None
    ) -> None:
        self.total, self.description, self.verbose = int(total), description, verbose
        self.interval = _interval() if interval is None else float(interval)
        self._progress: Progress | None = None
        self._task = None
        self._plain: TextIO | None = None
        self._nested = self._in_plain = False
        self._printed = False
        self._done = 0
        self._info = ""
        self._shown: tuple[int, str] | None = None  # (steps, info) of the last line printed
        self.step_times: list[float] = []
        self._t_start = self._t_last = self._t_printed = time.perf_counter()

    def __enter__(self) -> ProgressBar:
        self._t_start = self._t_last = self._t_printed = time.perf_counter()
        if not self.verbose:
            return self
        stream = sys.stderr
        if not _is_terminal(stream):
            self._plain = stream
            self._nested = ProgressBar._plain_depth > 0
            self._in_plain = True
            ProgressBar._plain_depth += 1
            return self
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _SecondsPerStep(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(file=stream),
            transient=False,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(self.description, total=self.total, info="")
        return self

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` more steps done and record the time of this one."""
        now = time.perf_counter()
        self.step_times.append(now - self._t_last)
        self._t_last = now
        self._done += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n)
        elif self._plain is not None and now - self._t_printed >= self.interval:
            self._print_line(now)

    def set_info(self, text: str) -> None:
        """Show ``text`` after the bar."""
        self._info = text
        if self._progress is not None:
            self._progress.update(self._task, info=text)

    def line(self, now: float | None = None) -> str:
        """The plain progress line: ``DESCRIPTION: DONE/TOTAL steps, S s/step, INFO``."""
        now = time.perf_counter() if now is None else now
        parts = [f"{self.description}: {self._done}/{self.total} steps"]
        if self._done:
            parts.append(f"{(now - self._t_start) / self._done:.3g} s/step")
        if self._info:
            parts.append(" ".join(self._info.split()))
        return ", ".join(parts)

    def _print_line(self, now: float) -> None:
        if self._plain is None:
            return
        try:
            print(self.line(now), file=self._plain, flush=True)
        except (OSError, ValueError):  # a closed or broken stream: progress is not worth a crash
            self._plain = None
            return
        self._printed = True
        self._t_printed = now
        self._shown = (self._done, self._info)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
        if self._in_plain:
            self._in_plain = False
            ProgressBar._plain_depth -= 1
            changed = self._shown != (self._done, self._info)
            if self._plain is not None and changed and (not self._nested or self._printed):
                self._print_line(time.perf_counter())
