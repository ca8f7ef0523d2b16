"""The `bitconv` command line: parses, calls one `bitconv.api` function, renders the result. No decisions here.

`bitconv.cli.app` holds the Typer app, the shared options and the error handler; each module below registers its
commands on it. Conventions (docs/json.md): `-h` everywhere, `-V/--version`, shell completion, one-line usage errors
(exit 2), `--json` on every command, case-insensitive choices; heavy libraries are imported inside the commands.
"""

from __future__ import annotations

# register the commands on `app`, in the order --help lists them
from bitconv.cli import commands  # noqa: F401, I001
from bitconv.cli import convert as _convert  # noqa: F401  (`convert`)
from bitconv.cli import hub as _hub  # noqa: F401  (`upload`)
from bitconv.cli import verify as _verify  # noqa: F401  (`verify`, `check`)
from bitconv.cli.app import app
from bitconv.core.errors import EXIT_BAD_INPUT


def main() -> None:
    app(prog_name="bitconv")


__all__ = ["app", "main", "EXIT_BAD_INPUT"]
