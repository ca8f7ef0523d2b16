"""The only module that imports rich: tables, progress bars, and one-line errors, all on a console."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table


def _width(stream: object) -> int | None:
    """COLUMNS when set (honoured on and off a terminal), the terminal's width, else 160 (pipes and CI logs, where
    rich would wrap tables at 80 columns)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    return None if stream.isatty() else 160


out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def error(message: str) -> None:
    # file and tensor names come from the input: escape them, a name like "[/x]" is not markup
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False) if err.is_terminal else print(
        f"error: {message}", file=sys.stderr)


def warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    out.print(t)


@contextmanager
def progress(label: str, enabled: bool = True, unit: str = "bytes") -> Iterator[object]:
    """Yields a callback (done, total, name) that drives a progress bar on stderr (terminals only). With
    unit="bytes" it shows bytes written, bytes/s and the time left; otherwise counts."""
    if not (enabled and err.is_terminal):
        yield None
        return
    counts = [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()] if unit == "bytes" else \
        [MofNCompleteColumn()]
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
            TextColumn("{task.fields[name]}")]
    with Progress(*cols, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, name="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, name=name)

        yield update
