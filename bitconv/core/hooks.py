"""Callbacks a front end installs for the library to report through (the CLI's progress bars and lines).

`download_progress`: `(done_bytes, total_bytes, what)` for Hub downloads (`bitconv.sources.hub`), set for a block by
`bitconv.api.report_downloads`. Nothing here imports anything: installing a hook costs no import.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

Progress = Callable[[int, int, str], None]

download_progress: ContextVar[Progress | None] = ContextVar("bitconv_download_progress", default=None)
