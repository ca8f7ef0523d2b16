"""Nanotron checkpoint folders as a lazy source: TP/PP shards merged from their own slice metadata, HF names.

A folder is a Nanotron checkpoint when it holds `model/` and `checkpoint_metadata.json` (or `model_config.json`).
Every `model/**/*.safetensors` is one parameter shard; shards are grouped by directory and parameter, validated
from headers alone (ranks, versions, `unsharded_shape`, exact coverage by `local_global_slices_pairs`) and merged
only when a tensor is loaded. Stage placement is never guessed: whatever pp-rank a file names, it is just a file.

The logical view uses HF `LlamaForCausalLM` names: qkv_proj -> q/k/v, gate_up_proj -> gate/up, interleaved RoPE
rows put back in HF order, vocabulary padding removed. PR #180 BitNet checkpoints have no per-layer norms; the view
gives `input_layernorm` / `post_attention_layernorm` as ones (what `LlamaForCausalLM` needs to load).

Ternary projections are quantized on the fly from the bf16 latents. With `scale_granularity="fused"` (the default
for BitNet checkpoints) q, k and v share one absmean scale computed over the fused qkv tensor, and gate/up over
gate_up, as PR #180 trains them (at TP=1; a TP>1 run quantized each rank's shard on its own, which no per-tensor
layout can hold, so TP=1 semantics are used and a warning says so). `per-projection` quantizes each one alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from bitconv.core import dtypes, safeio
from bitconv.core.errors import SourceError, UsageError
from bitconv.core.jsonio import read_json
from bitconv.core.lazytorch import torch
from bitconv.core.tensors import Ternary
from bitconv.formats.nanotron import format as nt
from bitconv.formats.nanotron import yamlish
from bitconv.formats.safetensors import TensorInfo, read_header
from bitconv.layouts import bitnet_quant_config
from bitconv.quant import (
    BLOCK_ELEMS,
    BlockCoder,
    block_scale,
    compute_mode,
    rows_block_reader,
    ternarize,
    ternarize_blocks,
)
from bitconv.sources.checkpoint import Checkpoint, ModelTensor, is_nanotron_dir, load_torch, read_rows
from bitconv.sources.safetensors import side_files, with_file

GRANULARITIES = ("fused", "per-projection")


@dataclass(frozen=True)
class HfExport:
    """One of the two HF exports of a PR #180 BitNet checkpoint, named by what it is for."""

    purpose: str  # `convert --for`
    granularity: str  # the older spelling, `--scale-granularity`
    holds: str
    meaning: str


# PR #180 quantizes the fused qkv tensor with one absmean scale and gate_up with another; HF has one per projection.
HF_EXPORTS = {
    "release": HfExport(
        "release", "fused",
        "the ternary model nanotron trained (fused-scale codes times one magnitude per fused tensor)",
        "release: q/k/v and gate/up hold nanotron's fused-scale ternary codes times one magnitude, so HF's "
        "per-projection quantization (transformers online, bitconv pack) gives exactly nanotron's codes and scales; "
        "the training latents are not kept. For publishing, packing and running the model as trained; what "
        "`bitconv verify --ref <nanotron checkpoint>` expects"),
    "training": HfExport(
        "training", "per-projection", "the bf16 training latents, unchanged",
        "training: the bf16 training latents exactly as nanotron stored them, for continuing training elsewhere; "
        "HF quantizes q, k, v (gate, up) one by one, so its codes and scales differ from nanotron's fused ones, and "
        "a model packed from this export does not verify against the Nanotron checkpoint"),
}
EXPORT_OF_GRANULARITY = {e.granularity: e for e in HF_EXPORTS.values()}
META_FILE = "checkpoint_metadata.json"
MAX_SLICE_PAIRS = 2048  # per parameter; nanotron writes tp x (1 or 2 or 3 chunks)
HF_BITNET_QC = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


# ------------------------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    info: TensorInfo  # the `data` tensor of one file
    tp: tuple[int, int] | None  # (rank, size); None for an unsharded file
    pp: tuple[int, int] | None
    pairs: tuple[nt.SlicePair, ...] = ()
    unsharded_shape: tuple[int, ...] | None = None
    version: str | None = None


@dataclass
class Param:
    """One nanotron parameter: its global shape and the shards that rebuild it."""

    name: str  # full dotted nanotron name, e.g. model.decoder.0.pp_block.attn.qkv_proj.weight
    shape: tuple[int, ...]
    dtype: str
    shards: list[Shard]

    @property
    def sharded(self) -> bool:
        return self.shards[0].tp is not None

    def load(self) -> torch.Tensor:
        """The global tensor (a fresh torch tensor)."""
        if not self.sharded:
            return load_torch(self.shards[0].info)
        out = torch.empty(self.shape, dtype=dtypes.DTYPES[self.dtype].torch)
        for sh in self.shards:
            local = load_torch(sh.info)
            for loc, glob in sh.pairs:
                out[glob] = local[loc]
        return out

    def read_rows(self, r0: int, r1: int) -> torch.Tensor:
        """Global rows [r0, r1) (a fresh torch tensor), read from the shards that hold them: never the whole
        parameter (a 70B gate_up is 940 MB)."""
        if not self.sharded or (len(self.shards) == 1 and tuple(self.shards[0].info.shape) == tuple(self.shape)):
            return read_rows(self.shards[0].info, r0, r1)  # one file holds it whole (unsharded, or TP=1)
        out = torch.empty((r1 - r0, *self.shape[1:]), dtype=dtypes.DTYPES[self.dtype].torch)
        for sh in self.shards:
            for loc, glob in sh.pairs:
                (g0, g1), (l0, _) = nt.rect_of(glob, self.shape)[0], nt.rect_of(loc, sh.info.shape)[0]
                a, b = max(g0, r0), min(g1, r1)
                if a < b:
                    local = read_rows(sh.info, l0 + a - g0, l0 + b - g0)
                    out[(slice(a - r0, b - r0), *glob[1:])] = local[(slice(None), *loc[1:])]
        return out

    def flat_reader(self) -> Callable[[int, int], torch.Tensor]:
        """Elements [start, start + count) of the row-major global tensor (`quant.BlockReader`)."""
        return rows_block_reader(self.read_rows, int(np.prod(self.shape[1:])), dtypes.DTYPES[self.dtype].torch)

    def row_infos(self, r0: int, r1: int) -> list[TensorInfo]:
        """Byte ranges (flat TensorInfos) that hold global rows [r0, r1), for accounting; whole shards otherwise."""
        out = []
        for sh in self.shards:
            if sh.tp is None:
                out.append(sh.info)
                continue
            row_bytes = sh.info.nbytes // max(sh.info.shape[0], 1)
            for loc, glob in sh.pairs:
                (g0, g1), (l0, _) = nt.rect_of(glob, self.shape)[0], nt.rect_of(loc, sh.info.shape)[0]
                a, b = max(g0, r0), min(g1, r1)
                full_rows = all(s == slice(None) for s in loc[1:])
                if a < b and full_rows:
                    start = sh.info.offset + (l0 + a - g0) * row_bytes
                    out.append(TensorInfo(self.name, sh.info.dtype, ((b - a) * row_bytes // _itemsize(sh.info),),
                                          sh.info.path, start, (b - a) * row_bytes))
        return out


def _itemsize(info: TensorInfo) -> int:
    return info.nbytes // max(info.numel, 1)


def _version(text: str | None, where: Path) -> str | None:
    if text is None:
        return None
    v = str(text).strip()
    if v not in nt.KNOWN_VERSIONS:
        raise SourceError(f"unknown checkpoint version {v!r}; bitconv reads nanotron checkpoint versions "
                          f"{', '.join(nt.KNOWN_VERSIONS)}", path=where,
                          hint="the checkpoint was written by a newer nanotron; please report it")
    return v


def _read_shard(path: Path, m: dict[str, str | None]) -> Shard:
    infos, meta = read_header(path)
    if set(infos) != {"data"}:
        raise SourceError(f"a nanotron weight file holds exactly one tensor named 'data', found {sorted(infos)}",
                          path=path)
    info = infos["data"]
    if m["tp"] is None:
        return Shard(info, None, None)
    tp, pp = (int(m["tp"]), int(m["tp_size"])), (int(m["pp"]), int(m["pp_size"]))
    if m["ep_size"] is not None and int(m["ep_size"]) > 1:
        raise SourceError("expert-parallel (MoE) shards are not supported", path=path)
    if not 0 <= tp[0] < tp[1] or not 0 <= pp[0] < pp[1]:
        raise SourceError(f"rank out of range in the file name (tp {tp[0]} of {tp[1]}, pp {pp[0]} of {pp[1]})",
                          path=path)
    missing = [k for k in ("local_global_slices_pairs", "unsharded_shape") if k not in meta]
    if missing:
        raise SourceError(f"sharded weight file has no {missing[0]!r} in its metadata (nanotron < 1.2?)", path=path)
    try:
        pairs = tuple(nt.parse_pairs(meta["local_global_slices_pairs"]))
        shape = nt.parse_shape(meta["unsharded_shape"])
    except (ValueError, TypeError) as e:
        raise SourceError(f"unreadable shard metadata ({e})", path=path) from None
    return Shard(info, tp, pp, pairs, shape, _version(meta.get("version"), path))


def scan_model_dir(model_dir: Path) -> dict[str, Param]:
    """Every parameter under `model/`, grouped and validated from the file headers alone."""
    groups: dict[str, list[Shard]] = {}
    for path in sorted(model_dir.rglob("*.safetensors")):
        m = nt.SHARD_FILE.fullmatch(path.name)
        if m is None:
            raise SourceError("not a nanotron weight file name (expected model_weight[_pp-rank-…_tp-rank-…]"
                              ".safetensors)", path=path)
        parts = path.parent.relative_to(model_dir).parts
        name = ".".join((*parts, m.group("param")))
        groups.setdefault(name, []).append(_read_shard(path, m.groupdict()))
    if not groups:
        raise SourceError("no weight files under model/", path=model_dir)
    return {name: _merge_plan(name, shards, model_dir) for name, shards in sorted(groups.items())}


def _merge_plan(name: str, shards: list[Shard], model_dir: Path) -> Param:
    where = shards[0].info.path.parent
    if any(s.tp is None for s in shards):
        if len(shards) != 1:
            raise SourceError(f"parameter {name!r} has both an unsharded file and {len(shards) - 1} other file(s)",
                              path=where)
        info = shards[0].info
        return Param(name, info.shape, info.dtype, shards)
    _check_ranks(name, shards, where)
    shape = shards[0].unsharded_shape
    for s in shards[1:]:
        if s.unsharded_shape != shape:
            raise SourceError(f"mismatched unsharded_shape: {s.info.path.name} says {s.unsharded_shape}, "
                              f"{shards[0].info.path.name} says {shape}", path=where, tensor=name,
                              hint="the shards come from different checkpoints")
    dtypes_ = {s.info.dtype for s in shards}
    if len(dtypes_) != 1:
        raise SourceError(f"shards have different dtypes {sorted(dtypes_)}", path=where, tensor=name)
    _check_coverage(name, shards, shape, where)
    return Param(name, shape, shards[0].info.dtype, sorted(shards, key=lambda s: s.tp))


def _check_ranks(name: str, shards: list[Shard], where: Path) -> None:
    sizes = {s.tp[1] for s in shards}
    if len(sizes) != 1:
        raise SourceError(f"shards disagree on the TP size ({sorted(sizes)})", path=where, tensor=name)
    (size,) = sizes
    seen: dict[int, Shard] = {}
    for s in shards:
        if s.tp[0] in seen:
            raise SourceError(f"overlapping shards: {seen[s.tp[0]].info.path.name} and {s.info.path.name} are both "
                              f"tp-rank {s.tp[0]}", path=where, tensor=name)
        seen[s.tp[0]] = s
    missing = sorted(set(range(size)) - set(seen))
    if missing:
        raise SourceError(f"missing rank: tp-rank {missing[0]} of {size} has no file ({len(missing)} of {size} "
                          "missing)", path=where, tensor=name, hint="copy every tp-rank file of the checkpoint")


def _check_coverage(name: str, shards: list[Shard], shape: tuple[int, ...], where: Path) -> None:
    n_pairs = sum(len(s.pairs) for s in shards)
    if n_pairs > MAX_SLICE_PAIRS:  # the overlap check below compares every pair of boxes: bound its work
        raise SourceError(f"{n_pairs} local_global_slices_pairs across the shards, more than bitconv accepts "
                          f"({MAX_SLICE_PAIRS}; nanotron writes one per TP rank and fused chunk)", path=where,
                          tensor=name)
    boxes: list[tuple[nt.Rect, str]] = []
    for s in shards:
        for loc, glob in s.pairs:
            try:
                lr, gr = nt.rect_of(loc, s.info.shape), nt.rect_of(glob, shape)
            except ValueError as e:
                raise SourceError(f"bad local_global_slices_pairs: {e}", path=s.info.path, tensor=name) from None
            if [b - a for a, b in lr] != [b - a for a, b in gr]:
                raise SourceError(f"bad local_global_slices_pairs: local box {lr} and global box {gr} differ in size",
                                  path=s.info.path, tensor=name)
            for other, fname in boxes:
                if nt.rects_overlap(gr, other):
                    raise SourceError(f"overlapping slices: {s.info.path.name} and {fname} both write global "
                                      f"{_box(gr)}", path=where, tensor=name, shape=shape)
            boxes.append((gr, s.info.path.name))
    covered = sum(nt.rect_volume(b) for b, _ in boxes)
    total = int(np.prod(shape))
    if covered != total:
        raise SourceError(f"gapped slices: the shards cover {covered} of the {total} elements of unsharded_shape "
                          f"{shape}", path=where, tensor=name, hint="a shard file is missing or truncated")


def _box(r: nt.Rect) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in r) + "]"


# ------------------------------------------------------------------------------------------------------ checkpoint


@dataclass
class NanotronInfo:
    """What was learned about the checkpoint besides its tensors."""

    flavor: nt.Flavor
    model_config: dict
    yaml_config: dict
    version: str | None
    tp: int  # TP size the shards were written with
    pp: int
    dims: nt.Dims
    interleaved: bool
    vocab: int  # HF vocabulary (padding removed)
    padded_vocab: int
    tied: bool
    granularity: str
    custom_metas: dict = field(default_factory=dict)


@dataclass
class NanotronCheckpoint(Checkpoint):
    """A `Checkpoint` over a Nanotron folder; also gives the bf16 latents behind the ternary projections."""

    info: NanotronInfo | None = None
    params: dict[str, Param] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _where: dict = field(default_factory=dict, repr=False)  # HF projection -> (param, row0, row1, HF module)

    def latent(self, hf_name: str) -> torch.Tensor:
        """The bf16 latent weight of a projection, in HF layout (unfused, RoPE rows in HF order)."""
        param, r0, r1, _ = self._where[hf_name]
        return self.latent_rows(hf_name, 0, r1 - r0)

    def latent_rows(self, hf_name: str, a: int, b: int) -> torch.Tensor:
        """Rows [a, b) of `latent(hf_name)`, read alone (whole RoPE heads around them, where rows are reordered)."""
        param, r0, r1, part = self._where[hf_name]
        d = self._head_rows(hf_name)
        a0, b0 = a // d * d, -(-b // d) * d
        w = param.read_rows(r0 + a0, r0 + b0)
        if d > 1:
            w = nt.rope_to_hf(w, (b0 - a0) // d)
        return w[a - a0: b - a0].contiguous()

    def _head_rows(self, hf_name: str) -> int:
        """Rows per RoPE head of a projection whose rows nanotron reorders (q, k when interleaved), else 1."""
        param, r0, r1, part = self._where[hf_name]
        if not self.info.interleaved or part not in nt.ROPE_PARTS:
            return 1
        return (r1 - r0) // (self.info.dims.heads if part == "self_attn.q_proj" else self.info.dims.kv_heads)

    def fused_scale(self, param: Param, compute: str) -> torch.Tensor | None:
        """The `block_scale` of a whole fused parameter (nanotron's one absmean over qkv / gate_up), cached; None
        where torch's reduction order cannot be replayed."""
        return self._cached(("scale", param.name, compute),
                            lambda: with_file(param.shards[0].info.path.parent, block_scale, param.flat_reader(),
                                              param.shape, name=param.name, compute=compute))

    def _fused_ternary(self, param: Param, compute: str) -> Ternary:
        return self._cached(("ternary", param.name, compute),
                            lambda: with_file(param.shards[0].info.path.parent, ternarize, param.load(), compute,
                                              name=param.name))

    def _cached(self, key: tuple, make: Callable[[], object]) -> object:
        """One entry per kind: consecutive q, k, v (gate, up) loads merge and quantize the fused tensor once (also
        when two worker threads ask for q and k at once: the second waits for the first's fused tensor)."""
        with self._lock:
            kind = key[0]
            hit = self._cache.get(kind)
            if hit is None or hit[0] != key:
                self._cache.pop(kind, None)  # free the old entry before making the new one
                hit = (key, make())
                self._cache[kind] = hit
            return hit[1]

    def ternary_of(self, hf_name: str, compute: str) -> Ternary:
        """Codes and scale of a projection: over the fused tensor (fused granularity) or the projection alone.

        Read a block of rows at a time: the fused scale from one pass over the fused parameter, then this
        projection's rows coded with it; only the projection's int8 codes are held whole."""
        param, r0, r1, part = self._where[hf_name]
        where = param.shards[0].info.path.parent
        rows, cols = r1 - r0, int(np.prod(param.shape[1:]))
        if self.info.granularity == "fused":
            s = self.fused_scale(param, compute)
            if s is None:  # torch's order cannot be replayed here: the whole fused tensor, as before
                t = self._fused_ternary(param, compute)
                codes = _rope_fix(t.codes[r0:r1], part, self.info)
                return Ternary(np.ascontiguousarray(codes), t.scale)
            coder = BlockCoder(s, compute)
            codes = np.empty((rows, cols), dtype=np.int8)
            step = max(1, BLOCK_ELEMS // max(cols, 1))
            d = self._head_rows(hf_name)
            step = max(d, step // d * d)
            for a in range(0, rows, step):
                b = min(rows, a + step)
                w = with_file(where, self.latent_rows, hf_name, a, b)  # HF row order: codes are elementwise
                coder(w.reshape(-1), codes[a:b].reshape(-1))
            return Ternary(codes, coder.scale)
        read = rows_block_reader(partial(self.latent_rows, hf_name), cols)
        got = with_file(where, ternarize_blocks, read, (rows, cols), name=hf_name, compute=compute)
        if got is not None:
            return got
        return with_file(where, ternarize, self.latent(hf_name), compute, name=hf_name)


def _rope_fix(w: torch.Tensor | np.ndarray, part: str, info: NanotronInfo) -> torch.Tensor | np.ndarray:
    if not info.interleaved or part not in nt.ROPE_PARTS:
        return w
    heads = info.dims.heads if part == "self_attn.q_proj" else info.dims.kv_heads
    return nt.rope_to_hf(w, heads)


def _read_meta(folder: Path) -> tuple[str | None, dict]:
    path = folder / META_FILE
    if not safeio.exists_entry(path):
        return None, {}
    meta = read_json(path, META_FILE)
    version = _version(meta.get("version"), path) if "version" in meta else None
    custom = meta.get("custom_metas")
    return version, custom if isinstance(custom, dict) else {}


def _read_yaml(folder: Path, warnings: list[str]) -> dict:
    path = folder / "config.yaml"
    if not safeio.exists_entry(path):
        return {}
    text = safeio.read_text(path, safeio.CAP_YAML, what="config.yaml")
    try:
        data = yamlish.load(text)
    except RecursionError:
        raise SourceError("config.yaml is nested too deeply to be a nanotron config", path=path) from None
    except (yamlish.YamlError, UnicodeDecodeError) as e:
        why = str(e) if len(str(e)) <= 200 else str(e)[:200] + "..."
        warnings.append(f"{path}: not read ({why}); using model_config.json")
        return {}
    return data if isinstance(data, dict) else {}


def _section(yaml_cfg: dict, key: str) -> dict:
    """A config.yaml section; {} when absent or not a mapping (a hand-edited or corrupt file)."""
    v = yaml_cfg.get(key)
    return v if isinstance(v, dict) else {}


def _model_config(folder: Path, yaml_cfg: dict) -> dict:
    path = folder / "model_config.json"
    if safeio.exists_entry(path):
        return read_json(path, "model_config.json")
    mc = _section(yaml_cfg, "model").get("model_config")
    if isinstance(mc, dict):
        return mc
    raise SourceError("no model config: neither model_config.json nor model.model_config in config.yaml",
                      path=folder)


def open_nanotron(folder: str | Path, *, vocab_size: int | None = None, scale_granularity: str | None = None,
                  compute: str = "float32") -> NanotronCheckpoint:
    """Open a Nanotron checkpoint folder (any TP/PP) as a lazy source with HF tensor names.

    Args:
        folder: the checkpoint folder (holding `model/`, `checkpoint_metadata.json`, `config.yaml`, …).
        vocab_size: the HF vocabulary size (rows kept of the padded embedding / lm_head). Default: the one recorded
            by `bitconv convert --to nanotron`, else `vocab_size` of a config.json or the size of a tokenizer.json
            next to the checkpoint, else every stored row (a warning says padding may remain).
        scale_granularity: "fused" (one absmean over qkv and over gate_up, PR #180's semantics; the default for
            BitNet checkpoints) or "per-projection" (the default for Llama checkpoints).
        compute: the arithmetic the latents are ternarized in (checked by `open_source`).
    Example:
        >>> ck = open_nanotron("checkpoints/10000")
        >>> ck.tensors["model.layers.0.self_attn.q_proj.weight"].ternary().scale
    """
    compute = compute_mode(compute)
    folder = Path(folder)
    if not is_nanotron_dir(folder):
        raise SourceError("not a Nanotron checkpoint: expected model/ and checkpoint_metadata.json", path=folder)
    warnings: list[str] = []
    meta_version, custom = _read_meta(folder)
    yaml_cfg = _read_yaml(folder, warnings)
    mc = _model_config(folder, yaml_cfg)
    flavor = nt.detect_flavor(mc)
    if flavor is None:
        raise SourceError("unsupported nanotron model config: bitconv reads is_llama_config and is_bitnet_config "
                          "(PR #180) models", path=folder / "model_config.json")
    params = scan_model_dir(folder / "model")
    versions = {s.version for p in params.values() for s in p.shards if s.version}
    version = meta_version or (max(versions) if versions else None)
    granularity = _granularity(scale_granularity, flavor)
    info = _info(folder, flavor, mc, yaml_cfg, version, params, granularity, custom, vocab_size, warnings)
    ck = NanotronCheckpoint(folder, "nanotron", {}, {}, _aux(folder), sorted({s.info.path for p in params.values()
                                                                                  for s in p.shards}),
                            quant_compute=compute, info=info, params=params, warnings=warnings)
    ck.tensors = _hf_view(ck, folder)
    ck.config = hf_config(info)
    return ck


def _granularity(requested: str | None, flavor: nt.Flavor) -> str:
    if requested is None:
        return "fused" if flavor.bitnet else "per-projection"
    if requested not in GRANULARITIES:
        raise UsageError(f"--scale-granularity must be one of {', '.join(GRANULARITIES)}, got {requested!r}")
    return requested


def _aux(folder: Path) -> list[Path]:
    return side_files(folder)


def _info(folder: Path, flavor: nt.Flavor, mc: dict, yaml_cfg: dict, version: str | None, params: dict[str, Param],
          granularity: str, custom: dict, vocab_size: int | None, warnings: list[str]) -> NanotronInfo:
    try:
        dims = nt.dims_from_config(mc)
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"model config lacks a size field ({e})", path=folder / "model_config.json") from None
    if dims.heads <= 0 or dims.hidden % dims.heads or dims.head_dim % 2:
        raise SourceError(f"hidden_size {dims.hidden} is not num_attention_heads {dims.heads} x an even head_dim",
                          path=folder / "model_config.json")
    sharded = [s for p in params.values() for s in p.shards if s.tp]
    tp = max((s.tp[1] for s in sharded), default=1)
    pp = max((s.pp[1] for s in sharded), default=1)
    embed = params.get(nt.EMBED)
    if embed is None:
        raise SourceError(f"missing parameter {nt.EMBED!r}", path=folder / "model")
    padded = embed.shape[0]
    tied = nt.LM_HEAD not in params
    if tied and not mc.get("tie_word_embeddings", False):
        raise SourceError(f"missing parameter {nt.LM_HEAD!r} (tie_word_embeddings is false)", path=folder / "model")
    vocab = _vocab(folder, vocab_size, custom, yaml_cfg, padded, tp, warnings)
    return NanotronInfo(flavor, mc, yaml_cfg, version, tp, pp, dims, nt.rope_interleaved(flavor, mc), vocab, padded,
                        tied, granularity, custom)


def _vocab(folder: Path, vocab_size: int | None, custom: dict, yaml_cfg: dict, padded: int, tp: int,
           warnings: list[str]) -> int:
    recorded = (custom.get("bitconv") or {}).get("vocab_size") if isinstance(custom.get("bitconv"), dict) else None
    for value, what in ((vocab_size, "--vocab-size"), (recorded, "checkpoint_metadata.json custom_metas"),
                        (_vocab_from_files(folder, yaml_cfg), "the HF config/tokenizer next to the checkpoint")):
        if value is None:
            continue
        if not isinstance(value, int) or not 0 < value <= padded:
            raise SourceError(f"vocab size {value!r} from {what} does not fit the {padded} stored embedding rows",
                              path=folder, hint="pass --vocab-size with the tokenizer's vocabulary size")
        return value
    multiple = _section(yaml_cfg, "model").get("make_vocab_size_divisible_by") or 1
    if not isinstance(multiple, int) or multiple * tp > 1:  # padding possible (or unknown)
        warnings.append(f"vocab size not known: kept all {padded} embedding rows, which may include nanotron's "
                        "padding (pass --vocab-size N or put the HF tokenizer next to the checkpoint)")
    return padded


def _vocab_from_files(folder: Path, yaml_cfg: dict) -> int | None:
    dirs = [folder]
    tok = _section(yaml_cfg, "tokenizer").get("tokenizer_name_or_path")
    if isinstance(tok, str) and tok and Path(tok).is_dir():
        dirs.append(Path(tok))
    for d in dirs:
        cfg = d / "config.json"
        if cfg.is_file():
            v = read_json(cfg, "config.json").get("vocab_size")
            if isinstance(v, int):
                return v
        tj = d / "tokenizer.json"
        if tj.is_file():
            return _tokenizer_size(tj)
    return None


def _tokenizer_size(path: Path) -> int | None:
    """The vocabulary size a tokenizer.json implies; None when it does not say (a broken one is refused)."""
    data = read_json(path, "tokenizer.json", safeio.CAP_TOKENIZER)
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    ids: list = list(vocab.values()) if isinstance(vocab, dict) else \
        list(range(len(vocab))) if isinstance(vocab, list) else []
    added = data.get("added_tokens")
    ids += [t.get("id") for t in added if isinstance(t, dict)] if isinstance(added, list) else []
    ids = [i for i in ids if type(i) is int and 0 <= i < 1 << 31]
    return max(ids) + 1 if ids else None


# ------------------------------------------------------------------------------------------------------ HF view


def _layer_params(info: NanotronInfo, i: int) -> dict[str, str]:
    """HF-layer module key in LAYER_TO_HF -> the nanotron parameter name, for layer i."""
    prefix = nt.LAYER_PREFIX.format(i=i)
    out = {}
    for module in nt.LAYER_TO_HF:
        if module in nt.LAYER_NORMS and not info.flavor.layer_norms:
            continue
        out[module] = prefix + module.replace("{mlp}", info.flavor.mlp) + ".weight"
    return out


def _hf_view(ck: NanotronCheckpoint, folder: Path) -> dict[str, ModelTensor]:
    info, params = ck.info, ck.params
    used: set[str] = set()
    tensors: dict[str, ModelTensor] = {}
    _add_passthrough(ck, nt.EMBED, tensors, used, rows=info.vocab)
    for i in range(info.dims.layers):
        layer = f"model.layers.{i}."
        for module, pname in _layer_params(info, i).items():
            param = _require(params, pname, info.dims.layer_shape(module), folder)
            used.add(pname)
            if module in nt.LAYER_NORMS:
                tensors[layer + module + ".weight"] = _passthrough(ck, param, layer + module + ".weight")
                continue
            r0 = 0
            for part, rows in zip(nt.LAYER_TO_HF[module], info.dims.parts(module)):
                name = layer + part + ".weight"
                ck._where[name] = (param, r0, r0 + rows, part)
                tensors[name] = _ternary_tensor(ck, name, param, (rows, param.shape[1]), r0)
                r0 += rows
        if not info.flavor.layer_norms:
            for norm in nt.LAYER_NORMS:
                tensors[layer + norm + ".weight"] = _ones(layer + norm + ".weight", info.dims.hidden,
                                                          params[nt.FINAL_NORM].dtype if nt.FINAL_NORM in params
                                                          else "BF16")
    _add_passthrough(ck, nt.FINAL_NORM, tensors, used)
    if not info.tied:
        _add_passthrough(ck, nt.LM_HEAD, tensors, used, rows=info.vocab)
    extra = sorted(set(params) - used - {nt.LM_HEAD})
    if extra:
        raise SourceError(f"unexpected parameter {extra[0]!r} ({len(extra)} not part of a {info.flavor.name} model "
                          f"with {info.dims.layers} layers)", path=folder / "model")
    return tensors


def _require(params: dict[str, Param], name: str, shape: tuple[int, ...], folder: Path) -> Param:
    p = params.get(name)
    if p is None:
        raise SourceError(f"missing parameter {name!r}", path=folder / "model",
                          hint="the checkpoint is incomplete or not the model its config describes")
    if tuple(p.shape) != tuple(shape):
        raise SourceError(f"shape {list(p.shape)} does not match the model config (expected {list(shape)})",
                          path=folder / "model", tensor=name)
    return p


def _add_passthrough(ck: NanotronCheckpoint, pname: str, tensors: dict[str, ModelTensor], used: set[str],
                     rows: int | None = None) -> None:
    param = ck.params.get(pname)
    if param is None:
        raise SourceError(f"missing parameter {pname!r}", path=ck.path / "model")
    h = ck.info.dims.hidden
    expect = (param.shape[0], h) if rows is not None else (h,)
    if tuple(param.shape) != expect:
        raise SourceError(f"shape {list(param.shape)} does not match hidden_size {h}", path=ck.path / "model",
                          tensor=pname)
    used.add(pname)
    name = nt.TOP_TO_HF[pname]
    tensors[name] = _passthrough(ck, param, name, rows)


def _passthrough(ck: NanotronCheckpoint, param: Param, name: str, rows: int | None = None) -> ModelTensor:
    shape = (rows, *param.shape[1:]) if rows is not None else param.shape
    if rows is None or rows == param.shape[0]:
        loader = param.load
    else:
        def loader(param: Param = param, rows: int = rows) -> torch.Tensor:
            return param.read_rows(0, rows)
    return ModelTensor(name, tuple(shape), param.dtype, [s.info for s in param.shards], loader=loader,
                       row_loader=param.read_rows)


def _ones(name: str, n: int, dtype: str) -> ModelTensor:
    def loader() -> torch.Tensor:
        return torch.ones(n, dtype=dtypes.DTYPES[dtype].torch)

    return ModelTensor(name, (n,), dtype, [], loader=loader)


def _ternary_tensor(ck: NanotronCheckpoint, name: str, param: Param, shape: tuple[int, int], r0: int) -> ModelTensor:
    def load(compute: str) -> Ternary:
        return ck.ternary_of(name, compute)

    # byte ranges of this part's rows (fused, row-split); whole shards for column-split o_proj / down_proj
    stored = param.row_infos(r0, r0 + shape[0]) or [_flat(s.info) for s in param.shards]
    return ModelTensor(name, shape, param.dtype, stored, load, compute=ck.quant_compute,
                       row_loader=partial(ck.latent_rows, name))


def _flat(info: TensorInfo) -> TensorInfo:
    return replace(info, shape=(info.numel,))


# ------------------------------------------------------------------------------------------------------ HF config


def hf_config(info: NanotronInfo) -> dict:
    """The HF `LlamaForCausalLM` config of the checkpoint (with a bitnet online quantization_config for BitNet).

    A config recorded by `bitconv convert --to nanotron` (checkpoint_metadata.json custom_metas) is restored as it
    was, so HF -> Nanotron -> HF gives the same config back; nanotron drops custom_metas when it saves again.
    """
    recorded = (info.custom_metas.get("bitconv") or {}).get("hf_config") \
        if isinstance(info.custom_metas.get("bitconv"), dict) else None
    if isinstance(recorded, dict) and _same_model(recorded, info):
        return _restore(recorded)
    mc, d = info.model_config, info.dims
    dtype = _section(info.yaml_config, "model").get("dtype") or "bfloat16"
    cfg = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": bool(mc.get("attention_bias", False)),
        "attention_dropout": 0.0, "bos_token_id": mc.get("bos_token_id"), "eos_token_id": mc.get("eos_token_id"),
        "head_dim": d.head_dim, "hidden_act": mc.get("hidden_act", "silu"), "hidden_size": d.hidden,
        "initializer_range": mc.get("initializer_range", 0.02), "intermediate_size": d.intermediate,
        "max_position_embeddings": mc.get("max_position_embeddings"), "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": d.heads, "num_hidden_layers": d.layers, "num_key_value_heads": d.kv_heads,
        "pad_token_id": mc.get("pad_token_id"), "pretraining_tp": mc.get("pretraining_tp", 1),
        "rms_norm_eps": mc.get("rms_norm_eps"), "rope_scaling": mc.get("rope_scaling"),
        "rope_theta": float(mc.get("rope_theta", nt.PR180_ROPE_THETA)),
        "tie_word_embeddings": info.tied, "torch_dtype": dtype, "use_cache": mc.get("use_cache", True),
        "vocab_size": info.vocab,
    }
    if info.flavor.bitnet:
        cfg["quantization_config"] = dict(HF_BITNET_QC)
    return dict(sorted(cfg.items()))


def _same_model(cfg: dict, info: NanotronInfo) -> bool:
    try:
        return nt.dims_from_config(cfg) == info.dims and cfg.get("vocab_size") == info.vocab
    except (KeyError, TypeError, ValueError):
        return False


def _restore(cfg: dict) -> dict:
    out = {k: v for k, v in cfg.items() if k != "bitconv"}
    qc = out.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "bitnet":
        out["quantization_config"] = bitnet_quant_config(cfg, "autobitlinear", "online")
    return out
