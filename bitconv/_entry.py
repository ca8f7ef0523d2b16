"""The `bitconv` executable's first code: a Ctrl-C handler before any heavy import (typer, rich, torch, numpy).

Importing the CLI takes a second or more; a Ctrl-C in that time used to print a traceback from deep inside an import.
Until the CLI is loaded, SIGINT prints the one-line message and exits 130 (nothing has been written yet); then the
normal KeyboardInterrupt handling takes over (outputs removed, the same one line).
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "error: interrupted; no output was left behind\n"


def _early_interrupt(signum: int, frame: object) -> None:
    try:
        os.write(2, INTERRUPTED.encode())
    finally:
        os._exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _early_interrupt)
    from bitconv.cli import main as cli_main  # the heavy imports

    signal.signal(signal.SIGINT, previous if callable(previous) else signal.default_int_handler)
    try:
        cli_main()
    except KeyboardInterrupt:  # outside a command's own handling (argument parsing, typer itself)
        sys.stderr.write(INTERRUPTED)
        sys.exit(130)


if __name__ == "__main__":
    main()
