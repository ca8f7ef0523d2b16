"""`bitconv upload` and `bitconv pack`'s `--push-to-hub` / `--token` options: parse, call bitconv.publish, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitconv.cli import render
from bitconv.cli.app import JsonOpt, app, handle_errors
from bitconv.publish.card import UploadResult
from bitconv.publish.upload import upload as publish
from bitconv.sources import hub


def _register_token(ctx: typer.Context, value: str | None) -> str | None:
    hub.use_token(value)  # downloads of a repo-id SRC during this command use it too
    ctx.call_on_close(lambda: hub.use_token(None))
    return value


TokenOpt = Annotated[str | None, typer.Option("--token", help="Hugging Face token (default: HF_TOKEN or the saved "
                                              "login); used for downloads and uploads, never printed",
                                              show_default=False, callback=_register_token)]
PushOpt = Annotated[str | None, typer.Option("--push-to-hub", metavar="REPO_ID", show_default=False,
                                             help="after packing, upload OUT to this Hub repo (see `bitconv upload`)")]


@app.command()
@handle_errors
def upload(out: Annotated[Path, typer.Argument(help="artifact: an output folder or a .gguf file", show_default=False)],
           repo_id: Annotated[str, typer.Argument(help="Hub repo owner/name (created when missing)",
                                                  show_default=False)],
           revision: Annotated[str | None, typer.Option("--revision", help="branch to commit to (created from main "
                                                        "when missing)", show_default=False)] = None,
           create_pr: Annotated[bool, typer.Option("--create-pr", help="open a pull request against main instead "
                                                   "of committing")] = False,
           private: Annotated[bool, typer.Option("--private", help="create the repo private")] = False,
           commit_message: Annotated[str | None, typer.Option("--commit-message", help="commit title",
                                                              show_default=False)] = None,
           base_model: Annotated[str | None, typer.Option("--base-model", help="the source repo the card links "
                                                          "(default: from the artifact's config or card)",
                                                          show_default=False)] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="print the files and the card; no network "
                                                 "call")] = False,
           force: Annotated[bool, typer.Option("--force", help="publish even if the verify report says it "
                                               "failed")] = False,
           token: TokenOpt = None, json: JsonOpt = False) -> None:
    """Publish OUT to the Hub with a generated model card (README.md); prints the commit or PR URL."""
    res = publish(out, repo_id, revision=revision, create_pr=create_pr, private=private,
                  commit_message=commit_message, dry_run=dry_run, force=force, token=token, base_model=base_model)
    print_result(res, json)


def print_result(res: UploadResult, as_json: bool) -> None:
    """The plan (files, warnings, and the card on a dry run), then the URL."""
    if as_json:
        render.print_json(res.to_dict())
        return
    plan = res.plan
    for w in plan.warnings:
        render.warning(w)
    where = f"{plan.repo_id}" + (f" (branch {plan.revision})" if plan.revision else "") + \
        (" as a pull request" if plan.create_pr else "")
    render.table(f"upload to {where}", ["file", "size", "storage"],
                 [[f.path_in_repo, render.human_bytes(f.size), "LFS" if f.lfs else "git"] for f in plan.files])
    if res.dry_run:
        typer.echo(plan.card)
        render.out.print(f"total {render.human_bytes(plan.total_bytes)}; nothing uploaded (--dry-run)")
        return
    render.out.print(f"uploaded {len(plan.files)} files ({render.human_bytes(plan.total_bytes)})")
    typer.echo(res.url or "")


def push_after_pack(out: Path, repo_id: str | None, src: Path, token: str | None, dry_run: bool,
                    as_json: bool) -> None:
    """`pack --push-to-hub`: upload what pack wrote, linking the source repo as base_model when SRC is one.

    With --json, pack's report stays the only JSON on stdout and the URL goes to stderr."""
    if not repo_id:
        return
    if dry_run:
        render.warning(f"--dry-run: nothing packed, so nothing pushed to {repo_id}")
        return
    res = publish(out, repo_id, token=token, base_model=hub.base_model_of(src))
    if as_json:
        typer.echo(f"pushed to {res.url}", err=True)
        return
    print_result(res, False)
