"""The `bitconv` executable's first code: a Ctrl-C handler before any heavy import (typer, rich, torch, numpy).

Importing the CLI takes a second or more; a Ctrl-C in that time used to print a traceback from deep inside an import.
Until the CLI is loaded, SIGINT prints the one-line message and exits 130 (nothing has been written yet); then the
normal KeyboardInterrupt handling takes over (outputs removed, the same one line). When the command is done, the
process ends at once (`_exit_now`), without the interpreter's teardown.

The cyclic garbage collector is off while the modules load (torch's import creates a few hundred thousand objects
that live as long as the process; collecting while they pile up cost 0.3-0.45 s of a 2B4T pack), then they are
frozen out of its generations (`gc.freeze`) and it runs as usual for the command's own objects. For the commands
that need torch, torch is loaded here, inside that window.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

INTERRUPTED = "error: interrupted; no output was left behind\n"
# The commands that always use torch. `pack` and `quantize` of a bf16 master into the usual layouts need none (the
# C kernels do the work, `bitconv.torchsum` caches torch's reduction order): they import it where they first use it
# (`bitconv.core.lazytorch`, which pauses the collector for that import too).
TORCH_COMMANDS = frozenset({"unpack", "convert", "verify", "check", "demo"})


def _early_interrupt(signum: int, frame: object) -> None:
    try:
        os.write(2, INTERRUPTED.encode())
    finally:
        os._exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _early_interrupt)
    gc.disable()
    try:
        from bitconv.cli import main as cli_main  # the heavy imports
        _load_torch(sys.argv[1:])
    finally:
        gc.enable()
        gc.freeze()

    signal.signal(signal.SIGINT, previous if callable(previous) else signal.default_int_handler)
    try:
        cli_main()
    except KeyboardInterrupt:  # outside a command's own handling (argument parsing, typer itself)
        sys.stderr.write(INTERRUPTED)
        sys.exit(130)
    except SystemExit as e:  # typer ends every command this way: its outputs are committed and closed by now
        _exit_now(e.code)
    _exit_now(0)


def _load_torch(args: list[str]) -> None:
    """Import torch now when the command will (not for --help or the light commands: they stay fast)."""
    if not args or args[0] not in TORCH_COMMANDS or "--help" in args or "-h" in args:
        return
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 -- the command meets the same failure and reports it in its own words
        pass


def _exit_now(code: object) -> None:
    """End the process once the command has finished, skipping the interpreter's teardown (freeing every module and
    array, torch's included: about 0.7 s after a 2B4T pack). Output is flushed first; BITCONV_DEBUG=1 keeps the
    normal exit."""
    if os.environ.get("BITCONV_DEBUG", "").strip() == "1":
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): Python prints it and exits 1
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
