"""Closing the pyplot figures a block opened, without importing matplotlib (the CLI uses it)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def closing_new_figures() -> Iterator[None]:
    """Close, on leaving the block, the pyplot figures opened inside it (the others stay open).

    For code that only writes figures to files (reports, the command line): nothing it draws
    stays registered with pyplot, even when it fails half way. matplotlib is looked up, never
    imported, so a command that draws nothing does not pay for it.
    """
    plt = sys.modules.get("matplotlib.pyplot")
    before = set(plt.get_fignums()) if plt is not None else set()
    try:
        yield
    finally:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            for num in set(plt.get_fignums()) - before:
                plt.close(num)
