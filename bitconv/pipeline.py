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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitconv import dtypes
from bitconv._alloc import keep_freed_memory
from bitconv.errors import SourceError, UsageError
from bitconv.layouts import Layout, get_layout
from bitconv.layouts.hf_packed import HF_LAYOUTS
from bitconv.naming import module_of
from bitconv.output import AtomicOutput, check_free_space, precheck
from bitconv.quant import COMPUTE_MODES, dequantize
from bitconv.safetensors_io import OutEntry
from bitconv.sinks.hf import DEFAULT_MAX_SHARD_BYTES, HFSink
from bitconv.sources import Checkpoint, ModelTensor, open_source
from bitconv.tensors import FieldSpec, Ternary

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

    @property
    def entries(self) -> list[OutEntry]:
        return [OutEntry(n, f.dtype, f.shape) for s in self.steps for n, f in s.outputs.items()]

    @property
    def total_bytes(self) -> int:
        return sum(f.nbytes for s in self.steps for f in s.outputs.values())

    @property
    def peak_bytes(self) -> int:
        """Planned peak memory (`bitconv.memory`)."""
        from bitconv.memory import peak_estimate

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


def bitnet_quant_config(src_config: dict, linear_class: str, mode: str) -> dict:
    """A `quantization_config` transformers loads without remote code; keeps `lm_head` out of conversion."""
    qc: dict = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode}
    old = src_config.get("quantization_config")
    if isinstance(old, dict):
        mtnc = old.get("modules_to_not_convert")
        if isinstance(mtnc, list):  # an explicit list disables transformers' defaults (spec §3.2)
            qc["modules_to_not_convert"] = mtnc if "lm_head" in mtnc else [*mtnc, "lm_head"]
        for k in ("use_rms_norm", "rms_norm_eps"):
            if k in old:
                qc[k] = old[k]
    return qc


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
    if linear_class not in HF_LAYOUTS:
        raise UsageError(f"--linear-class must be one of {', '.join(HF_LAYOUTS)}, got {linear_class!r}")
    layout = get_layout(HF_LAYOUTS[linear_class])
    cfg = _with_quant_config(_base_config(src), bitnet_quant_config(src.config, linear_class, "offline"))
    return Plan(src, layout.name, _layout_steps(src, layout), cfg, layout, compute)


UNPACK_VALUES = ("online", "dequantized")


def online_lift(t: Ternary) -> Ternary:
    """Codes with the magnitude transformers' online WeightQuant turns back into `t`'s scale.

    Online mode re-derives the scale as mean|W|. For W = codes * b that is p * b (p = fraction of non-zero codes),
    while every non-zero W * s = ±1/p rounds back to ±1. Storing b = scale / p therefore gives back the same codes
    and the same scale (to bf16 rounding): the unpacked model *is* the packed model when loaded online.
    """
    nnz = int(np.count_nonzero(t.codes))
    if nnz == 0:
        return t
    return Ternary(t.codes, np.float32(np.float64(t.scale) * t.codes.size / nnz))


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
    return Plan(src, "hf-bf16", steps, cfg, values=values)


def execute(plan: Plan, out: str | Path, *, overwrite: bool = False,
            max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None) -> Report:
    """Stream the plan into OUT (atomically). One source tensor is resident at a time."""
    t0 = time.perf_counter()
    keep_freed_memory()
    guard = AtomicOutput(out, overwrite=overwrite, inputs=(plan.source.path,))
    check_free_space(guard.out.parent, plan.total_bytes)
    with guard as tmp:
        sink = HFSink(tmp, plan.entries, max_shard_bytes)
        try:
            done, total = 0, plan.total_bytes
            for step in plan.steps:
                if progress:
                    progress(done, total, step.tensor.name)
                _run_step(step, plan, sink)
                done += sum(f.nbytes for f in step.outputs.values())
            sink.close(plan.config, plan.source.aux_files, fsync=os.environ.get("BITCONV_FSYNC") == "1")
        except BaseException:
            sink.abort()
            raise
        files = [guard.out / f.name for f in sink.files]
    if progress:
        progress(plan.total_bytes, plan.total_bytes, "")
    n_tern = sum(1 for s in plan.steps if s.action != "copy")
    return Report(guard.out, plan.target, plan.source.kind, files, n_tern, len(plan.steps) - n_tern,
                  plan.total_bytes, time.perf_counter() - t0)


DEQUANT_BLOCK_ELEMS = 1 << 22


def dequantized_blocks(t: Ternary) -> Iterator[np.ndarray]:
    """bf16(codes * scale) as uint16 bits, a block of rows at a time (the same values as `dequantize(t)`)."""
    codes = t.codes.reshape(t.codes.shape[0], -1)
    step = max(1, DEQUANT_BLOCK_ELEMS // max(1, codes.shape[1]))
    for a in range(0, codes.shape[0], step):
        yield dtypes.to_numpy_storage(dequantize(Ternary(codes[a:a + step], t.scale)))


def _run_step(step: Step, plan: Plan, sink: HFSink) -> None:
    t = step.tensor
    if step.action == "copy":
        (name,) = step.outputs
        if t.loader is not None:  # not a plain stored tensor (e.g. GGUF Q8_0): write what the loader gives
            sink.write(name, dtypes.to_numpy_storage(t.loader()))
        else:
            sink.copy(name, t.stored[0])
        return
    tern = t.ternary(plan.compute)
    if step.action == "dequant":
        (name,) = step.outputs
        lifted = online_lift(tern) if plan.values == "online" else tern
        sink.write_blocks(name, step.outputs[name].nbytes, dequantized_blocks(lifted))
        return
    fields = plan.layout.pack(tern)
    prefix = module_of(t.name)
    for k, arr in fields.items():
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
