"""Progress bars for long computations (rich), silenced with ``verbose=False``."""

from __future__ import annotations

import sys
import time
from types import TracebackType

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

__all__ = ["ProgressBar"]


class _SecondsPerStep(ProgressColumn):
    """Seconds per completed step."""

    def render(self, task: Task) -> Text:
        if not task.completed or task.elapsed is None:
            return Text("-- s/step", style="progress.data.speed")
        return Text(f"{task.elapsed / task.completed:.3g} s/step", style="progress.data.speed")


class ProgressBar:
    """A progress bar over ``total`` steps with the time per step; a no-op when not verbose.

    Use as a context manager and call :meth:`advance` once per step; extra ``info`` text (for
    example the current loss) can be set with :meth:`set_info`.
    """

    def __init__(self, total: int, description: str, verbose: bool = True) -> None:
        self.total, self.description, self.verbose = int(total), description, verbose
        self._progress: Progress | None = None
        self._task = None
        self.step_times: list[float] = []
        self._t_last = time.perf_counter()

    def __enter__(self) -> ProgressBar:
        self._t_last = time.perf_counter()
        if self.verbose:
            console = Console(file=sys.stderr)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _SecondsPerStep(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
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
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def set_info(self, text: str) -> None:
        """Show ``text`` after the bar."""
        if self._progress is not None:
            self._progress.update(self._task, info=text)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
