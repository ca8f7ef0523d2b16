"""Plan, then stream, into one GGUF file: every tensor's name, type, shape and size, and every KV, are fixed before
the first byte is read or written; then tensors are packed one at a time and written in order.

    pack_gguf(src, "model-i2_s.gguf", "i2_s")            any ternary-capable source -> GGUF

| --type | the 7 projections                   | made like                                     | KV set (arch bitnet) |
|--------|-------------------------------------|-----------------------------------------------|----------------------|
| i2_s   | I2_S (36): codes + float32 scale    | bitnet.cpp convert (f32) + llama-quantize     | bitnet.cpp           |
| tl1    | TL1 (38), kernel tile order         | bitnet.cpp convert-hf-to-gguf-bitnet, tl1     | bitnet.cpp           |
| tl2    | TL2 (39, or 42 with tl2_type_id=42) | bitnet.cpp convert-hf-to-gguf-bitnet, tl2     | bitnet.cpp           |
| tq1_0  | TQ1_0 (34), fp16 scale per block    | llama.cpp convert_hf_to_gguf, tq1_0           | upstream             |
| tq2_0  | TQ2_0 (35), fp16 scale per block    | llama.cpp convert_hf_to_gguf, tq2_0           | upstream             |
| f32    | F32 codes * scale                   | bitnet.cpp convert, f32                       | bitnet.cpp           |
| f16    | F16 codes * scale                   | bitnet.cpp convert, f16                       | bitnet.cpp           |
| bf16   | BF16 codes * scale                  | llama.cpp convert_hf_to_gguf, bf16            | upstream             |

Norms and other 1-D tensors are F32; `token_embd` / `output` take `embd_type` (f16 default; f32, bf16, q8_0).
Ternary sources (HF packed, bitconv ternary, GGUF) are packed from their codes and scale, never re-quantized. The
dequantized float types keep the sign of zero codes from a float source (the reference writes -0.0 for small
negative weights), so bitconv's f32 file equals the converter's byte for byte.
Tensor order: HF names sorted (what convert-hf reads from a single safetensors file).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bitconv import dtypes
from bitconv.errors import OutputError, UsageError
from bitconv.ggml_types import FILE_TYPES, GGML_TYPES
from bitconv.gguf.kv import KV
from bitconv.gguf.metadata import (
    PROFILE_OF,
    PROFILES,
    SKIPPED,
    GGUFArch,
    Meta,
    build_kvs,
    gguf_name,
    permute_heads,
    permute_rows,
    resolve_arch,
)
from bitconv.gguf.quants import float_type_nbytes, to_float_type
from bitconv.gguf.types import pad
from bitconv.gguf.vocab import load_vocab, vocab_kvs
from bitconv.gguf.writer import GGUFWriter, TensorEntry, build_header
from bitconv.kernel_config import KernelConfig, derive
from bitconv.layouts import Layout, get_layout
from bitconv.output import TMP_PREFIX, AtomicOutput, check_free_space
from bitconv.pipeline import Progress, Report
from bitconv.quant import COMPUTE_MODES
from bitconv.safetensors_io import TensorInfo, pread_exact
from bitconv.sources import Checkpoint, ModelTensor, open_source
from bitconv.sources.gguf import gguf_header
from bitconv.sources.safetensors import read_optional_json
from bitconv.tensors import Ternary


@dataclass(frozen=True)
class Target:
    layout: str | None  # ternary layout for packed types
    float_type: str | None  # GGML float type for dequantized types
    tool: str  # which reference makes this type: "bitnet.cpp" or "upstream" (selects the KV set)


GGUF_TARGETS: dict[str, Target] = {
    "i2_s": Target("gguf-i2-s", None, "bitnet.cpp"),
    "tl1": Target("gguf-tl1", None, "bitnet.cpp"),
    "tl2": Target("gguf-tl2", None, "bitnet.cpp"),
    "tq1_0": Target("gguf-tq1-0", None, "upstream"),
    "tq2_0": Target("gguf-tq2-0", None, "upstream"),
    "f32": Target(None, "F32", "bitnet.cpp"),
    "f16": Target(None, "F16", "bitnet.cpp"),
    "bf16": Target(None, "BF16", "upstream"),
}
EMBD_TYPES = {"f16": "F16", "f32": "F32", "bf16": "BF16", "q8_0": "Q8_0"}
EMBEDDINGS = ("token_embd.weight", "output.weight")
KERNEL_CONFIG_NAME = "kernel_config.ini"
TL2_TYPE_IDS = (39, 42)


@dataclass
class GGUFStep:
    tensor: ModelTensor
    entry: TensorEntry
    type_name: str
    action: str  # "pack" (ternary -> layout bytes), "dequant" (ternary -> codes*scale floats), "convert" (passthrough)
    permute: int | None = None  # llama q/k: heads to permute the rows over


@dataclass
class GGUFPlan:
    source: Checkpoint
    gguf_type: str
    arch: GGUFArch
    profile: str
    steps: list[GGUFStep]
    kvs: list[KV]
    layout: Layout | None = None
    compute: str = "float32"
    kernel_config: KernelConfig | None = None
    extra: dict = field(default_factory=dict)

    @property
    def entries(self) -> list[TensorEntry]:
        return [s.entry for s in self.steps]

    @property
    def total_bytes(self) -> int:
        """The size of the GGUF file."""
        header, _ = build_header(self.kvs, self.entries)
        return len(header) + sum(pad(e.nbytes) for e in self.entries)

    @property
    def peak_bytes(self) -> int:
        """Planned peak memory (`bitconv.memory`)."""
        from bitconv.memory import peak_estimate

        return peak_estimate([(s.tensor, s.action, s.entry.nbytes) for s in self.steps], self.compute)

    def rows(self) -> list[list]:
        """(GGUF name, action, HF shape, type, bytes) per tensor, for --dry-run."""
        return [[s.entry.name, s.action, list(s.tensor.shape), s.type_name, s.entry.nbytes] for s in self.steps]


def _choice(value: str, table: dict, option: str) -> str:
    key = str(value).strip().lower()
    if key not in table:
        raise UsageError(f"{option} must be one of {', '.join(table)}, got {value!r}")
    return key


def _source_gguf_arch(src: Checkpoint) -> str | None:
    return gguf_header(src.path).arch if src.kind == "gguf" else None


def _kernel_config(kind: str, given: KernelConfig | str | Path | None, shapes: dict[str, tuple[int, int]]) \
        -> KernelConfig:
    if given is None:
        return derive(kind, shapes)
    if isinstance(given, (str, Path)):
        return KernelConfig.from_ini(given, kind)
    return given.with_kind(kind)


def _layout(target: Target, src: Checkpoint, kernel_config: KernelConfig | str | Path | None, tl2_type_id: int) \
        -> tuple[Layout | None, KernelConfig | None]:
    if target.layout is None:
        return None, None
    if target.layout not in ("gguf-tl1", "gguf-tl2"):
        return get_layout(target.layout), None
    kind = target.layout.removeprefix("gguf-")
    shapes = {t.name: tuple(t.shape) for t in src.ternary_tensors()}
    kc = _kernel_config(kind, kernel_config, shapes)
    params = {"type_id": tl2_type_id} if kind == "tl2" else {}
    return get_layout(target.layout, kernel_config=kc, **params), kc


def _tensor_type(t: ModelTensor, gname: str, target: Target, layout: Layout | None, embd: str) -> str:
    if t.is_ternary:
        return layout.ggml_type if layout is not None else target.float_type
    return embd if gname in EMBEDDINGS else "F32"


def _nbytes(t: ModelTensor, type_name: str, layout: Layout | None) -> int:
    if t.is_ternary and layout is not None:
        return layout.spec(t.shape, tensor=t.name)["data"].nbytes  # raises LayoutError before anything is written
    return float_type_nbytes(type_name, t.shape, t.name)


def _steps(src: Checkpoint, arch: GGUFArch, target: Target, layout: Layout | None, embd: str) -> list[GGUFStep]:
    steps = []
    for name in sorted(src.tensors):
        if name.endswith(SKIPPED):
            continue
        t = src.tensors[name]
        gname = gguf_name(name, t.shape)
        type_name = _tensor_type(t, gname, target, layout, embd)
        dims = layout.gguf_dims(t.shape) if (t.is_ternary and layout is not None) else tuple(reversed(t.shape))
        entry = TensorEntry(gname, dims, GGML_TYPES[type_name].id, _nbytes(t, type_name, layout))
        action = ("pack" if layout is not None else "dequant") if t.is_ternary else "convert"
        heads = permute_heads(name, src.config) if (arch.permute_qk and t.is_ternary) else None
        steps.append(GGUFStep(t, entry, type_name, action, heads))
    if not arch.has_output and any(s.entry.name == "output.weight" for s in steps):
        raise UsageError(f"GGUF arch {arch.name!r} always ties the output to token_embd, but this checkpoint has an "
                         "untied lm_head.weight", path=src.path, hint="use --arch bitnet-b1.58")
    return steps


def _vocab(src: Checkpoint, style: str) -> list[KV]:
    if src.kind == "gguf":  # carry the source file's tokenizer KVs over, in their order
        return [kv for k, kv in gguf_header(src.path).kvs.items() if k.startswith("tokenizer.")]
    return vocab_kvs(load_vocab(src.path, src.config, style), style)


_SNAPSHOT = re.compile(r"models--[^/\\]+?--([^/\\]+)[/\\]snapshots[/\\]")


def model_name_of(src: Checkpoint, explicit: str | None = None) -> str:
    """general.name: `explicit` (--model-name), a GGUF's own, the repo name of an HF-cache snapshot (never its
    hash), else the folder's name."""
    if explicit:
        return explicit
    if src.kind == "gguf":
        return str(gguf_header(src.path).get("general.name", src.path.stem))
    m = _SNAPSHOT.search(str(src.path.resolve()) + "/")
    return m[1] if m else src.path.name


def _add_prefix_space(src: Checkpoint) -> bool | None:
    if src.kind == "gguf":
        return None
    v = (read_optional_json(src.path / "tokenizer_config.json") or {}).get("add_prefix_space")
    return v if isinstance(v, bool) else None


def plan_pack_gguf(src: Checkpoint, gguf_type: str, *, arch: str | None = None, embd_type: str = "f16",
                   kernel_config: KernelConfig | str | Path | None = None, tl2_type_id: int = 39,
                   compute: str = "float32", model_name: str | None = None) -> GGUFPlan:
    """Validate every option and shape and size the whole file; raises before anything is read or written."""
    gguf_type = _choice(gguf_type, GGUF_TARGETS, "--type")
    embd = EMBD_TYPES[_choice(embd_type, EMBD_TYPES, "--embd-type")]
    if compute not in COMPUTE_MODES:
        raise UsageError(f"--compute must be one of {', '.join(COMPUTE_MODES)}, got {compute!r}")
    if tl2_type_id not in TL2_TYPE_IDS:
        raise UsageError(f"--tl2-type-id must be 39 (bitnet.cpp before mid-2026) or 42 (current fork), "
                         f"got {tl2_type_id}")
    if kernel_config is not None and gguf_type not in ("tl1", "tl2"):
        raise UsageError(f"--kernel-config applies to --type tl1/tl2, not {gguf_type}")
    target = GGUF_TARGETS[gguf_type]
    garch = resolve_arch(src.config, arch or _source_gguf_arch(src))
    layout, kc = _layout(target, src, kernel_config, tl2_type_id)
    steps = _steps(src, garch, target, layout, embd)
    profile = PROFILE_OF[(garch.name, target.tool)]
    type_name = layout.ggml_type if layout is not None else target.float_type
    meta = Meta(garch.name, src.config, model_name_of(src, model_name), FILE_TYPES[type_name],
                sum(int(np.prod(s.tensor.shape)) for s in steps), gguf_type == "i2_s", _add_prefix_space(src))
    kvs = build_kvs(profile, meta, _vocab(src, PROFILES[profile].vocab_style))
    plan = GGUFPlan(src, gguf_type, garch, profile, steps, kvs, layout, compute, kc)
    plan.extra = {"arch": garch.name, "profile": profile, "type": type_name}
    if kc is not None:
        plan.extra["codegen"] = kc.codegen_params().__dict__
    return plan


# ------------------------------------------------------------------------------------------------ streaming


def _ternary(step: GGUFStep, compute: str) -> Ternary:
    tern = step.tensor.ternary(compute)
    if step.permute is None:
        return tern
    return Ternary(permute_rows(np.asarray(tern.codes), step.permute), tern.scale)


def _float_signs(t: ModelTensor) -> torch.Tensor | None:
    """The stored float weight behind a ternary tensor (master or float GGUF), whose signs the zeros keep."""
    if t.stored and t.stored[0].dtype in ("BF16", "F16", "F32") and tuple(t.stored[0].shape) == tuple(t.shape):
        from bitconv.sources.safetensors import load_torch

        return load_torch(t.stored[0])
    return None


def _dequant(step: GGUFStep, compute: str) -> np.ndarray:
    """codes * scale as float32, zeros signed like the float source (the converters' t / (1/scale) keeps -0.0)."""
    tern = step.tensor.ternary(compute)
    vals = np.abs(np.asarray(tern.codes, dtype=np.float32)) * np.float32(tern.scale)
    signs = _float_signs(step.tensor)
    vals = np.copysign(vals, signs.float().numpy() if signs is not None else tern.codes.astype(np.float32))
    return permute_rows(vals, step.permute) if step.permute is not None else vals


def _step_data(step: GGUFStep, plan: GGUFPlan) -> np.ndarray | Iterator[np.ndarray]:
    if step.action == "pack":
        return plan.layout.pack(_ternary(step, plan.compute))["data"]
    if step.action == "dequant":
        return to_float_type(torch.from_numpy(_dequant(step, plan.compute)), step.type_name)
    parts = _converted_row_chunks(step)
    if parts is not None:
        return parts
    return to_float_type(plan.source.load_passthrough(step.tensor.name), step.type_name)


CHUNK_BYTES = 64 << 20  # passthrough tensors above this are converted a block of rows at a time


def _converted_row_chunks(step: GGUFStep) -> Iterator[np.ndarray] | None:
    """Big stored 2-D passthrough tensors (token_embd, output) as converted row blocks: the tensor and its converted
    copy are never both resident (a 128256 x 2560 embedding would otherwise peak at 1.3 GB)."""
    t = step.tensor
    info = t.stored[0] if len(t.stored) == 1 else None
    if (t.loader is not None or step.permute is not None or not isinstance(info, TensorInfo) or len(info.shape) != 2
            or info.nbytes <= CHUNK_BYTES):
        return None
    row_bytes = info.nbytes // info.shape[0]
    rows = max(1, CHUNK_BYTES // row_bytes)

    def chunks() -> Iterator[np.ndarray]:
        raw = np.empty(rows * row_bytes, dtype=np.uint8)
        for r0 in range(0, info.shape[0], rows):
            n = min(rows, info.shape[0] - r0)
            buf = raw[: n * row_bytes]
            pread_exact(info.path, info.offset + r0 * row_bytes, memoryview(buf), info.name)
            block = dtypes.from_numpy_storage(buf.view(dtypes.DTYPES[info.dtype].np_storage), info.dtype)
            yield to_float_type(block.reshape(n, info.shape[1]), step.type_name)

    return chunks()


def execute_gguf(plan: GGUFPlan, out: str | Path, *, overwrite: bool = False,
                 progress: Progress | None = None) -> Report:
    """Stream the plan into the single file OUT (atomically); TL types also get OUT's kernel_config.ini."""
    t0 = time.perf_counter()
    guard = AtomicOutput(out, overwrite=overwrite, is_dir=False, inputs=(plan.source.path,))
    ini = _check_ini(plan, guard.out, overwrite)
    check_free_space(guard.out.parent, plan.total_bytes)
    ini_tmp = guard.out.parent / f"{TMP_PREFIX}{guard.out.name}.{KERNEL_CONFIG_NAME}"
    try:
        with guard as tmp:
            writer = GGUFWriter(tmp, plan.kvs, plan.entries)
            try:
                done, total = 0, sum(s.entry.nbytes for s in plan.steps)
                for step in plan.steps:
                    if progress:
                        progress(done, total, step.tensor.name)
                    writer.write(step.entry.name, _step_data(step, plan))
                    done += step.entry.nbytes
                writer.close(fsync=os.environ.get("BITCONV_FSYNC") == "1")
            except BaseException:
                writer.abort()
                raise
            if ini is not None:
                try:
                    plan.kernel_config.write_ini(ini_tmp)
                except OSError as e:
                    raise OutputError(f"cannot write: {e.strerror or e}", path=ini) from None
        if ini is not None:
            try:
                os.replace(ini_tmp, ini)
            except OSError as e:
                raise OutputError(f"cannot write: {e.strerror or e}", path=ini) from None
    finally:
        ini_tmp.unlink(missing_ok=True)
    if progress:
        total = sum(s.entry.nbytes for s in plan.steps)
        progress(total, total, "")
    n_tern = sum(1 for s in plan.steps if s.action != "convert")
    files = [guard.out] + ([ini] if ini is not None else [])
    extra = dict(plan.extra, **({"kernel_config": str(ini)} if ini is not None else {}))
    return Report(guard.out, f"gguf-{plan.gguf_type}", plan.source.kind, files, n_tern, len(plan.steps) - n_tern,
                  guard.out.stat().st_size, time.perf_counter() - t0, extra)


def _check_ini(plan: GGUFPlan, out: Path, overwrite: bool) -> Path | None:
    """Where the kernel config goes (next to OUT); refused if a different one is there and not `overwrite`."""
    if plan.kernel_config is None:
        return None
    ini = out.parent / KERNEL_CONFIG_NAME
    if ini.exists() and not overwrite and ini.read_text(encoding="utf-8") != plan.kernel_config.to_ini():
        raise OutputError("a different kernel config already exists next to the output", path=ini,
                          hint="pass --overwrite or write the GGUF into another folder")
    return ini


def pack_gguf(src: str | Path | Checkpoint, out: str | Path, gguf_type: str, *, arch: str | None = None,
              embd_type: str = "f16", kernel_config: KernelConfig | str | Path | None = None, tl2_type_id: int = 39,
              compute: str = "float32", overwrite: bool = False, progress: Progress | None = None,
              model_name: str | None = None) -> Report:
    """Write SRC as one GGUF file of `gguf_type` (i2_s, tl1, tl2, tq1_0, tq2_0, f32, f16, bf16).

    Args:
        src: any ternary-capable checkpoint (bf16 master, bitconv ternary, HF packed, GGUF).
        out: the .gguf file; written atomically; refused if it exists unless `overwrite`.
        arch: GGUF architecture; default by model family (bitnet-b1.58 / bitnet / llama).
        embd_type: token_embd / output type: f16, f32, bf16 or q8_0.
        kernel_config: TL1/TL2 tiling: a kernel_config.ini, a KernelConfig, or None to derive one from the shapes.
        tl2_type_id: 39 (bitnet.cpp before mid-2026) or 42 (current fork).
        model_name: general.name (default: the repo or folder name).
    Returns a Report; for TL types `extra["codegen"]` holds the codegen_tl*.py parameters of the config used.
    Example:
        >>> pack_gguf("bitnet-bf16", "bitnet-i2_s.gguf", "i2_s")
    """
    ck = src if isinstance(src, Checkpoint) else open_source(src)
    plan = plan_pack_gguf(ck, gguf_type, arch=arch, embd_type=embd_type, kernel_config=kernel_config,
                          tl2_type_id=tl2_type_id, compute=compute, model_name=model_name)
    return execute_gguf(plan, out, overwrite=overwrite, progress=progress)
