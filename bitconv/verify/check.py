"""`bitconv check PATH [--ref MASTER]`: CI for a model repository. Finds every checkpoint under PATH (bf16 master,
HF packed, bitconv ternary folders, Nanotron checkpoints, .gguf files), checks each config, and verifies every
artifact against one named master.

The master is `--ref` (a folder, a file or a Hub repo id) or else the one master found under PATH (a bf16 master or a
Nanotron checkpoint that bitconv did not derive: `unpack` output is an artifact). Several candidates without `--ref`
are refused (exit 2), naming them. Every artifact ends verified (passed), failed, or unverified (no master with its
tensors); an unverified artifact fails the check unless `config_only` asks for the config rules alone. Exit 0 means
every artifact was verified against the master and passed.

Config rules (`CONFIG_RULES`, HF folders), each a real way a published repo breaks:

| rule                   | fails when                                                                               |
|------------------------|------------------------------------------------------------------------------------------|
| quantization_config    | packed uint8 weights without a bitnet config, or with `online`; a bf16 master declared    |
|                        | `bitlinear` or `offline`; an unknown quant_method (warning: a master with none runs dense) |
| auto_map               | it names a module file that is not in the folder (trust_remote_code fails, spec §3.3)     |
| modules_to_not_convert | an explicit list without `lm_head`: transformers converts lm_head and the load fails       |
| shapes                 | a projection's shape disagrees with the config, or the artifact's layout cannot hold it;   |
|                        | (info) which deployable layouts cannot hold a master's shapes                            |
| tied                   | tie_word_embeddings false without lm_head.weight (random lm_head), or true with a stored  |
|                        | lm_head that differs from embed_tokens                                                   |
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bitconv.core.errors import EXIT_OK, EXIT_VERIFY_FAILED, BitconvError, LayoutError, UsageError
from bitconv.core.naming import PROJECTION_SHAPES
from bitconv.core.safeio import identity
from bitconv.formats.safetensors import read_header
from bitconv.layouts import deploy_layouts, get_layout
from bitconv.output import TMP_PREFIX
from bitconv.pipeline import UNPACKED_METADATA
from bitconv.sources import Checkpoint, is_nanotron_dir, open_source
from bitconv.verify import Finding, Thresholds, VerifyReport, verify
from bitconv.verify.reference import RefConfig
from bitconv.verify.report import Case, Suite, verify_markdown, verify_suite
from bitconv.verify.roundtrip import compare_values
from bitconv.verify.runtime import check_runnable, runtime_facts

MAX_DEPTH = 4
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".cache"}
# Layouts a master is usually deployed to (each declares `deploy_check`); `check` says which of them cannot hold its
# shapes.
DEPLOY_LAYOUTS = deploy_layouts()


STATUSES = ("master", "verified", "failed", "unverified", "config-only")


@dataclass
class ArtifactCheck:
    path: str
    role: str  # "master", "artifact", "unreadable"
    kind: str | None = None
    layout: str | None = None
    findings: list[Finding] = field(default_factory=list)
    verify: VerifyReport | None = None
    master: str | None = None  # what this artifact was verified against
    verified: bool = False  # a verification against `master` ran

    @property
    def ok(self) -> bool:
        return all(f.severity != "error" for f in self.findings) and (self.verify is None or self.verify.ok)

    @property
    def status(self) -> str:
        """One of `STATUSES`: how far this checkpoint was checked, and the verdict."""
        if self.role == "master":
            return "master" if self.ok else "failed"
        other = [f for f in self.findings if f.severity == "error" and f.fault != "unverified"]
        if other or (self.verify is not None and not self.verify.ok):
            return "failed"
        if any(f.fault == "unverified" for f in self.findings):
            return "unverified"
        return "verified" if self.verified else "config-only"

    def to_dict(self) -> dict:
        return {"path": self.path, "role": self.role, "kind": self.kind, "layout": self.layout, "ok": self.ok,
                "status": self.status, "master": self.master, "findings": [f.to_dict() for f in self.findings],
                "verify": self.verify.to_dict() if self.verify else None}


@dataclass
class CheckReport:
    path: str
    master: str | None
    artifacts: list[ArtifactCheck]
    seconds: float = 0.0
    master_source: str | None = None  # "--ref" or "found under PATH"; None without a master
    config_only: bool = False
    runtime: str | None = None  # `--runtime`: the runtime every GGUF artifact was run in

    def count(self, status: str) -> int:
        return sum(a.status == status for a in self.artifacts)

    @property
    def counts(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("verified", "failed", "unverified", "config-only")}

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.artifacts)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_VERIFY_FAILED

    @property
    def summary(self) -> str:
        c = self.counts
        text = f"{c['verified']} verified, {c['failed']} failed, {c['unverified']} unverified"
        if self.config_only:
            text += f", {c['config-only']} checked for config only (--config-only: nothing was verified)"
        text += f" against master {self.master}" if self.master else " (no master)"
        return text + (f"; GGUF files run in {self.runtime}" if self.runtime else "")

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "exit_code": self.exit_code, "master": self.master,
                "master_source": self.master_source, "config_only": self.config_only, "runtime": self.runtime,
                "counts": self.counts,
                "summary": self.summary, "seconds": round(self.seconds, 3),
                "artifacts": [a.to_dict() for a in self.artifacts]}


# ------------------------------------------------------------------------------------------------ discovery


def _is_hf_folder(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


MASTER_KINDS = ("bf16-master", "nanotron")  # what an artifact is verified against (nanotron: training latents)


def find_checkpoints(root: str | Path) -> list[Path]:
    """HF checkpoint folders and .gguf files under `root` (hidden and temporary folders skipped), sorted."""
    root = Path(root)
    if not root.exists():
        raise UsageError("no such file or folder", path=root)
    if root.is_file():
        return [root.parent if root.suffix == ".safetensors" else root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        depth = len(d.relative_to(root).parts)
        dirnames[:] = sorted(n for n in dirnames if not (n in SKIP_DIRS or n.startswith((".", TMP_PREFIX)))
                             and depth < MAX_DEPTH)
        if is_nanotron_dir(d):  # one checkpoint: its model/ tree is shards, not checkpoints
            found.append(d)
            dirnames[:] = []
            continue
        if _is_hf_folder(d):
            found.append(d)
        found += [d / f for f in sorted(filenames) if f.lower().endswith(".gguf")]
    return found


# ------------------------------------------------------------------------------------------------ config rules


def _err(rule: str, msg: str, subject: str | None = None, severity: str = "error") -> Finding:
    return Finding("config", subject, rule, msg, severity)


def _qc(config: dict) -> dict | None:
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) else None


def _rule_quantization(ck: Checkpoint) -> list[Finding]:
    qc, kind = _qc(ck.config), ck.kind
    if qc is not None and qc.get("quant_method") != "bitnet":
        return [_err("quantization_config", f"quant_method {qc.get('quant_method')!r} is not 'bitnet'")]
    if kind == "hf-packed":
        if qc is None:
            return [_err("quantization_config", "packed uint8 weights but no quantization_config: transformers "
                                                "loads them as plain nn.Linear and fails")]
        if qc.get("linear_class") == "autobitlinear" and qc.get("quantization_mode", "offline") != "offline":
            return [_err("quantization_config", "packed weights declared quantization_mode "
                                                f"{qc.get('quantization_mode')!r}: transformers then expects bf16 "
                                                "masters and the load fails; use 'offline'")]
    if kind == "bf16-master":
        if qc is None:
            return [_err("quantization_config", "bf16 master without quantization_config: transformers runs it "
                                                "as a dense bf16 model, not ternary (add quant_method bitnet, "
                                                "linear_class autobitlinear, quantization_mode online)",
                         severity="warning")]
        if qc.get("linear_class", "bitlinear") != "autobitlinear" or qc.get("quantization_mode") != "online":
            return [_err("quantization_config", f"bf16 master weights declared linear_class "
                                                f"{qc.get('linear_class', 'bitlinear')!r} / quantization_mode "
                                                f"{qc.get('quantization_mode', 'offline')!r}: only autobitlinear + "
                                                "online takes bf16 weights; the load fails")]
    return []


def _rule_auto_map(ck: Checkpoint) -> list[Finding]:
    amap = ck.config.get("auto_map")
    if not isinstance(amap, dict) or not ck.path.is_dir():
        return []
    found = []
    for key, ref in amap.items():
        for r in ref if isinstance(ref, list) else [ref]:
            if not isinstance(r, str) or "--" in r or "." not in r:
                continue  # another repo's code, or not a module reference
            module = r.rsplit(".", 1)[0]
            if not (ck.path / f"{module}.py").is_file():
                found.append(_err("auto_map", f"auto_map.{key} points at {module}.py, which is not in the folder: "
                                              "trust_remote_code=True fails (drop auto_map, transformers has a "
                                              "native class)", "auto_map"))
    return found


def _rule_not_convert(ck: Checkpoint) -> list[Finding]:
    qc = _qc(ck.config)
    mtnc = qc.get("modules_to_not_convert") if qc else None
    if isinstance(mtnc, list) and "lm_head" not in mtnc and ck.kind in ("hf-packed", "bf16-master"):
        return [_err("modules_to_not_convert", f"modules_to_not_convert {mtnc} lacks 'lm_head': an explicit list "
                                               "replaces transformers' default, lm_head becomes a BitNet linear and "
                                               "the load fails", "quantization_config.modules_to_not_convert")]
    return []


def _expected_shapes(cfg: RefConfig, config: dict) -> dict[str, tuple[int, int]]:
    sizes = {"hidden_size": cfg.hidden, "q": cfg.n_heads * cfg.head_dim, "kv": cfg.n_kv * cfg.head_dim,
             "intermediate_size": config.get("intermediate_size")}
    return {m: (sizes[o], sizes[i]) for m, (o, i) in PROJECTION_SHAPES.items()
            if sizes["intermediate_size"] or "intermediate_size" not in (o, i)}


def _rule_shapes(ck: Checkpoint) -> list[Finding]:
    try:
        cfg = RefConfig.from_hf(ck.config)
    except UsageError:
        return []
    want = _expected_shapes(cfg, ck.config)
    found = []
    for t in ck.ternary_tensors():
        module = t.name.split(".", 3)[-1].rsplit(".", 1)[0]
        if module in want and tuple(t.shape) != want[module]:
            found.append(_err("shapes", f"shape {list(t.shape)} but the config implies {list(want[module])}",
                              t.name))
    layouts = [ck.layout] if ck.layout and ck.kind != "gguf" else DEPLOY_LAYOUTS if ck.kind == "bf16-master" else []
    for name in layouts:
        found += _layout_capacity(ck, name, severity="error" if name == ck.layout else "info")
    return found


def _layout_capacity(ck: Checkpoint, layout: str, severity: str) -> list[Finding]:
    try:
        lay = get_layout(layout)
    except BitconvError:
        return []
    for t in ck.ternary_tensors():
        try:
            lay.spec(tuple(t.shape), tensor=t.name)
        except LayoutError as e:
            return [_err("shapes", f"layout {layout} cannot hold it: {e}", t.name, severity)]
    return []


_TIE_DEFAULT = False  # BitNetConfig and LlamaConfig default (transformers 5.x)


def _rule_tied(ck: Checkpoint) -> list[Finding]:
    tied = bool(ck.config.get("tie_word_embeddings", _TIE_DEFAULT))
    has_head = "lm_head.weight" in ck.tensors
    if not tied and not has_head:
        return [_err("tied", "tie_word_embeddings is false (or absent, default false) but there is no "
                             "lm_head.weight: transformers initialises lm_head at random", "lm_head.weight")]
    if tied and has_head and "model.embed_tokens.weight" in ck.tensors:
        same, _ = compare_values(ck, "lm_head.weight", ck, "model.embed_tokens.weight")
        if not same:
            return [_err("tied", "tie_word_embeddings is true, so transformers replaces the stored lm_head.weight "
                                 "(which differs) by embed_tokens", "lm_head.weight")]
    return []


CONFIG_RULES: tuple[Callable[[Checkpoint], list[Finding]], ...] = (
    _rule_quantization, _rule_auto_map, _rule_not_convert, _rule_shapes, _rule_tied,
)


def check_checkpoint_config(ck: Checkpoint) -> list[Finding]:
    """Every config rule on one HF checkpoint (GGUF files carry no config.json; their KVs are the reader's job)."""
    if ck.kind in ("gguf", "nanotron"):  # no HF config.json of their own: the readers validate their metadata
        return []
    return [f for rule in CONFIG_RULES for f in rule(ck)]


# ------------------------------------------------------------------------------------------------ check


def _signature(ck: Checkpoint) -> set[tuple[str, tuple[int, ...]]]:
    return {(t.name, tuple(t.shape)) for t in ck.ternary_tensors()}


def is_derived(ck: Checkpoint) -> bool:
    """A bf16 folder bitconv wrote from a ternary checkpoint (`unpack` marks its safetensors metadata): an
    artifact, never a master."""
    if ck.kind != "bf16-master" or not ck.files or ck.files[0].suffix != ".safetensors":
        return False
    try:
        _, meta = read_header(ck.files[0])
    except BitconvError:
        return False
    return meta.get("bitconv") == UNPACKED_METADATA["bitconv"]


def _is_master_candidate(ck: Checkpoint) -> bool:
    return ck.kind in MASTER_KINDS and not is_derived(ck)


def _same_place(a: Path, b: Path) -> bool:
    ia = identity(a)
    return ia is not None and ia == identity(b)


def _open_all(paths: list[Path]) -> tuple[list[ArtifactCheck], dict[str, Checkpoint]]:
    checks, opened = [], {}
    for p in paths:
        try:
            ck = open_source(p)
        except BitconvError as e:
            checks.append(ArtifactCheck(str(p), "unreadable", findings=[Finding("open", None, "unreadable", str(e))]))
            continue
        checks.append(ArtifactCheck(str(p), "artifact", ck.kind, ck.layout, check_checkpoint_config(ck)))
        opened[str(p)] = ck
    return checks, opened


def _choose_master(root: Path, ref: str | Path | None, opened: dict[str, Checkpoint]) \
        -> tuple[Checkpoint | None, str | None]:
    """(the master, where it came from). `ref` wins; else the single candidate under PATH; several: refused."""
    if ref is not None:
        ck = open_source(ref)
        if ck.kind not in MASTER_KINDS:
            raise UsageError(f"--ref must be a bf16 master or a Nanotron checkpoint, but it is a {ck.kind} checkpoint",
                             path=ref, hint="point --ref at the -bf16 master the artifacts were made from")
        return ck, "--ref"
    candidates = [ck for ck in opened.values() if _is_master_candidate(ck)]
    if len(candidates) > 1:
        names = ", ".join(str(c.path) for c in candidates)
        raise UsageError(f"{len(candidates)} candidate masters under PATH ({names}); check will not guess which one "
                         "the artifacts were made from", path=root, hint="name it with --ref MASTER")
    return (candidates[0], "found under PATH") if candidates else (None, None)


def check(path: str | Path, *, ref: str | Path | None = None, config_only: bool = False, run_parity: bool = True,
          thresholds: Thresholds | None = None, strict: bool = False, runtime: str | None = None,
          on_item: Callable[[str], None] | None = None) -> CheckReport:
    """Check every checkpoint under PATH and verify each artifact against the master (`ref`, or the one master
    found under PATH). Args:
        ref: the master (folder, file or Hub repo id); required when PATH holds several candidate masters.
        config_only: run the config rules only; artifacts are reported "config-only", not failed as unverified.
        run_parity / thresholds / strict: as for `verify`.
        runtime: every GGUF artifact must also run correctly in this runtime ("llama.cpp"): verified with
            `verify(..., runtime=)`; one the runtime cannot load (its architecture or GGML type) fails with a
            "runtime-unsupported" finding naming where it runs instead. Folders (HF, ternary) are verified as usual.
    Raises UsageError (exit 2) when no checkpoint is found, the master is ambiguous, the runtime is unknown, or a GGUF
    is to be run and the runtime's binding is not installed.
    """
    t0 = time.perf_counter()
    if runtime is not None:
        runtime = runtime_facts(runtime.strip().lower()).name
    paths = find_checkpoints(path)
    if not paths:
        raise UsageError("no checkpoint found (folders with config.json + *.safetensors, Nanotron checkpoints, or "
                         ".gguf files)", path=path)
    checks, opened = _open_all(paths)
    master, source = _choose_master(Path(path), ref, opened)
    for a in checks:
        ck = opened.get(a.path)
        if ck is not None and master is not None and _same_place(ck.path, master.path):
            a.role = "master"
            continue
        if ck is None or config_only:
            continue
        if master is None:
            a.findings.append(Finding("verify", None, "unverified", "no master to verify against: none found under "
                                      "PATH (pass --ref MASTER, or --config-only to check the config alone)"))
            continue
        if _signature(ck) != _signature(master):
            n = len(_signature(ck) ^ _signature(master))
            a.findings.append(Finding("verify", None, "unverified", f"the master {master.path} does not hold this "
                                      f"artifact's ternary tensors ({n} names or shapes differ): not verified"))
            continue
        if on_item:
            on_item(a.path)
        a.master = str(master.path)
        run = _runtime_for(ck, runtime, a)
        a.verify = verify(ck, master, run_parity=run_parity, thresholds=thresholds, strict=strict, runtime=run)
        a.verified = True
    return CheckReport(str(path), str(master.path) if master is not None else None, checks,
                       time.perf_counter() - t0, source, config_only, runtime)


def _runtime_for(ck: Checkpoint, runtime: str | None, a: ArtifactCheck) -> str | None:
    """The runtime to run this artifact in (GGUF files only), or None; a GGUF the runtime cannot load gets a
    failing finding here (and is verified without it), so one unrunnable file fails its row, not the whole check."""
    if runtime is None or ck.kind != "gguf":
        return None
    try:
        check_runnable(ck, runtime)
    except UsageError as e:
        a.findings.append(Finding("runtime", None, "runtime-unsupported", str(e)))
        return None
    return runtime


# ------------------------------------------------------------------------------------------------ rendering


def check_suites(rep: CheckReport) -> list[Suite]:
    suites = []
    for a in rep.artifacts:
        cases = [Case(f"bitconv.check.{f.check}", f"{f.fault}" + (f" {f.subject}" if f.subject else ""),
                      (f.fault, f.message) if f.severity == "error" else None) for f in a.findings]
        cases = cases or [Case("bitconv.check.config", "config")]
        if a.verify is not None:
            v = verify_suite(a.verify)
            suites.append(Suite(f"check {a.path}", cases + v.cases, a.verify.seconds, v.out))
        else:
            suites.append(Suite(f"check {a.path}", cases))
    return suites


def check_markdown(rep: CheckReport) -> str:
    status = "✅ pass" if rep.ok else "❌ FAIL"
    lines = [f"## bitconv check {status}: `{rep.path}`", "", rep.summary + ".", "",
             "| checkpoint | role | kind | layout | master | result |", "|---|---|---|---|---|---|"]
    for a in rep.artifacts:
        errs = sum(f.severity == "error" for f in a.findings) + (len(a.verify.errors) if a.verify else 0)
        verdict = a.status if a.ok else f"failed: {errs} error(s)"
        lines.append(f"| `{a.path}` | {a.role} | {a.kind or '-'} | {a.layout or '-'} | "
                     f"{f'`{a.master}`' if a.master else '-'} | {verdict} |")
    for a in rep.artifacts:
        notes = [f for f in a.findings if f.severity != "info"]
        if notes:
            lines += ["", f"**`{a.path}`**", ""] + [f"- {f.severity}: {f.fault}: {f.message}" for f in notes]
        if a.verify is not None:
            lines += ["", verify_markdown(a.verify).rstrip("\n")]
    return "\n".join(lines) + "\n"
