"""The only module that imports rich: tables, progress bars, and one-line errors, all on a console.

Every string printed here may come from an input (tensor names, config values, paths): `clean` replaces control
characters (ANSI/CSI cursor moves, OSC-8 links, bells, carriage returns, C1 controls, bidi overrides) with visible
`\\xNN` escapes, and rich markup is off on both consoles, so `[/]` in a name is printed as it is. Code that wants
markup passes `markup=True` and escapes every untrusted part with `esc`.
"""

from __future__ import annotations

import json
import os
import re
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
from rich.text import Text

# C0 controls except none, DEL, C1 controls, and the bidi/zero-width format characters that reorder or hide text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clean(text: object) -> str:
    """`text` as a string that is safe on a terminal: every control character becomes a visible escape."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                       str(text))


def esc(text: object) -> str:
    """An untrusted string for a `markup=True` print: cleaned, and its `[...]` escaped."""
    return escape(clean(text))


class SafeConsole(Console):
    """A console that cleans every string it prints; markup only where the caller asks for it (and escapes)."""

    def print(self, *objects: object, markup: bool | None = None, **kw: object) -> None:  # type: ignore[override]
        if not markup:
            objects = tuple(clean(o) if isinstance(o, str) else o for o in objects)
        super().print(*objects, markup=bool(markup), **kw)  # type: ignore[arg-type]


def _width(stream: object) -> int | None:
    """COLUMNS when set (honoured on and off a terminal), the terminal's width, else 160 (pipes and CI logs, where
    rich would wrap tables at 80 columns)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    return None if stream.isatty() else 160


out = SafeConsole(highlight=False, soft_wrap=True, markup=False, width=_width(sys.stdout))
err = SafeConsole(stderr=True, highlight=False, soft_wrap=True, markup=False, width=_width(sys.stderr))


def error(message: str) -> None:
    # file and tensor names come from the input: cleaned and escaped, a name like "[/x]" is not markup
    line = clean(message)  # one line, whatever the message holds (a newline becomes \\x0a)
    if err.is_terminal:
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)
    else:
        print(f"error: {line}", file=sys.stderr)


def warning(message: str) -> None:
    print(f"warning: {clean(message)}", file=sys.stderr)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    t = Table(title=Text(clean(title)), title_justify="left")
    for c in columns:
        t.add_column(Text(clean(c)), overflow="fold")
    for r in rows:
        t.add_row(*[Text(clean(x)) for x in r])  # Text: never parsed as markup
    out.print(t)


LINE_EVERY = 5.0  # seconds between progress lines off a terminal


def _line_progress(label: str, unit: str, every: float | None = None) -> object:
    """A progress callback that prints `label: done/total (pct), rate, ETA` to stderr at most every `every` s."""
    import time

    t0 = time.monotonic()
    last = [t0]
    period = LINE_EVERY if every is None else every

    def update(done: int, total: int, name: str) -> None:
        now = time.monotonic()
        if now - last[0] < period:
            return
        last[0] = now
        rate = done / max(now - t0, 1e-9)
        fmt = human_bytes if unit == "bytes" else (lambda n: f"{n:.0f}")
        line = f"{label}: {fmt(done)}" + (f" / {fmt(total)} ({done / total:.0%})" if total else "")
        line += f", {fmt(rate)}/s" if unit == "bytes" else f", {rate:.1f}/s"
        if total and rate > 0:
            line += f", ETA {max(total - done, 0) / rate:.0f} s"
        print(clean(f"{line} {name}".rstrip()), file=sys.stderr, flush=True)

    return update


@contextmanager
def progress(label: str, enabled: bool = True, unit: str = "bytes") -> Iterator[object]:
    """Yields a callback (done, total, name) that drives a progress bar on stderr (terminals only). With
    unit="bytes" it shows bytes written, bytes/s and the time left; otherwise counts."""
    if not enabled:
        yield None
        return
    if not err.is_terminal:  # CI logs and pipes: one plain line every LINE_EVERY seconds instead of a bar
        yield _line_progress(label, unit)
        return
    counts = [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()] if unit == "bytes" else \
        [MofNCompleteColumn()]
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
            TextColumn("{task.fields[name]}", markup=False)]
    with Progress(*cols, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, name="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, name=clean(name))

        yield update
