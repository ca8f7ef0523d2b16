"""The `bitconv` command line: parses, calls one library function, renders the result. No decisions here.

`bitconv.cli.app` holds the Typer app and the shared options; each module below registers its commands on it.
"""

from __future__ import annotations

from bitconv.cli import commands, hub  # noqa: F401  (register the commands on `app`; hub: `upload`)
from bitconv.cli import convert as _convert  # noqa: F401  (registers `convert`)
from bitconv.cli import verify as _verify  # noqa: F401  (registers `verify` and `check`)
from bitconv.cli.app import app
from bitconv.core.errors import EXIT_BAD_INPUT


def main() -> None:
    app(prog_name="bitconv")


__all__ = ["app", "main", "EXIT_BAD_INPUT"]
