"""Prove a converted artifact right: `verify(OUT, REF)` returns a `VerifyReport`; the CLI only renders it.

Three checks, each a library module returning a report dataclass:
    config      OUT's config.json describes REF's model (sizes, activation, norm eps, RoPE theta)
    roundtrip   every tensor of OUT against a fresh ternarization of REF (`bitconv.verify.roundtrip`)
    parity      logits of REF (online), OUT and the plain master on a fixed batch (`bitconv.verify.parity`)
    runtime     (`runtime="llama.cpp"`, GGUF only) OUT run in the real runtime on the same batch, against the
                BitNet reference and an emulation of the runtime's arithmetic (`bitconv.verify.runtime`)

`VerifyReport.findings` lists every fault in one line that names the tensor and the fault; `exit_code` is 0 when
nothing failed, 1 otherwise. A content fault in OUT (a container its real loader refuses, a code outside {-1, 0, 1},
a non-finite or non-positive scale) is a finding like any other: finding those is verify's job. What keeps verify
from running at all (REF unreadable, an unknown architecture, a bad token file, OUT and REF the same file) raises a
`BitconvError` (exit code 2) instead.

Example:
    >>> rep = verify("bitnet-packed", "bitnet-bf16")
    >>> rep.ok, rep.roundtrip.compute, rep.parity.out_vs_ref.top1
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bitconv.core.errors import EXIT_OK, EXIT_VERIFY_FAILED, FormatError, UsageError
from bitconv.core.safeio import identity, sha256_file
from bitconv.sources import Checkpoint, open_source
from bitconv.sources.nanotron import EXPORT_OF_GRANULARITY, NanotronCheckpoint
from bitconv.verify.parity import (
    MAX_SEQ_LEN,
    MAX_SEQS,
    ParityReport,
    Thresholds,
    default_tokens,
    tokens_from_file,
    tokens_from_prompt,
)
from bitconv.verify.parity import (
    parity as _parity,
)
from bitconv.verify.reference import ARCHS, RefConfig
from bitconv.verify.roundtrip import FAULTS, RoundTripReport
from bitconv.verify.roundtrip import roundtrip as _roundtrip
from bitconv.verify.runtime import LoadFailure, RuntimeReport, check_runnable, import_llama_cpp, runtime_check

__all__ = ["Finding", "Thresholds", "VerifyReport", "verify", "check_config", "FAULTS"]


@dataclass
class Finding:
    """One fault: which check found it, the tensor (or config key), the fault id and a one-line message."""

    check: str  # "config", "roundtrip", "parity"
    subject: str | None
    fault: str
    message: str
    severity: str = "error"  # "error" fails the verification, "warning" does not

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VerifyReport:
    out: str
    ref: str
    out_kind: str
    out_layout: str | None
    ref_kind: str
    family: str
    roundtrip: RoundTripReport
    parity: ParityReport | None = None
    config: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    runtime: RuntimeReport | LoadFailure | None = None
    out_files: list[dict] = field(default_factory=list)  # what was verified: path, bytes, sha256 (`file_records`)

    @property
    def findings(self) -> list[Finding]:
        out = list(self.config)
        out += [Finding("roundtrip", t.name, t.fault or "", t.message) for t in self.roundtrip.failures]
        out += [Finding("roundtrip", None, "warning", w, "warning") for w in self.roundtrip.warnings]
        if self.parity is not None:
            out += [Finding("parity", None, "logit-parity", f"OUT vs REF: {m}") for m in self.parity.failures]
        rt = self.runtime
        if isinstance(rt, LoadFailure):
            out.append(Finding("runtime", None, "runtime-load", rt.message()))
        elif rt is not None:
            why = "; ".join(rt.diagnosis)
            out += [Finding("runtime", None, "runtime", m + (f"; diagnosis: {why}" if why and i == 0 else ""))
                    for i, m in enumerate(rt.failures)]
        return out

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_VERIFY_FAILED

    def to_dict(self) -> dict:
        return {"out": self.out, "ref": self.ref, "ok": self.ok, "exit_code": self.exit_code,
                "out_kind": self.out_kind, "out_layout": self.out_layout, "ref_kind": self.ref_kind,
                "family": self.family, "seconds": round(self.seconds, 3),
                "findings": [f.to_dict() for f in self.findings], "roundtrip": self.roundtrip.to_dict(),
                "parity": self.parity.to_dict() if self.parity else None,
                "runtime": None if self.runtime is None else ({"loaded": False, "log": self.runtime.log}
                                                              if isinstance(self.runtime, LoadFailure) else
                                                              self.runtime.to_dict()),
                "out_files": self.out_files}


# ------------------------------------------------------------------------------------------------ config


def _norm_config(cfg: dict) -> dict:
    """The architecture facts of an HF config, normalized (defaults filled, legacy keys mapped)."""
    try:
        rc = RefConfig.from_hf(cfg)
    except UsageError:
        return {}
    return {"architectures": rc.architecture, "hidden_size": rc.hidden, "num_hidden_layers": rc.n_layers,
            "num_attention_heads": rc.n_heads, "num_key_value_heads": rc.n_kv, "head_dim": rc.head_dim,
            "vocab_size": rc.vocab, "hidden_act": rc.act, "rms_norm_eps": rc.eps, "rope_theta": rc.theta,
            "intermediate_size": cfg.get("intermediate_size")}


def check_config(out_cfg: dict, ref_cfg: dict) -> list[Finding]:
    """OUT's config must describe REF's model: every architecture fact both state must agree."""
    a, b = _norm_config(out_cfg), _norm_config(ref_cfg)
    found = []
    for key in b:
        if key in a and a[key] is not None and b[key] is not None and a[key] != b[key]:
            found.append(Finding("config", key, "config", f"config.json: {key} is {a[key]!r} in OUT but "
                                                          f"{b[key]!r} in REF"))
    return found


# ------------------------------------------------------------------------------------------------ verify


def _tokens(ref_ck: Checkpoint, out_ck: Checkpoint, tokens: torch.Tensor | None, prompt: str | None,
            tokens_file: str | Path | None) -> tuple[torch.Tensor, str]:
    given = [x for x in (tokens, prompt, tokens_file) if x is not None]
    if len(given) > 1:
        raise UsageError("give at most one of --prompt and --tokens")
    if tokens is not None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype in (torch.bool,) or tokens.is_floating_point() \
                or tokens.is_complex() or tokens.dim() not in (1, 2):
            raise UsageError("tokens must be a 1-D or 2-D integer tensor of token ids")
        tokens = tokens.reshape(-1, tokens.shape[-1]) if tokens.dim() == 1 else tokens
        if tokens.shape[0] > MAX_SEQS or tokens.shape[1] > MAX_SEQ_LEN:
            raise UsageError(f"tokens of shape {list(tokens.shape)}: parity takes at most {MAX_SEQS} sequences of at "
                             f"most {MAX_SEQ_LEN} ids")
        return tokens, "given"
    if prompt is not None:
        ids = tokens_from_prompt(prompt, ref_ck, out_ck)
        if ids.shape[-1] > MAX_SEQ_LEN:
            raise UsageError(f"--prompt gives {ids.shape[-1]} tokens; parity takes at most {MAX_SEQ_LEN}")
        return ids, "prompt"
    if tokens_file is not None:
        return tokens_from_file(tokens_file), f"file {tokens_file}"
    return default_tokens(RefConfig.from_hf(ref_ck.config).vocab), "default"


def _open(x: str | Path | Checkpoint) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else open_source(x)


def _inodes(paths: list[Path]) -> set[tuple[int, int]]:
    return {i for i in map(identity, paths) if i is not None}


def refuse_self_reference(out_ck: Checkpoint, ref_ck: Checkpoint) -> None:
    """OUT and REF must be different checkpoints: the same path, or weight files shared by inode (hard links, bind
    mounts, symlinks), would compare a file with itself and prove nothing."""
    if _inodes([out_ck.path]) & _inodes([ref_ck.path]) or _inodes(list(out_ck.files)) & _inodes(list(ref_ck.files)):
        raise UsageError("OUT and REF are the same checkpoint (same file or folder on disk): comparing a file with "
                         "itself proves nothing", path=out_ck.path,
                         hint="pass the bf16 master OUT was made from as --ref")


def _content_fault_report(out: str | Path, ref_ck: Checkpoint, e: FormatError, t0: float) -> VerifyReport:
    """OUT exists but breaks its format (what its loader refuses): a verification failure naming the fault."""
    rt = RoundTripReport("unreadable", None, ref_ck.kind, None, "", "")
    arch = (ref_ck.config.get("architectures") or ["?"])[0]
    family = ARCHS[arch].family if arch in ARCHS else "unknown"
    rep = VerifyReport(str(out), str(ref_ck.path), "unreadable", None, ref_ck.kind, family, rt, None,
                       [Finding("container", e.tensor, "container", str(e))], time.perf_counter() - t0,
                       out_files=file_records(Path(out), [Path(out)] if Path(out).is_file() else []))
    return rep
def _nanotron_ref_note(rt: RoundTripReport, ref_ck: Checkpoint) -> None:
    """A PR #180 BitNet REF is quantized as nanotron trains it (fused qkv / gate_up scales): say so, and on a
    mismatch name the HF export that does not match it (`convert --for training`)."""
    if not (isinstance(ref_ck, NanotronCheckpoint) and ref_ck.info.flavor.bitnet):
        return
    export = EXPORT_OF_GRANULARITY[ref_ck.info.granularity]
    rt.compute_note += (f"; REF is a Nanotron BitNet checkpoint, quantized with {export.granularity} scales "
                        f"(what `convert --for {export.purpose}` exports)")
    if not rt.ok and export.purpose == "release":
        rt.warnings.append("REF is a Nanotron BitNet checkpoint: its q/k/v and gate/up codes use nanotron's fused "
                           "scales. OUT matches them when packed from `convert --for release` (or straight from the "
                           "checkpoint); a model packed from a `--for training` export holds per-projection codes, "
                           "so verify it against that export instead")


def verify(out: str | Path | Checkpoint, ref: str | Path | Checkpoint, *, run_parity: bool = True,
           thresholds: Thresholds | None = None, tokens: torch.Tensor | None = None, prompt: str | None = None,
           tokens_file: str | Path | None = None, out_mode: str | None = None, bitlinear: str = "compiled",
           runtime: str | None = None, progress: Callable[[str, int, int], None] | None = None,
           strict: bool = False) -> VerifyReport:
    """Verify OUT (any checkpoint bitconv reads: HF packed, bitconv ternary, GGUF, ...) against REF (its bf16
    master). Args:
        run_parity: also run the logit comparison (the slow part: three forward passes, layer by layer).
        thresholds: parity limits (`Thresholds()` defaults, documented in `bitconv.verify.parity`).
        tokens / prompt / tokens_file: the batch for parity (default: 2 x 64 fixed random ids).
        out_mode: how OUT's ternary weights are applied (default from its layout; see `reference.LINEARS`).
        bitlinear: "compiled" (transformers' default) or "eager" arithmetic for linear_class bitlinear.
        runtime: also run OUT (a GGUF) in this runtime ("llama.cpp") on the parity tokens and judge its logits
            (`bitconv.verify.runtime`). A runtime that cannot load OUT's type or architecture, or is not installed,
            is bad input (UsageError) raised before anything runs.
        strict: apply the parity limits as given, without widening them to the floor model.
    """
    t0 = time.perf_counter()
    ref_ck = _open(ref)
    try:
        out_ck = _open(out)
    except FormatError as e:
        return _content_fault_report(out, ref_ck, e, t0)
    refuse_self_reference(out_ck, ref_ck)
    if runtime is not None:
        check_runnable(out_ck, runtime)
        import_llama_cpp()
    ids, source = _tokens(ref_ck, out_ck, tokens, prompt, tokens_file) if run_parity or runtime else (None, "")
    arch = (ref_ck.config.get("architectures") or ["?"])[0]
    if (run_parity or runtime) and arch not in ARCHS:
        raise UsageError(f"REF's architecture {arch!r} has no reference forward ({', '.join(ARCHS)}); "
                         "pass --no-parity to check tensors only", path=ref_ck.path)
    records = _Records(Path(out_ck.path), list(out_ck.files))
    try:
        rt = _roundtrip(out_ck, ref_ck, (lambda i, n, name: progress("roundtrip", i, n)) if progress else None)
        _nanotron_ref_note(rt, ref_ck)
        par = None
        if run_parity and any(t.fault == "content" for t in rt.failures):
            rt.warnings.append("logit parity skipped: OUT holds values no ternary format allows "
                               "(see the content faults)")
        elif run_parity:
            par = _parity(out_ck, ref_ck, ids, thresholds, token_source=source, out_mode=out_mode,
                          bitlinear=bitlinear, ref_compute=rt.compute or "float32",
                          progress=(lambda i, n: progress("parity", i, n)) if progress else None, strict=strict)
        run = None
        if runtime is not None and any(t.fault == "content" for t in rt.failures):
            rt.warnings.append(f"{runtime} run skipped: OUT holds values no ternary format allows "
                               "(see content faults)")
        elif runtime is not None:
            run = runtime_check(out_ck, ref_ck, ids, runtime, ref_compute=rt.compute or "float32",
                                progress=(lambda i, n: progress("runtime", i, n)) if progress else None)
        family = ARCHS[arch].family if arch in ARCHS else "unknown"
        files = records.result()
        return VerifyReport(str(out_ck.path), str(ref_ck.path), out_ck.kind, out_ck.layout, ref_ck.kind, family, rt,
                            par, check_config(out_ck.config, ref_ck.config), time.perf_counter() - t0, run, files)
    finally:
        records.cancel()


def _stat_key(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _Records:
    """`file_records` on a thread while the checks run: hashlib releases the GIL, so the hash takes a core the
    checks leave idle (about 1 s of sha256 for a 2B4T output no longer follows them). `result()` hashes again,
    here, when the thread failed or a file's size, mtime or inode changed meanwhile; `cancel()` abandons it."""

    def __init__(self, root: Path, files: list[Path]) -> None:
        self.root, self.files = root, list(files)
        self._before = [_stat_key(f) for f in self.files]
        self._stop = threading.Event()
        self._records: list[dict] | None = None
        self._thread = threading.Thread(target=self._run, name="bitconv-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._records = file_records(self.root, self.files, self._stop)
        except Exception:  # noqa: BLE001 - hashed again in the caller's thread, which reports it
            self._records = None

    def result(self) -> list[dict]:
        self._thread.join()
        if self._records is None or [_stat_key(f) for f in self.files] != self._before:
            return file_records(self.root, self.files)
        return self._records

    def cancel(self) -> None:
        self._stop.set()


def file_records(root: Path, files: list[Path], stop: threading.Event | None = None) -> list[dict] | None:
    """The identity of every weight file verified: path (relative to OUT's folder; a file OUT: its name), bytes and
    sha256 (streamed). `upload` quotes a report only for the files whose hashes it records."""
    base = root if root.is_dir() else root.parent
    out = []
    for f in files:
        try:
            rel = Path(f).relative_to(base).as_posix()
        except ValueError:
            rel = Path(f).name
        digest = sha256_file(f, stop=stop)
        if digest is None:  # abandoned
            return None
        out.append({"path": rel, "bytes": Path(f).stat().st_size, "sha256": digest})
    return out


class _CallableModule(types.ModuleType):
    """`bitconv.verify` is both this package and the API function: `bitconv.verify(out, ref=...)` is `verify`
    below (what `bitconv verify OUT --ref REF` runs)."""

    def __call__(self, out: str | Path, ref: str | Path, **kw: object) -> VerifyReport:
        return verify(out, ref, **kw)  # type: ignore[arg-type]


sys.modules[__name__].__class__ = _CallableModule
