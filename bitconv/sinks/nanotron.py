"""Nanotron <-> HF conversion: `to_hf` (Nanotron -> HF bf16 master) and `to_nanotron` (any source -> Nanotron).

`to_nanotron` writes what nanotron's own `save_weights` / `save_meta` / `Config.save_as_yaml` write (spec §1, §4):
one safetensors file per parameter shard holding the tensor `data` with nanotron's metadata strings (the
targeted generation's checkpoint version), at any TP x PP with nanotron's own layer-to-stage split, fused qkv and
gate_up, pre-padded vocabulary, `config.yaml`, `model_config.json` and `checkpoint_metadata.json`. Its
`custom_metas` records the HF config and vocabulary for the way back; nanotron ignores it and drops it at its next
save. The output is written atomically.

Fused scales (PR #180 quantizes the fused qkv and gate_up tensors with one absmean each):
  * Nanotron -> HF, `purpose="release"` (alias `scale_granularity="fused"`, default for BitNet): each of q, k, v
    (gate, up) is written as a *lifted* bf16 weight: its fused codes times one magnitude, chosen so that
    per-projection absmean ternarization (transformers' online `WeightQuant`, `bitconv pack`) gives exactly those
    codes and the fused scale. The HF master then holds the ternary model, not the training latents.
    `purpose="training"` (alias `per-projection`) writes the latents unchanged (exact, trainable), and every
    consumer then quantizes q, k, v separately. `HF_EXPORTS` (sources.nanotron) holds both descriptions.
  * ternary / packed -> Nanotron: the fused tensor is lifted from the codes (spec §3.3), so nanotron's own
    `weight_quant` reproduces the codes exactly; q/k/v (gate/up) with different scales get one nnz-weighted scale
    (reported: one fused tensor holds one scale).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np

from bitconv import memory, quant
from bitconv.core import dtypes, safeio
from bitconv.core.errors import OutputError, SourceError, UsageError
from bitconv.core.lazytorch import torch
from bitconv.core.tensors import FieldSpec, Ternary, row_ranges
from bitconv.formats.nanotron import format as nt
from bitconv.formats.nanotron import yamlish
from bitconv.formats.safetensors import OutEntry, build_header
from bitconv.output import AtomicOutput, precheck
from bitconv.pipeline import Plan, Progress, Report, Step, execute
from bitconv.quant import BlockCoder, Lifter, block_scale, lift, rows_block_reader, ternarize
from bitconv.sinks.hf import DEFAULT_MAX_SHARD_BYTES, ROW_BLOCK_BYTES  # Nanotron parameters: rows per block
from bitconv.sources import Checkpoint, ModelTensor, open_source
from bitconv.sources.checkpoint import is_nanotron_dir
from bitconv.sources.nanotron import (
    EXPORT_OF_GRANULARITY,
    GRANULARITIES,
    HF_EXPORTS,
    NanotronCheckpoint,
    open_nanotron,
)

TARGETS = ("hf-bf16", "nanotron")

# Kept out of the comparison with a checkpoint nanotron wrote: they name this output, not the model.
DOCUMENTED_CONFIG_FIELDS = ("general.project", "general.run", "model.init_method.path",
                            "tokenizer.tokenizer_name_or_path", "custom_metas")

W_PR180_NORMALIZE = ("PR #180 normalizes the input of every BitLinear without weights (o_proj and down_proj "
                     "included) and has no per-layer RMSNorms; LlamaForCausalLM + bitnet applies input_layernorm / "
                     "post_attention_layernorm (written as ones) before q/k/v and gate/up only, so o_proj and "
                     "down_proj inputs are not normalized as in nanotron (not representable)")


# ------------------------------------------------------------------------------------------------------ lifting


def fused_scale(parts: list[Ternary] | list[tuple[float, int]]) -> tuple[float, float]:
    """One magnitude for a fused tensor made of `parts` (each a Ternary or its (scale, nnz)): the nnz-weighted mean,
    and the largest relative deviation from it."""
    pairs = [(float(t.scale), int(np.count_nonzero(t.codes))) if isinstance(t, Ternary) else t for t in parts]
    scales = np.array([sc for sc, _ in pairs], dtype=np.float64)
    nnz = np.array([k for _, k in pairs], dtype=np.float64)
    m = float((scales * nnz).sum() / nnz.sum()) if nnz.sum() else float(scales.mean())
    return m, float(np.max(np.abs(scales - m)) / m) if m else 0.0


# ------------------------------------------------------------------------------------------------- shard writing


@dataclass
class Rows:
    """A parameter to write, read a block of global rows at a time: `read(r0, r1)` gives rows [r0, r1) as bf16 in
    nanotron layout. Blocks start at multiples of `align` (whole RoPE heads) and come in increasing order."""

    shape: tuple[int, ...]
    read: Callable[[int, int], torch.Tensor]
    align: int = 1
    dtype: str = "BF16"

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Rows:
        return cls(tuple(tensor.shape), lambda a, b: tensor[a:b], dtype=dtypes.BY_TORCH[tensor.dtype].name)

    def blocks(self, block_bytes: int | None = None) -> Iterable[tuple[int, int]]:
        row_bytes = int(np.prod(self.shape[1:])) * dtypes.DTYPES[self.dtype].itemsize
        return row_ranges(self.shape[0], row_bytes, block_bytes or ROW_BLOCK_BYTES, self.align)

    def read_any(self, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) at any bounds: the `align`-row blocks around them are read and cut."""
        a0, b0 = r0 // self.align * self.align, min(self.shape[0], -(-r1 // self.align) * self.align)
        return self.read(a0, b0)[r0 - a0:r1 - a0]


def shard_header(dtype: str, shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    """The header `safetensors.torch.save_file({"data": t}, path, metadata)` writes (empty metadata kept as {})."""
    entry = OutEntry("data", dtype, tuple(shape))
    if metadata:
        return build_header([entry], metadata)
    head = {"__metadata__": {}, "data": {"dtype": entry.dtype, "shape": list(entry.shape),
                                         "data_offsets": [0, entry.nbytes]}}
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_shard_file(path: Path, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(shard_header(dtypes.BY_TORCH[tensor.dtype].name, tuple(tensor.shape), metadata))
        f.write(_raw(tensor))


def _raw(t: torch.Tensor) -> memoryview:
    return memoryview(np.ascontiguousarray(dtypes.to_numpy_storage(t.contiguous())).reshape(-1).view(np.uint8))


def param_dir(model_dir: Path, name: str) -> Path:
    """`model/` + the dotted module path of a parameter (spec §1.2)."""
    return model_dir.joinpath(*name.split(".")[:-1])


def write_param(model_dir: Path, name: str, data: torch.Tensor | Rows, sharding: nt.Sharding | None, tp: int,
                version: str, pp: tuple[int, int] = (0, 1)) -> list[Path]:
    """Write one parameter as nanotron does: unsharded `model_weight.safetensors`, or one file per TP rank.

    `data` is the global tensor, or `Rows` read a block of global rows at a time: each block goes to every rank's
    file at once (row-split ranks take their row ranges, column-split ranks their columns), so memory is one block
    whatever the parameter's size. `pp` is (the pp rank of the block holding the parameter, PP size): sharded file
    names carry it; unsharded ones (RMSNorms) do not (HEAD serialize/utils.py `get_path`, L30-L57)."""
    rows = data if isinstance(data, Rows) else Rows.of(data)
    folder, last = param_dir(model_dir, name), name.rsplit(".", 1)[1]
    folder.mkdir(parents=True, exist_ok=True)
    shape = rows.shape
    if sharding is None:
        path = folder / nt.shard_file_name(last, None)
        with open(path, "wb") as f:
            f.write(shard_header(rows.dtype, shape, {}))
            for r0, r1 in rows.blocks():
                f.write(_raw(rows.read(r0, r1)))
        return [path]
    lshape = nt.local_shape(shape, sharding, tp)
    pairs = [nt.shard_pairs(shape, sharding, tp, r) for r in range(tp)]
    paths = [folder / nt.shard_file_name(last, (r, tp), pp) for r in range(tp)]
    files = []
    try:
        for r, path in enumerate(paths):
            files.append(open(path, "wb"))  # noqa: SIM115 - closed below, all ranks written together
            files[-1].write(shard_header(rows.dtype, lshape, nt.tensor_metadata(version, shape, pairs[r])))
        for r0, r1 in rows.blocks():
            block = rows.read(r0, r1)
            for f, rank_pairs in zip(files, pairs):
                f.write(_raw(_local_block(block, r0, r1, rank_pairs, shape, lshape, sharding.dim)))
    finally:
        for f in files:
            f.close()
    return paths


def _local_block(block: torch.Tensor, r0: int, r1: int, pairs: list[nt.SlicePair], shape: tuple[int, ...],
                 lshape: tuple[int, ...], dim: int) -> torch.Tensor:
    """A rank's part of global rows [r0, r1): its rows in them (row split, in local order: global order within
    and across chunks), or all of them cut to its columns (column split)."""
    if dim == 0:
        parts = []
        for _, glob in pairs:
            g0, g1 = nt.rect_of(glob, shape)[0]
            a, b = max(g0, r0), min(g1, r1)
            if a < b:
                parts.append(block[a - r0:b - r0])
        return torch.cat(parts) if len(parts) > 1 else parts[0] if parts else block[:0]
    out = torch.empty((r1 - r0, *lshape[1:]), dtype=block.dtype)
    for loc, glob in pairs:
        out[(slice(None), *loc[1:])] = block[(slice(None), *glob[1:])]
    return out


# ---------------------------------------------------------------------------------------------- config files


def model_config_json(flavor: nt.Flavor, mc: dict) -> str:
    """`json.dumps(asdict(model_config))`: the flavor's fields in declaration order."""
    return json.dumps({k: mc[k] for k in flavor.model_fields})


def checkpoint_metadata_json(flavor: nt.Flavor, tp: int, version: str | None = None,
                             custom_metas: dict | None = None) -> str:
    """`checkpoint_metadata.json` of a fresh checkpoint (step 0, one "Empty" data stage) in the flavor's schema.

    It has no pp field (HEAD serialize/metadata.py `CheckpointMetadata`); `version` defaults to the flavor's."""
    version = version or flavor.version
    stage: dict = {"name": "Empty", "start_training_step": 1, "consumed_train_samples": 0}
    metas: dict = {"consumed_train_samples": 0, "last_train_step": 0, "last_stage_idx": 0, "data_stages": [stage]}
    meta: dict = {"version": version, "tp": tp, "dp": 1, "metas": metas, "custom_metas": custom_metas}
    if flavor.head:
        stage.update(sequence_length=4096, consumed_tokens_per_dataset_folder={})
        metas["consumed_tokens_total"] = 0
        meta["cp"] = 1
    return json.dumps(meta, indent=2, sort_keys=True)


def config_yaml_dict(flavor: nt.Flavor, mc: dict, tp: int, init_path: str, multiple: int = 1,
                     tokenizer: str | None = None, project: str = "bitconv", run: str = "bitconv",
                     pp: int = 1) -> dict:
    """A minimal config.yaml nanotron parses (`general`, `parallelism`, `model`, `tokenizer`; spec §4.2-4.3)."""
    parallelism = {"dp": 1, "expert_parallel_size": 1, "pp": pp, "pp_engine": "afab", "tp": tp,
                   "tp_linear_async_communication": False, "tp_mode": "ALL_REDUCE"}
    top = {"checkpoints": None, "data_stages": None, "lighteval": None, "logging": None, "optimizer": None,
           "profiler": None, "tokens": None,
           "general": {"benchmark_csv_path": None, "consumed_train_samples": 0, "ignore_sanity_checks": True,
                       "project": project, "run": run, "seed": 42, "step": 0},
           "model": {"ddp_bucket_cap_mb": 25, "dtype": "bfloat16", "init_method": {"path": init_path},
                     "make_vocab_size_divisible_by": multiple, "model_config": dict(mc)},
           "parallelism": parallelism,
           "tokenizer": {"tokenizer_max_length": None, "tokenizer_name_or_path": tokenizer,
                         "tokenizer_revision": None}}
    if flavor.head:
        parallelism.update(context_parallel_size=1, recompute_layer=False, tp_recompute_allgather=True)
        top.update(metrics_logging=None, s3_upload=None)
    return top


def nanotron_model_config(flavor: nt.Flavor, hf: dict, dims: nt.Dims, vocab: int, tied: bool,
                          interleaved: bool) -> dict:
    """The nanotron model config (exact field set of the flavor) for an HF config."""
    vals = {**nt.MODEL_DEFAULTS, **{k: hf[k] for k in nt.MODEL_DEFAULTS if k in hf}}
    theta = _rope_theta(hf)
    vals.update(hidden_size=dims.hidden, num_attention_heads=dims.heads, num_key_value_heads=dims.kv_heads,
                intermediate_size=dims.intermediate, num_hidden_layers=dims.layers, vocab_size=vocab,
                tie_word_embeddings=tied, rope_interleaved=interleaved, rope_theta=float(theta),
                **{flavor.discriminator: True})
    for k in ("bos_token_id", "eos_token_id"):
        if isinstance(vals[k], list):
            vals[k] = vals[k][0] if vals[k] else None
    return {k: vals[k] for k in flavor.model_fields}


def _rope_theta(hf: dict) -> float:
    rp = hf.get("rope_parameters")
    theta = hf.get("rope_theta") or (rp.get("rope_theta") if isinstance(rp, dict) else None)
    return float(theta) if theta else nt.PR180_ROPE_THETA


# ------------------------------------------------------------------------------------------------- to nanotron


@dataclass
class NTParam:
    """One nanotron parameter to write: its global shape, sharding and a thunk giving its `Rows` (the first pass
    over the source, where one is needed, runs in the thunk)."""

    name: str
    shape: tuple[int, ...]
    sharding: nt.Sharding | None
    make: Callable[[], Rows]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 2


class _Builder:
    """Collects the nanotron parameters of a source, in nanotron layout, and the warnings conversion raises.

    Every parameter is read a block of rows at a time (`Rows`): passthrough rows straight from the source file, a
    fused qkv / gate_up from its HF parts' rows (RoPE rows reordered a whole head at a time), a lifted one from one
    part's codes at a time with a running count of non-zeros (`quant.Lifter`). Memory is a block, or one part's
    int8 codes for a ternary source, never the fused tensor."""

    def __init__(self, ck: Checkpoint, flavor: nt.Flavor, dims: nt.Dims, interleaved: bool) -> None:
        self.ck, self.flavor, self.dims, self.interleaved = ck, flavor, dims, interleaved
        self.compute = ck.quant_compute  # chosen when the source was opened
        self.used: set[str] = set()
        self.scale_spread: list[float] = []
        self.dropped_norms = 0
        self.cast_from: set[str] = set()
        self.fused_checked = self.fused_differ = 0

    def take(self, name: str) -> ModelTensor:
        t = self.ck.tensors.get(name)
        if t is None:
            raise SourceError(f"missing tensor {name!r}", path=self.ck.path,
                              hint="the source is not a Llama-architecture model with the sizes its config gives")
        self.used.add(name)
        return t

    def passthrough(self, name: str, rows: int | None = None) -> Rows:
        """A passthrough tensor in bf16, zero rows appended up to `rows` (vocabulary padding)."""
        t = self.take(name)
        n = t.shape[0]
        shape = (max(n, rows), *t.shape[1:]) if rows is not None else tuple(t.shape)

        def read(a: int, b: int) -> torch.Tensor:
            w = self._bf16(t.read_rows(a, min(b, n)), name) if a < n else torch.empty((0, *t.shape[1:]),
                                                                                     dtype=torch.bfloat16)
            if b > max(a, n):
                w = torch.cat([w, torch.zeros((b - max(a, n), *t.shape[1:]), dtype=torch.bfloat16)])
            return w

        return Rows(shape, read)

    def _bf16(self, w: torch.Tensor, name: str) -> torch.Tensor:
        if w.dtype != torch.bfloat16:
            self.cast_from.add(str(w.dtype).replace("torch.", ""))
            return w.to(torch.bfloat16)
        return w

    def fused(self, names: list[str], parts: tuple[str, ...]) -> Rows:
        """The nanotron tensor of one (possibly fused) module from its HF parts, RoPE rows in nanotron order."""
        tensors = [self.take(n) for n in names]
        sizes = [t.shape[0] for t in tensors]
        shape = (sum(sizes), *tensors[0].shape[1:])
        if any(tuple(t.shape[1:]) != shape[1:] for t in tensors):
            raise SourceError(f"{' / '.join(parts)} have different column counts "
                              f"({', '.join(str(list(t.shape)) for t in tensors)})", tensor=names[0])
        heads = [self._rope_rows(p) for p in parts]
        align = max(heads)
        starts = np.cumsum([0, *sizes]).tolist()

        def segments(r0: int, r1: int) -> Iterable[tuple[int, int, int]]:
            """(part, first row, end row) of the parts' rows in fused rows [r0, r1)."""
            for i, (p0, p1) in enumerate(zip(starts, starts[1:])):
                a, b = max(p0, r0), min(p1, r1)
                if a < b:
                    yield i, a - p0, b - p0

        def rope(w: torch.Tensor | np.ndarray, i: int) -> torch.Tensor | np.ndarray:
            return w if heads[i] == 1 else nt.rope_to_nanotron(w, w.shape[0] // heads[i])

        if isinstance(self.ck, NanotronCheckpoint) or all(self._is_master(t) for t in tensors):
            def part_rows(i: int, a: int, b: int) -> torch.Tensor:
                return rope(self._bf16(tensors[i].read_rows(a, b), names[i]), i)

            def read(r0: int, r1: int) -> torch.Tensor:
                ws = [part_rows(i, a, b) for i, a, b in segments(r0, r1)]
                return torch.cat(ws) if len(ws) > 1 else ws[0]

            rows = Rows(shape, read, align)
            if self.flavor.bitnet and len(tensors) > 1 and not isinstance(self.ck, NanotronCheckpoint):
                return self._compared(rows, [Rows((sizes[i], *shape[1:]), partial(part_rows, i), heads[i])
                                             for i in range(len(tensors))], segments)
            return rows
        return self._lifted(tensors, parts, shape, align, segments, rope)

    def _lifted(self, tensors: list[ModelTensor], parts: tuple[str, ...], shape: tuple[int, ...], align: int,
                segments: Callable, rope: Callable) -> Rows:
        """Stored codes lifted to one bf16 latent (spec §3.3): one nnz-weighted scale over the parts, the
        non-zeros counted in a first pass, then the rows lifted in order, one part's codes decoded at a time."""
        held: dict[int, Ternary] = {}

        def ternary(i: int) -> Ternary:
            if i not in held:
                held.clear()  # one part's codes at a time
                held[i] = tensors[i].ternary()
            return held[i]

        stats = []
        for i in range(len(tensors)):
            t = ternary(i)
            stats.append((float(t.scale), int(np.count_nonzero(t.codes))))
        scale, spread = fused_scale(stats)
        if len(tensors) > 1:
            self.scale_spread.append(spread)
        lifter = Lifter(int(np.prod(shape)), sum(k for _, k in stats), scale)

        def read(r0: int, r1: int) -> torch.Tensor:
            ws = [lifter(rope(np.asarray(ternary(i).codes[a:b]), i)) for i, a, b in segments(r0, r1)]
            return torch.cat(ws) if len(ws) > 1 else ws[0]

        return Rows(shape, read, align)

    def _compared(self, fused: Rows, parts: list[Rows], segments: Callable) -> Rows:
        """`fused`, counting (in `fused_differ`) whether nanotron's fused-scale codes differ from a per-projection
        ternarization of this master: the scales from one pass each, the codes compared block by block as the
        rows are written."""
        cols = int(np.prod(fused.shape[1:]))
        s_fused = block_scale(rows_block_reader(fused.read_any, cols), fused.shape, compute=self.compute)
        s_parts = [block_scale(rows_block_reader(p.read_any, cols), p.shape, compute=self.compute) for p in parts]
        if s_fused is None or any(s is None for s in s_parts):  # torch's order not replayable: whole tensors
            ws = [p.read(0, p.shape[0]) for p in parts]
            self._compare_codes(ws, torch.cat(ws))
            return fused
        self.fused_checked += 1
        coders = [BlockCoder(s_fused, self.compute)] + [BlockCoder(s, self.compute) for s in s_parts]
        differ = [False]

        def read(r0: int, r1: int) -> torch.Tensor:
            w = fused.read(r0, r1)
            if not differ[0]:
                pos = 0
                for i, a, b in segments(r0, r1):
                    seg = w[pos:pos + b - a].reshape(-1)
                    pos += b - a
                    one, other = np.empty(seg.numel(), np.int8), np.empty(seg.numel(), np.int8)
                    if not np.array_equal(coders[0](seg, one), coders[1 + i](seg, other)):
                        differ[0] = True
                        self.fused_differ += 1
                        break
            return w

        return Rows(fused.shape, read, fused.align)

    def _compare_codes(self, parts: list[torch.Tensor], fused: torch.Tensor) -> None:
        """Count fused tensors whose nanotron (fused-scale) codes differ from per-projection ternarization."""
        self.fused_checked += 1
        codes = ternarize(fused, self.compute).codes
        r0 = 0
        for w in parts:
            if not np.array_equal(codes[r0:r0 + w.shape[0]], ternarize(w, self.compute).codes):
                self.fused_differ += 1
                return
            r0 += w.shape[0]

    def _is_master(self, t: ModelTensor) -> bool:
        return self.ck.kind == "bf16-master" and bool(t.stored) and t.stored[0].dtype in ("BF16", "F16", "F32")

    def _rope_rows(self, part: str) -> int:
        """Rows per head of a part whose rows nanotron reorders for RoPE (q, k when interleaved), else 1."""
        if not self.interleaved or part not in nt.ROPE_PARTS:
            return 1
        return self.dims.hidden // self.dims.heads

    def norm_dropped(self, name: str) -> None:
        """A PR #180 target has no per-layer norm: the HF one is dropped (lossy unless all ones)."""
        if name not in self.ck.tensors:
            return
        self.used.add(name)
        if not bool(torch.all(self.ck.load_passthrough(name).float() == 1.0)):
            self.dropped_norms += 1


def _nt_params(b: _Builder, padded: int, tied: bool) -> list[NTParam]:
    d, flavor = b.dims, b.flavor
    h = d.hidden
    out = [NTParam(nt.EMBED, (padded, h), d.sharding(nt.EMBED),
                   lambda: b.passthrough("model.embed_tokens.weight", padded))]
    for i in range(d.layers):
        for module, parts in nt.LAYER_TO_HF.items():
            names = [f"model.layers.{i}.{p}.weight" for p in parts]
            if module in nt.LAYER_NORMS and not flavor.layer_norms:
                continue
            name = nt.LAYER_PREFIX.format(i=i) + module.replace("{mlp}", flavor.mlp) + ".weight"
            make = (partial(b.passthrough, names[0]) if module in nt.LAYER_NORMS
                    else partial(b.fused, names, parts))
            out.append(NTParam(name, d.layer_shape(module), d.sharding(module), make))
    out.append(NTParam(nt.FINAL_NORM, (h,), None, lambda: b.passthrough("model.norm.weight")))
    if not tied:
        out.append(NTParam(nt.LM_HEAD, (padded, h), d.sharding(nt.LM_HEAD),
                           lambda: b.passthrough("lm_head.weight", padded)))
    return out


def _default_flavor(ck: Checkpoint) -> str:
    if isinstance(ck, NanotronCheckpoint):
        return ck.info.flavor.name
    qc = ck.config.get("quantization_config")
    if (isinstance(qc, dict) and qc.get("quant_method") == "bitnet") or ck.kind != "bf16-master":
        return "bitnet"
    return "llama"


def _check_source(ck: Checkpoint, flavor: nt.Flavor, tp: int) -> tuple[nt.Dims, list[str]]:
    cfg, warnings = ck.config, []
    try:
        dims = nt.dims_from_config(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"config lacks a size field ({e})", path=ck.path) from None
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UsageError(f"hidden_act {act!r}: nanotron's Llama and PR #180 BitNet models use silu", path=ck.path)
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UsageError("biased projections: nanotron's Llama models have no biases", path=ck.path)
    if dims.hidden % dims.heads or (cfg.get("head_dim") not in (None, dims.hidden // dims.heads)):
        raise UsageError(f"head_dim must be hidden_size / num_attention_heads in nanotron (got head_dim "
                         f"{cfg.get('head_dim')}, hidden_size {dims.hidden}, {dims.heads} heads)", path=ck.path)
    for what, n in (("num_attention_heads", dims.heads), ("num_key_value_heads", dims.kv_heads),
                    ("intermediate_size", dims.intermediate)):
        if tp < 1 or n % tp:
            raise UsageError(f"--tp {tp} must divide {what} ({n})")
    theta = _rope_theta(cfg)
    if not flavor.head and theta != nt.PR180_ROPE_THETA:
        warnings.append(f"rope_theta {theta:g}: the {flavor.name} model hard-wires RoPE base 10000, so nanotron will "
                        "run this model with another RoPE base")
    return dims, warnings


def to_nanotron(src: str | Path | Checkpoint, out: str | Path, *, tp: int | None = None, pp: int | None = None,
                make_vocab_size_divisible_by: int = 1, model: str | None = None,
                rope_interleaved: bool | None = None, compute: str = "float32", overwrite: bool = False,
                progress: Progress | None = None, dry_run: bool = False) -> Report | Plan:
    """Write SRC (HF bf16 master, bitconv ternary, HF packed, or Nanotron) as a Nanotron checkpoint at OUT.

    Every shard and checkpoint_metadata.json carry the checkpoint version of the targeted nanotron generation
    (`nt.GENERATIONS`: 1.4 for the PR #180 tree's models, 1.5 for HEAD's llama).

    Args:
        tp, pp: TP and PP sizes of the layout written (default: a Nanotron SRC's own, else 1; nanotron reloads a
            checkpoint at any TP/PP). Decoder layers, embeddings, final norm and lm_head go to the pp ranks
            nanotron's `build_model` gives them (`nt.pp_stages`); a PP size that leaves a stage empty is refused.
        make_vocab_size_divisible_by: the value the training run will use; rows are pre-padded with zeros to a
            multiple of it times `tp`, as nanotron's model builder pads the vocabulary.
        model: "bitnet" (PR #180 LlamaBitNetConfig; default for BitNet sources), "llama" (HEAD LlamaConfig; default
            otherwise) or "llama-pr180" (the Llama of the PR #180 tree).
        rope_interleaved: HEAD "llama" only: write q/k rows interleaved (default: a HEAD SRC's own, else False, as HEAD
            trains).
        compute: arithmetic of the per-projection vs fused code comparison behind a bf16 master's warning.
    Returns a `Report` whose `extra["warnings"]` lists what the target cannot represent.
    Example:
        >>> to_nanotron("bitnet-hf-packed", "ckpt/0", tp=1)
    """
    t0 = time.perf_counter()
    if make_vocab_size_divisible_by < 1:
        raise UsageError("--make-vocab-size-divisible-by must be >= 1")
    if not dry_run:
        precheck(out, overwrite)
    ck = src if isinstance(src, Checkpoint) else open_source(src, compute)
    own = ck.info if isinstance(ck, NanotronCheckpoint) else None
    tp = tp if tp is not None else (own.tp if own else 1)
    pp = pp if pp is not None else (own.pp if own else 1)
    if pp < 1:
        raise UsageError(f"--pp must be >= 1, got {pp}")
    name = model or _default_flavor(ck)
    if name not in nt.FLAVORS:
        raise UsageError(f"--nanotron-model must be one of {', '.join(nt.FLAVORS)}, got {name!r}")
    flavor = nt.FLAVORS[name]
    if rope_interleaved is not None and not flavor.head:
        raise UsageError(f"rope_interleaved applies to the HEAD llama model; {name} is always interleaved")
    if rope_interleaved is None and own and own.flavor.head and flavor.head:
        rope_interleaved = own.interleaved  # a HEAD checkpoint written back keeps its RoPE order
    interleaved = bool(rope_interleaved) if flavor.head else True
    dims, warnings = _check_source(ck, flavor, tp)
    warnings = list(getattr(ck, "warnings", [])) + warnings
    tied = "lm_head.weight" not in ck.tensors
    if "model.embed_tokens.weight" not in ck.tensors:
        raise SourceError("missing tensor 'model.embed_tokens.weight'", path=ck.path)
    vocab = ck.tensors["model.embed_tokens.weight"].shape[0]
    padded = nt.padded_vocab(vocab, make_vocab_size_divisible_by, tp)
    b = _Builder(ck, flavor, dims, interleaved)
    params = _nt_params(b, padded, tied)
    _check_all_used(ck, b)
    if not flavor.layer_norms:
        for i in range(dims.layers):
            for norm in nt.LAYER_NORMS:
                b.norm_dropped(f"model.layers.{i}.{norm}.weight")
    mc = nanotron_model_config(flavor, ck.config, dims, padded, tied, interleaved)
    try:
        stages = nt.pp_stages(flavor, dims, padded, pp)
    except ValueError as e:
        raise UsageError(str(e), path=ck.path) from None
    version = flavor.version
    custom = {"bitconv": {"vocab_size": vocab, "source_kind": ck.kind, "hf_config": _hf_config_record(ck)}}
    steps = [Step(ModelTensor(p.name, p.shape, "BF16", loader=p.make), {p.name: FieldSpec(p.shape, "BF16")}, "copy")
             for p in params]
    extra = {"warnings": warnings, "tp": tp, "pp": pp, "vocab_size": vocab, "padded_vocab_size": padded,
             "model": flavor.name, "checkpoint_version": version,
             "pp_stages": {b: r for b, r in stages.items() if b not in (nt.BLOCK_CAST, nt.BLOCK_LOSS)}}
    plan = NanotronPlan(ck, f"nanotron-{flavor.name}", steps, ck.config, extra=extra,
                        builder=b, params={p.name: p for p in params}, tp=tp, pp=pp, stages=stages, mc=mc,
                        custom=custom, multiple=make_vocab_size_divisible_by)
    return execute(plan, out, overwrite=overwrite, progress=progress, started=t0, dry_run=dry_run)


@dataclass
class NanotronPlan(Plan):
    """A Nanotron checkpoint folder: one "copy" step per nanotron parameter (its loader fuses, lifts and pads)."""

    builder: _Builder | None = None
    params: dict[str, NTParam] = field(default_factory=dict)
    tp: int = 1
    pp: int = 1
    stages: dict[str, int] = field(default_factory=dict)
    mc: dict = field(default_factory=dict)
    custom: dict = field(default_factory=dict)
    multiple: int = 1
    tune_malloc: ClassVar[bool] = False

    @property
    def n_ternary(self) -> int:
        return sum(1 for n in self.params if n.endswith("_proj.weight"))

    @property
    def peak_bytes(self) -> int:
        """Planned peak: a few row blocks (read, reordered, cut for each rank), the blocks of the streamed scale
        passes, and, for stored codes, the biggest projection's codes and packed bytes (one part at a time)."""
        work = 6 * ROW_BLOCK_BYTES + quant.BLOCK_ELEMS * 12
        if self.source.kind not in ("bf16-master", "nanotron"):
            work += max((memory.ternary_bytes(t.numel, t.dtype, t.stored_bytes)
                         for t in self.source.ternary_tensors()), default=0)
        return memory.BASE_BYTES + work

    def new_sink(self, **_: object) -> NanotronSink:
        return NanotronSink(self)


class NanotronSink:
    """The `pipeline.Sink` of a Nanotron checkpoint: each parameter as nanotron's own save writes it (one file per
    TP shard), then model_config.json, checkpoint_metadata.json, config.yaml and the side files."""

    is_dir = True

    def __init__(self, plan: NanotronPlan) -> None:
        self.plan = plan
        self.extra: dict = {}
        self.files: list[Path] = []
        self._out: Path | None = None
        self._tmp: Path | None = None

    def prepare(self, guard: AtomicOutput) -> int:
        self._out = guard.out
        # one filesystem block per file for headers and tails, the configs, and the side files copied along
        side = sum(f.stat().st_size for f in self.plan.source.aux_files)
        return 4096 * len(self.plan.params) * max(self.plan.tp, 1) + (64 << 10) + side

    def open(self, tmp: Path) -> None:
        self._tmp = tmp

    def write(self, step: Step, result: object) -> None:
        raise AssertionError(f"a nanotron plan has only copy steps, not {step.action!r}")

    def copy(self, step: Step) -> None:
        p, plan = self.plan.params[step.tensor.name], self.plan
        tensor = step.tensor.loader()  # Rows: read a block at a time by write_param
        _check_shape(p, tensor)
        try:
            self.files += write_param(self._tmp / "model", p.name, tensor, p.sharding, plan.tp,
                                      plan.builder.flavor.version, (plan.stages[nt.block_of(p.name)], plan.pp))
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=e.filename or self._tmp) from None

    def close(self, fsync: bool = False) -> list[Path]:
        plan, b, ck = self.plan, self.plan.builder, self.plan.source
        final = str(self._out.resolve())
        tokenizer = final if any(f.name.startswith("tokenizer") for f in ck.aux_files) else None
        try:
            _write_configs(self._tmp, b.flavor, plan.mc, plan.tp, plan.pp, b.flavor.version, plan.custom, final,
                           plan.multiple, tokenizer, ck.aux_files, fsync)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=e.filename or self._tmp) from None
        self.extra["warnings"] = plan.extra["warnings"] + _conversion_warnings(b, ck, b.flavor)
        return [self._out / f.relative_to(self._tmp) for f in self.files]

    def abort(self) -> None:
        pass


def _check_shape(p: NTParam, t: torch.Tensor) -> None:
    if tuple(t.shape) != tuple(p.shape):
        raise SourceError(f"shape {list(t.shape)} does not match the config (expected {list(p.shape)})",
                          tensor=p.name)


def _check_all_used(ck: Checkpoint, b: _Builder) -> None:
    """Every source tensor must land somewhere: refuse (before writing) models nanotron cannot hold."""
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(b.dims.layers):
        names |= {f"model.layers.{i}.{p}.weight" for parts in nt.LAYER_TO_HF.values() for p in parts}
    extra = sorted(set(ck.tensors) - names)
    if extra:
        raise UsageError(f"tensor {extra[0]!r} ({len(extra)} in all) has no place in a nanotron {b.flavor.name} "
                         "model (sub-norms, biases or extra layers?)", path=ck.path)
    missing = sorted(n for n in names - set(ck.tensors) if n != "lm_head.weight"
                     and (b.flavor.layer_norms or not n.endswith("layernorm.weight")))
    if missing:
        raise SourceError(f"missing tensor {missing[0]!r} ({len(missing)} missing)", path=ck.path)


def _hf_config_record(ck: Checkpoint) -> dict:
    if isinstance(ck, NanotronCheckpoint):
        return dict(ck.config)
    return {k: v for k, v in ck.config.items() if k != "bitconv"}


def _write_configs(tmp: Path, flavor: nt.Flavor, mc: dict, tp: int, pp: int, version: str, custom: dict,
                   init_path: str, multiple: int, tokenizer: str | None, aux: Iterable[Path], fsync: bool) -> None:
    (tmp / "model_config.json").write_text(model_config_json(flavor, mc), encoding="utf-8")
    (tmp / "checkpoint_metadata.json").write_text(checkpoint_metadata_json(flavor, tp, version, custom),
                                                  encoding="utf-8")
    cfg = config_yaml_dict(flavor, mc, tp, init_path, multiple, tokenizer, pp=pp)
    (tmp / "config.yaml").write_text(yamlish.dump(cfg), encoding="utf-8")
    for f in aux:
        safeio.copy_input(f, tmp / f.name)
    if fsync:
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb+") as fh:
                    os.fsync(fh.fileno())


def _conversion_warnings(b: _Builder, ck: Checkpoint, flavor: nt.Flavor) -> list[str]:
    out = []
    if b.dropped_norms:
        out.append(f"{b.dropped_norms} per-layer RMSNorm weight(s) are not all ones and were dropped: the PR #180 "
                   "BitNet model has no per-layer norms (its BitLinear normalizes inputs without weights)")
    spread = max(b.scale_spread, default=0.0)
    if spread > 1e-6:
        out.append(f"q/k/v or gate/up scales differ (up to {spread:.2%} from their weighted mean): one fused nanotron "
                   "tensor holds one scale, so those dequantized weights change; the codes are kept exactly")
    if b.fused_differ:
        out.append(f"nanotron quantizes q/k/v together (one absmean over qkv_proj) and gate/up together: in "
                   f"{b.fused_differ} of {b.fused_checked} fused tensors its codes differ from a per-projection "
                   "ternarization of this master")
    if b.cast_from:
        out.append(f"{'/'.join(sorted(b.cast_from))} weights were rounded to bfloat16 (nanotron's parameter dtype)")
    return out


# ------------------------------------------------------------------------------------------------------ to HF


def export_mode(purpose: str | None, scale_granularity: str | None) -> str | None:
    """`--for release|training`, or its older spelling `--scale-granularity fused|per-projection`, as a granularity."""
    if purpose is not None and purpose not in HF_EXPORTS:
        raise UsageError(f"--for must be one of {', '.join(HF_EXPORTS)}, got {purpose!r}")
    if scale_granularity is not None and scale_granularity not in GRANULARITIES:
        raise UsageError(f"--scale-granularity must be one of {', '.join(GRANULARITIES)} (the older spelling of "
                         f"--for {'|'.join(HF_EXPORTS)}), got {scale_granularity!r}")
    if purpose is not None and scale_granularity is not None \
            and HF_EXPORTS[purpose].granularity != scale_granularity:
        raise UsageError(f"--for {purpose} and --scale-granularity {scale_granularity} disagree (--for {purpose} is "
                         f"--scale-granularity {HF_EXPORTS[purpose].granularity})")
    return HF_EXPORTS[purpose].granularity if purpose is not None else scale_granularity


def to_hf(src: str | Path | NanotronCheckpoint, out: str | Path, *, purpose: str | None = None,
          scale_granularity: str | None = None, vocab_size: int | None = None, compute: str = "float32",
          overwrite: bool = False, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
          progress: Progress | None = None, dry_run: bool = False) -> Report | Plan:
    """Write a Nanotron checkpoint as an HF bf16 master (`LlamaForCausalLM`, bitnet online config for PR #180).

    Args:
        purpose: BitNet only (`HF_EXPORTS`). "release" (default): q/k/v and gate/up are lifted from the fused-scale
            codes (see the module docstring), the model as nanotron trained it; "training": the bf16 latents as
            trained, to continue training elsewhere. Recorded in config.json's `bitconv` block and the report.
        scale_granularity: the older spelling of `purpose`: "fused" (= release) or "per-projection" (= training).
        vocab_size: the HF vocabulary (padding rows dropped); see `open_nanotron`.
        compute: arithmetic of the fused ternarization: "float32" (canonical) or "bfloat16" (nanotron's own).
    Returns a `Report` whose `extra["warnings"]` lists what LlamaForCausalLM cannot represent, and
        `extra["export"]` / `extra["export_meaning"]` say which export was written.
    Example:
        >>> to_hf("checkpoints/10000", "bitnet-hf-bf16", purpose="release")
    """
    t0 = time.perf_counter()
    if not dry_run:
        precheck(out, overwrite)
    granularity = export_mode(purpose, scale_granularity)
    if isinstance(src, NanotronCheckpoint) and granularity not in (None, src.info.granularity):
        src = open_nanotron(src.path, vocab_size=vocab_size or src.info.vocab, scale_granularity=granularity,
                            compute=src.quant_compute)
    ck = src if isinstance(src, NanotronCheckpoint) else _open_nanotron_src(src, vocab_size, granularity, compute)
    if granularity is not None and not ck.info.flavor.bitnet:
        raise UsageError(f"--for / --scale-granularity apply to BitNet (PR #180) checkpoints; this is a "
                         f"{ck.info.flavor.name} checkpoint, written with its weights unchanged")
    lifted = ck.info.flavor.bitnet and ck.info.granularity == "fused"
    export = EXPORT_OF_GRANULARITY[ck.info.granularity] if ck.info.flavor.bitnet else None
    tensors: dict[str, ModelTensor] = {}
    for name, t in ck.tensors.items():
        if t.is_ternary:
            dtype = dtypes.DTYPES[t.dtype].torch
            rows = _LiftedRows(t, dtype) if lifted else t.row_loader
            make = partial(_lifted, t, dtype) if lifted else partial(ck.latent, name)
            tensors[name] = ModelTensor(name, t.shape, t.dtype, t.stored, t.ternary_loader, loader=make,
                                        row_loader=rows)
        else:
            tensors[name] = t
    view = Checkpoint(ck.path, ck.kind, ck.config, tensors, ck.aux_files, ck.files, quant_compute=ck.quant_compute)
    steps = [Step(t, {t.name: FieldSpec(t.shape, t.dtype)}, "copy") for t in tensors.values()]
    config = dict(ck.config)
    if export is not None:
        config["bitconv"] = {"format": "bf16-master", "source": "nanotron", "export": export.purpose,
                             "scale_granularity": export.granularity, "holds": export.holds,
                             "meaning": export.meaning}
    extra = {"warnings": ck.warnings + _hf_warnings(ck, lifted), "export": export.purpose if export else None,
             "scale_granularity": export.granularity if export else None,
             "export_meaning": export.meaning if export else None, "vocab_size": ck.info.vocab}
    return execute(Plan(view, "hf-bf16", steps, config, extra=extra), out, overwrite=overwrite, dry_run=dry_run,
                   max_shard_bytes=max_shard_bytes, progress=progress, started=t0)


class _LiftedRows:
    """Rows of `_lifted(tensor, dtype)`, read in order a block at a time: the projection's codes are held (int8)
    while its rows are asked for, the bf16 weights made a block at a time (`quant.Lifter`)."""

    def __init__(self, tensor: ModelTensor, dtype: torch.dtype) -> None:
        self.tensor, self.dtype = tensor, dtype
        self._held: Ternary | None = None
        self._lifter: Lifter | None = None
        self._next = 0

    def __call__(self, r0: int, r1: int) -> torch.Tensor:
        if self._held is None:
            self._held = t = self.tensor.ternary()
            self._lifter = Lifter(t.codes.size, int(np.count_nonzero(t.codes)), float(t.scale))
            self._next = 0
        codes = self._held.codes
        if r0 != self._next:  # out of order: the non-zeros before r0 decide which magnitude comes next
            self._lifter.seen = int(np.count_nonzero(codes[:r0]))
        out = self._lifter(codes[r0:r1]).to(self.dtype)
        self._next = r1
        if r1 >= codes.shape[0]:
            self._held = self._lifter = None  # done: the codes are freed
        return out


def _lifted(tensor: ModelTensor, dtype: torch.dtype) -> torch.Tensor:
    t = tensor.ternary()
    return lift(t.codes, float(t.scale)).to(dtype)  # exact for bfloat16 and float32 parameters


def _open_nanotron_src(src: str | Path, vocab_size: int | None, granularity: str | None,
                       compute: str) -> NanotronCheckpoint:
    if not is_nanotron_dir(Path(src)):
        raise UsageError("--to hf-bf16 converts a Nanotron checkpoint (a folder with model/ and "
                         "checkpoint_metadata.json); for HF packed or ternary sources use `bitconv unpack`",
                         path=src)
    return open_nanotron(src, vocab_size=vocab_size, scale_granularity=granularity, compute=compute)


def _hf_warnings(ck: NanotronCheckpoint, lifted: bool) -> list[str]:
    if not ck.info.flavor.bitnet:
        return []
    out = [W_PR180_NORMALIZE]
    if ck.info.tp > 1 and lifted:
        out.append(f"trained at TP={ck.info.tp}: nanotron quantized each rank's shard with its own scale; bitconv "
                   "uses one scale per fused tensor (TP=1 semantics)")
    return out
