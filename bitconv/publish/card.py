"""The model card and upload plan for `bitconv upload`: what would be sent, computed without any network call.

`plan_upload(artifact, repo_id)` lists an output folder's (or one .gguf file's) files and writes README.md: YAML
front matter (base_model, base_model_relation: quantized, library_name, tags, licence carried from the source) and a
body with the format, bits per weight, file sizes, how to load it, and the verify summary when a report
(`bitconv-verify.json`, see `verify_report_for`) lies next to the artifact. A failed report is refused unless
`force`. The upload itself is `bitconv.publish.upload`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitconv import REPO_URL, __version__
from bitconv.core.errors import EXIT_VERIFY_FAILED, BitconvError, UsageError
from bitconv.core.safeio import sha256_file
from bitconv.describe import describe, gguf_runtimes
from bitconv.formats.gguf.reader import read_gguf
from bitconv.layouts import ggml_type_layouts, kernel_kinds
from bitconv.layouts.kernel_config import INI_NAME, KernelConfig
from bitconv.layouts.runtimes import BITNET_CPP_GIT
from bitconv.sources.gguf import PACKED, kernel_config_path
from bitconv.sources.hub import HUB_URL, README, parse_ref

VERIFY_REPORT = "bitconv-verify.json"
BEGIN, END = "<!-- bitconv:begin -->", "<!-- bitconv:end -->"  # bitconv's part of README.md; the rest is the user's
NOT_VERIFIED = "not verified"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files from 10 MB on through LFS/Xet
_LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".model", ".pt", ".pth", ".npy")


class VerifyFailedError(BitconvError):
    """The artifact's verify report says it failed: not published without `force`."""

    exit_code = EXIT_VERIFY_FAILED


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
    recorded: list[str] = field(default_factory=list)  # sha256 of every file the report says it verified
    applies: bool = True  # the report records the hash of every weight file being uploaded
    why: str = ""  # why it does not apply
    in_repo: str = ""  # its path in the repo, when it is uploaded


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
    section: Section | None = field(default=None, repr=False)  # bitconv's part of the card; None: --no-card

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("section")
        d["total_bytes"] = self.total_bytes
        return json.loads(json.dumps(d, default=str))


@dataclass
class UploadResult:
    """What happened. `committed` is False on a dry run and when the repo already held every file (then no commit
    or pull request was made, and `url`, `commit_url`, `pr_url` are None); `head` is the commit the target revision
    points at afterwards."""

    plan: UploadPlan
    dry_run: bool
    url: str | None = None  # the PR when one was opened, else the commit; None when nothing was committed
    commit_oid: str | None = None
    pr_url: str | None = None
    repo_url: str | None = None
    committed: bool = False
    commit_url: str | None = None
    target: str = "main"  # the revision the files were compared with (a PR's base is main)
    head: str | None = None
    branch_created: bool = False
    changed: list[str] = field(default_factory=list)  # the files the commit added or changed (the rest were equal)

    def to_dict(self) -> dict:
        return {"repo_id": self.plan.repo_id, "dry_run": self.dry_run, "committed": self.committed,
                "url": self.url, "commit": self.commit_oid, "commit_url": self.commit_url, "pr_url": self.pr_url,
                "revision": self.target, "head": self.head, "branch_created": self.branch_created,
                "changed": self.changed,
                "repo_url": self.repo_url, "plan": self.plan.to_dict()}


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
    """Verdict, one-line summary and recorded file hashes of a verify report (JSON object; `passed`/`ok`/`status`/
    `exit_code`; `out_files` at the top (verify) or in each of `artifacts[].verify` (check))."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return VerifySummary(path, None, f"unreadable report ({type(e).__name__})")
    data = data if isinstance(data, dict) else {}
    verdict = _verdict(data)
    return VerifySummary(path, verdict, _verify_summary(data, verdict), _recorded_hashes(data))


def _recorded_hashes(data: dict) -> list[str]:
    docs = [data] + [a.get("verify") for a in data.get("artifacts") or [] if isinstance(a, dict)]
    out = []
    for d in docs:
        files = d.get("out_files") if isinstance(d, dict) else None
        out += [f["sha256"] for f in files or [] if isinstance(f, dict) and isinstance(f.get("sha256"), str)]
    return out


def judge_report(verify: VerifySummary, weights: list[Path]) -> VerifySummary:
    """The report applies only when it records the sha256 of every weight file being uploaded (a report left beside
    a file that `pack --overwrite` replaced records the old file's hash)."""
    if not verify.recorded:
        verify.applies, verify.why = False, "the verify report records no file hash (re-run `bitconv verify`)"
        return verify
    stale = [p.name for p in weights if sha256_file(p) not in verify.recorded]
    if stale or not weights:
        verify.applies = False
        verify.why = (f"the verify report was written for another file: the sha256 of {', '.join(stale)} is not the "
                      "one it records (re-run `bitconv verify`)")
    return verify


def _verdict(data: dict) -> bool | None:
    verdict = next((data[k] for k in _BOOL_KEYS if isinstance(data.get(k), bool)), None)
    if verdict is None:
        word = next((str(data[k]).lower() for k in _STATUS_KEYS if isinstance(data.get(k), str)), "")
        verdict = _STATUS_WORDS.get(word)
    if verdict is None and isinstance(data.get("exit_code"), int):
        verdict = data["exit_code"] == 0
    return verdict


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

_GGUF_TERNARY = tuple(ggml_type_layouts())  # every GGML type a registered layout writes or reads
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

    rt = gguf_runtimes(path)
    meta = {"architecture": g.arch, "license": g.get("general.license"),
            "base_model_url": g.get("general.base_model.0.repo_url") or g.get("general.source.repo_url"),
            "runtimes": rt}
    kind = kernel_kinds().get(PACKED.get(rt["type"], ""))
    if kind is not None:  # a tiled layout: its kernels are generated for this tiling, so the ini goes up with it
        meta["kernel_config"] = kernel_config_path(path)  # a tiled file without one: refused, with where to put it
        meta["kind"] = kind
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


def _kernel_configs(artifact: Path, parts: list[_Part], local: list[tuple[str, Path]]) -> None:
    """Each tiled part's kernel_config.ini, as a file of the upload: inside a folder artifact it is already one; beside
    a single .gguf file it goes up as `STEM.kernel_config.ini` (one repo can hold files of both tiled layouts;
    bitconv reads that name first). Records the path in the repo and the codegen steps that name it."""
    in_repo = {p.resolve(): r for r, p in local}
    for part in parts:
        ini = part.meta.get("kernel_config")
        if ini is None:
            continue
        rel = in_repo.get(Path(ini).resolve())
        if rel is None:
            rel = f"{Path(part.name).stem}.{INI_NAME}"
            local.append((rel, Path(ini)))
        kc = KernelConfig.from_ini(ini).with_kind(part.meta["kind"])
        part.meta["kernel_config_in_repo"] = rel
        part.meta["codegen_steps"] = kc.codegen_params().instructions(rel)


# card ------------------------------------------------------------------------------------------------------------

_CARRIED = ("license", "license_name", "license_link", "language")


def _front_matter(text: str) -> dict:
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a card we cannot parse carries nothing
        return {}
    return data if isinstance(data, dict) else {}


def cached_card(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, README)
    return Path(hit).read_text(encoding="utf-8", errors="replace") if isinstance(hit, str) else None


def fetch_card(repo_id: str, token: str | None) -> str | None:
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
        lic["license_link"] = f"{HUB_URL}/{base}/blob/main/{link.lstrip('./')}"
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
    """Only the runtimes where the file runs correctly (bitconv.layouts.runtimes), each with its command; for a tiled
    layout first every step of the kernel build, from the clone to cmake."""
    rt = part.meta["runtimes"]
    out = [f"### {part.name}", "", f"Arch `{rt['arch']}`, FFN activation `{rt['activation']}`, projections "
           f"{rt['type']}. Where it runs was derived from bitconv's runtime table (docs/runtimes.md), not run here.",
           ""]
    if rt["warning"]:
        out += [f"> **WARNING: {rt['warning']}**", ""]
    ok = [v for v in rt["runtimes"] if v["runs"]]
    ini = part.meta.get("kernel_config_in_repo")
    fetch = f"hf download {repo_id} {part.name}" + (f" {ini}" if ini else "") + " --local-dir ."
    if ini:
        at = "  (then check out the commit of a runtime named below)" if ok else ""
        steps = [f"git clone --recursive {BITNET_CPP_GIT} && cd BitNet{at}", fetch, *part.meta["codegen_steps"]]
        steps.insert(len(steps) - 1, f"cmp include/{INI_NAME} {ini}  (no output: the generated kernels are "
                                     "the ones this file was tiled for)")
        out += [f"{part.layout} kernels are generated for one model's shapes and tiling, so bitnet.cpp must be "
                f"built for this file. `{ini}` is the kernel config it was packed with. In order:", ""]
        out += [f"{i}. `{s}`" for i, s in enumerate(steps, 1)] + [""]
    if not ok:
        out += [f"**This file runs correctly on no known runtime** ({rt['does_not_run_on']}).", ""]
    for v in ok:
        run = [v["command"]] if ini else [fetch, v["command"]]
        out += [f"#### {v['name']}", "", "```bash", *run, "```", "", *[f"- {n}" for n in v["notes"]],
                f"- checked: {v['checked']}", ""]
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


# the card: front matter, the user's text, bitconv's marked section ------------------------------------------------

_FORMAT_HEAD = ["| part | format | layout | parameters | bits/weight | bits/ternary weight |",
                "|---|---|---|---|---|---|"]
_FILES_HEAD = ["| file | size | storage |", "|---|---|---|"]
_CHECKPOINT = "checkpoint"


@dataclass
class Section:
    """bitconv's part of README.md, keyed so that uploads merge: a table row per part and per file, a how-to block
    per runtime or GGUF file, a verification line per part. A later upload replaces the entries it names."""

    intro: str
    formats: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    howto: dict[str, str] = field(default_factory=dict)
    verify: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        lines = [BEGIN, self.intro, "", "## Format", "", *_FORMAT_HEAD, *self.formats.values(), "", "## Files", "",
                 *_FILES_HEAD, *self.files.values(), "", "## How to load", ""]
        lines += [b + "\n" for b in self.howto.values()]
        lines += ["## Verification", "", *self.verify.values(), END]
        return "\n".join(lines)

    def merged(self, old: Section | None, present: set[str]) -> Section:
        """`old`'s entries updated with these; entries for files no longer in the repo (`present`) are dropped."""
        if old is None:
            return self
        has_ckpt = any(f.endswith(".safetensors") for f in present)

        def keep(key: str) -> bool:
            return key in present or (key in (_CHECKPOINT, *_HOWTO) and has_ckpt)

        def join(a: dict[str, str], b: dict[str, str], rule: object) -> dict[str, str]:
            return {k: v for k, v in {**a, **b}.items() if k in b or rule(k)}

        return Section(self.intro, join(old.formats, self.formats, keep),
                       join(old.files, self.files, lambda k: k in present), join(old.howto, self.howto, keep),
                       join(old.verify, self.verify, keep))


def parse_section(text: str) -> Section:
    """The entries of a rendered section (the text between the markers, or a whole card written by an earlier bitconv
    that had none): table rows by their first cell, how-to blocks by their `### ` heading, verification lines by the
    part in backticks."""
    sec = Section("")
    where = ""
    block: list[str] = []

    def close() -> None:
        if block:
            sec.howto[block[0][4:].strip()] = "\n".join(block).rstrip()
        block.clear()

    for line in text.splitlines():
        if line.startswith("## "):
            close()
            where = line[3:].strip()
        elif where in ("Format", "Files") and line.startswith("|") and not line.startswith("|---"):
            key = line.strip("|").split("|")[0].strip()
            if key not in ("part", "file"):
                (sec.formats if where == "Format" else sec.files)[key] = line
        elif where == "How to load":
            if line.startswith("### "):
                close()
            if line.startswith("### ") or block:
                block.append(line)
        elif where == "Verification" and (m := re.match(r"- `([^`]+)`", line)):
            sec.verify[m[1]] = line
    close()
    return sec


def _split_card(text: str) -> tuple[str, str]:
    """(front matter YAML or "", body)."""
    m = re.match(r"\A---\r?\n(.*?)\r?\n---\r?\n", text, re.S)
    return (m[1], text[m.end():]) if m else ("", text)


_LEGACY = re.compile(r"^BitNet b1\.58 ternary \(1\.58-bit\) weights.*converted with \[?bitconv\b", re.M)


def merge_card(old: str | None, plan: UploadPlan, present: set[str]) -> str:
    """The card to commit: `old` (the repo's README.md, None when it has none) with bitconv's section merged in.

    The user's text outside the markers is kept byte for byte; a card without markers is all the user's text, and
    bitconv's section goes after it, except a card written by bitconv before the markers existed, which is taken as
    bitconv's section. Front matter: the keys already there are kept (tags: the union), bitconv's are added."""
    assert plan.section is not None
    name = plan.repo_id.rsplit("/", 1)[-1]
    if old is None:
        return _front(plan.metadata) + f"\n# {name}\n\n" + plan.section.render() + "\n"
    yaml_text, body = _split_card(old)
    meta = dict(_front_matter(old)) if yaml_text else {}
    for k, v in plan.metadata.items():
        if k == "tags":
            have = meta.get("tags") if isinstance(meta.get("tags"), list) else []
            meta["tags"] = list(dict.fromkeys([*have, *v]))
        elif meta.get(k) in (None, "", []):
            meta[k] = v
    if BEGIN in body and END in body.split(BEGIN, 1)[1]:
        before, rest = body.split(BEGIN, 1)
        inside, after = rest.split(END, 1)
        prev: Section | None = parse_section(inside)
    elif m := _LEGACY.search(body):
        title = body[:m.start()]
        before, after, prev = title, "\n", parse_section(body[m.start():])
    else:
        before, after, prev = body.rstrip("\n") + "\n\n" if body.strip() else "", "\n", None
    return _front(meta) + before + plan.section.merged(prev, present).render() + after


def _front(meta: dict) -> str:
    from huggingface_hub import ModelCardData

    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n"


def _section(repo_id: str, meta: dict, parts: list[_Part], files: list[PlannedFile],
             verify: VerifySummary | None) -> Section:
    base = meta.get("base_model")
    origin = f" of [{base}]({HUB_URL}/{base})" if base else ""
    sec = Section(f"BitNet b1.58 ternary (1.58-bit) weights{origin}, converted with "
                  f"[bitconv]({REPO_URL}) {__version__}.")
    for p in parts:
        key = _CHECKPOINT if p.name == "." else p.name
        tbw = f"{p.ternary_bits_per_weight:.3f}" if p.ternary_bits_per_weight else "-"
        sec.formats[key] = (f"| {key} | {p.format} | {p.layout} | {p.parameters:,} | {p.bits_per_weight:.3f} "
                            f"| {tbw} |")
        sec.verify[key] = f"- `{key}`: " + _verify_line(verify)
    for f in files:
        if f.local is not None:
            sec.files[f.path_in_repo] = f"| {f.path_in_repo} | {_fmt_bytes(f.size)} | {'LFS' if f.lfs else 'git'} |"
    name = repo_id.rsplit("/", 1)[-1]
    for runtime, part in {p.runtime: p for p in parts if p.runtime != "gguf"}.items():
        sec.howto[runtime] = _HOWTO[runtime].format(repo=repo_id, name=name, file=part.name).rstrip()
    for part in parts:
        if part.runtime == "gguf":
            sec.howto[part.name] = "\n".join(_gguf_howto(repo_id, part)).rstrip()
    return sec


def _verify_line(verify: VerifySummary | None) -> str:
    if verify is None:
        return f"{NOT_VERIFIED}: no `bitconv verify` report was published with it"
    if not verify.applies:
        return f"{NOT_VERIFIED}: {verify.why}"
    state = {True: "passed", False: "FAILED", None: "no verdict"}[verify.passed]
    return f"`bitconv verify` {state}: {verify.summary} (report: `{verify.in_repo}`)"


def plan_upload(artifact: str | Path, repo_id: str, *, revision: str | None = None, create_pr: bool = False,
                private: bool = False, commit_message: str | None = None, force: bool = False,
                base_model: str | None = None, base_card: str | None = None, card: bool = True) -> UploadPlan:
    """What `upload` would send: files, sizes, the card (as generated for this artifact alone: `upload` merges it
    into the repo's card). Local only; refuses a failed verify report that applies to these files unless `force`.
    `card=False`: no README.md is sent."""
    a = Path(artifact)
    if not a.exists():
        if parse_ref(str(artifact)) is not None and Path(repo_id).exists():
            raise UsageError(f"{repo_id!r} is a local path and {str(artifact)!r} is not: the arguments are REPO_ID "
                             f"[LOCAL_PATH], as in `hf upload` (bitconv upload {artifact} {repo_id})")
        raise UsageError("no such file or folder", path=a)
    if create_pr and revision not in (None, "main"):
        raise UsageError("--create-pr opens a pull request against main; leave out --revision")
    ref = parse_ref(repo_id)
    if ref is None or ref.path or ref.revision:
        local = " is a local path, and" if Path(repo_id).exists() else ""
        raise UsageError(f"{repo_id!r}{local} is not a Hub repo id (owner/name): the arguments are REPO_ID "
                         "[LOCAL_PATH], as in `hf upload`")
    local = _artifact_files(a)
    report = verify_report_for(a)
    verify = read_verify_report(report) if report else None
    if verify is not None:
        judge_report(verify, [p for r, p in local if r.endswith((".safetensors", ".gguf"))])
    # a failed report is refused unless it is provably about another file (its recorded hash differs)
    if verify is not None and (verify.applies or not verify.recorded) and verify.passed is False and not force:
        raise VerifyFailedError(f"bitconv verify failed ({verify.summary}; report {report}): refusing to "
                                "publish (pass --force to upload anyway)", path=a)
    if report is not None:
        local = [(r, p) for r, p in local if p != report]
        if verify is not None and verify.applies:  # a stale report is not published
            verify.in_repo = f"{a.name}.{VERIFY_REPORT}" if a.is_file() else VERIFY_REPORT
            local.append((verify.in_repo, report))
    parts = _parts(a, local)
    _kernel_configs(a, parts, local)
    own = _front_matter((a / README).read_text(encoding="utf-8", errors="replace")) if (a / README).is_file() else {}
    base = _base_model(base_model, own, parts)
    card_text = base_card if base_card is not None else (cached_card(base) if base else None)
    meta = _metadata(parts, base, own, _front_matter(card_text) if card_text else {}, {r for r, _ in local})
    files = [PlannedFile(r, p.stat().st_size, _is_lfs(r, p.stat().st_size), p) for r, p in local]
    msg = commit_message or f"Upload {', '.join(p.layout for p in parts)} ternary weights (bitconv {__version__})"
    plan = UploadPlan(a, ref.repo_id, revision, create_pr, private, msg, files, "", meta, verify,
                      _warnings(base, meta, verify) + _runtime_warnings(parts))
    if card:
        plan.section = _section(ref.repo_id, meta, parts, files, verify)
        with_card(plan, merge_card(None, plan, set()))
    return plan


def with_card(plan: UploadPlan, text: str) -> UploadPlan:
    """Set the README.md the upload commits (the last file of the plan)."""
    plan.card = text
    plan.files = [f for f in plan.files if f.local is not None] + [PlannedFile(README, len(text.encode()), False)]
    return plan


def _warnings(base: str | None, meta: dict, verify: VerifySummary | None) -> list[str]:
    out = [] if base else ["base_model unknown: pass --base-model OWNER/NAME so the card links the source"]
    out += [] if "license" in meta else ["no licence found in the source config or card: the card has none"]
    if verify is not None and not verify.applies:
        out.append(f"verify report {verify.report}: {verify.why}; it is not uploaded and the card says "
                   f"{NOT_VERIFIED}")
    elif verify is not None and verify.passed is not True:
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
