"""`bitconv verify OUT.gguf --ref MASTER --runtime llama.cpp`: run the file in real llama.cpp (through
llama-cpp-python) and judge the runtime's logits against two oracles computed by bitconv's reference forward.

    rep = runtime_check(open_source("model-tq2_0.gguf"), open_source("master"), default_tokens(512))
    rep.ok, rep.reference.metrics.rel_dlogit, rep.emulation.metrics.rel_dlogit, rep.diagnosis

Oracles, both on the parity tokens (each row one sequence, positions from 0, no BOS added):

| oracle      | what it computes                                                  | limit (max |Δ| / range) |
|-------------|-------------------------------------------------------------------|-------------------------|
| `reference` | the BitNet model: REF ternarized online, 8-bit per-token          | `REFERENCE_LIMIT[type]` |
|             | activations, bf16 (`verify`'s REF)                                |                         |
| `emulation` | REF's codes and scales stored as OUT stores them, in llama.cpp's  | `EMULATION_LIMIT`       |
|             | CPU arithmetic (`reference.py` mode `ggml`: float32 activations,  |                         |
|             | Q8_K inputs to TQ matmuls, fp16 inputs to F16 ones, ...)          |                         |

A correct file matches the emulation to about 1e-3 of the logit range: what is left is float summation order and
the int8 rounding flips it causes (see `EMULATION_LIMIT`). The reference limit covers the runtime's own
approximation of BitNet arithmetic (Q8_K blocks instead of per-token absmax, float32 instead of bf16), measured on
the tiny fixtures with margin.

When the emulation does not match, the runtime's logits are compared with alternative emulations, and each one
that matches is named (`diagnosis`): the file's own weights (llama.cpp runs the file as written, but the file is
not REF: the round trip names the tensors), the other FFN activation (e.g. llama.cpp's `bitnet` graph runs SiLU on
a relu2 model). A file llama.cpp cannot load fails with the runtime's own log lines.

What llama.cpp can run at all is checked first against the compatibility table (`bitconv.layouts.runtimes`,
entry llama.cpp@0c1e570): an architecture or GGML type it cannot load is bad input (exit 2, naming where the file
runs instead), and so is a missing llama-cpp-python (exit 2, with the install
command). Nothing here passes without running the file.
# ref: spec gguf-upstream.md §2.6 (bitnet graph), §3.2 (Q8_K activations), §4.3 (llama-cpp-python harness)
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from bitconv.core.errors import BitconvError, SourceError, UsageError
from bitconv.core.naming import is_ternary
from bitconv.formats.gguf.metadata import ARCHS as GGUF_ARCHS
from bitconv.formats.gguf.metadata import hf_name
from bitconv.layouts.runtimes import BY_KEY, Runtime, default_activation, summary, where_it_runs
from bitconv.layouts.runtimes import LLAMA_CPP as LLAMA_CPP_KEY
from bitconv.sources import Checkpoint
from bitconv.sources.gguf import gguf_header
from bitconv.verify.parity import ParityMetrics
from bitconv.verify.reference import GGML_ACT, RefConfig, TensorCache, Weights, forward, ggml_supported, mode_for
from bitconv.verify.roundtrip import scale_storage, stored_scale

INSTALL = ("pip install 'bitconv[llamacpp]' (builds llama.cpp from source, a few minutes; for a lean CPU build set "
           "CMAKE_ARGS=\"-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF "
           "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF\")")


@dataclass(frozen=True)
class RuntimeFacts:
    """A runtime `--runtime` can run: its entry in the compatibility table and the Python binding that runs it."""

    name: str
    package: str  # the Python binding
    table: Runtime  # `bitconv.layouts.runtimes`: archs (graphs), GGML types, activations

    @property
    def archs(self) -> tuple[str, ...]:
        return tuple(self.table.graphs)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(sorted(self.table.all_types()))


# llama-cpp-python 0.3.36 vendors llama.cpp 0c1e570: the table's entry for that commit. # ref: spec
# gguf-upstream.md §0, §4
LLAMA_CPP = RuntimeFacts("llama.cpp", "llama-cpp-python", BY_KEY[LLAMA_CPP_KEY])
RUNTIMES = {LLAMA_CPP.name: LLAMA_CPP}

# Limits on max |Δlogit| / the oracle's logit range, over every position of the parity batch. Measured on the tiny
# fixtures with llama-cpp-python 0.3.36 (numbers in docs/runtime.md): a correct file is at most 0.7 % (TQ) / 0.5 %
# (F16/BF16/F32) from the reference and 0.3 % from the emulation. The emulation is exact up to float summation
# order, but where that order moves an input across an int8 rounding boundary (a Q8_K "flip"), the flip moves
# the logits by ~0.1-0.3 % of the range, and a flipped K/V row moves every later position. Faults are far above:
# four permuted rows in one projection 3.6 %, a negated scale 24 %, a relu2 model run with SiLU 14 %, an inverted
# scale 76 %.
REFERENCE_LIMIT = {t: 0.02 for t in GGML_ACT if t != "Q8_0"}  # every projection type the emulation runs
EMULATION_LIMIT = 0.01
# An alternative emulation explains the runtime's logits when it is within the emulation limit, or this many times
# closer than the primary emulation (a faulty file can amplify the int8 rounding flips: an inverted TQ scale
# multiplies one projection's output by ~2500).
DIAGNOSIS_FACTOR = 8


@dataclass
class Oracle:
    name: str
    what: str
    metrics: ParityMetrics
    limit: float

    @property
    def ok(self) -> bool:
        return self.metrics.rel_dlogit <= self.limit

    def message(self, runtime: str) -> str:
        m = self.metrics
        return (f"{runtime} vs the {self.name} ({self.what}): max |Δlogit| {m.max_dlogit:.4g} is {m.rel_dlogit:.2%} "
                f"of its logit range (limit {self.limit:.2%}), top-1 agreement {m.top1:.1%}")


@dataclass
class RuntimeReport:
    runtime: str
    version: str
    arch: str
    types: list[str]  # GGML types of the seven projections
    tokens: list[list[int]]
    reference: Oracle
    emulation: Oracle
    emulation_vs_reference: ParityMetrics  # what a correct file gives against the BitNet reference (information)
    diagnosis: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass
class LoadFailure:
    """The runtime refused the file: its own error lines."""

    runtime: str
    log: list[str]

    def message(self) -> str:
        tail = " / ".join(line.strip() for line in self.log[-3:] if line.strip()) or "no log output"
        return f"{self.runtime} could not load the file: {tail}"


# ------------------------------------------------------------------------------------------------ facts


def runtime_facts(name: str) -> RuntimeFacts:
    if name not in RUNTIMES:
        raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
    return RUNTIMES[name]


def gguf_types(out_ck: Checkpoint) -> tuple[str, dict[str, str]]:
    """(GGUF arch, HF tensor name -> GGML type name) of a GGUF checkpoint."""
    if out_ck.kind != "gguf":
        raise UsageError(f"--runtime runs GGUF files; OUT is a {out_ck.kind} checkpoint", path=out_ck.path)
    g = gguf_header(out_ck.path)
    arch = GGUF_ARCHS[g.arch]
    types = {}
    for t in g.tensors.values():
        name = hf_name(t.name, arch)
        if name is not None:
            types[name] = t.type.name
    return g.arch, types


def projection_types(types: dict[str, str]) -> list[str]:
    return sorted({t for n, t in types.items() if is_ternary(n, 2)})


def check_runnable(out_ck: Checkpoint, runtime: str) -> tuple[RuntimeFacts, str, dict[str, str]]:
    """Bad input (exit 2) unless `runtime` can load OUT's architecture and projection types; the message says where
    the file runs instead (the compatibility table). A graph that loads but computes another activation is not
    refused here: running it is what proves it (the emulation fails and the diagnosis names the activation)."""
    facts = runtime_facts(runtime)
    arch, types = gguf_types(out_ck)
    act = out_ck.config.get("hidden_act") or default_activation(arch)
    for t in projection_types(types):
        if not facts.table.computes(t) or arch not in facts.table.graphs:
            what = f"GGML type {t}" if not facts.table.computes(t) else f"GGUF architecture {arch!r}"
            elsewhere = summary(where_it_runs(arch, t, act))[0]
            raise UsageError(f"{facts.name} cannot run {what} ({_why(facts, arch, t)}); this file {elsewhere}",
                             path=out_ck.path)
    unknown = ggml_supported(types)
    if unknown:
        raise UsageError(f"the {facts.name} emulation has no arithmetic for GGML type {', '.join(unknown)}",
                         path=out_ck.path)
    return facts, arch, types


def _why(facts: RuntimeFacts, arch: str, gguf_type: str) -> str:
    if arch not in facts.table.graphs:
        return f"it loads {', '.join(facts.archs)}"
    return facts.table.why_not(gguf_type, default=f"it computes {', '.join(facts.types)}")


# ------------------------------------------------------------------------------------------------ llama.cpp


def import_llama_cpp():
    """The llama_cpp module, or exit 2 with the install command."""
    try:
        import llama_cpp
    except ImportError as e:
        raise UsageError(f"--runtime llama.cpp needs llama-cpp-python, which is not importable ({e})",
                         hint=INSTALL) from None
    return llama_cpp


class _Log:
    """Route llama.cpp's log into a list while a model runs (no terminal noise; the lines explain a refusal)."""

    def __init__(self, llama_cpp) -> None:
        self.lib, self.lines = llama_cpp, []
        self._cb = llama_cpp.llama_log_callback(self._write)

    def _write(self, level: int, text: bytes, user_data: object) -> None:
        self.lines.append(text.decode("utf-8", "replace") if text else "")

    def __enter__(self) -> _Log:
        self.lib.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        logger = getattr(getattr(self.lib, "_logger", None), "llama_log_callback", None)
        self.lib.llama_log_set(logger, ctypes.c_void_p(0))


def llama_cpp_logits(path: os.PathLike | str, ids: torch.Tensor) -> torch.Tensor | LoadFailure:
    """float32 logits [B, T, vocab] of llama.cpp on each row of `ids` (one sequence each, F32 KV cache so batch
    evaluation is exact, no flash attention), or the runtime's refusal."""
    llama_cpp = import_llama_cpp()
    b, n = ids.shape
    with _Log(llama_cpp) as log:
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(n, 16), n_batch=n, n_ubatch=n,
                                  n_threads=max(1, min(4, os.cpu_count() or 1)), logits_all=True, verbose=False,
                                  type_k=0, type_v=0, flash_attn=False, use_mmap=True)
        except (ValueError, RuntimeError, OSError):
            return LoadFailure("llama.cpp", [ln for ln in log.lines if ln.strip()])
        try:
            out = []
            for row in ids.tolist():
                llm.reset()
                llm.eval(row)
                out.append(torch.from_numpy(np.array(llm.scores[:n], dtype=np.float32)))
        finally:
            llm.close()
    return torch.stack(out)


RUNNERS: dict[str, Callable[[os.PathLike | str, torch.Tensor], torch.Tensor | LoadFailure]] = {
    "llama.cpp": llama_cpp_logits,
}


# ------------------------------------------------------------------------------------------------ check


def _limit(table: dict[str, float], types: list[str]) -> float:
    return max(table[t] for t in types)


def runtime_check(out_ck: Checkpoint, ref_ck: Checkpoint, ids: torch.Tensor, runtime: str = "llama.cpp", *,
                  ref_compute: str = "float32", runner: Callable | None = None,
                  progress: Callable[[int, int], None] | None = None) -> RuntimeReport | LoadFailure:
    """Run OUT in `runtime` on `ids` [B, T] and compare with the reference and the emulation (module docstring).
    `runner` replaces the runtime call (tests). Returns the runtime's refusal when it cannot load the file."""
    t0 = time.perf_counter()
    facts, arch, types = check_runnable(out_ck, runtime)
    cfg = RefConfig.from_hf(ref_ck.config)
    if ids.dim() != 2 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab:
        raise UsageError(f"token ids must be a non-empty [batch, length] array in [0, {cfg.vocab}) (an id out of "
                         "range aborts llama.cpp)")
    got = (runner or RUNNERS[facts.name])(out_ck.path, ids)
    if isinstance(got, LoadFailure):
        return got
    if got.shape[-1] != cfg.vocab:
        raise SourceError(f"{facts.name} returned {got.shape[-1]} logits per token, REF's vocabulary has "
                          f"{cfg.vocab}", path=out_ck.path)
    eps = cfg.linear_norm_eps
    storage = scale_storage(out_ck.layout, next(iter(out_ck.ternary_tensors()), None))
    cache = TensorCache(ref_ck)

    def emulation(ck: Checkpoint, scale_fn: Callable[[float], float] | None, ggml: dict[str, str]) -> Weights:
        return Weights(ck, "ggml", cache if ck is ref_ck else None, linear_norm_eps=eps,
                       compute=ref_compute if ck is ref_ck else None, scale_fn=scale_fn, ggml=ggml)

    def as_stored(x: float) -> float:
        return stored_scale(x, storage)

    ref, emu = forward(cfg, [Weights(ref_ck, mode_for(ref_ck), cache, linear_norm_eps=eps, compute=ref_compute),
                             emulation(ref_ck, as_stored, types)], ids, progress)
    proj = projection_types(types)
    rep = RuntimeReport(
        facts.name, _version(facts), arch, proj, ids.tolist(),
        Oracle("reference", "BitNet b1.58 forward of REF", ParityMetrics.between(ref, got),
               _limit(REFERENCE_LIMIT, proj)),
        Oracle("emulation", f"REF as this file stores it, in {facts.name}'s arithmetic",
               ParityMetrics.between(emu, got), EMULATION_LIMIT),
        ParityMetrics.between(ref, emu))
    rep.failures = [o.message(facts.name) for o in (rep.emulation, rep.reference) if not o.ok]
    if not bool(torch.isfinite(got).all()):  # NaN compares false against every limit: say it, never pass it
        rep.failures.insert(0, f"{facts.name} returned non-finite logits ({int((~torch.isfinite(got)).sum())} "
                               "values)")
    if not rep.emulation.ok:
        alternatives = {
            "the file's own weights": (
                lambda: forward(cfg, [emulation(out_ck, None, types)], ids)[0],
                f"{facts.name} computes what the file holds, but the file's weights are not REF's (see the round "
                "trip for the tensors)"),
        }
        for act in sorted({"silu", "relu2"} - {cfg.act}):
            other = dataclasses.replace(cfg, act=act)
            alternatives[f"a {act} FFN"] = (
                lambda other=other: forward(other, [emulation(ref_ck, as_stored, types)], ids)[0],
                f"{facts.name} runs a {act} FFN, but the model needs {cfg.act}: its {arch!r} graph does not "
                f"honour the model's activation (wrong activation)")
        for label, (run, meaning) in alternatives.items():
            try:
                m = ParityMetrics.between(run(), got)
            except BitconvError:  # e.g. the file's tensors do not form REF's architecture: no such alternative
                continue
            if m.rel_dlogit <= max(EMULATION_LIMIT, rep.emulation.metrics.rel_dlogit / DIAGNOSIS_FACTOR):
                rep.diagnosis.append(f"{meaning}: {facts.name} matches the emulation with {label} "
                                     f"(max |Δlogit| {m.rel_dlogit:.3%} of range)")
        if not rep.diagnosis:
            rep.diagnosis.append("no known fault explains the difference (tried: " + ", ".join(alternatives) + ")")
    elif not rep.reference.ok:
        rep.diagnosis.append(f"{facts.name} computes this file as its arithmetic should (the emulation matches); "
                             f"that arithmetic itself is {rep.emulation_vs_reference.rel_dlogit:.2%} of the range "
                             "from the BitNet reference on this model")
    rep.seconds = time.perf_counter() - t0
    return rep


def _version(facts: RuntimeFacts) -> str:
    try:
        return f"{facts.package} {importlib.metadata.version(facts.package)}"
    except Exception:  # noqa: BLE001 - a version string is information only
        return facts.package

