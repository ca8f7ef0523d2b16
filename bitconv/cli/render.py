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
    ProgressColumn,
    Task,
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


# A cell that is a number, a size, a shape or a dash: never wrapped (a table column of them is as wide as its widest).
_NUMERIC = re.compile(r"-|[-+]?[\d.,_]+(e[-+]?\d+)?%?( ?[KMGT]?i?B)?|\[[\d, ]*\]|\d+(x\d+)+|[\d.]+ s", re.I)
_TEXT_MIN = 6  # a text column is never narrower (its words fold below this), unless all of it is narrower
_DIGITS = re.compile(r"\d")
_WORD_MAX = 16  # words up to this long are kept whole when the table has room for that


def _column_min(header: str, cells: list[str]) -> int:
    """The least width of a column: a numeric column is as wide as its widest cell (its header wraps between
    words); a text column as wide as its longest number-word (so prose wraps between words, never inside a number),
    and at least `_TEXT_MIN` (or its widest cell when that is narrower)."""
    head_word = max((len(w) for w in header.split()), default=0)
    if cells and all(_NUMERIC.fullmatch(c) for c in cells):
        return max(head_word, *(len(c) for c in cells))
    words = [w.strip("()[];,:") for c in cells for w in c.split()]
    widest = max((len(c) for c in [header, *cells]), default=0)
    digits = max((len(w) for w in words if _DIGITS.search(w) and _NUMERIC.fullmatch(w)), default=0)
    return max(min(widest, max(_TEXT_MIN, head_word)), digits)


def _widths(natural: list[int], least: list[int], room: int) -> list[int] | None:
    """Column widths that fit `room`: each at least `least`, the rest shared out in proportion to what each column
    lacks of its natural width; None when even the least widths do not fit."""
    if sum(least) > room:
        return None
    widths = list(least)
    spare = room - sum(least)
    want = [n - m for n, m in zip(natural, least)]
    total = sum(want)
    for i, w in enumerate(want):
        widths[i] += w * spare // total if total else 0
    return widths


def table(title: str, columns: list[str], rows: list[list[object]], console: Console | None = None) -> None:
    """A table as wide as the console (COLUMNS or the terminal): text columns wrap between words, numbers never
    break. When even that does not fit, each row is printed as `column: value` lines (a record per row)."""
    con = console or out
    cols = [clean(c) for c in columns]
    cells = [[clean(x) for x in r] for r in rows]
    natural = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(cols)]
    room = con.width - 3 * len(cols) - 1  # each column: a border and two padding
    widths = natural
    if sum(natural) > room:
        least = [_column_min(c, [r[i] for r in cells]) for i, c in enumerate(cols)]
        words = [max(m, min(n, _WORD_MAX, max(len(w) for x in [c, *(r[i] for r in cells)] for w in [*x.split(), ""])))
                 for i, (c, n, m) in enumerate(zip(cols, natural, least))]  # whole words where there is room
        widths = _widths(natural, words if sum(words) <= room else least, room)
    if widths is not None:
        t = Table(title=Text(clean(title)), title_justify="left")
        for c, w in zip(cols, widths):
            t.add_column(Text(c), overflow="fold", width=None if widths is natural else w)
        for r in cells:
            t.add_row(*[Text(x) for x in r])  # Text: never parsed as markup
        con.print(t)
        return
    con.print(Text(clean(title), style="bold"))
    key = max(len(c) for c in cols)
    for r in cells:
        g = Table.grid(padding=(0, 1))
        g.add_column(no_wrap=True, min_width=key + 3)
        g.add_column(overflow="fold")
        for i, (c, x) in enumerate(zip(cols, r)):
            g.add_row(Text(("- " if i == 0 else "  ") + c + ":"), Text(x))
        con.print(g)


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


class _Amount(ProgressColumn):
    """Bytes (done / total) for a task with unit "bytes", else done/total counts."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._count = DownloadColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        return (self._bytes if task.fields.get("unit") == "bytes" else self._count).render(task)


class _Speed(ProgressColumn):
    """Bytes per second for a byte task; nothing for a count."""

    def __init__(self) -> None:
        super().__init__()
        self._speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        return self._speed.render(task) if task.fields.get("unit") == "bytes" else Text("")


def _bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), _Amount(), _Speed(), TimeRemainingColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[name]}", markup=False), console=err, transient=True)


_LIVE: list[Progress] = []  # the one rich Progress on the terminal now (rich allows one live display at a time)


@contextmanager
def progress(label: str, enabled: bool = True, unit: str = "bytes") -> Iterator[object]:
    """Yields a callback (done, total, name) that drives a progress bar on stderr (terminals only). With
    unit="bytes" it shows bytes written, bytes/s and the time left; otherwise counts. Off a terminal (CI logs,
    pipes): one plain line every LINE_EVERY seconds with the same numbers. A bar already on the terminal (a Hub
    download's) gets this one as a second row."""
    if not enabled:
        yield None
        return
    if not err.is_terminal:  # CI logs and pipes: one plain line every LINE_EVERY seconds instead of a bar
        yield _line_progress(label, unit)
        return
    own = not _LIVE
    if own:
        _LIVE.append(_bar())
        _LIVE[0].start()
    bar = _LIVE[0]
    task = bar.add_task(label, total=None, name="", unit=unit)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total or None, name=clean(name))

    try:
        yield update
    finally:
        if own:
            bar.stop()
            _LIVE.clear()
        else:
            bar.remove_task(task)


@contextmanager
def download_progress(enabled: bool = True) -> Iterator[object]:
    """A callback for Hub downloads (`bitconv.api.report_downloads`), rendered as local progress is: a row
    "download" with bytes, bytes/s and ETA on the command's bar (or a bar of its own, started at the first byte), and
    off a terminal a line every LINE_EVERY seconds. Nothing is shown for a command that downloads nothing."""
    if not enabled:
        yield None
        return
    state: dict = {}

    def update(done: int, total: int, name: str) -> None:
        if not err.is_terminal:
            if "line" not in state:
                state["line"] = _line_progress("download", "bytes")
            state["line"](done, total, name)
            return
        if not _LIVE:
            _LIVE.append(_bar())
            _LIVE[0].start()
            state["own"] = _LIVE[0]
        if state.get("bar") is not _LIVE[0]:
            state["bar"] = _LIVE[0]
            state["task"] = _LIVE[0].add_task("download", total=None, name="", unit="bytes")
        state["bar"].update(state["task"], completed=done, total=total or None, name=clean(name))

    try:
        yield update
    finally:
        own = state.get("own")
        if own is not None and _LIVE and _LIVE[0] is own:
            own.stop()
            _LIVE.clear()
