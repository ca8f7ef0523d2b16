"""Hugging Face Hub: a repo id as SRC, and `upload` of an artifact with a generated model card.

SRC (every command that takes one; a local path that exists always wins):
    owner/name[@revision]                  config, tokenizer/generation files, README and the weight files the
                                           index names (or `model.safetensors`); a repo holding only one .gguf
                                           file resolves to that file
    owner/name/sub/folder[@revision]       the same for a checkpoint kept in a subfolder of the repo
    owner/name/path/file.gguf[@revision]   one GGUF file (`owner/name@revision/file.gguf` also works)
Downloads go through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE), token (explicit, else HF_TOKEN or the saved
login) and offline mode (HF_HUB_OFFLINE=1 serves the cached snapshot), with its progress bars.

`upload(artifact, repo_id)` publishes an output folder (or one .gguf file) with a generated README.md: YAML front
matter (base_model, base_model_relation: quantized, library_name, tags, licence carried from the source) and a body
with the format, bits per weight, file sizes, how to load it, and the verify summary when a report
(`bitconv-verify.json`, see `verify_report_for`) lies next to the artifact. A failed report is refused unless
`force`. `dry_run` returns the plan without any network call.

The token never appears in a message: every error from the Hub client is turned into one line and passed through
`scrub`. huggingface_hub is imported lazily so that commands on local paths do not pay for it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitconv import __version__, naming
from bitconv.errors import EXIT_VERIFY_FAILED, BitconvError, SourceError, UsageError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
README = "README.md"
VERIFY_REPORT = "bitconv-verify.json"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files from 10 MB on through LFS/Xet
_LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".model", ".pt", ".pth", ".npy")
_SMALL_FILES = (".gitattributes", "config.json", INDEX, README, *naming.AUX_FILES)
_HUB_URL = "https://huggingface.co"


class HubError(BitconvError):
    """The Hub refused or failed a request (upload side); one line, token scrubbed."""


class VerifyFailedError(BitconvError):
    """The artifact's verify report says it failed: not published without `force`."""

    exit_code = EXIT_VERIFY_FAILED


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
    """True when SRC is not a local path (see `looks_local`) but reads as `owner/name[...][@revision]` or a Hub
    URL."""
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


def _token(token: str | None) -> str | None:
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


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@contextmanager
def _hub_errors(make: type[BitconvError], subject: str, token: str | None,
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
    tok = _token(token)
    with _hub_errors(SourceError, str(ref), tok, _download_rules):
        if ref.is_file:
            return _existing(_snapshot(ref, [ref.path], tok) / ref.path, ref)  # type: ignore[list-item]
        prefix = f"{ref.path}/" if ref.path else ""
        root = _snapshot(ref, [prefix + f for f in _SMALL_FILES], tok) / prefix
        weights, target = _select(ref, root, _listing(ref, root, prefix))
        _snapshot(ref, [prefix + w for w in weights], tok)
        return _existing(root / target, ref)


def _snapshot(ref: RepoRef, patterns: list[str], token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns, token=token))


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


# ------------------------------------------------------------------------------------------------ upload plan


@dataclass
class PlannedFile:
    """One file of the commit. `local` is None for the generated README.md."""

    path_in_repo: str
    size: int
    lfs: bool  # predicted: the Hub decides (size, .gitattributes)
    local: Path | None = None


@dataclass
class VerifySummary:
    report: Path
    passed: bool | None  # None: the report holds no verdict bitconv recognises
    summary: str


@dataclass
class UploadPlan:
    """Everything `upload` would send, computed without any network call."""

    artifact: Path
    repo_id: str
    revision: str | None
    create_pr: bool
    private: bool
    commit_message: str
    files: list[PlannedFile]
    card: str
    metadata: dict
    verify: VerifySummary | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return json.loads(json.dumps(d, default=str))


@dataclass
class UploadResult:
    plan: UploadPlan
    dry_run: bool
    url: str | None = None  # the PR when one was opened, else the commit
    commit_oid: str | None = None
    pr_url: str | None = None
    repo_url: str | None = None

    def to_dict(self) -> dict:
        return {"repo_id": self.plan.repo_id, "dry_run": self.dry_run, "url": self.url, "commit": self.commit_oid,
                "pr_url": self.pr_url, "repo_url": self.repo_url, "plan": self.plan.to_dict()}


def verify_report_for(artifact: str | Path) -> Path | None:
    """The verify report that belongs to an artifact: `FOLDER/bitconv-verify.json`; for a file `F`,
    `F.bitconv-verify.json` or `bitconv-verify.json` beside it."""
    a = Path(artifact)
    candidates = [a / VERIFY_REPORT] if a.is_dir() else [a.with_name(f"{a.name}.{VERIFY_REPORT}"),
                                                           a.with_name(VERIFY_REPORT)]
    return next((c for c in candidates if c.is_file()), None)


_BOOL_KEYS = ("passed", "ok", "pass", "success")
_STATUS_KEYS = ("status", "result", "verdict")
_STATUS_WORDS = {"pass": True, "passed": True, "ok": True, "success": True, "fail": False, "failed": False,
                 "failure": False, "error": False}


def read_verify_report(path: Path) -> VerifySummary:
    """Verdict and one-line summary of a verify report (JSON object; `passed`/`ok`/`status`/`exit_code`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return VerifySummary(path, None, f"unreadable report ({type(e).__name__})")
    data = data if isinstance(data, dict) else {}
    verdict = next((data[k] for k in _BOOL_KEYS if isinstance(data.get(k), bool)), None)
    if verdict is None:
        word = next((str(data[k]).lower() for k in _STATUS_KEYS if isinstance(data.get(k), str)), "")
        verdict = _STATUS_WORDS.get(word)
    if verdict is None and isinstance(data.get("exit_code"), int):
        verdict = data["exit_code"] == 0
    return VerifySummary(path, verdict, _verify_summary(data, verdict))


def _verify_summary(data: dict, verdict: bool | None) -> str:
    """`summary` when the report has one, else the first fault, else what passed (bitconv.verify's to_dict)."""
    if isinstance(data.get("summary"), str):
        return data["summary"]
    findings = data.get("findings") if isinstance(data.get("findings"), list) else []
    errors = [f for f in findings if isinstance(f, dict) and f.get("severity", "error") == "error"]
    if errors:
        return f"{len(errors)} fault(s), first: {str(errors[0].get('message', '?'))[:160]}"
    rt = data.get("roundtrip") if isinstance(data.get("roundtrip"), dict) else {}
    said = [f"{rt['n_ternary']} ternary tensors round-trip" if isinstance(rt.get("n_ternary"), int) else "",
            "logit parity within thresholds" if isinstance(data.get("parity"), dict) and verdict else ""]
    return "; ".join(s for s in said if s) or {True: "passed", False: "failed", None: "no verdict"}[verdict]


# artifact description --------------------------------------------------------------------------------------------

_GGUF_TERNARY = ("I2_S", "TL1", "TL2", "TL2_42", "TQ1_0", "TQ2_0", "IQ1_BN", "IQ2_BN", "IQ2_BN_R4")
_KIND_FORMATS = {  # kind -> (format, runtime of the how-to)
    "hf-packed": ("transformers packed BitNet checkpoint (safetensors, 4 ternary codes per byte)", "transformers"),
    "bitconv-ternary": ("bitconv ternary checkpoint (safetensors, int8 codes + float32 scales)", "bitconv"),
    "bf16-master": ("bf16 master weights, ternarized when loaded (safetensors)", "transformers"),
}


@dataclass
class _Part:
    """One loadable thing in the artifact: the safetensors checkpoint, or one GGUF file."""

    name: str
    format: str
    layout: str
    runtime: str
    files: list[tuple[str, int]]
    parameters: int
    bits_per_weight: float
    ternary_bits_per_weight: float | None
    meta: dict = field(default_factory=dict)


def _artifact_files(artifact: Path) -> list[tuple[str, Path]]:
    """(path in repo, local path) of every file to publish; hidden files, temporaries and README.md are skipped."""
    if artifact.is_file():
        return [(artifact.name, artifact)]
    out = []
    for p in sorted(artifact.rglob("*")):
        rel = p.relative_to(artifact).as_posix()
        if p.is_file() and rel != README and not any(s.startswith(".") for s in rel.split("/")):
            out.append((rel, p))
    return out


def _safetensors_part(folder: Path) -> _Part:
    from bitconv.describe import describe

    d = describe(folder, stats=False)
    fmt, runtime = _KIND_FORMATS.get(d.kind, (d.kind_description, "transformers"))
    cfg = _config(folder)
    return _Part(".", fmt, d.layout or d.kind, runtime, [(f["name"], f["bytes"]) for f in d.files], d.parameters,
                 d.bits_per_weight, d.ternary_bits_per_weight,
                 {"architecture": d.architecture, "license": cfg.get("license"),
                  "_name_or_path": cfg.get("_name_or_path")})


def _config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _gguf_part(path: Path, rel: str) -> _Part:
    from bitconv.gguf.reader import read_gguf

    g = read_gguf(path)
    numel: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for t in g.tensors.values():
        numel[t.type.name] = numel.get(t.type.name, 0) + t.numel
        nbytes[t.type.name] = nbytes.get(t.type.name, 0) + t.nbytes
    tern = [k for k in numel if k in _GGUF_TERNARY]
    layout = max(tern, key=lambda k: numel[k]) if tern else max(numel, key=lambda k: numel[k], default="?")
    n_tern = sum(numel[k] for k in tern)
    total = sum(numel.values())
    from bitconv.describe import gguf_runtimes

    meta = {"architecture": g.arch, "license": g.get("general.license"),
            "base_model_url": g.get("general.base_model.0.repo_url") or g.get("general.source.repo_url"),
            "runtimes": gguf_runtimes(path)}
    return _Part(rel, f"GGUF {layout} ({g.dialect} dialect)", layout, "gguf",
                 [(rel, g.size)], total, 8 * g.size / max(total, 1),
                 (8 * sum(nbytes[k] for k in tern) / n_tern) if n_tern else None, meta)


def _parts(artifact: Path, files: list[tuple[str, Path]]) -> list[_Part]:
    parts = [_safetensors_part(artifact)] if artifact.is_dir() and (artifact / "config.json").is_file() else []
    parts += [_gguf_part(p, rel) for rel, p in files if rel.endswith(".gguf")]
    if not parts:
        raise UsageError("not a bitconv artifact: expected an output folder (config.json + *.safetensors) or "
                         ".gguf files", path=artifact)
    return parts


# card ------------------------------------------------------------------------------------------------------------

_CARRIED = ("license", "license_name", "license_link", "language")


def _front_matter(text: str) -> dict:
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a card we cannot parse carries nothing
        return {}
    return data if isinstance(data, dict) else {}


def _cached_card(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, README)
    return Path(hit).read_text(encoding="utf-8", errors="replace") if isinstance(hit, str) else None


def _fetch_card(repo_id: str, token: str | None) -> str | None:
    """The base model's card from the Hub, best effort (None on any failure: the licence is then left out)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, README, token=token)).read_text(encoding="utf-8", errors="replace")
    except Exception:
        return None


def _base_model(explicit: str | None, own: dict, parts: list[_Part]) -> str | None:
    candidates = [explicit, own.get("base_model")]
    candidates += [p.meta.get("_name_or_path") for p in parts]
    candidates += [re.sub(r"^https?://[^/]+/", "", p.meta.get("base_model_url") or "") for p in parts]
    for c in candidates:
        c = c[0] if isinstance(c, list) and c else c
        if isinstance(c, str) and (ref := parse_ref(c)) and not ref.path and not Path(c).exists():
            return ref.repo_id
    return None


def _metadata(parts: list[_Part], base: str | None, own: dict, base_card: dict, names: set[str]) -> dict:
    from_parts = {"license": next((p.meta["license"] for p in parts if p.meta.get("license")), None)}
    lic = {k: src[k] for src in (base_card, from_parts, own) for k in _CARRIED if src.get(k)}  # later sources win
    link = lic.get("license_link")
    if isinstance(link, str) and base and "://" not in link and link not in names:
        lic["license_link"] = f"{_HUB_URL}/{base}/blob/main/{link.lstrip('./')}"
    fmts = ["safetensors" if p.name == "." else "gguf" for p in parts]
    tags = ["bitnet", "1.58-bit", "ternary", *dict.fromkeys(fmts), *dict.fromkeys(p.layout.lower() for p in parts),
            "bitconv"]
    meta: dict[str, Any] = {"base_model": base, "library_name": "transformers" if parts[0].name == "." else "gguf",
                            **{k: v for k, v in lic.items() if v}, "pipeline_tag": "text-generation",
                            "tags": list(dict.fromkeys(tags)),
                            "base_model_relation": "quantized" if base else None}
    return {k: v for k, v in meta.items() if v is not None}


_HOWTO = {
    "transformers": "### transformers\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                    "tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\nmodel = AutoModelForCausalLM."
                    "from_pretrained(\"{repo}\", torch_dtype=\"auto\")\n```\n\nNeeds a transformers release with "
                    "BitNet support (`quantization_config.quant_method: bitnet`).\n",
    "bitconv": "### bitconv\n\nThis is bitconv's lossless ternary interchange format. Pack it for a runtime:\n\n"
               "```bash\nbitconv pack {repo} --to hf -o packed\n```\n",
}


def _gguf_howto(repo_id: str, part: _Part) -> list[str]:
    """Only the runtimes where the file runs correctly (bitconv.layouts.runtimes), each with its command."""
    rt = part.meta["runtimes"]
    out = [f"### {part.name}", "", f"Arch `{rt['arch']}`, FFN activation `{rt['activation']}`, projections "
           f"{rt['type']}. Where it runs was derived from bitconv's runtime table (docs/runtimes.md), not run here.",
           ""]
    if rt["warning"]:
        out += [f"> **WARNING: {rt['warning']}**", ""]
    ok = [v for v in rt["runtimes"] if v["runs"]]
    if not ok:
        out += [f"**This file runs correctly on no known runtime** ({rt['does_not_run_on']}).", ""]
    for v in ok:
        out += [f"#### {v['name']}", "", "```bash", f"hf download {repo_id} {part.name} --local-dir .",
                v["command"], "```", "", *[f"- {n}" for n in v["notes"]], f"- checked: {v['checked']}", ""]
    if rt["codegen_steps"]:
        out += ["Build bitnet.cpp with kernels for this file's shapes (in the bitnet.cpp checkout; bitconv wrote the "
                "`kernel_config.ini` next to the GGUF):", ""]
        out += [f"{i}. `{s}`" for i, s in enumerate(rt["codegen_steps"], 1)] + [""]
    for n in rt["notes"]:
        out += [f"Note: {n}", ""]
    bad = [v for v in rt["runtimes"] if not v["runs"]]
    if bad and ok:
        out += ["Does not run correctly on: " + "; ".join(f"{v['name']} ({v['why']})" for v in bad) + ".", ""]
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _card(repo_id: str, meta: dict, parts: list[_Part], files: list[PlannedFile],
          verify: VerifySummary | None) -> str:
    from huggingface_hub import ModelCardData

    name = repo_id.rsplit("/", 1)[-1]
    base = meta.get("base_model")
    origin = f" of [{base}]({_HUB_URL}/{base})" if base else ""
    lines = [f"# {name}", "", f"BitNet b1.58 ternary (1.58-bit) weights{origin}, converted with bitconv "
             f"{__version__}.", "", "## Format", "", "| part | format | layout | parameters | bits/weight | "
             "bits/ternary weight |", "|---|---|---|---|---|---|"]
    for p in parts:
        tbw = f"{p.ternary_bits_per_weight:.3f}" if p.ternary_bits_per_weight else "-"
        lines.append(f"| {'checkpoint' if p.name == '.' else p.name} | {p.format} | {p.layout} | {p.parameters:,} "
                     f"| {p.bits_per_weight:.3f} | {tbw} |")
    lines += ["", "## Files", "", "| file | size | storage |", "|---|---|---|"]
    lines += [f"| {f.path_in_repo} | {_fmt_bytes(f.size)} | {'LFS' if f.lfs else 'git'} |" for f in files
              if f.local is not None]
    lines += ["", "## How to load", ""]
    for runtime, part in {p.runtime: p for p in parts if p.runtime != "gguf"}.items():
        lines.append(_HOWTO[runtime].format(repo=repo_id, name=name, file=part.name))
    for part in parts:
        if part.runtime == "gguf":
            lines += _gguf_howto(repo_id, part)
    if verify is not None:
        state = {True: "passed", False: "FAILED", None: "no verdict"}[verify.passed]
        lines += ["## Verification", "", f"`bitconv verify` {state}: {verify.summary} (report: "
                  f"`{VERIFY_REPORT}`).", ""]
    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n"


def plan_upload(artifact: str | Path, repo_id: str, *, revision: str | None = None, create_pr: bool = False,
                private: bool = False, commit_message: str | None = None, force: bool = False,
                base_model: str | None = None, base_card: str | None = None) -> UploadPlan:
    """What `upload` would send: files, sizes, the card. Local only; refuses a failed verify unless `force`."""
    a = Path(artifact)
    if not a.exists():
        raise UsageError("no such file or folder", path=a)
    if create_pr and revision not in (None, "main"):
        raise UsageError("--create-pr opens a pull request against main; leave out --revision")
    ref = parse_ref(repo_id)
    if ref is None or ref.path or ref.revision:
        raise UsageError(f"{repo_id!r} is not a Hub repo id (owner/name)")
    report = verify_report_for(a)
    verify = read_verify_report(report) if report else None
    if verify is not None and verify.passed is False and not force:
        raise VerifyFailedError(f"bitconv verify failed ({verify.summary}; report {report}): refusing to "
                                "publish (pass --force to upload anyway)", path=a)
    local = _artifact_files(a)
    if report is not None and a.is_file():
        local.append((VERIFY_REPORT, report))
    parts = _parts(a, local)
    own = _front_matter((a / README).read_text(encoding="utf-8", errors="replace")) if (a / README).is_file() else {}
    base = _base_model(base_model, own, parts)
    card_text = base_card if base_card is not None else (_cached_card(base) if base else None)
    meta = _metadata(parts, base, own, _front_matter(card_text) if card_text else {}, {r for r, _ in local})
    files = [PlannedFile(r, p.stat().st_size, _is_lfs(r, p.stat().st_size), p) for r, p in local]
    card = _card(ref.repo_id, meta, parts, files, verify)
    msg = commit_message or f"Upload {', '.join(p.layout for p in parts)} ternary weights (bitconv {__version__})"
    return UploadPlan(a, ref.repo_id, revision, create_pr, private, msg,
                      [*files, PlannedFile(README, len(card.encode()), False)], card, meta, verify,
                      _warnings(base, meta, verify) + _runtime_warnings(parts))


def _warnings(base: str | None, meta: dict, verify: VerifySummary | None) -> list[str]:
    out = [] if base else ["base_model unknown: pass --base-model OWNER/NAME so the card links the source"]
    out += [] if "license" in meta else ["no licence found in the source config or card: the card has none"]
    if verify is not None and verify.passed is not True:
        forced = " (published anyway: --force)" if verify.passed is False else ""
        out.append(f"verify report {verify.report}: {verify.summary}{forced}")
    return out


def _runtime_warnings(parts: list[_Part]) -> list[str]:
    out = []
    for p in parts:
        rt = p.meta.get("runtimes")
        if rt and not any(v["runs"] for v in rt["runtimes"]):
            out.append(f"{p.name} runs correctly on no known runtime ({rt['does_not_run_on']}); the card says so")
    return out


def _is_lfs(path_in_repo: str, size: int) -> bool:
    return size >= LFS_THRESHOLD or path_in_repo.endswith(_LFS_SUFFIXES)


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
    tok = _token(token)
    base = plan.metadata.get("base_model")
    if base and "license" not in plan.metadata and _cached_card(base) is None:
        card = _fetch_card(base, tok)
        plan = plan_upload(artifact, repo_id, base_card=card, **kw) if card else plan
    with _hub_errors(HubError, plan.repo_id, tok, _upload_rules):
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
