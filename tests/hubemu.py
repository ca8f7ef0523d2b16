"""A Hugging Face Hub emulator for tests: a stdlib HTTP server on 127.0.0.1 that the unmodified huggingface_hub
client (2.4.0, with HF_HUB_DISABLE_XET=1) talks to through HF_ENDPOINT. Protocol facts: shared/spec/hub.md §1, §4.

Implemented (models only; state in memory):
    POST /api/repos/create                         create (409 with the url when it exists), private flag
    POST /api/validate-yaml                        README front matter must be a YAML mapping
    GET  /api/whoami-v2
    GET  /api/models/{repo}[/revision/{rev}]       model_info / repo_info (siblings, sha, cardData, ?blobs=1)
    GET  /api/models/{repo}/tree/{rev}[/{path}]    list_repo_tree / list_repo_files (recursive or not)
    GET  /api/models/{repo}/refs, /commits/{rev}
    POST /api/models/{repo}/preupload/{rev}        upload mode: lfs from 10 MiB, .gitattributes patterns, or NUL
    POST /{repo}.git/info/lfs/objects/batch        basic transfer, multipart above `multipart_threshold`
    PUT  /_lfs/{oid}, /_lfs/{oid}/part/{n}; POST /_lfs/{oid}/complete, /_lfs/{oid}/verify   (sha256 checked)
    POST /api/models/{repo}/commit/{rev}           NDJSON; ?create_pr=1 opens refs/pr/N; 412 on a stale parent
    POST /api/models/{repo}/branch/{branch}        409 when it exists
    POST /api/models/{repo}/discussions, GET .../discussions/{n}
    HEAD/GET /{repo}/resolve/{rev}/{path}          X-Repo-Commit + ETag, Range; 404 with X-Error-Code
Access: tokens map to users (`users`); a private repo is visible to its owner only (401/404 RepoNotFound); a gated
repo lists its files to anyone but serves them only to its owner and `granted` users (401/403 GatedRepo); writes
need the owner's token. An unknown token gets 401 "Invalid credentials in Authorization header".
Not modelled: Xet, datasets/spaces, tags, paths-info, pagination, PR merges, rate limits, the Hub's YAML schema.

Every request is recorded in `requests` (method, path, status, whether an Authorization header came). The server
stops by itself after `max_seconds`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MIB = 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                        for p in ("*.bin", "*.safetensors", "*.model", "*.pt", "*.pth", "*.npy", "*.zip"))
_REPO = r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*?)"
_REV = r"(?P<rev>[^/]+)"


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class Entry:
    """A file in a commit: content is in the emulator's blob store under `sha256`."""

    sha256: str
    size: int
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, Entry]
    date: str


@dataclass
class Discussion:
    num: int
    title: str
    author: str
    is_pr: bool
    created: str


@dataclass
class Repo:
    id: str
    owner: str
    private: bool = False
    gated: bool = False
    granted: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)  # "main", branches, "refs/pr/N" -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: list[Discussion] = field(default_factory=list)
    created: str = ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_patterns(files: dict[str, Entry], blobs: dict[str, bytes]) -> list[str]:
    e = files.get(".gitattributes")
    text = blobs[e.sha256].decode("utf-8", "replace") if e else ""
    return [ln.split()[0] for ln in text.splitlines() if "filter=lfs" in ln]


class HubEmulator:
    """The server and its state. Use as a context manager, or `start()` / `stop()`; `url` is the endpoint."""

    def __init__(self, users: dict[str, str] | None = None, multipart_threshold: int = 8 * MIB,
                 chunk_size: int = 5 * MIB, max_seconds: float = 300.0) -> None:
        self.users = dict(users or {})  # token -> user name
        self.multipart_threshold, self.chunk_size, self.max_seconds = multipart_threshold, chunk_size, max_seconds
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content
        self.pending: dict[str, int] = {}  # LFS oid -> size announced by the batch call
        self.parts: dict[str, dict[int, bytes]] = {}
        self.lfs_transfers: list[tuple[str, str]] = []  # (oid, "basic" | "multipart") of completed uploads
        self.requests: list[dict] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # lifecycle --------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubEmulator:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.emu = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.max_seconds, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # seeding and inspection (for tests) ---------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path] | None = None, *, private: bool = False,
                 gated: bool = False, granted: tuple[str, ...] = ()) -> Repo:
        """A repo owned by its namespace, with an initial commit holding `.gitattributes` plus `files`."""
        with self.lock:
            repo = self._new_repo(repo_id, repo_id.split("/")[0], private)
            repo.gated, repo.granted = gated, set(granted)
            if files:
                data = {k: v.read_bytes() if isinstance(v, Path) else v.encode() if isinstance(v, str) else v
                        for k, v in files.items()}
                head = repo.commits[repo.refs["main"]]
                new = dict(head.files)
                for path, content in data.items():
                    new[path] = self._store(content, self._wants_lfs(path, content[:512], len(content), head.files))
                self._commit(repo, "main", head.oid, "Add files", new)
            return repo

    def read_files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            commit = repo.commits[self._rev(repo, revision)]
            return {p: self.blobs[e.sha256] for p, e in commit.files.items()}

    def entries(self, repo_id: str, revision: str = "main") -> dict[str, Entry]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[self._rev(repo, revision)].files)

    @property
    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    # state helpers ------------------------------------------------------------------------------------------------

    def _new_repo(self, repo_id: str, owner: str, private: bool) -> Repo:
        repo = Repo(repo_id, owner, private, created=_now())
        self.repos[repo_id] = repo
        self._commit(repo, "main", None, "initial commit", {".gitattributes": self._store(GITATTRIBUTES.encode(),
                                                                                          False)})
        return repo

    def _store(self, content: bytes, lfs: bool) -> Entry:
        sha = hashlib.sha256(content).hexdigest()
        self.blobs[sha] = content
        return Entry(sha, len(content), _git_oid(content), lfs)

    def _wants_lfs(self, path: str, sample: bytes, size: int, files: dict[str, Entry]) -> bool:
        patterns = _lfs_patterns(files, self.blobs)
        return size >= 10 * MIB or b"\0" in sample or any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p)
                                                          for p in patterns)

    def _commit(self, repo: Repo, ref: str, parent: str | None, title: str, files: dict[str, Entry]) -> Commit:
        oid = hashlib.sha1(f"{repo.id}:{next(self._ids)}:{time.time_ns()}".encode()).hexdigest()
        commit = Commit(oid, parent, title, files, _now())
        repo.commits[oid] = commit
        repo.refs[ref] = oid
        return commit

    def _rev(self, repo: Repo, rev: str) -> str:
        rev = rev.removeprefix("refs/heads/")
        if rev in repo.refs:
            return repo.refs[rev]
        if rev in repo.commits:
            return rev
        raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _repo(self, repo_id: str, user: str | None, *, files: bool = False, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            raise HubHTTPError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and user is None:
            raise HubHTTPError(401, "You must be authenticated to write to this repo")
        if write and user != repo.owner:
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        if files and repo.gated and user != repo.owner and user not in repo.granted:
            raise HubHTTPError(401 if user is None else 403, f"Access to model {repo_id} is restricted. You must "
                               "have access to it and be authenticated to access it. Please log in.", "GatedRepo")
        return repo


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "HubEmulator/1"

    ROUTES: list[tuple[str, re.Pattern, str]] = [(m, re.compile(p), h) for m, p, h in (
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", "preupload"),
        ("POST", rf"/api/models/{_REPO}/commit/{_REV}", "commit"),
        ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", rf"/api/models/{_REPO}/discussions", "create_discussion"),
        ("GET", rf"/api/models/{_REPO}/discussions/(?P<num>\d+)", "discussion"),
        ("GET", rf"/api/models/{_REPO}/refs", "refs"),
        ("GET", rf"/api/models/{_REPO}/commits/{_REV}", "commits"),
        ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?P<path>/.*)?", "tree"),
        ("GET", rf"/api/models/{_REPO}(?:/revision/{_REV})?", "info"),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})/part/(?P<n>\d+)", "lfs_put_part"),
        ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/complete", "lfs_complete"),
        ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
        ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
        ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
    )]

    # plumbing ---------------------------------------------------------------------------------------------------

    @property
    def emu(self) -> HubEmulator:
        return self.server.emu  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (silence the default stderr log)
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            self.user = self._user()
            for method, pattern, name in self.ROUTES:
                m = pattern.fullmatch(url.path)
                if m and method == self.command:
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    with self.emu.lock:
                        getattr(self, name)(**args)
                    return
            raise HubHTTPError(404, "Not Found")
        except HubHTTPError as e:
            headers = {**e.headers, "X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            self._send(e.status, {"error": e.message}, headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        user = self.emu.users.get(auth.removeprefix("Bearer ").strip())
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _send(self, status: int, payload: Any = None, headers: dict | None = None, raw: bytes | None = None,
              content_type: str = "application/json") -> None:
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        with self.emu.lock:
            self.emu.requests.append({"method": self.command, "path": self.path, "status": status,
                                      "auth": "Authorization" in self.headers})
        self.send_response(status)
        for k, v in {"Content-Type": content_type, "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError:
            raise HubHTTPError(400, "Invalid JSON body") from None

    def _link(self, *parts: str) -> str:
        return "/".join((self.emu.url, *parts))

    # repos ------------------------------------------------------------------------------------------------------

    def create_repo(self) -> None:
        body = self._json()
        if self.user is None:
            raise HubHTTPError(401, "You must be authenticated to create a repo")
        if body.get("type", "model") != "model":
            raise HubHTTPError(400, "the emulator only hosts model repos")
        ns = body.get("organization") or self.user
        repo_id = f"{ns}/{body.get('name')}"
        if ns != self.user:
            raise HubHTTPError(403, f"You don't have the rights to create a model under the namespace {ns}")
        if repo_id in self.emu.repos:
            self._send(409, {"error": "You already created this model repo", "url": self._link(repo_id)})
            return
        self.emu._new_repo(repo_id, ns, body.get("visibility") == "private" or bool(body.get("private")))
        self._send(200, {"url": self._link(repo_id), "name": repo_id})

    def validate_yaml(self) -> None:
        content = self._json().get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as e:
            self._send(400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []})
            return
        if meta is not None and not isinstance(meta, dict):
            self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []})
            return
        self._send(200, {"errors": [], "warnings": []})

    def whoami(self) -> None:
        if self.user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def info(self, repo: str, rev: str = "main") -> None:
        r = self.emu._repo(repo, self.user)
        commit = r.commits[self.emu._rev(r, rev)]
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        card = _card_data(self.emu.blobs[commit.files[README].sha256]) if README in commit.files else {}
        siblings = [{"rfilename": p, **(_blob_meta(e) if blobs else {})} for p, e in sorted(commit.files.items())]
        self._send(200, {"id": r.id, "modelId": r.id, "author": r.owner, "sha": commit.oid, "private": r.private,
                         "gated": "auto" if r.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                         "tags": card.get("tags") or [], "library_name": card.get("library_name"),
                         "cardData": card or None, "siblings": siblings, "lastModified": commit.date,
                         "createdAt": r.created})

    def tree(self, repo: str, rev: str, path: str = "") -> None:
        r = self.emu._repo(repo, self.user)
        commit = r.commits[self.emu._rev(r, rev)]
        prefix = path.strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        files = {p: e for p, e in commit.files.items() if not prefix or p.startswith(prefix + "/")}
        if prefix and not files:
            raise HubHTTPError(404, f"{prefix} does not exist", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        depth = prefix.count("/") + 1 if prefix else 0
        dirs = sorted({"/".join(p.split("/")[: i + 1]) for p in files for i in range(depth, p.count("/"))})
        out = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d} for d in dirs
               if recursive or d.count("/") == depth]
        out += [{"type": "file", "path": p, **_blob_meta(e, tree=True)} for p, e in sorted(files.items())
                if recursive or p.count("/") == depth]
        self._send(200, out)

    def refs(self, repo: str) -> None:
        r = self.emu._repo(repo, self.user)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in r.refs.items()
                    if not n.startswith("refs/")]
        prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in r.refs.items() if n.startswith("refs/pr/")]
        include = self.query.get("include_prs", "").lower() in ("1", "true")
        self._send(200, {"branches": branches, "converts": [], "tags": [], **({"pullRequests": prs} if include
                                                                                else {})})

    def commits(self, repo: str, rev: str) -> None:
        r = self.emu._repo(repo, self.user)
        out, oid = [], self.emu._rev(r, rev)
        while oid is not None:
            c = r.commits[oid]
            out.append({"id": c.oid, "authors": [{"user": r.owner}], "date": c.date, "title": c.title,
                        "message": ""})
            oid = c.parent
        self._send(200, out)

    def create_branch(self, repo: str, branch: str) -> None:
        r = self.emu._repo(repo, self.user, write=True)
        if branch in r.refs:
            raise HubHTTPError(409, "Reference already exists")
        start = self._json().get("startingPoint") or "main"
        r.refs[branch] = self.emu._rev(r, start)
        self._send(200, {})

    def create_discussion(self, repo: str) -> None:
        r = self.emu._repo(repo, self.user)
        if self.user is None:
            raise HubHTTPError(401, "You must be authenticated to open a discussion")
        body = self._json()
        d = self._open_discussion(r, body.get("title") or "", bool(body.get("pullRequest")))
        self._send(200, {"num": d.num, "pullRequest": d.is_pr, "url": self._link(r.id, "discussions", str(d.num))})

    def _open_discussion(self, r: Repo, title: str, is_pr: bool) -> Discussion:
        d = Discussion(len(r.discussions) + 1, title, self.user or "", is_pr, _now())
        r.discussions.append(d)
        if is_pr:
            r.refs[f"refs/pr/{d.num}"] = r.refs["main"]
        return d

    def discussion(self, repo: str, num: str) -> None:
        r = self.emu._repo(repo, self.user)
        d = next((x for x in r.discussions if x.num == int(num)), None)
        if d is None:
            raise HubHTTPError(404, "Discussion not found")
        event = {"id": f"{d.num:024x}", "type": "comment", "createdAt": d.created, "author": {"name": d.author},
                 "data": {"latest": {"raw": "", "html": ""}, "numEdits": 0, "editors": [], "reactions": [],
                          "identifiedLanguage": {"language": "en", "probability": 1.0}, "isReport": False,
                          "hidden": False}}
        self._send(200, {"num": d.num, "title": d.title, "status": "draft" if d.is_pr else "open",
                         "isPullRequest": d.is_pr, "createdAt": d.created, "author": {"name": d.author},
                         "repo": {"name": r.id, "type": "model"}, "pinned": False, "events": [event],
                         "changes": {"base": "refs/heads/main"} if d.is_pr else None, "filesWithConflicts": [],
                         "conflictingFiles": [], "diff": ""})

    # uploads ----------------------------------------------------------------------------------------------------

    def preupload(self, repo: str, rev: str) -> None:
        r = self.emu._repo(repo, self.user, write=True)
        base = r.commits[self.emu._rev(r, "main" if self._create_pr() else rev)]
        out = []
        for f in self._json().get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = self.emu._wants_lfs(f["path"], sample, int(f["size"]), base.files)
            old = base.files.get(f["path"])
            oid = (old.sha256 if lfs else old.git_oid) if old else None
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        **({"oid": oid} if oid else {})})
        self._send(200, {"files": out, "commitOid": base.oid})

    def _create_pr(self) -> bool:
        return self.query.get("create_pr", "").lower() in ("1", "true")

    def lfs_batch(self, repo: str) -> None:
        self.emu._repo(repo, self.user, write=True)
        body = self._json()
        if body.get("operation") != "upload":
            raise HubHTTPError(400, "the emulator only accepts upload batches")
        objects = [self._lfs_object(o["oid"], int(o["size"])) for o in body.get("objects", [])]
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    def _lfs_object(self, oid: str, size: int) -> dict:
        emu = self.emu
        if oid in emu.blobs and len(emu.blobs[oid]) == size:
            return {"oid": oid, "size": size}
        emu.pending[oid] = size
        verify = {"href": self._link("_lfs", oid, "verify")}
        if size <= emu.multipart_threshold:
            return {"oid": oid, "size": size, "actions": {"upload": {"href": self._link("_lfs", oid)},
                                                          "verify": verify}}
        n = -(-size // emu.chunk_size)
        header = {"chunk_size": str(emu.chunk_size), **{str(i): self._link("_lfs", oid, "part", str(i))
                                                          for i in range(1, n + 1)}}
        return {"oid": oid, "size": size, "actions": {"upload": {"href": self._link("_lfs", oid, "complete"),
                                                                 "header": header}, "verify": verify}}

    def _keep_blob(self, oid: str, data: bytes, how: str) -> None:
        if self.emu.pending.get(oid) != len(data) or hashlib.sha256(data).hexdigest() != oid:
            raise HubHTTPError(400, f"LFS object {oid} does not match its announced sha256/size")
        self.emu.blobs[oid] = data
        self.emu.pending.pop(oid, None)
        self.emu.lfs_transfers.append((oid, how))

    def lfs_put(self, oid: str) -> None:
        self._keep_blob(oid, self.body, "basic")
        self._send(200, raw=b"")

    def lfs_put_part(self, oid: str, n: str) -> None:
        if oid not in self.emu.pending:
            raise HubHTTPError(404, "no multipart upload in progress for this object")
        self.emu.parts.setdefault(oid, {})[int(n)] = self.body
        self._send(200, raw=b"", headers={"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def lfs_complete(self, oid: str) -> None:
        parts = self.emu.parts.pop(oid, {})
        listed = self._json().get("parts", [])
        for p in listed:
            want = f'"{hashlib.md5(parts.get(int(p["partNumber"]), b"")).hexdigest()}"'
            if p.get("etag") not in (want, want.strip('"')):
                raise HubHTTPError(400, f"part {p['partNumber']}: etag mismatch")
        self._keep_blob(oid, b"".join(parts[int(p["partNumber"])] for p in listed), "multipart")
        self._send(200, {})

    def lfs_verify(self, oid: str) -> None:
        body = self._json()
        if self.user is None:
            raise HubHTTPError(401, "You must be authenticated to verify an upload")
        if len(self.emu.blobs.get(oid, b"")) != int(body.get("size", -1)) or oid not in self.emu.blobs:
            raise HubHTTPError(404, f"LFS object {oid} not found")
        self._send(200, {})

    def commit(self, repo: str, rev: str) -> None:
        r = self.emu._repo(repo, self.user, write=True)
        lines = [json.loads(ln) for ln in self.body.splitlines() if ln.strip()]
        header = next((ln["value"] for ln in lines if ln.get("key") == "header"), {})
        pr = self._create_pr()
        if not pr and rev not in r.refs and rev.removeprefix("refs/heads/") not in r.refs:
            raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = r.commits[self.emu._rev(r, rev)]
        parent = header.get("parentCommit")
        if parent and parent != head.oid:
            raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for op in lines:
            self._apply(op.get("key"), op.get("value") or {}, files)
        d = self._open_discussion(r, header.get("summary", ""), True) if pr else None
        ref = f"refs/pr/{d.num}" if d else rev.removeprefix("refs/heads/")
        c = self.emu._commit(r, ref, head.oid, header.get("summary", ""), files)
        self._send(200, {"commitOid": c.oid, "commitUrl": self._link(r.id, "commit", c.oid),
                         "pullRequestUrl": self._link(r.id, "discussions", str(d.num)) if d else None})

    def _apply(self, key: str | None, value: dict, files: dict[str, Entry]) -> None:
        path = value.get("path", "")
        if key == "file":
            files[path] = self.emu._store(base64.b64decode(value.get("content", "")), False)
        elif key == "lfsFile":
            oid, size = value.get("oid"), int(value.get("size", -1))
            if len(self.emu.blobs.get(oid, b"")) != size or oid not in self.emu.blobs:
                raise HubHTTPError(422, f"LFS file {path}: object {oid} was not uploaded")
            files[path] = Entry(oid, size, _git_oid(_pointer(oid, size)), True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubHTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                del files[p]

    # downloads --------------------------------------------------------------------------------------------------

    def resolve(self, repo: str, rev: str, path: str) -> None:
        r = self.emu._repo(repo, self.user, files=True)
        commit = r.commits[self.emu._rev(r, rev)]
        e = commit.files.get(path)
        if e is None:
            raise HubHTTPError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self.emu.blobs[e.sha256]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{e.sha256 if e.lfs else e.git_oid}"',
                   "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m and self.command == "GET":
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, raw=data[start:end + 1], headers=headers, content_type="application/octet-stream")
            return
        self._send(200, raw=data, headers=headers, content_type="application/octet-stream")


README = "README.md"


def _pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _blob_meta(e: Entry, tree: bool = False) -> dict:
    lfs = {"oid" if tree else "sha256": e.sha256, "size": e.size, "pointerSize": len(_pointer(e.sha256, e.size))}
    return {"oid" if tree else "blobId": e.git_oid, "size": e.size, **({"lfs": lfs} if e.lfs else {})}


def _card_data(readme: bytes) -> dict:
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.decode("utf-8", "replace"), re.S)
    try:
        data = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}
