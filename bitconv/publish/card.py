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
from bitconv.describe import describe, gguf_runtimes
from bitconv.formats.gguf.reader import read_gguf
from bitconv.layouts import ggml_type_layouts
from bitconv.sources.hub import HUB_URL, README, parse_ref

VERIFY_REPORT = "bitconv-verify.json"
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
    origin = f" of [{base}]({HUB_URL}/{base})" if base else ""
    lines = [f"# {name}", "", f"BitNet b1.58 ternary (1.58-bit) weights{origin}, converted with "
             f"[bitconv]({REPO_URL}) {__version__}.", "", "## Format", "", "| part | format | layout | parameters | "
             "bits/weight | bits/ternary weight |", "|---|---|---|---|---|---|"]
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
    card_text = base_card if base_card is not None else (cached_card(base) if base else None)
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
