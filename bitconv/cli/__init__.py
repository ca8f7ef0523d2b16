"""The `bitconv` command line: parses, calls one library function, renders the result. No decisions here."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from bitconv.cli import render
from bitconv.errors import EXIT_BAD_INPUT, BitconvError, UsageError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None, help="BitNet b1.58 checkpoints into every deployable ternary layout.")

F = TypeVar("F", bound=Callable[..., Any])

SrcArg = Annotated[Path, typer.Argument(help="source: checkpoint folder (bf16 master, bitconv ternary, HF packed, "
                                        "Nanotron), .gguf file, or Hub repo id owner/name[@revision]",
                                        show_default=False)]
OutOpt = Annotated[Path, typer.Option("-o", "--out", help="output folder (written atomically)", show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")]
ComputeOpt = Annotated[str, typer.Option("--compute", help="ternarization arithmetic: float32 (transformers, "
                                         "canonical) or bfloat16 (onebitllms)")]
ShardOpt = Annotated[str, typer.Option("--max-shard-size", help="shard the output above this size, e.g. 5GB, "
                                       "500MB, or bytes")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--max-shard-size {text!r} is not a size like 5GB, 500MB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def handle_errors(fn: F) -> F:
    """One line on stderr and a non-zero exit for every known error; a traceback only with BITCONV_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BitconvError as e:
            if os.environ.get("BITCONV_DEBUG") == "1":
                raise
            render.error(_scrub(str(e)))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            render.error("interrupted; no output was left behind")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # a bug, not a user error: say so in one line
            if os.environ.get("BITCONV_DEBUG") == "1":
                raise
            render.error(_scrub(f"internal error: {type(e).__name__}: {e} (set BITCONV_DEBUG=1 for the traceback "
                                "and please report it)"))
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


def _scrub(message: str) -> str:
    """No token (--token, HF_TOKEN, the saved login, anything shaped like hf_...) in any error line."""
    from bitconv.hub import scrub

    return scrub(message)


def _report(report: Any, as_json: bool) -> None:
    if as_json:
        render.print_json({"out": str(report.out), "target": report.target, "source_kind": report.source_kind,
                           "files": [str(f) for f in report.files], "ternary_tensors": report.n_ternary,
                           "passthrough_tensors": report.n_passthrough, "bytes": report.bytes_written,
                           "seconds": round(report.seconds, 3)})
        return
    render.out.print(f"wrote {report.out} ({report.target}): {report.n_ternary} ternary + {report.n_passthrough} "
                     f"passthrough tensors, {render.human_bytes(report.bytes_written)} in {len(report.files)} "
                     f"file(s), {report.seconds:.2f} s")


from bitconv.cli import commands, hub  # noqa: E402, F401  (register the commands on `app`; hub: `upload`)
from bitconv.cli import convert as _convert  # noqa: E402, F401  (registers `convert`)
from bitconv.cli import verify as _verify  # noqa: E402, F401  (registers `verify` and `check`)


def main() -> None:
    app(prog_name="bitconv")


__all__ = ["app", "main", "EXIT_BAD_INPUT"]
