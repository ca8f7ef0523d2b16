"""Plan, then stream: every shape is validated and every output sized before the first byte is read or written.

Public entry points (the CLI calls exactly these):
    quantize(src, out)            bf16 master -> bitconv ternary checkpoint (int8 codes + float32 scales)
    pack_hf(src, out)             any ternary-capable source -> transformers packed checkpoint
    unpack_hf(src, out)           packed / ternary -> bf16 checkpoint (codes * scale) with an online config
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitconv.core import dtypes
from bitconv.core.alloc import keep_freed_memory
from bitconv.core.errors import OutputError, SourceError, UsageError
from bitconv.core.naming import module_of
from bitconv.core.tensors import FieldSpec, Ternary
from bitconv.formats.safetensors import OutEntry
from bitconv.layouts import Layout, bitnet_quant_config, get_layout, hf_layouts
from bitconv.memory import peak_estimate, step_bytes
from bitconv.output import AtomicOutput, check_free_space, precheck
from bitconv.quant import COMPUTE_MODES, dequantize, online_lift
from bitconv.sinks.hf import DEFAULT_MAX_SHARD_BYTES, HFSink
from bitconv.sinks.prefetch import ordered
from bitconv.sources import Checkpoint, ModelTensor, open_source
from bitconv.sources.gguf import tokenizer_files

# (done, total, current name): output bytes for quantize / pack / unpack (so a renderer can show bytes/s and an
# ETA), tensors for the Nanotron converter
Progress = Callable[[int, int, str], None]

TERNARY_FORMAT_VERSION = 1


@dataclass
class Step:
    tensor: ModelTensor
    outputs: dict[str, FieldSpec]  # output tensor name -> spec
    action: str  # "pack" (ternary -> layout fields), "dequant" (ternary -> bf16), "copy" (bytes verbatim)


@dataclass
class Plan:
    source: Checkpoint
    target: str
    steps: list[Step]
    config: dict
    layout: Layout | None = None
    compute: str = "float32"
    values: str = "online"  # unpack: "online" (lifted so online WeightQuant gives back the scale) or "dequantized"
    metadata: dict[str, str] | None = None  # safetensors `__metadata__` (None: transformers' {"format": "pt"})

    @property
    def entries(self) -> list[OutEntry]:
        return [OutEntry(n, f.dtype, f.shape) for s in self.steps for n, f in s.outputs.items()]

    @property
    def total_bytes(self) -> int:
        return sum(f.nbytes for s in self.steps for f in s.outputs.values())

    @property
    def peak_bytes(self) -> int:
        """Planned peak memory (`bitconv.memory`)."""

        return peak_estimate([(s.tensor, s.action, sum(f.nbytes for f in s.outputs.values())) for s in self.steps],
                             self.compute)


@dataclass
class Report:
    out: Path
    target: str
    source_kind: str
    files: list[Path]
    n_ternary: int
    n_passthrough: int
    bytes_written: int
    seconds: float
    extra: dict = field(default_factory=dict)


def _layout_steps(src: Checkpoint, layout: Layout) -> list[Step]:
    steps = []
    for t in src.tensors.values():
        if t.is_ternary:
            fields = layout.spec(t.shape, tensor=t.name)  # raises LayoutError before anything is written
            outs = {f"{module_of(t.name)}.{k}": v for k, v in fields.items()}
            steps.append(Step(t, outs, "pack"))
        else:
            steps.append(Step(t, {t.name: FieldSpec(t.shape, t.dtype)}, "copy"))
    _check_unique_outputs(steps, src)
    return steps


def _check_unique_outputs(steps: list[Step], src: Checkpoint) -> None:
    """Two source tensors that would write the same output tensor (e.g. a stored `q_proj.weight_scale` beside the
    one packing makes) are refused before anything is written."""
    seen: dict[str, str] = {}
    for s in steps:
        for name in s.outputs:
            if name in seen:
                raise SourceError(f"tensors {seen[name]!r} and {s.tensor.name!r} would both write output tensor "
                                  f"{name!r}", path=src.path, hint="the checkpoint mixes master and quantized "
                                  "tensors")
            seen[name] = s.tensor.name


def _check_compute(compute: str) -> None:
    if compute not in COMPUTE_MODES:
        raise UsageError(f"--compute must be one of {', '.join(COMPUTE_MODES)}, got {compute!r}")


def _base_config(src: Checkpoint) -> dict:
    cfg = copy.deepcopy(src.config)
    cfg.pop("bitconv", None)
    cfg.pop("auto_map", None)  # points at remote-code files that do not exist (spec hf-packed.md §3.3)
    return cfg


def _with_quant_config(cfg: dict, qc: dict) -> dict:
    cfg["quantization_config"] = qc  # replaces in place (keeps key order) or appends
    return cfg


def plan_quantize(src: Checkpoint, compute: str = "float32") -> Plan:
    _check_compute(compute)
    layout = get_layout("bitconv-ternary")
    cfg = copy.deepcopy(src.config)
    done_by = compute if src.kind in ("bf16-master", "nanotron") else (src.compute or "unknown")
    cfg["bitconv"] = {"format": "ternary", "version": TERNARY_FORMAT_VERSION, "scale": "magnitude",
                      "compute": done_by, "source_kind": src.kind}
    return Plan(src, "bitconv-ternary", _layout_steps(src, layout), cfg, layout, compute)


def plan_pack_hf(src: Checkpoint, linear_class: str = "autobitlinear", compute: str = "float32") -> Plan:
    _check_compute(compute)
    if linear_class not in hf_layouts():
        raise UsageError(f"--linear-class must be one of {', '.join(hf_layouts())}, got {linear_class!r}")
    layout = get_layout(hf_layouts()[linear_class])
    cfg = _with_quant_config(_base_config(src), bitnet_quant_config(src.config, linear_class, "offline"))
    return Plan(src, layout.name, _layout_steps(src, layout), cfg, layout, compute)


UNPACK_VALUES = ("online", "dequantized")
# `unpack` marks its safetensors files as made from a ternary checkpoint, so `check` verifies such a folder as an
# artifact and never takes it for the master. (config.json stays what transformers writes; loaders ignore extra
# metadata keys.)
UNPACKED_METADATA = {"format": "pt", "bitconv": "unpacked"}


def plan_unpack_hf(src: Checkpoint, values: str = "online") -> Plan:
    if values not in UNPACK_VALUES:
        raise UsageError(f"--values must be one of {', '.join(UNPACK_VALUES)}, got {values!r}")
    if src.kind == "bf16-master":
        raise UsageError("SRC is already a bf16 master; unpack takes a packed or ternary checkpoint",
                         path=src.path)
    steps = []
    for t in src.tensors.values():
        if t.is_ternary:
            steps.append(Step(t, {t.name: FieldSpec(t.shape, "BF16")}, "dequant"))
        else:
            steps.append(Step(t, {t.name: FieldSpec(t.shape, t.dtype)}, "copy"))
    cfg = _with_quant_config(_base_config(src), bitnet_quant_config(src.config, "autobitlinear", "online"))
    return Plan(src, "hf-bf16", steps, cfg, values=values, metadata=UNPACKED_METADATA)


def execute(plan: Plan, out: str | Path, *, overwrite: bool = False,
            max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None) -> Report:
    """Stream the plan into OUT (atomically). Up to two source tensors are computed at once
    (`bitconv.sinks.prefetch`), in a bounded working set; they are written in plan order."""
    t0 = time.perf_counter()
    keep_freed_memory()
    guard = AtomicOutput(out, overwrite=overwrite, inputs=(plan.source.path,))
    check_free_space(guard.out.parent, plan.total_bytes)
    with guard as tmp:
        sink = HFSink(tmp, plan.entries, max_shard_bytes, plan.metadata)
        try:
            done, total = 0, plan.total_bytes
            computed = ordered(lambda st: _compute_step(st, plan), plan.steps, cost=_step_cost(plan),
                               size=_result_bytes)
            with closing(computed) as results:
                for step, result in zip(plan.steps, results):
                    if progress:
                        progress(done, total, step.tensor.name)
                    _write_step(step, plan, sink, result)
                    del result
                    done += sum(f.nbytes for f in step.outputs.values())
            sink.close(plan.config, plan.source.aux_files, fsync=os.environ.get("BITCONV_FSYNC") == "1")
            _write_files(tmp, tokenizer_files(plan.source))  # a GGUF source: its vocabulary as tokenizer files
        except BaseException:
            sink.abort()
            raise
        files = [guard.out / f.name for f in sink.files]
    if progress:
        progress(plan.total_bytes, plan.total_bytes, "")
    n_tern = sum(1 for s in plan.steps if s.action != "copy")
    return Report(guard.out, plan.target, plan.source.kind, files, n_tern, len(plan.steps) - n_tern,
                  plan.total_bytes, time.perf_counter() - t0)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    try:
        for name, data in files.items():
            (folder / name).write_bytes(data)
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror or e}", path=folder) from None


DEQUANT_BLOCK_ELEMS = 1 << 22


def dequantized_blocks(t: Ternary) -> Iterator[np.ndarray]:
    """bf16(codes * scale) as uint16 bits, a block of rows at a time (the same values as `dequantize(t)`)."""
    codes = t.codes.reshape(t.codes.shape[0], -1)
    step = max(1, DEQUANT_BLOCK_ELEMS // max(1, codes.shape[1]))
    for a in range(0, codes.shape[0], step):
        yield dtypes.to_numpy_storage(dequantize(Ternary(codes[a:a + step], t.scale)))


def _step_cost(plan: Plan) -> Callable[[Step], int]:

    return lambda s: step_bytes(s.tensor, s.action, sum(f.nbytes for f in s.outputs.values()), plan.compute)


def _result_bytes(step: Step) -> int:
    """What `_compute_step` returns: packed fields, or int8 codes (dequant)."""
    if step.action == "copy":
        return 0
    return step.tensor.numel if step.action == "dequant" else sum(f.nbytes for f in step.outputs.values())


def _compute_step(step: Step, plan: Plan) -> Ternary | dict[str, np.ndarray] | None:
    """The part of a step that runs on a worker thread: codes (dequant) or packed fields (pack), fresh arrays."""
    if step.action == "copy":
        return None
    tern = step.tensor.ternary(plan.compute)
    if step.action == "dequant":
        return online_lift(tern) if plan.values == "online" else tern
    return plan.layout.pack(tern)


def _write_step(step: Step, plan: Plan, sink: HFSink, result: Ternary | dict[str, np.ndarray] | None) -> None:
    t = step.tensor
    if step.action == "copy":
        (name,) = step.outputs
        if t.loader is not None:  # not a plain stored tensor (e.g. GGUF Q8_0): write what the loader gives
            sink.write(name, dtypes.to_numpy_storage(t.loader()))
        else:
            sink.copy(name, t.stored[0])
        return
    if step.action == "dequant":
        (name,) = step.outputs
        sink.write_blocks(name, step.outputs[name].nbytes, dequantized_blocks(result))
        return
    prefix = module_of(t.name)
    for k, arr in result.items():
        spec = step.outputs[f"{prefix}.{k}"]
        sink.write(f"{prefix}.{k}", np.asarray(arr).reshape(spec.shape))


# ------------------------------------------------------------------------------------------------ public commands


def quantize(src: str | Path, out: str | Path, *, compute: str = "float32", overwrite: bool = False,
             max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None) -> Report:
    """Ternarize the seven projections of SRC into a bitconv ternary checkpoint at OUT.

    Args:
        src: a bf16 master folder (or an already-ternary checkpoint, whose codes are kept as they are).
        out: the output folder; refused if it exists unless `overwrite`.
        compute: "float32" (transformers' WeightQuant, canonical) or "bfloat16" (onebitllms).
    Example:
        >>> quantize("bitnet-bf16", "bitnet-ternary")
    """
    precheck(out, overwrite)
    return execute(plan_quantize(open_source(src), compute), out, overwrite=overwrite,
                   max_shard_bytes=max_shard_bytes, progress=progress)


def pack_hf(src: str | Path, out: str | Path, *, linear_class: str = "autobitlinear", compute: str = "float32",
            overwrite: bool = False, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
            progress: Progress | None = None) -> Report:
    """Write a transformers-loadable packed checkpoint. Already-ternary sources are never re-quantized."""
    precheck(out, overwrite)
    return execute(plan_pack_hf(open_source(src), linear_class, compute), out, overwrite=overwrite,
                   max_shard_bytes=max_shard_bytes, progress=progress)


def unpack_hf(src: str | Path, out: str | Path, *, values: str = "online", overwrite: bool = False,
              max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None) -> Report:
    """Write a bf16 checkpoint with an autobitlinear/online config (trainable in transformers).

    `values="online"` (default) writes `bf16(codes * scale / p)` (p = non-zero fraction per tensor), which
    transformers' online quantizer maps back to exactly these codes and this scale: the loaded model is the packed
    model. `values="dequantized"` writes plain `bf16(codes * scale)`; online mode then sees scale * p instead.
    """
    precheck(out, overwrite)
    return execute(plan_unpack_hf(open_source(src), values), out, overwrite=overwrite,
                   max_shard_bytes=max_shard_bytes, progress=progress)
