"""`bitconv upload` and the `--push-to-hub` options of `bitconv pack`: parse, call `bitconv.api.upload`, render."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bitconv import api
from bitconv.cli import render
from bitconv.cli.app import CreatePrOpt, JsonOpt, NoCardOpt, PrivateOpt, TokenOpt, app, handle_errors


@app.command(epilog="Example: bitconv upload me/bitnet-b1.58-packed ./bitnet-packed --create-pr  |  Jobs: `bitconv "
             "pack` makes the artifact, `bitconv verify --report` writes the report the model card quotes.")
@handle_errors
def upload(repo_id: Annotated[str, typer.Argument(help="Hub repo owner/name (created when missing)",
                                                  show_default=False)],
           local_path: Annotated[Path, typer.Argument(help="artifact: an output folder or a .gguf file (as `hf "
                                                      "upload REPO_ID [LOCAL_PATH]`)")] = Path("."),
           revision: Annotated[str | None, typer.Option("--revision", help="branch to commit to (created from main "
                                                        "when missing)", show_default=False)] = None,
           create_pr: CreatePrOpt = False, private: PrivateOpt = False,
           commit_message: Annotated[str | None, typer.Option("--commit-message", help="commit title",
                                                              show_default=False)] = None,
           base_model: Annotated[str | None, typer.Option("--base-model", help="the source repo the card links "
                                                          "(default: from the artifact's config or card)",
                                                          show_default=False)] = None,
           no_card: NoCardOpt = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="print the files and the card; no network "
                                                 "call")] = False,
           force: Annotated[bool, typer.Option("--force", help="publish even if the verify report says it "
                                               "failed")] = False,
           token: TokenOpt = None, json: JsonOpt = False) -> None:
    """Publish LOCAL_PATH to the Hub repo REPO_ID, merging bitconv's section into its model card (README.md); prints
    the commit or PR URL, or that the repo already holds these files."""
    t0 = time.perf_counter()
    res = api.upload(local_path, repo_id, revision=revision, create_pr=create_pr, private=private,
                     commit_message=commit_message, dry_run=dry_run, force=force, token=token, base_model=base_model,
                     card=not no_card)
    print_result(res, json, time.perf_counter() - t0)


def upload_doc(res: Any, seconds: float) -> dict:
    from bitconv.cli import jsondoc

    plan = res.plan
    return jsondoc.doc("upload", out=plan.artifact, files=[f.path_in_repo for f in plan.files],
                       bytes=plan.total_bytes, seconds=seconds, warnings=plan.warnings, **res.to_dict())


def print_result(res: Any, as_json: bool, seconds: float = 0.0) -> None:
    """The plan (files, warnings, and the card on a dry run), then the URL."""
    if as_json:
        render.print_json(upload_doc(res, seconds))
        return
    plan = res.plan
    for w in plan.warnings:
        render.warning(w)
    where = f"{plan.repo_id}" + (f" (branch {plan.revision})" if plan.revision else "") + \
        (" as a pull request" if plan.create_pr else "")
    render.table(f"upload to {where}", ["file", "size", "storage"],
                 [[f.path_in_repo, render.human_bytes(f.size), "LFS" if f.lfs else "git"] for f in plan.files])
    if res.dry_run:
        if plan.card:
            typer.echo(plan.card)
        render.out.print(f"total {render.human_bytes(plan.total_bytes)}; nothing uploaded (--dry-run)")
        return
    if res.branch_created:
        render.out.print(f"created branch {res.target} from main")
    if not res.committed:
        typer.echo(f"nothing to upload: {plan.repo_id}@{res.target} already holds these files")
        return
    size = sum(f.size for f in plan.files if f.path_in_repo in res.changed)
    same = len(plan.files) - len(res.changed)
    render.out.print(f"uploaded {len(res.changed)} files ({render.human_bytes(size)})" +
                     (f"; {same} already there, unchanged" if same else ""))
    typer.echo(res.url or "")


def push_after_pack(out: Path, repo_id: str | None, src: Path, token: str | None, as_json: bool, *,
                    revision: str | None = None, private: bool = False, create_pr: bool = False,
                    card: bool = True) -> str | None:
    """`pack --push-to-hub`: upload what pack wrote, linking the source repo as base_model when SRC is one.

    With --json, pack's report stays the only JSON on stdout (its `pushed` key holds the URL, None when the repo
    already held the files)."""
    if not repo_id:
        return None
    from bitconv.sources import hub

    res = api.upload(out, repo_id, token=token, revision=revision, private=private, create_pr=create_pr,
                     base_model=hub.base_model_of(src), card=card)
    if not as_json:
        print_result(res, False)
    return res.url
