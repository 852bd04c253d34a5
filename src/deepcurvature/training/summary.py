"""The table printed at the end of a training run."""

from __future__ import annotations

from typing import Any

__all__ = ["print_summary"]


def print_summary(
    rows: list[dict[str, Any]], title: str, notes: list[dict[str, Any]] | None = None
) -> None:
    """Print the per-epoch rows (the first 2 and last 10 of a long run) and the warnings."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    caption = None
    if notes:
        title += " (WARNING: see below)"
        caption = "\n".join(f"warning (epoch {w['epoch']}): {w['message']}" for w in notes)
    table = Table(title=title, caption=caption, caption_style="bold yellow")
    cols = [
        ("epoch", "epoch", "d"),
        ("lr", "lr", ".3g"),
        ("train loss", "train_loss", ".4f"),
        ("train acc", "train_accuracy", ".4f"),
        ("test loss", "test_loss", ".4f"),
        ("test acc", "test_accuracy", ".4f"),
    ]
    if any(r.get("swa_test_accuracy") is not None for r in rows):
        cols.append(("SWA test acc", "swa_test_accuracy", ".4f"))
    if any(r.get("avg_test_accuracy") is not None for r in rows):
        cols.append(("avg test acc", "avg_test_accuracy", ".4f"))
    cols.append(("time (s)", "time", ".2f"))
    for head, _, _ in cols:
        table.add_column(head, justify="right")
    shown = rows if len(rows) <= 12 else rows[:2] + rows[-10:]
    for i, r in enumerate(shown):
        if len(rows) > 12 and i == 2:
            table.add_row(*["..."] * len(cols))
        table.add_row(*[fmt(r.get(key), spec) for _, key, spec in cols])
    Console().print(table)
