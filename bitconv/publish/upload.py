"""`bitconv upload`: publish an artifact to the Hugging Face Hub with the card `bitconv.publish.card` writes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bitconv import __version__
from bitconv.publish.card import (
    README,
    UploadPlan,
    UploadResult,
    cached_card,
    fetch_card,
    merge_card,
    plan_upload,
    with_card,
)
from bitconv.sources.hub import HubError, hub_errors, token_or_default


def _upload_rules() -> tuple[tuple[type[BaseException], str], ...]:
    import httpx2
    from huggingface_hub import errors as E

    return (
        (E.HFValidationError, "not a valid Hub repo id or revision ({detail})"),
        (E.RepositoryNotFoundError, "the Hub refused access: no such repo, or the token cannot write to it "
                                    "(set HF_TOKEN or pass --token)"),
        (E.RevisionNotFoundError, "no such branch on the Hub"),
        (E.HfHubHTTPError, "the Hub answered {status}"),
        (httpx2.HTTPError, "cannot reach the Hub at {endpoint} ({detail})"),
    )


# ------------------------------------------------------------------------------------------------ upload


def upload(artifact: str | Path, repo_id: str, revision: str | None = None, create_pr: bool = False,
           private: bool = False, commit_message: str | None = None, dry_run: bool = False, force: bool = False,
           token: str | None = None, *, base_model: str | None = None, card: bool = True) -> UploadResult:
    """Publish an artifact (output folder or .gguf file) to `repo_id`, merging bitconv's section into its README.md.

    Creates the repo if needed (private when asked), the branch `revision` if it does not exist, and commits with
    `upload_folder` (large files through LFS); `create_pr` opens a pull request instead. When the target revision
    (main for a PR) already holds every file, nothing is committed and no PR is opened: `committed` is False.
    `dry_run` returns the plan with no network call. A failed verify report is refused unless `force`. `card=False`
    leaves the repo's README.md alone.
    Example:
        >>> upload("packed", "me/bitnet-2B-packed", create_pr=True).url
    """
    kw: dict[str, Any] = {"revision": revision, "create_pr": create_pr, "private": private,
                          "commit_message": commit_message, "force": force, "base_model": base_model, "card": card}
    plan = plan_upload(artifact, repo_id, **kw)
    if dry_run:
        return UploadResult(plan, True, target=_target(plan))
    tok = token_or_default(token)
    base = plan.metadata.get("base_model")
    if card and base and "license" not in plan.metadata and cached_card(base) is None:
        text = fetch_card(base, tok)
        plan = plan_upload(artifact, repo_id, base_card=text, **kw) if text else plan
    with hub_errors(HubError, plan.repo_id, tok, _upload_rules):
        return _push(plan, tok)


def _target(plan: UploadPlan) -> str:
    """The revision the files land on: a pull request is opened against main."""
    return "main" if plan.create_pr or not plan.revision else plan.revision


def _push(plan: UploadPlan, token: str | None) -> UploadResult:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(plan.repo_id, private=plan.private or None, exist_ok=True)
    repo_id = url.repo_id
    target = _target(plan)
    created = False
    if target != "main" and not target.startswith("refs/"):
        created = target not in {b.name for b in api.list_repo_refs(repo_id).branches}
        if created:
            api.create_branch(repo_id, branch=target, exist_ok=True)
    head = api.repo_info(repo_id, revision=target).sha
    before = _tree(api, repo_id, head)
    with tempfile.TemporaryDirectory(prefix="bitconv-upload-") as tmp:
        if plan.section is not None:
            old = _read_card(api, repo_id, head, Path(tmp) / "card") if README in before else None
            with_card(plan, merge_card(old, plan, set(before) | {f.path_in_repo for f in plan.files}))
        stage = Path(tmp) / "stage"
        _stage(plan, stage)
        info = api.upload_folder(repo_id=repo_id, folder_path=stage, revision=target,
                                 create_pr=plan.create_pr or None, commit_message=plan.commit_message,
                                 parent_commit=head,
                                 commit_description=f"Published with bitconv {__version__} (`bitconv upload`).")
    committed = bool(info.pr_url) if plan.create_pr else info.oid != head
    if not committed:
        return UploadResult(plan, False, repo_url=str(url), target=target, head=head, branch_created=created)
    after = _tree(api, repo_id, info.oid)
    changed = [f.path_in_repo for f in plan.files if after.get(f.path_in_repo) != before.get(f.path_in_repo)]
    return UploadResult(plan, False, info.pr_url or info.commit_url, info.oid, info.pr_url, str(url), True,
                        info.commit_url, target, head if plan.create_pr else info.oid, created, changed)


def _tree(api: Any, repo_id: str, revision: str) -> dict[str, str | None]:
    """path -> git blob id of every file at `revision`."""
    from huggingface_hub.hf_api import RepoFile

    return {f.path: f.blob_id for f in api.list_repo_tree(repo_id, revision=revision, recursive=True)
            if isinstance(f, RepoFile)}


def _read_card(api: Any, repo_id: str, revision: str, where: Path) -> str:
    path = api.hf_hub_download(repo_id, README, revision=revision, local_dir=where)
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _stage(plan: UploadPlan, stage: Path) -> None:
    """A folder of links to the artifact's files plus the README.md (when the card is written): the artifact is
    never modified."""
    stage.mkdir(parents=True, exist_ok=True)
    for f in plan.files:
        dst = stage / f.path_in_repo
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f.local is None:
            dst.write_text(plan.card, encoding="utf-8")
        else:
            dst.symlink_to(f.local.resolve())
