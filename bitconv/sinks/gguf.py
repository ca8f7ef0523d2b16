"""The GGUF container's sink: one GGUF file. Its plan (`GGUFPlan`, a `pipeline.Plan`) fixes every tensor's name,
type, shape and size, and every KV, before the first byte is read or written; `pipeline.execute` then streams the
steps into `GGUFSink` in order.

    pack_gguf(src, "model.gguf", type)                   any ternary-capable source -> GGUF

`--type` is a GGUF layout's name without `gguf-` (`bitconv layouts`; `GGUF_TARGETS` is derived from the layout
registry: each layout declares whose converter's KV set it takes, whether it is made like llama-quantize, its
default embedding type and the runtime it is written for), or a float type (f32, f16: bitnet.cpp's converter; bf16:
llama.cpp's) holding codes * scale.

Norms and other 1-D tensors are F32; `token_embd` / `output` take `embd_type` (default: the layout's; f16, f32, bf16,
q8_0). A layout written for one runtime (ik_llama.cpp, docs/ik_llama.md) takes that runtime's arch for the model's
activation by default; an arch whose graph has another FFN activation than the model is refused; projections below a
runtime's size limit are written with a warning; a projection whose shape the layout cannot hold is written with the
layout's declared fallback, as llama-quantize does.
Ternary sources (HF packed, bitconv ternary, GGUF) are packed from their codes and scale, never re-quantized. The
dequantized float types keep the sign of zero codes from a float source (the reference writes -0.0 for small
negative weights), so bitconv's f32 file equals the converter's byte for byte.
Tensor order: HF names sorted (what convert-hf reads from a single safetensors file).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from bitconv.core import dtypes
from bitconv.core.errors import LayoutError, OutputError, UsageError
from bitconv.core.jsonio import read_optional_json
from bitconv.core.lazytorch import torch
from bitconv.core.tensors import Ternary, row_ranges
from bitconv.formats.gguf.ggml_types import FILE_TYPES, GGML_TYPES
from bitconv.formats.gguf.kv import KV
from bitconv.formats.gguf.metadata import (
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
from bitconv.formats.gguf.quants import float_type_nbytes, stored_to_float_type, to_float_type
from bitconv.formats.gguf.types import pad
from bitconv.formats.gguf.vocab import load_vocab, vocab_kvs
from bitconv.formats.gguf.writer import GGUFWriter, TensorEntry, build_header
from bitconv.formats.safetensors import TensorInfo, read_array, read_range
from bitconv.layouts import Layout, get_layout, gguf_layouts, layout_class, type_id_choices
from bitconv.layouts.kernel_config import INI_NAME, KernelConfig, derive
from bitconv.layouts.runtimes import ACTIVATIONS, Verdict, default_activation, runs_somewhere, summary, where_it_runs
from bitconv.output import AtomicOutput, precheck
from bitconv.pipeline import Plan, Progress, Report, Step, execute
from bitconv.sinks.background import BackgroundWriter
from bitconv.sinks.hf import DEQUANT_BLOCK_ELEMS  # float types are made this many elements (whole rows) at a time
from bitconv.sources import Checkpoint, ModelTensor, open_source
from bitconv.sources.gguf import gguf_header
from bitconv.sources.safetensors import block_reader


@dataclass(frozen=True)
class Target:
    layout: str | None  # ternary layout for packed types
    float_type: str | None  # GGML float type for dequantized types
    tool: str  # which reference makes this type: "bitnet.cpp" or "upstream" (selects the KV set)
    quantized: bool = False  # the file llama-quantize writes (it appends general.quantization_version)
    embd: str = "f16"  # default --embd-type
    runtime: str | None = None  # the one runtime the layout is written for: its arch and CPU-limit rules apply


GGUF_TARGETS: dict[str, Target] = {  # every GGUF layout (the registry's facts), then the dequantized float types
    **{key: Target(cls.name, None, cls.gguf_tool, cls.quantized, cls.default_embd, cls.runtime)
       for key, cls in gguf_layouts().items()},
    "f32": Target(None, "F32", "bitnet.cpp"),
    "f16": Target(None, "F16", "bitnet.cpp"),
    "bf16": Target(None, "BF16", "upstream"),
}
EMBD_TYPES = {"f16": "F16", "f32": "F32", "bf16": "BF16", "q8_0": "Q8_0"}
EMBEDDINGS = ("token_embd.weight", "output.weight")
TL2_TYPE_IDS = tuple(sorted({i for t in GGUF_TARGETS.values() if t.layout for i in type_id_choices(t.layout)
                             if len(type_id_choices(t.layout)) > 1}))  # a layout with several ids (--tl2-type-id)


def entry_of(step: Step) -> TensorEntry:
    """The GGUF tensor a step writes (each GGUF step has exactly one)."""
    (entry,) = step.outputs.values()
    return entry


@dataclass
class GGUFPlan(Plan):
    gguf_type: str = ""
    arch: GGUFArch | None = None
    profile: str = ""
    kvs: list[KV] = field(default_factory=list)
    kernel_config: KernelConfig | None = None
    kernel_config_path: Path | None = None  # the user's --kernel-config file, when one was given
    verdicts: list[Verdict] = field(default_factory=list)
    values: str = "dequantized"  # float types are plain codes * scale
    tune_malloc: ClassVar[bool] = False

    @property
    def entries(self) -> list[TensorEntry]:
        return [entry_of(s) for s in self.steps]

    _header: tuple[bytes, list[int]] | None = field(default=None, init=False, repr=False, compare=False)

    def header(self) -> tuple[bytes, list[int]]:
        """The file's header and tensor offsets (`writer.build_header`), encoded once per plan: the vocabulary's
        ~10^5 strings take 0.2 s to encode."""
        if self._header is None:
            self._header = build_header(self.kvs, self.entries)
        return self._header

    @property
    def total_bytes(self) -> int:
        """The size of the GGUF file."""
        return len(self.header()[0]) + sum(pad(e.nbytes) for e in self.entries)

    def rows(self) -> list[list]:
        """(GGUF name, action, HF shape, type, bytes) per tensor, for --dry-run."""
        return [[entry_of(s).name, s.action, list(s.tensor.shape), s.type_name, s.nbytes] for s in self.steps]

    def new_sink(self, **_: object) -> GGUFSink:
        return GGUFSink(self)

    def ternary(self, step: Step) -> Ternary:
        tern = step.tensor.ternary()
        if step.permute is None:
            return tern
        return Ternary(permute_rows(np.asarray(tern.codes), step.permute), tern.scale)


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
        return KernelConfig.from_ini(given, kind, user_named=True)
    return given.with_kind(kind)


def _layout(target: Target, src: Checkpoint, kernel_config: KernelConfig | str | Path | None,
            tl2_type_id: int | None) \
        -> tuple[Layout | None, KernelConfig | None]:
    if target.layout is None:
        return None, None
    cls = layout_class(target.layout)
    if not cls.needs_kernel_config:
        return get_layout(target.layout), None
    kind = cls.kernel_kind
    shapes = {t.name: tuple(t.shape) for t in src.ternary_tensors()}
    kc = _kernel_config(kind, kernel_config, shapes)
    params = {"type_id": tl2_type_id} if tl2_type_id is not None and len(type_id_choices(target.layout)) > 1 else {}
    return get_layout(target.layout, kernel_config=kc, **params), kc


def _tensor_layout(t: ModelTensor, layout: Layout | None) -> Layout | None:
    """The plan's layout, or its declared fallback for a shape it cannot hold (`Layout.fallback_layout`)."""
    fallback = layout.fallback_layout if layout is not None else None
    if not t.is_ternary or layout is None or fallback is None:
        return layout
    try:
        layout.spec(t.shape, tensor=t.name)
    except LayoutError:
        return get_layout(fallback)
    return layout


def _tensor_type(t: ModelTensor, gname: str, target: Target, layout: Layout | None, embd: str) -> str:
    if t.is_ternary:
        return layout.ggml_type if layout is not None else target.float_type
    return embd if gname in EMBEDDINGS else "F32"


def _nbytes(t: ModelTensor, type_name: str, layout: Layout | None) -> int:
    if t.is_ternary and layout is not None:
        return layout.spec(t.shape, tensor=t.name)["data"].nbytes  # raises LayoutError before anything is written
    return float_type_nbytes(type_name, t.shape, t.name)


def _steps(src: Checkpoint, arch: GGUFArch, target: Target, layout: Layout | None, embd: str) -> list[Step]:
    steps = []
    for name in sorted(src.tensors):
        if name.endswith(SKIPPED):
            continue
        t = src.tensors[name]
        gname = gguf_name(name, t.shape)
        lay = _tensor_layout(t, layout)
        type_name = _tensor_type(t, gname, target, lay, embd)
        dims = lay.gguf_dims(t.shape) if (t.is_ternary and lay is not None) else tuple(reversed(t.shape))
        entry = TensorEntry(gname, dims, GGML_TYPES[type_name].id, _nbytes(t, type_name, lay))
        action = ("pack" if lay is not None else "dequant") if t.is_ternary else "copy"
        heads = permute_heads(name, src.config) if (arch.permute_qk and t.is_ternary) else None
        steps.append(Step(t, {gname: entry}, action, lay if action == "pack" else None, type_name, heads,
                          convert=action == "copy"))
    if not arch.has_output and "output.weight" in {entry_of(s).name for s in steps}:
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


def _ik_arch(src: Checkpoint, arch: str | None, by_activation: dict[str, str]) -> GGUFArch:
    """The arch for a file written for one runtime: by default the one whose graph in that runtime has the model's FFN
    activation (ik_llama.cpp: a 2B4T model is written as `bitnet-25`); an explicit `--arch` is kept and judged by the
    runtime table like any other."""
    act = src.config.get("hidden_act")
    given = arch or _source_gguf_arch(src)
    garch = resolve_arch(src.config, given)
    if given is None and act in by_activation:  # the arch the runtime names for this activation, where it exists
        try:
            garch = resolve_arch(src.config, by_activation[act])
        except UsageError:
            pass
    return garch


def model_activation(config: dict) -> str:
    """The FFN activation of a checkpoint: config hidden_act, else transformers' default for its class."""
    act = config.get("hidden_act")
    if act is None:
        act = "relu2" if (config.get("architectures") or [""])[0] == "BitNetForCausalLM" else "silu"
    return str(act)


def runtime_verdicts(arch: str, type_name: str, activation: str, src: Checkpoint, kc: KernelConfig | None,
                     file: str) -> list[Verdict]:
    shapes = {t.name: (int(t.shape[0]), int(t.shape[1])) for t in src.ternary_tensors() if len(t.shape) == 2}
    tiling = {e.shape: (e.BM, e.BK, e.bm) for e in kc.entries} if kc is not None else {}
    return where_it_runs(arch, type_name, activation, shapes, tiling, file)


def plan_pack_gguf(src: Checkpoint, gguf_type: str, *, arch: str | None = None, embd_type: str | None = None,
                   kernel_config: KernelConfig | str | Path | None = None, tl2_type_id: int | None = None,
                   force: bool = False, file: str = "MODEL.gguf",
                   model_name: str | None = None) -> GGUFPlan:
    """Validate every option and shape and size the whole file; raises before anything is read or written.

    The file's runtimes are judged from the compatibility table (`bitconv.layouts.runtimes`): a combination that
    runs correctly on no known runtime is refused (UsageError) unless `force`, which writes it with a warning in
    `plan.warnings` and in the GGUF (`bitconv.warning`). `file` is the name the run commands use.
    """
    gguf_type = _choice(gguf_type, GGUF_TARGETS, "--type")
    target = GGUF_TARGETS[gguf_type]
    embd = EMBD_TYPES[_choice(embd_type or target.embd, EMBD_TYPES, "--embd-type")]
    if tl2_type_id is not None and tl2_type_id not in TL2_TYPE_IDS:
        raise UsageError(f"--tl2-type-id must be one of {', '.join(map(str, TL2_TYPE_IDS))}, got {tl2_type_id}")
    tiled = [k for k, t in GGUF_TARGETS.items() if t.layout and layout_class(t.layout).needs_kernel_config]
    if kernel_config is not None and gguf_type not in tiled:
        raise UsageError(f"--kernel-config applies to --type {'/'.join(tiled)}, not {gguf_type}")
    by_act = dict(layout_class(target.layout).arch_by_activation) if target.layout else {}
    garch = _ik_arch(src, arch, by_act) if target.runtime else resolve_arch(src.config, arch or _source_gguf_arch(src))
    layout, kc = _layout(target, src, kernel_config, tl2_type_id)
    steps = _steps(src, garch, target, layout, embd)
    profile = PROFILE_OF[(garch.name, target.tool)]
    type_name = layout.ggml_type if layout is not None else target.float_type
    activation = model_activation(src.config)
    verdicts = runtime_verdicts(garch.name, type_name, activation, src, kc, file)
    runs_on, not_on = summary(verdicts)
    warnings = []
    if not runs_somewhere(verdicts) and any(v.shape_limited for v in verdicts):
        # the file is right and loads, but a CPU kernel's size limit aborts it (a runtime's minimum in_features):
        # written, with the runtime's warning (tiny test models; real models are far above the limit)
        warnings.append(f"{gguf_type}: the file is correct, but " + "; ".join(
            f"{v.runtime.name}: {v.why}" for v in verdicts if v.shape_limited))
    elif not runs_somewhere(verdicts):
        what = (f"{gguf_type} with arch {garch.name} for a model with hidden_act {activation!r} runs correctly on no "
                f"known runtime; {not_on}")
        if not force:
            raise UsageError(what, path=src.path, hint="choose another --type / --arch (docs/runtimes.md lists where "
                             "each file runs), or pass --force to write it anyway with a warning")
        warnings.append(f"FORCED (--force): {what}")
    # the activation travels with the file when it is relu2, or when it is not what the arch's graph assumes
    hidden = activation if activation in ACTIVATIONS and (activation == "relu2" or
                                                          activation != default_activation(garch.name)) else None
    meta = Meta(garch.name, src.config, model_name_of(src, model_name), FILE_TYPES[type_name],
                sum(int(np.prod(s.tensor.shape)) for s in steps), target.quantized, _add_prefix_space(src),
                hidden, warnings[0] if warnings and warnings[0].startswith("FORCED") else None)
    kvs = build_kvs(profile, meta, _vocab(src, PROFILES[profile].vocab_style))
    target = layout.name if layout is not None else f"gguf-{gguf_type}"  # the registry's spelling
    plan = GGUFPlan(src, target, steps, src.config, layout, gguf_type=gguf_type, arch=garch,
                    profile=profile, kvs=kvs, kernel_config=kc, verdicts=verdicts, warnings=warnings)
    if isinstance(kernel_config, (str, Path)):
        plan.kernel_config_path = Path(kernel_config)
    plan.extra = {"arch": garch.name, "profile": profile, "type": type_name, "embd_type": embd,
                  "activation": activation, "hidden_activation_kv": hidden, "runs_on": runs_on,
                  "does_not_run_on": not_on, "runtimes": [v.to_dict() for v in verdicts], "warnings": warnings}
    if kc is not None:
        cg = kc.codegen_params()
        plan.extra["codegen"] = cg.__dict__
        plan.extra["codegen_steps"] = cg.instructions(f"the {INI_NAME} written next to {file}")
    return plan


# ------------------------------------------------------------------------------------------------ streaming


def _sign_rows(t: ModelTensor):  # noqa: ANN202
    """Rows [r0, r1) of the stored float weight behind a ternary tensor (master or float GGUF), as float32, whose
    signs the zeros keep; None when there is none (packed / ternary sources)."""
    info = t.stored[0] if t.stored else None
    if not (isinstance(info, TensorInfo) and info.dtype in ("BF16", "F16", "F32")
            and tuple(info.shape) == tuple(t.shape)):
        return None

    read, k = block_reader(info), int(np.prod(t.shape[1:]))
    return lambda r0, r1: read(r0 * k, (r1 - r0) * k).float().numpy().reshape(r1 - r0, -1)


def _dequant_chunks(step: Step, tern: Ternary) -> Iterator[np.ndarray]:
    """codes * scale in the step's float type, a block of rows at a time (`tern`: the step's codes, rows already
    permuted), zeros signed like the float source (the converters' t / (1/scale) keeps -0.0). The same bytes as
    converting the whole tensor: every step is elementwise, and a permuted block holds whole heads."""
    codes = np.asarray(tern.codes).reshape(tern.codes.shape[0], -1)
    m, k = codes.shape
    unit = m // step.permute if step.permute else 1  # rows of one head: the q/k permutation stays inside a head
    rows = max(unit, DEQUANT_BLOCK_ELEMS // max(1, k) // unit * unit)
    signs = _sign_rows(step.tensor)
    scale = np.float32(tern.scale)
    for a in range(0, m, rows):
        b = min(m, a + rows)
        vals = codes[a:b].astype(np.float32)
        np.abs(vals, out=vals)
        np.multiply(vals, scale, out=vals)
        if signs is not None:
            sg = signs(a, b)
            np.copysign(vals, permute_rows(sg, (b - a) // unit) if step.permute else sg, out=vals)
        else:
            np.copysign(vals, codes[a:b], out=vals)
        yield to_float_type(torch.from_numpy(vals.reshape(b - a, *tern.codes.shape[1:])), step.type_name)


def _copied(step: Step, plan: GGUFPlan) -> np.ndarray | Iterator[np.ndarray]:
    """A pass-through tensor in its GGUF float type: row blocks of a big stored tensor, else the whole tensor (a
    plain stored one read as its numpy storage: the usual conversions need no torch)."""
    parts = _converted_row_chunks(step)
    if parts is not None:
        return parts
    info = step.tensor.plain
    if info is not None:
        return stored_to_float_type(read_array(info), info.dtype, step.type_name)
    return to_float_type(plan.source.load_passthrough(step.tensor.name), step.type_name)


CHUNK_BYTES = 8 << 20  # passthrough tensors above this are converted a block of rows at a time (blocks of this size
# are reused from the heap by malloc; 64 MiB ones were fresh mappings, whose page faults cost 2-4 s at 2B4T)


def _converted_row_chunks(step: Step) -> Iterator[np.ndarray] | None:
    """Big stored 2-D passthrough tensors (token_embd, output) as converted row blocks: the tensor and its converted
    copy are never both resident (a 128256 x 2560 embedding would otherwise peak at 1.3 GB)."""
    t = step.tensor
    if t.row_loader is not None and step.permute is None and len(t.shape) == 2 \
            and t.numel * dtypes.DTYPES[t.dtype].itemsize > CHUNK_BYTES:
        return _loaded_row_chunks(step)
    info = t.plain
    if info is None or step.permute is not None or len(info.shape) != 2 or info.nbytes <= CHUNK_BYTES:
        return None
    row_bytes = info.nbytes // info.shape[0]
    rows = max(1, CHUNK_BYTES // row_bytes)

    def chunks() -> Iterator[np.ndarray]:
        raw = np.empty(0, dtype=np.uint8)  # the pread buffer, made on first use (blocks are mapped where possible)

        def scratch(n: int) -> np.ndarray:
            nonlocal raw
            raw = raw if raw.size else np.empty(rows * row_bytes, dtype=np.uint8)
            return raw[:n]

        for r0 in range(0, info.shape[0], rows):
            n = min(rows, info.shape[0] - r0)
            buf = read_range(info.path, info.offset + r0 * row_bytes, n * row_bytes, scratch, info.name)
            block = buf.view(dtypes.DTYPES[info.dtype].np_storage).reshape(n, info.shape[1])
            out = stored_to_float_type(block, info.dtype, step.type_name)
            # the block is written later, on the writer thread, while `raw` is refilled: never hand out a view of it
            # (a view of a map is safe: each block has its own)
            yield out.copy() if np.shares_memory(out, raw) else out

    return chunks()


def _loaded_row_chunks(step: Step) -> Iterator[np.ndarray]:
    """Row blocks of a passthrough tensor whose source reads rows alone (`ModelTensor.row_loader`: a Nanotron
    embedding gathered from its TP shards), converted: the whole tensor is never loaded."""
    t = step.tensor
    for r0, r1 in row_ranges(t.shape[0], t.shape[1] * dtypes.DTYPES[t.dtype].itemsize, CHUNK_BYTES):
        yield np.ascontiguousarray(to_float_type(t.row_loader(r0, r1), step.type_name))


WRITE_QUEUE_BYTES = 64 << 20  # converted blocks and packed tensors waiting to be written


def _queue_tensor(bg: BackgroundWriter, writer: GGUFWriter, name: str,
                  data: np.ndarray | Iterator[np.ndarray]) -> None:
    """Queue one tensor's writes: each part (a converted row block, or the whole packed tensor) as its own job,
    so the queue's byte bound holds and the next block is converted while this one is written."""
    bg.submit(lambda: writer.begin(name))
    for part in ([data] if isinstance(data, np.ndarray) else data):
        bg.submit(lambda p=part: writer.write_part(p), part.nbytes)
    bg.submit(writer.end)


class GGUFSink:
    """The `pipeline.Sink` of one GGUF file (TL types also get OUT's kernel_config.ini, moved in with it). The file
    is written on its own thread, in order, while the calling thread converts the next block."""

    is_dir = False

    def __init__(self, plan: GGUFPlan) -> None:
        self.plan = plan
        self.extra: dict = {}
        self._out: Path | None = None
        self._ini: Path | None = None  # the kernel config this run writes beside OUT
        self._ini_tmp: Path | None = None
        self._writer: GGUFWriter | None = None
        self._bg: BackgroundWriter | None = None

    def prepare(self, guard: AtomicOutput) -> int:
        self._out = guard.out
        self._ini = _check_ini(self.plan, guard.out, guard.overwrite)
        if self._ini is None:
            return 0
        self._ini_tmp = guard.side_file(self._ini)
        return len(self.plan.kernel_config.to_ini().encode())

    def open(self, tmp: Path) -> None:
        self._writer = GGUFWriter(tmp, self.plan.kvs, self.plan.entries, header=self.plan.header())
        self._bg = BackgroundWriter(WRITE_QUEUE_BYTES)

    def write(self, step: Step, result: Ternary | dict[str, np.ndarray]) -> None:
        """A "pack" step's bytes, or a "dequant" step's codes * scale in its float type, a block of rows at a time."""
        data = result["data"] if step.action == "pack" else _dequant_chunks(step, result)
        _queue_tensor(self._bg, self._writer, entry_of(step).name, data)

    def copy(self, step: Step) -> None:
        _queue_tensor(self._bg, self._writer, entry_of(step).name, _copied(step, self.plan))

    def close(self, fsync: bool = False) -> list[Path]:
        bg, self._bg = self._bg, None
        bg.finish()
        self._writer.close(fsync=fsync)
        ini = self._ini
        if self._ini_tmp is not None:
            try:
                self.plan.kernel_config.write_ini(self._ini_tmp)
            except OSError as e:
                raise OutputError(f"cannot write: {e.strerror or e}", path=ini) from None
        if ini is None and self.plan.kernel_config is not None:  # the user's --kernel-config, already in place
            ini = self._out.parent / INI_NAME
        if ini is not None:
            self.extra["kernel_config"] = str(ini)
        return [self._out] + ([ini] if ini is not None else [])

    def abort(self) -> None:
        if self._bg is not None:
            bg, self._bg = self._bg, None
            bg.cancel()
        if self._writer is not None:
            self._writer.abort()


def _check_ini(plan: GGUFPlan, out: Path, overwrite: bool) -> Path | None:
    """Where the kernel config goes (next to OUT); refused if a different one is there and not `overwrite`."""
    if plan.kernel_config is None:
        return None
    ini = out.parent / INI_NAME
    if not os.path.lexists(ini):
        return ini
    st = os.lstat(ini)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError("exists and is not a regular file; the GGUF's kernel config cannot be written there",
                          path=ini, hint="remove it or write the GGUF into another folder")
    given = plan.kernel_config_path
    if given is not None and os.path.samefile(given, ini):
        return None  # the user's own --kernel-config, which the plan was tiled for: never rewritten
    try:
        with open(ini, "rb") as f:
            same = f.read(len(plan.kernel_config.to_ini()) + 1) == plan.kernel_config.to_ini().encode()
    except OSError as e:
        raise OutputError(f"cannot read: {e.strerror or e}", path=ini) from None
    if not same and not overwrite:
        raise OutputError("a different kernel config already exists next to the output", path=ini,
                          hint="pass --overwrite or write the GGUF into another folder")
    return ini


def pack_gguf(src: str | Path | Checkpoint, out: str | Path, gguf_type: str, *, arch: str | None = None,
              embd_type: str | None = None, kernel_config: KernelConfig | str | Path | None = None,
              tl2_type_id: int | None = None, compute: str = "float32", overwrite: bool = False,
              progress: Progress | None = None, force: bool = False,
              model_name: str | None = None) -> Report:
    """Write SRC as one GGUF file of `gguf_type` (a key of `GGUF_TARGETS`: every GGUF layout of `bitconv layouts`
    without its `gguf-` prefix, or f32, f16, bf16).

    Args:
        src: any ternary-capable checkpoint (bf16 master, bitconv ternary, HF packed, GGUF).
        out: the .gguf file; written atomically; refused if it exists unless `overwrite`.
        arch: GGUF architecture; default by model family (bitnet-b1.58 / bitnet / llama; bitnet-25 instead of
            bitnet-b1.58 for the ik_llama.cpp types).
        embd_type: token_embd / output type: f16, f32, bf16 or q8_0; None: q8_0 for the ik_llama.cpp types, else f16.
        kernel_config: tiled layouts: a kernel_config.ini, a KernelConfig, or None to derive one from the shapes.
        tl2_type_id: for a layout written under several type ids, which one (`TL2_TYPE_IDS`; None: its first).
        model_name: general.name (default: the repo or folder name).
        force: write a combination that runs correctly on no known runtime (with a warning in the file).
    Returns a Report; for tiled layouts `extra["codegen"]` holds the codegen_tl*.py parameters of the config used;
    `extra["runtimes"]` the verdict of every known runtime (bitconv.layouts.runtimes).
    Example:
        >>> pack_gguf("bitnet-bf16", "bitnet-i2_s.gguf", "i2_s")
    """
    precheck(out, overwrite)
    ck = src if isinstance(src, Checkpoint) else open_source(src, compute)
    plan = plan_pack_gguf(ck, gguf_type, arch=arch, embd_type=embd_type, kernel_config=kernel_config,
                          tl2_type_id=tl2_type_id, force=force, file=Path(out).name,
                          model_name=model_name)
    return execute(plan, out, overwrite=overwrite, progress=progress)
