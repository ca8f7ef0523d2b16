"""`bitconv upload`: publish an artifact to the Hugging Face Hub with the card `bitconv.publish.card` writes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bitconv import __version__
from bitconv.publish.card import UploadPlan, UploadResult, cached_card, fetch_card, plan_upload
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
           token: str | None = None, *, base_model: str | None = None) -> UploadResult:
    """Publish an artifact (output folder or .gguf file) to `repo_id` with a generated README.md.

    Creates the repo if needed (private when asked), the branch `revision` if it does not exist, and commits with
    `upload_folder` (large files through LFS); `create_pr` opens a pull request instead. Returns the commit or PR
    URL. `dry_run` returns the plan with no network call. A failed verify report is refused unless `force`.
    Example:
        >>> upload("packed", "me/bitnet-2B-packed", create_pr=True).url
    """
    kw: dict[str, Any] = {"revision": revision, "create_pr": create_pr, "private": private,
                          "commit_message": commit_message, "force": force, "base_model": base_model}
    plan = plan_upload(artifact, repo_id, **kw)
    if dry_run:
        return UploadResult(plan, True)
    tok = token_or_default(token)
    base = plan.metadata.get("base_model")
    if base and "license" not in plan.metadata and cached_card(base) is None:
        card = fetch_card(base, tok)
        plan = plan_upload(artifact, repo_id, base_card=card, **kw) if card else plan
    with hub_errors(HubError, plan.repo_id, tok, _upload_rules):
        return _push(plan, tok)


def _push(plan: UploadPlan, token: str | None) -> UploadResult:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(plan.repo_id, private=plan.private or None, exist_ok=True)
    repo_id = url.repo_id
    branch = plan.revision
    if branch and branch != "main" and not branch.startswith("refs/"):
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bitconv-upload-") as tmp:
        _stage(plan, Path(tmp))
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=branch,
                                 create_pr=plan.create_pr or None, commit_message=plan.commit_message,
                                 commit_description=f"Published with bitconv {__version__} (`bitconv upload`).")
    return UploadResult(plan, False, info.pr_url or info.commit_url, info.oid, info.pr_url, str(url))


def _stage(plan: UploadPlan, stage: Path) -> None:
    """A folder of links to the artifact's files plus the generated README.md: the artifact is never modified."""
    for f in plan.files:
        dst = stage / f.path_in_repo
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f.local is None:
            dst.write_text(plan.card, encoding="utf-8")
        else:
            dst.symlink_to(f.local.resolve())
