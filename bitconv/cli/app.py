"""The Typer app and what every command shares: options, the one error handler. Commands call `bitconv.api`.

Conventions (docs/json.md, docs/formats.md): `-h` everywhere, `-V/--version`, shell completion, usage errors in
one line (exit 2), `--json` on every command printing one document of the schema in
docs/bitconv-report.schema.json, case-insensitive choices.
Heavy libraries (torch, transformers, gguf, huggingface_hub) are imported inside the commands.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer._click import exceptions as click_exc
from typer.core import TyperGroup

from bitconv import REPO_URL, __version__
from bitconv.cli import render
from bitconv.core.errors import EXIT_BAD_INPUT, BitconvError

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = ("Jobs: pack -> deployable layouts (HF packed, GGUF); unpack -> trainable bf16; convert -> Nanotron <-> "
          f"HF; verify / check -> proof; upload -> Hub. Docs: {REPO_URL}/tree/main/docs")


class _Group(TyperGroup):
    """Usage errors as one line, `error: ...` with exit code 2, instead of click's three-line block."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, "bitconv", complete_var, False, **extra)
        except click_exc.NoArgsIsHelpError as e:
            e.show()
            sys.exit(0)
        except click_exc.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "bitconv"
            render.error(f"{e.format_message()} (see '{where} -h')")
            sys.exit(EXIT_BAD_INPUT)
        except click_exc.ClickException as e:
            render.error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort:  # (typer >= 0.29 vendors click without click's Abort; typer.Abort is the one raised)
            render.error("interrupted; no output was left behind")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
                  rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 160},  # COLUMNS
                  help="BitNet b1.58 checkpoints into every deployable ternary layout, with proof that each is "
                  "right.", epilog=EPILOG)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bitconv {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", "-V", help="print the version and exit",
                                                is_eager=True, callback=_version)] = False) -> None:
    """BitNet b1.58 checkpoints into every deployable ternary layout, with proof that each is right."""


SrcArg = Annotated[Path, typer.Argument(help="source: checkpoint folder (bf16 master, bitconv ternary, HF packed, "
                                        "Nanotron), .gguf file, or Hub repo id owner/name[@revision] (or its "
                                        "https://huggingface.co URL)", show_default=False)]
OutOpt = Annotated[Path, typer.Option("-o", "--out", help="output folder (written atomically)", show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan (tensors, output size, planned peak "
                                         "memory), write nothing")]
ComputeOpt = Annotated[str, typer.Option("--compute", help="ternarization arithmetic: float32 (transformers, "
                                         "canonical) or bfloat16 (onebitllms)")]
ShardOpt = Annotated[str, typer.Option("--max-shard-size", help="shard the output above this size, e.g. 5GB, "
                                       "500MB, or bytes")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout (schema: "
                                       "docs/json.md) instead of tables")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Hugging Face token (default: HF_TOKEN or the saved "
                                              "login); never printed", show_default=False)]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="revision (branch, tag or commit) of a Hub "
                                                 "repo-id SRC (same as SRC@REV)", show_default=False)]
PushOpt = Annotated[str | None, typer.Option("--push-to-hub", metavar="REPO_ID", show_default=False,
                                             help="after packing, upload OUT to this Hub repo (see `bitconv upload`)")]
PrivateOpt = Annotated[bool, typer.Option("--private", help="create the repo private")]
NoCardOpt = Annotated[bool, typer.Option("--no-card", help="leave the repo's model card (README.md) alone: no "
                                         "card is written or merged")]
CreatePrOpt = Annotated[bool, typer.Option("--create-pr", help="open a pull request against main instead of "
                                           "committing")]


def parse_size(text: str) -> int:
    from bitconv.api import parse_size as _parse

    return _parse(text)


def handle_errors(fn: F) -> F:
    """One line on stderr and a non-zero exit for every known error; a traceback only with BITCONV_DEBUG=1. Hub
    downloads inside the command report through `render.download_progress`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bitconv.api import report_downloads

        try:  # Hub downloads drawn as the command's own progress (none with --json: stdout is the document)
            with render.download_progress(not kwargs.get("json")) as cb, report_downloads(cb):
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
    from bitconv.sources.hub import scrub

    return scrub(message)


def _report(report: Any, as_json: bool, command: str, **extra: Any) -> None:
    from bitconv.cli import jsondoc

    warnings = list(report.extra.get("warnings", []))
    if as_json:
        render.print_json(jsondoc.from_report(command, report, **extra))
        return
    for w in warnings:
        render.warning(w)
    what = jsondoc.layout_name(report.target) or report.target
    render.out.print(f"wrote {report.out} ({what}): {report.n_ternary} ternary + {report.n_passthrough} "
                     "passthrough tensors, "
                     f"{render.human_bytes(report.bytes_written)} in {len(report.files)} file(s), "
                     f"{report.seconds:.2f} s", markup=False)


