"""Plan, then stream: every shape is validated and every output sized before the first byte is read or written.

This module owns the one path every output takes: `Plan` (the steps, in the one vocabulary `ACTIONS`), the `Sink`
interface a container implements (`sinks/hf.py`, `sinks/gguf.py`, `sinks/nanotron.py`), `execute` (atomic output,
free-space check counting side files, worker-thread compute, progress, fsync, abort) and `Report`, whose `to_dict` is
the JSON document every command prints.

Public entry points for HF-layout folders (the CLI calls exactly these):
    quantize(src, out)            bf16 master -> bitconv ternary checkpoint (int8 codes + float32 scales)
    pack_hf(src, out)             any ternary-capable source -> transformers packed checkpoint
    unpack_hf(src, out)           packed / ternary -> bf16 checkpoint (codes * scale) with an online config
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from bitconv.core.alloc import keep_freed_memory, release_freed_memory
from bitconv.core.errors import SourceError, UsageError
from bitconv.core.naming import module_of
from bitconv.core.tensors import FieldSpec, Ternary
from bitconv.formats.safetensors import OutEntry
from bitconv.layouts import Layout, bitnet_quant_config, get_layout, hf_layouts
from bitconv.memory import peak_estimate, step_bytes
from bitconv.output import AtomicOutput, check_free_space, precheck
from bitconv.quant import online_lift
from bitconv.report import Report
from bitconv.sinks.hf import DEFAULT_MAX_SHARD_BYTES, HFSink
from bitconv.sinks.prefetch import ordered
from bitconv.sources import Checkpoint, ModelTensor, open_source
from bitconv.sources.gguf import tokenizer_files

# (done, total, current name): output bytes written so far, of all, and the tensor being written (so a renderer can
# show bytes/s and an ETA)
Progress = Callable[[int, int, str], None]

TERNARY_FORMAT_VERSION = 1
ACTIONS = ("pack", "dequant", "copy")  # the one step vocabulary of every output


@dataclass
class Step:
    """One source tensor and what it becomes in the output.

    action: "pack" (ternary -> the layout's fields), "dequant" (ternary -> codes * scale floats), "copy" (a
    pass-through tensor: its bytes verbatim, what its loader gives, or, with `convert`, converted to `type_name`).
    outputs: output tensor name -> the container's record of it (`FieldSpec` for safetensors, `TensorEntry` for GGUF);
    each has `nbytes`.
    """

    tensor: ModelTensor
    outputs: dict[str, FieldSpec]
    action: str
    layout: Layout | None = None  # the layout a "pack" step packs into (the plan's, or its fallback for this shape)
    type_name: str | None = None  # the container's type of the output (GGUF: its GGML type name)
    permute: int | None = None  # rows permuted over this many heads before they are written (GGUF llama q/k)
    convert: bool = False  # a "copy" converted block by block on the writing thread (not a kernel copy)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.outputs.values())


class Sink(Protocol):
    """One output container. `execute` calls `prepare` before the free-space check, `open` once, then `write` (a
    "pack" or "dequant" step, with what `Plan.prepare` computed) or `copy` (a "copy" step) once per step in plan
    order, then `close`; `abort` on any error. Writes may run on a background thread: arrays handed over are never
    modified afterwards."""

    is_dir: bool  # OUT is a folder (HF, Nanotron) or one file (GGUF)
    extra: dict  # what the report adds about this output (e.g. the kernel config written beside a GGUF)

    def prepare(self, guard: AtomicOutput) -> int:
        """Check the output's surroundings; return the bytes of the side files the output will hold (config,
        tokenizer, kernel config, reports), which the free-space check counts with the tensors."""

    def open(self, tmp: Path) -> None: ...

    def write(self, step: Step, result: Ternary | dict[str, np.ndarray]) -> None: ...

    def copy(self, step: Step) -> None: ...

    def close(self, fsync: bool) -> list[Path]:
        """Finish every file; return the files written (final paths)."""

    def abort(self) -> None: ...


@dataclass
class Plan:
    """Every step validated and every output sized before the first byte is read or written. This class plans an
    HF-layout folder (`sinks.hf`); a container's plan subclasses it and names its sink in `new_sink`."""

    source: Checkpoint
    target: str
    steps: list[Step]
    config: dict
    layout: Layout | None = None
    values: str = "online"  # dequant: "online" (lifted so online WeightQuant gives back the scale) or "dequantized"
    metadata: dict[str, str] | None = None  # safetensors `__metadata__` (None: transformers' {"format": "pt"})
    extra: dict = field(default_factory=dict)  # what the report says about this output besides the common fields
    warnings: list[str] = field(default_factory=list)
    # glibc keeps freed memory for reuse (`core.alloc`): the HF writers' per-tensor buffers are then recycled
    tune_malloc: ClassVar[bool] = True

    @property
    def compute(self) -> str:
        """How float weights are ternarized: chosen once, when the source was opened."""
        return self.source.quant_compute

    @property
    def entries(self) -> list[OutEntry]:
        return [OutEntry(n, f.dtype, f.shape) for s in self.steps for n, f in s.outputs.items()]

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data written (a GGUF plan: the size of its file)."""
        return sum(s.nbytes for s in self.steps)

    @property
    def peak_bytes(self) -> int:
        """Planned peak memory (`bitconv.memory`)."""

        return peak_estimate([(s.tensor, s.action, s.nbytes, s.convert) for s in self.steps], self.compute)

    @property
    def n_ternary(self) -> int:
        return sum(1 for s in self.steps if s.tensor.is_ternary)

    @cached_property
    def side_files(self) -> dict[str, bytes]:
        """Files an HF folder gets beside its config besides the source's own side files: for a GGUF source, the
        tokenizer files rebuilt from its vocabulary (`sources.gguf.tokenizer_files`)."""
        return tokenizer_files(self.source)

    def new_sink(self, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES) -> Sink:
        return HFSink(self.entries, max_shard_bytes, self.metadata, self.config, self.source.aux_files,
                      files=self.side_files)

    def ternary(self, step: Step) -> Ternary:
        """The codes and scale a "pack" or "dequant" step writes."""
        return step.tensor.ternary()

    def prepare(self, step: Step) -> Ternary | dict[str, np.ndarray] | None:
        """The part of a step that runs on a worker thread (fresh arrays): a "pack" step's fields, a "dequant"
        step's codes and scale; None for "copy" steps, which the sink reads (in blocks) while it writes them."""
        if step.action == "copy":
            return None
        tern = self.ternary(step)
        if step.action == "dequant":
            return online_lift(tern) if self.values == "online" else tern
        return step.layout.pack(tern)


def _layout_steps(src: Checkpoint, layout: Layout) -> list[Step]:
    steps = []
    for t in src.tensors.values():
        if t.is_ternary:
            fields = layout.spec(t.shape, tensor=t.name)  # raises LayoutError before anything is written
            outs = {f"{module_of(t.name)}.{k}": v for k, v in fields.items()}
            steps.append(Step(t, outs, "pack", layout))
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


def _base_config(src: Checkpoint) -> dict:
    cfg = copy.deepcopy(src.config)
    cfg.pop("bitconv", None)
    cfg.pop("auto_map", None)  # points at remote-code files that do not exist (spec hf-packed.md §3.3)
    return cfg


def _with_quant_config(cfg: dict, qc: dict) -> dict:
    cfg["quantization_config"] = qc  # replaces in place (keeps key order) or appends
    return cfg


def plan_quantize(src: Checkpoint) -> Plan:
    """Float weights are ternarized in the arithmetic chosen when SRC was opened (`open_source(src, compute=...)`)."""
    layout = get_layout("bitconv-ternary")
    cfg = copy.deepcopy(src.config)
    done_by = src.quant_compute if src.kind in ("bf16-master", "nanotron") else (src.compute or "unknown")
    cfg["bitconv"] = {"format": "ternary", "version": TERNARY_FORMAT_VERSION, "scale": "magnitude",
                      "compute": done_by, "source_kind": src.kind}
    return Plan(src, "bitconv-ternary", _layout_steps(src, layout), cfg, layout)


def plan_pack_hf(src: Checkpoint, linear_class: str = "autobitlinear") -> Plan:
    if linear_class not in hf_layouts():
        raise UsageError(f"--linear-class must be one of {', '.join(hf_layouts())}, got {linear_class!r}")
    layout = get_layout(hf_layouts()[linear_class])
    cfg = _with_quant_config(_base_config(src), bitnet_quant_config(src.config, linear_class, "offline"))
    return Plan(src, layout.name, _layout_steps(src, layout), cfg, layout)


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
            max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None,
            started: float | None = None, dry_run: bool = False) -> Report | Plan:
    """Stream the plan into OUT through its sink, atomically: every output's one loop. Up to two source tensors are
    computed at once (`bitconv.sinks.prefetch`), in a bounded working set; they are written in plan order.
    `max_shard_bytes` applies to HF folders; `started` is the `time.perf_counter()` the report's seconds count from
    (default: now). `dry_run`: write nothing and return the plan (its `out` set), for `--dry-run`."""
    if dry_run:
        plan.out = Path(out)
        return plan
    t0 = time.perf_counter() if started is None else started
    if plan.tune_malloc:
        keep_freed_memory()
    sink = plan.new_sink(max_shard_bytes=max_shard_bytes)
    guard = AtomicOutput(out, overwrite=overwrite, is_dir=sink.is_dir, inputs=(plan.source.path,))
    side = sink.prepare(guard)
    check_free_space(guard.out.parent, plan.total_bytes + side)
    done, total = 0, sum(s.nbytes for s in plan.steps)  # progress in output bytes
    with guard as tmp:
        sink.open(tmp)
        try:
            computed = ordered(lambda st: _compute_step(st, plan), plan.steps, cost=_step_cost(plan),
                               size=_result_bytes)
            with closing(computed) as results:
                for step in plan.steps:  # not zip(): its reused result tuple would keep the last result alive
                    result = next(results)  # while the next one is computed (two 235 MB codes arrays at 70B)
                    if progress:
                        progress(done, total, step.tensor.name)
                    _write_step(step, plan, sink, result)
                    del result
                    if plan.tune_malloc:
                        release_freed_memory(step.nbytes)
                    done += step.nbytes
            files = sink.close(fsync=os.environ.get("BITCONV_FSYNC") == "1")
        except BaseException:
            sink.abort()
            raise
    if progress:
        progress(total, total, "")
    n_tern = plan.n_ternary
    return Report(guard.out, plan.target, plan.source.kind, files, n_tern, len(plan.steps) - n_tern,
                  plan.total_bytes, time.perf_counter() - t0, {**plan.extra, **sink.extra})


def _compute_step(step: Step, plan: Plan) -> Ternary | dict[str, np.ndarray] | None:
    """On a worker thread: what `Plan.prepare` computes for the step."""
    return plan.prepare(step)


def _write_step(step: Step, plan: Plan, sink: Sink, result: Ternary | dict[str, np.ndarray] | None) -> None:
    """On the calling thread, in plan order: hand the step to the sink."""
    if step.action == "copy":
        sink.copy(step)
    else:
        sink.write(step, result)


def _step_cost(plan: Plan) -> Callable[[Step], int]:
    """A step's planned working set while a worker computes it (a "copy" step is done on the writing thread)."""
    return lambda s: 0 if s.convert else step_bytes(s.tensor, s.action, s.nbytes, plan.compute)


def _result_bytes(step: Step) -> int:
    """What `Plan.prepare` returns: packed fields, or int8 codes (dequant)."""
    return {"pack": step.nbytes, "dequant": step.tensor.numel}.get(step.action, 0)


# ------------------------------------------------------------------------------------------------ public commands


def quantize(src: str | Path, out: str | Path, *, compute: str = "float32", overwrite: bool = False,
             max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None,
             dry_run: bool = False) -> Report | Plan:
    """Ternarize the seven projections of SRC into a bitconv ternary checkpoint at OUT.

    Args:
        src: a bf16 master folder (or an already-ternary checkpoint, whose codes are kept as they are).
        out: the output folder; refused if it exists unless `overwrite`.
        compute: "float32" (transformers' WeightQuant, canonical) or "bfloat16" (onebitllms).
    Example:
        >>> quantize("bitnet-bf16", "bitnet-ternary")
    """
    if not dry_run:
        precheck(out, overwrite)
    return execute(plan_quantize(open_source(src, compute)), out, overwrite=overwrite,
                   max_shard_bytes=max_shard_bytes, progress=progress, dry_run=dry_run)


def pack_hf(src: str | Path, out: str | Path, *, linear_class: str = "autobitlinear", compute: str = "float32",
            overwrite: bool = False, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
            progress: Progress | None = None) -> Report:
    """Write a transformers-loadable packed checkpoint. Already-ternary sources are never re-quantized."""
    precheck(out, overwrite)
    return execute(plan_pack_hf(open_source(src, compute), linear_class), out, overwrite=overwrite,
                   max_shard_bytes=max_shard_bytes, progress=progress)


def unpack_hf(src: str | Path, out: str | Path, *, values: str = "online", overwrite: bool = False,
              max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None,
              dry_run: bool = False) -> Report | Plan:
    """Write a bf16 checkpoint with an autobitlinear/online config (trainable in transformers).

    `values="online"` (default) writes `bf16(codes * scale / p)` (p = non-zero fraction per tensor), which
    transformers' online quantizer maps back to exactly these codes and this scale: the loaded model is the packed
    model. `values="dequantized"` writes plain `bf16(codes * scale)`; online mode then sees scale * p instead.
    """
    if not dry_run:
        precheck(out, overwrite)
    return execute(plan_unpack_hf(open_source(src), values), out, overwrite=overwrite,
                   max_shard_bytes=max_shard_bytes, progress=progress, dry_run=dry_run)
