"""Hugging Face Hub as SRC: repo-id parsing and download into the HF cache (publishing is `bitconv.publish`).

SRC (every command that takes one; a local path that exists always wins):
    owner/name[@revision]                  config, tokenizer/generation files, README and the weight files the
                                           index names (or `model.safetensors`); a repo holding only one .gguf
                                           file resolves to that file
    owner/name/sub/folder[@revision]       the same for a checkpoint kept in a subfolder of the repo
    owner/name/path/file.gguf[@revision]   one GGUF file (`owner/name@revision/file.gguf` also works)
Downloads go through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE), token (explicit, else HF_TOKEN or the saved
login) and offline mode (HF_HUB_OFFLINE=1 serves the cached snapshot), with its progress bars.

The token never appears in a message: every error from the Hub client is turned into one line and passed through
`scrub` (`hub_errors`, shared with the upload). huggingface_hub is imported lazily so that commands on local paths
do not pay for it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bitconv.core import hooks, naming
from bitconv.core.errors import BitconvError, SourceError, UsageError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
README = "README.md"
_SMALL_FILES = (".gitattributes", "config.json", INDEX, README, *naming.AUX_FILES)
HUB_URL = "https://huggingface.co"


class HubError(BitconvError):
    """The Hub refused or failed a request (upload side); one line, token scrubbed."""


# ------------------------------------------------------------------------------------------------ repo references

_SEG = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REF = re.compile(rf"(?P<repo>{_SEG}/{_SEG})(?P<path>(?:/[^@\s\\]+)?)(?:@(?P<rev>[^\s\\]+))?")


@dataclass(frozen=True)
class RepoRef:
    """`owner/name`, an optional revision and an optional path inside the repo (a .gguf file or a subfolder)."""

    repo_id: str
    revision: str | None = None
    path: str | None = None

    @property
    def is_file(self) -> bool:
        return bool(self.path and self.path.endswith(".gguf"))

    def __str__(self) -> str:
        return self.repo_id + (f"/{self.path}" if self.path else "") + (f"@{self.revision}" if self.revision else "")


_URL = re.compile(r"https?:/{1,2}(?:www\.)?huggingface\.co/(?P<repo>[^/?#]+/[^/?#]+)"
                  r"(?:/(?:tree|blob|resolve)/(?P<rev>[^/?#]+)(?P<path>/[^?#]*)?)?/?(?:[?#].*)?")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def from_url(text: str) -> str:
    """`https://huggingface.co/owner/name[/tree|blob|resolve/REV[/path]]` as `owner/name[/path][@REV]`; any other
    text unchanged."""
    m = _URL.fullmatch(text.strip())
    if not m:
        return text
    path = (m["path"] or "").rstrip("/")
    rev = m["rev"] if m["rev"] and m["rev"] != "main" else None
    return m["repo"] + path + (f"@{rev}" if rev else "")


def looks_local(text: str) -> bool:
    """The local-path rule: a path that starts with ./ ../ / or ~, or whose parent folder exists, is local (a typo
    in it is "no such file or folder", never a Hub download)."""
    t = str(text)
    if t in (".", "..") or t.startswith(_LOCAL_PREFIXES):
        return True
    if _URL.fullmatch(t.strip()):
        return False
    parent = Path(t).parent
    return str(parent) != "." and parent.exists()


def parse_ref(text: str) -> RepoRef | None:
    """The repo reference `text` spells, or None when it is not one (see the module docstring). A
    `https://huggingface.co/owner/name` URL is accepted as its repo id."""
    m = _REF.fullmatch(from_url(str(text)))
    if not m or "--" in m["repo"] or ".." in m["repo"]:
        return None
    path, rev = m["path"].strip("/") or None, m["rev"]
    if rev and not path and "/" in rev and rev.endswith(".gguf"):
        rev, path = rev.rsplit("/", 1)
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        return None
    return RepoRef(m["repo"], rev, path)


def is_repo_ref(src: str | Path) -> bool:
    """True when SRC is not an existing local path but reads as `owner/name[...][@revision]`."""
    return not Path(src).exists() and not looks_local(str(src)) and parse_ref(str(src)) is not None


def base_model_of(src: str | Path) -> str | None:
    """The Hub repo a SRC comes from: its repo id, or the repo of a snapshot folder in the HF cache."""
    if is_repo_ref(src):
        return parse_ref(str(src)).repo_id  # type: ignore[union-attr]
    m = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", str(Path(src).resolve()))
    return f"{m[1]}/{m[2]}" if m else None


# ------------------------------------------------------------------------------------------------ token and errors

_DEFAULT_TOKEN: dict[str, str | None] = {"token": None, "revision": None}
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{6,}")


def use_token(token: str | None) -> None:
    """Token for downloads made by `open_source` in this process (the CLI's `--token`); None: HF's default."""
    _DEFAULT_TOKEN["token"] = token or None


def use_revision(revision: str | None) -> None:
    """Revision for downloads of a repo-id SRC that names none (the CLI's `--revision`); None: the default branch."""
    _DEFAULT_TOKEN["revision"] = revision or None


def check_token_shape(token: str | None, what: str = "--token") -> None:
    """A token is printable ASCII without spaces; anything else (a control character, a newline, a non-ASCII
    letter) is refused before any request, and the message never repeats it."""
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        raise UsageError(f"{what} holds a control, space or non-ASCII character; a Hugging Face token is printable "
                         "ASCII (the value is not shown)")


def token_or_default(token: str | None) -> str | None:
    tok = token or _DEFAULT_TOKEN["token"]
    check_token_shape(tok)
    if tok is None:
        check_token_shape(os.environ.get("HF_TOKEN") or None, "HF_TOKEN")
    return tok


def _saved_token() -> str | None:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_TOKEN_PATH).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def scrub(text: str, token: str | None = None) -> str:
    """`text` without any token this process knows (explicit, --token, HF_TOKEN, saved login) or `hf_...` token."""
    for secret in {token, _DEFAULT_TOKEN["token"], os.environ.get("HF_TOKEN"), _saved_token()}:
        if secret and len(secret) >= 4:
            # the token as it is, and as reprs and escapes print it (an exception message may hold any of these)
            forms = {secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii"),
                     repr(secret.encode("utf-8"))[2:-1], secret.strip()}
            for form in sorted(forms, key=len, reverse=True):
                if len(form) >= 4:
                    text = text.replace(form, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


_STATUS_HINTS = {401: "the token is missing or invalid: set HF_TOKEN or pass --token",
                 403: "the token lacks the permission for this", 404: "not found", 409: "conflict",
                 412: "the branch moved during the upload: retry", 429: "rate limited: retry later"}


def _detail(e: BaseException) -> str:
    server = getattr(e, "server_message", None)
    text = server or str(e) or type(e).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return line[:200]


def _status(e: BaseException) -> str:
    code = getattr(getattr(e, "response", None), "status_code", None)
    return f"{code} ({_STATUS_HINTS.get(code, _detail(e))})" if code else _detail(e)


def _download_rules() -> tuple[tuple[type[BaseException], str], ...]:
    import httpx2
    from huggingface_hub import errors as E

    return (
        (E.HFValidationError, "not a valid Hub repo id or revision ({detail})"),
        (E.GatedRepoError, "gated repo: request access on the Hub, then use a token that has it (HF_TOKEN or "
                           "--token)"),
        (E.RepositoryNotFoundError, "no local file or folder of that name, and no such repo on the Hub (or it is "
                                    "private and no token that can read it was given: HF_TOKEN or --token)"),
        (E.RevisionNotFoundError, "no such revision (branch, tag or commit) on the Hub"),
        (E.RemoteEntryNotFoundError, "file not found in the repo"),
        (E.LocalEntryNotFoundError, "not in the local Hugging Face cache, and the Hub cannot be reached or "
                                    "HF_HUB_OFFLINE is set ({detail})"),
        (E.OfflineModeIsEnabled, "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"),
        (E.HfHubHTTPError, "the Hub answered {status}"),
        (httpx2.HTTPError, "cannot reach the Hub at {endpoint} ({detail})"),
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@contextmanager
def hub_errors(make: type[BitconvError], subject: str, token: str | None,
                rules: Callable[[], tuple[tuple[type[BaseException], str], ...]]) -> Iterator[None]:
    """Turn the Hub client's exceptions into one scrubbed line of `make`; anything else passes through."""
    try:
        yield
    except BitconvError:
        raise
    except Exception as e:
        for cls, template in rules():
            if isinstance(e, cls):
                msg = template.format(status=_status(e), detail=_detail(e), endpoint=_endpoint())
                raise make(scrub(f"{subject}: {msg}", token)) from None
        raise


# ------------------------------------------------------------------------------------------------ download (SRC)


def resolve(src: str | Path, *, token: str | None = None) -> Path:
    """Download what SRC (a repo reference) needs into the HF cache; return the local folder or .gguf file.

    Raises `SourceError` (one line) for a missing or private repo, a gated repo without access, a missing revision
    or file, a repo that holds no supported checkpoint, and a cache miss when offline.
    """
    ref = parse_ref(str(src))
    if ref is None:
        raise SourceError("neither an existing local path nor a Hub repo id (owner/name[@revision])", path=src)
    if ref.revision is None and _DEFAULT_TOKEN["revision"]:
        ref = RepoRef(ref.repo_id, _DEFAULT_TOKEN["revision"], ref.path)
    tok = token_or_default(token)
    with hub_errors(SourceError, str(ref), tok, _download_rules):
        if ref.is_file:
            return _existing(_snapshot(ref, [ref.path], tok) / ref.path, ref)  # type: ignore[list-item]
        prefix = f"{ref.path}/" if ref.path else ""
        root = _snapshot(ref, [prefix + f for f in _SMALL_FILES], tok) / prefix
        weights, target = _select(ref, root, _listing(ref, root, prefix))
        _snapshot(ref, [prefix + w for w in weights], tok)
        return _existing(root / target, ref)


def _snapshot(ref: RepoRef, patterns: list[str], token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    report = hooks.download_progress.get()
    if report is None:  # huggingface_hub's own bars
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns, token=token))
    with _hf_bars_off():  # the caller renders the bytes (`bitconv.api.report_downloads`)
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns, token=token,
                                      tqdm_class=_reporting_bar(report, str(ref))))


@contextmanager
def _hf_bars_off() -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            enable_progress_bars()


def _reporting_bar(report: hooks.Progress, what: str) -> type:
    """A huggingface_hub tqdm that draws nothing and reports the snapshot's downloaded bytes to `report`: its byte
    bar (the sum over files; not the `.transfer` twin, which counts the same bytes again) as (done, total, what)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Bar(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            name = str(kwargs.get("name") or "")
            self._bitconv_bytes = kwargs.get("unit") == "B" and not name.endswith(".transfer")
            self._bitconv_done = int(kwargs.get("initial") or 0)  # type: ignore[call-overload]
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> None:
            self._bitconv_done += int(n or 0)
            if self._bitconv_bytes:
                report(self._bitconv_done, int(self.total or 0), what)

    return _Bar


def _listing(ref: RepoRef, root: Path, prefix: str) -> set[str]:
    """Files of the repo at the revision (from the tree listing the download cached), relative to `prefix`."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        paths = [f.path for f in get_cached_repo_tree(ref.repo_id, revision=ref.revision)]
    except CachedRepoTreeNotFoundError:  # an old cache without listing: what is on disk
        paths = [prefix + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return {p[len(prefix):] for p in paths if p.startswith(prefix)}


def _select(ref: RepoRef, root: Path, names: set[str]) -> tuple[list[str], str]:
    """(weight files to fetch, what SRC resolves to relative to `root`) or a one-line reason it is unsupported."""
    top = sorted(n for n in names if "/" not in n)
    tensors = [n for n in top if n.endswith(".safetensors")]
    if "config.json" in names and INDEX in names:
        return _index_shards(root / INDEX, ref), "."
    if "config.json" in names and (SINGLE in names or len(tensors) == 1):
        return [SINGLE if SINGLE in names else tensors[0]], "."
    ggufs = [n for n in top if n.endswith(".gguf")]
    if len(ggufs) == 1:
        return ggufs, ggufs[0]
    if ggufs:
        shown = ", ".join(ggufs[:4]) + (", ..." if len(ggufs) > 4 else "")
        raise SourceError(f"{ref}: the repo holds {len(ggufs)} .gguf files ({shown}): name one as "
                          f"{ref.repo_id}/FILE.gguf")
    shown = ", ".join(top[:6]) + (", ..." if len(top) > 6 else "") if top else "no files"
    raise SourceError(f"{ref}: not a supported checkpoint: no config.json with model.safetensors (or an index), "
                      f"and no .gguf file (the repo holds: {shown})")


def _index_shards(index: Path, ref: RepoRef) -> list[str]:
    try:
        wmap = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError) as e:
        raise SourceError(f"{ref}: {INDEX} is not valid JSON ({e})") from None
    shards = sorted(set(wmap.values())) if isinstance(wmap, dict) else []
    if not shards or not all(isinstance(s, str) and re.fullmatch(r"[^/\\]+\.safetensors", s) for s in shards):
        raise SourceError(f"{ref}: {INDEX} has no weight_map naming .safetensors files in its folder")
    return shards


def _existing(path: Path, ref: RepoRef) -> Path:
    if not path.exists():
        raise SourceError(f"{ref}: {path.name} is not in the repo at this revision")
    return path
