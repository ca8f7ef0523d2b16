"""Static facts about Nanotron checkpoints, as tables, plus the pure helpers that use them (no I/O).

Sources: spec nanotron.md §1 (tree, file names, shard metadata), §1.4 (sharding), §1.5 (parameters), §2 (HF name
map), §4 (config field sets), §5 (RoPE). Everything here is data or a pure function of its arguments.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from bitconv.core.lazytorch import torch
from bitconv.core.naming import PROJECTION_SHAPES

# --------------------------------------------------------------------------------------------------- versions, names

@dataclass(frozen=True)
class Generation:
    """One nanotron source tree bitconv writes for: where it comes from and the checkpoint version it stamps."""

    name: str
    commit: str
    version: str  # nanotron.constants.CHECKPOINT_VERSION of that tree: every shard's metadata and checkpoint_metadata


# The one table of checkpoint versions written (spec §0): PR #180 (2239f41e, constants.py:L5 `Version("1.4")`; its
# loader rejects 1.5 on a topology change, spec §1.8) and HEAD (2411b022, constants.py:L5 `Version("1.5")`).
GENERATIONS = {
    "pr180": Generation("pr180", "2239f41e04fa", "1.4"),
    "head": Generation("head", "2411b022a75f", "1.5"),
}
KNOWN_VERSIONS = ("1.2", "1.3", "1.4", "1.5")
LEGACY_VERSIONS = ("1.3",)  # `model_model_weight.safetensors_pp-…` file names (spec §1.2)

# model_<param>[_pp-rank-p-of-P_tp-rank-t-of-T[_exp-rank-e-of-E]].safetensors; legacy (v1.3) repeats
# `model_` and `.safetensors`: model_model_weight.safetensors_pp-rank-0-of-1_tp-rank-0-of-2.safetensors
SHARD_FILE = re.compile(
    r"model_(?P<legacy>model_)?(?P<param>weight|bias)(?(legacy)\.safetensors)"
    r"(?:_pp-rank-(?P<pp>\d+)-of-(?P<pp_size>\d+)_tp-rank-(?P<tp>\d+)-of-(?P<tp_size>\d+)"
    r"(?:_exp-rank-(?P<ep>\d+)-of-(?P<ep_size>\d+))?)?\.safetensors")


def shard_file_name(param: str, tp: tuple[int, int] | None, pp: tuple[int, int] = (0, 1)) -> str:
    """The file name nanotron's `get_path` gives a parameter shard (`tp=None`: an unsharded parameter)."""
    if tp is None:
        return f"model_{param}.safetensors"
    return f"model_{param}_pp-rank-{pp[0]}-of-{pp[1]}_tp-rank-{tp[0]}-of-{tp[1]}.safetensors"


# ------------------------------------------------------------------------------------------------ parameter tables

EMBED = "model.token_position_embeddings.pp_block.token_embedding.weight"
FINAL_NORM = "model.final_layer_norm.pp_block.weight"
LM_HEAD = "model.lm_head.pp_block.weight"
LAYER_PREFIX = "model.decoder.{i}.pp_block."

# Nanotron top-level parameter -> HF name (spec §2).
TOP_TO_HF = {EMBED: "model.embed_tokens.weight", FINAL_NORM: "model.norm.weight", LM_HEAD: "lm_head.weight"}

# Per-layer nanotron module (after `model.decoder.{i}.pp_block.`; `{mlp}` is `mlp` or `MLPBitNet`) -> the HF modules
# (after `model.layers.{i}.`) it holds, in fused row order.
LAYER_TO_HF = {
    "attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.o_proj": ("self_attn.o_proj",),
    "{mlp}.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "{mlp}.down_proj": ("mlp.down_proj",),
    "input_layernorm": ("input_layernorm",),
    "post_attention_layernorm": ("post_attention_layernorm",),
}
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")
ROPE_PARTS = ("self_attn.q_proj", "self_attn.k_proj")  # rows permuted when nanotron's RoPE is interleaved


@dataclass(frozen=True)
class Sharding:
    """How nanotron splits a parameter over TP ranks (spec §1.4): along `dim`, inside each chunk when chunked."""

    dim: int
    chunks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Dims:
    """Model sizes that fix every parameter's shape."""

    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def size(self, name: str) -> int:
        """A size name of `core.naming.PROJECTION_SHAPES` in this model."""
        return {"q": self.heads * self.head_dim, "kv": self.kv_heads * self.head_dim, "hidden_size": self.hidden,
                "intermediate_size": self.intermediate}[name]

    def parts(self, module: str) -> tuple[int, ...]:
        """Row counts of the HF parts of a fused module (one entry for unfused modules)."""
        return tuple(self.hf_shape(hf)[0] for hf in LAYER_TO_HF[module])

    def hf_shape(self, hf_module: str) -> tuple[int, ...]:
        """The HF shape of a layer module (`self_attn.q_proj`, `input_layernorm`, ...): a projection's from the one
        table of projection shapes, a norm's (hidden,)."""
        if hf_module not in PROJECTION_SHAPES:
            return (self.hidden,)
        out, inp = PROJECTION_SHAPES[hf_module]
        return (self.size(out), self.size(inp))

    def layer_shape(self, module: str) -> tuple[int, ...]:
        """The nanotron shape of a per-layer module: its HF parts stacked along the rows."""
        first = self.hf_shape(LAYER_TO_HF[module][0])
        return (sum(self.parts(module)), *first[1:])

    def sharding(self, module: str) -> Sharding | None:
        """The TP sharding of a per-layer module, or of a top-level parameter given by its full name."""
        if module in (EMBED, LM_HEAD):
            return Sharding(0)
        if module in LAYER_NORMS or module == FINAL_NORM:
            return None
        if module in ("attn.o_proj", "{mlp}.down_proj"):
            return Sharding(1)
        return Sharding(0, self.parts(module))


def dims_from_config(cfg: dict) -> Dims:
    """Dims from a nanotron model config or an HF config (the same key names)."""
    heads = int(cfg["num_attention_heads"])
    kv = cfg.get("num_key_value_heads")
    return Dims(int(cfg["hidden_size"]), heads, int(kv) if kv is not None else heads, int(cfg["intermediate_size"]),
                int(cfg["num_hidden_layers"]))


# ---------------------------------------------------------------------------------------------------------- flavors


@dataclass(frozen=True)
class Flavor:
    """One nanotron model family: its module names, config schema and RoPE convention."""

    name: str
    description: str
    mlp: str  # attribute name of the MLP module
    layer_norms: bool
    bitnet: bool
    head: bool  # HEAD config schema (else PR #180 tree)
    discriminator: str
    model_fields: tuple[str, ...]  # model_config.json key order (dataclass declaration order)
    lm_head_cost: bool  # whether nanotron's PP cost table counts the lm_head block (see `pp_stages`)

    @property
    def generation(self) -> Generation:
        return GENERATIONS["head" if self.head else "pr180"]

    @property
    def version(self) -> str:
        """The checkpoint version the targeted nanotron generation writes."""
        return self.generation.version


_PR180_FIELDS = ("bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
                 "{disc}", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
                 "num_key_value_heads", "pad_token_id", "pretraining_tp", "rms_norm_eps", "rope_scaling",
                 "tie_word_embeddings", "use_cache", "vocab_size")
_HEAD_FIELDS = ("bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
                "is_llama_config", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
                "attention_bias", "num_key_value_heads", "pad_token_id", "pretraining_tp", "rms_norm_eps",
                "rope_scaling", "rope_theta", "rope_interleaved", "tie_word_embeddings", "use_cache", "vocab_size",
                "_attn_implementation", "z_loss_enabled", "z_loss_coefficient")


def _fields(disc: str) -> tuple[str, ...]:
    return tuple(disc if f == "{disc}" else f for f in _PR180_FIELDS)


FLAVORS = {
    "bitnet": Flavor("bitnet", "PR #180 LlamaBitNetConfig (MLPBitNet, no per-layer norms, interleaved RoPE)",
                     "MLPBitNet", False, True, False, "is_bitnet_config", _fields("is_bitnet_config"), False),
    "llama-pr180": Flavor("llama-pr180", "LlamaConfig of the PR #180 tree (interleaved RoPE, no rope_theta)",
                          "mlp", True, False, False, "is_llama_config", _fields("is_llama_config"), True),
    "llama": Flavor("llama", "LlamaConfig of nanotron HEAD (rope_theta, rope_interleaved)", "mlp", True, False, True,
                    "is_llama_config", _HEAD_FIELDS, True),
}

# Dataclass defaults of the model config fields (spec §4.1), used when the HF config lacks a key.
MODEL_DEFAULTS = {
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02,
    "max_position_embeddings": 2048, "pad_token_id": None, "pretraining_tp": 1, "rms_norm_eps": 1e-6,
    "rope_scaling": None, "tie_word_embeddings": False, "use_cache": True, "attention_bias": False,
    "rope_theta": 10000.0, "rope_interleaved": False, "_attn_implementation": "flash_attention_2",
    "z_loss_enabled": False, "z_loss_coefficient": 1e-4,
}
PR180_ROPE_THETA = 10000.0  # hard-wired in the PR #180 tree (spec §3.3, §5)


def detect_flavor(model_config: dict) -> Flavor | None:
    """The flavor a nanotron model config was written by, or None for a model family bitconv does not read."""
    if model_config.get("is_bitnet_config"):
        return FLAVORS["bitnet"]
    if model_config.get("is_llama_config"):
        return FLAVORS["llama" if "rope_interleaved" in model_config else "llama-pr180"]
    return None


def rope_interleaved(flavor: Flavor, model_config: dict) -> bool:
    """True where the checkpoint's q/k rows are in nanotron's interleaved (GPT-J) order (spec §5)."""
    return bool(model_config.get("rope_interleaved", False)) if flavor.head else True


def padded_vocab(vocab: int, multiple: int, tp: int) -> int:
    """nanotron's `_vocab_size_with_padding`: round up to a multiple of make_vocab_size_divisible_by * tp."""
    m = multiple * tp
    return int(math.ceil(vocab / m) * m)


# ------------------------------------------------------------------------------------------------- pipeline stages

# nanotron's PipelineBlocks in `model.named_modules()` order (LlamaForTraining: LlamaModel's token_position_embeddings,
# decoder.{i}, final_layer_norm, lm_head, cast_to_fp32, then its own loss; HEAD llama.py:L836-L901, L1044;
# PR #180 llama_bitnet.py:L696-L753, L868), and the nanotron parameters each holds.
BLOCK_EMBED, BLOCK_FINAL_NORM, BLOCK_LM_HEAD, BLOCK_CAST, BLOCK_LOSS = (
    "token_position_embeddings", "final_layer_norm", "lm_head", "cast_to_fp32", "loss")
BLOCK_OF_TOP = {EMBED: BLOCK_EMBED, FINAL_NORM: BLOCK_FINAL_NORM, LM_HEAD: BLOCK_LM_HEAD}


def pipeline_blocks(layers: int) -> tuple[str, ...]:
    return (BLOCK_EMBED, *(f"decoder.{i}" for i in range(layers)), BLOCK_FINAL_NORM, BLOCK_LM_HEAD, BLOCK_CAST,
            BLOCK_LOSS)


def block_of(name: str) -> str:
    """The PipelineBlock holding a nanotron parameter (`model.decoder.3.pp_block.…` -> `decoder.3`)."""
    if name in BLOCK_OF_TOP:
        return BLOCK_OF_TOP[name]
    parts = name.split(".")
    if parts[:2] != ["model", "decoder"] or len(parts) < 3:
        raise ValueError(f"{name!r} is not a nanotron Llama parameter")
    return f"decoder.{parts[2]}"


def block_costs(flavor: Flavor, dims: Dims, vocab: int) -> tuple[int, ...]:
    """`get_block_compute_costs` per block, in `pipeline_blocks` order (blocks missing from its table cost 0).

    Decoder layer: 4·H·d·h + 3·I·h. lm_head: V·h, keyed on TensorParallelColumnLinear (HEAD llama.py:L938-L950,
    PR #180-tree llama.py:L789-L801). PR #180 BitNet keys it on TensorParallelColumnLinearBitNet
    (llama_bitnet.py:L790-L802) while its lm_head is built as a plain TensorParallelColumnLinear (L734-L737), so
    there the lm_head costs 0 (`Flavor.lm_head_cost`). `vocab` is the padded vocabulary (the model config's).
    """
    layer = 4 * dims.heads * dims.head_dim * dims.hidden + 3 * dims.intermediate * dims.hidden
    head = vocab * dims.hidden if flavor.lm_head_cost else 0
    return (0, *(layer,) * dims.layers, 0, head, 0, 0)


def pp_stages(flavor: Flavor, dims: Dims, vocab: int, pp: int) -> dict[str, int]:
    """The pp rank nanotron's `build_model` gives each PipelineBlock for a PP size (raises ValueError if refused).

    # ref: nanotron models/base.py `build_model` (HEAD 2411b022 L187-L239, the split at L214-L235; PR #180 2239f41e
    # L190-L237, the same code): thresholds[r] = total·(r+1)/pp over the cumulative block costs; walking the blocks
    # in order, each block goes to the current rank, and the rank advances after a block whose cumulative cost
    # exceeds the current threshold. Embeddings therefore always sit on rank 0, and the final norm and lm_head
    # follow the last decoder layer.
    A pp rank holding no parameter is refused: nanotron itself refuses it when it wraps the model in DDP
    ("Can't use DDP because model in PP=… has no gradient", models/base.py `check_model_has_grad`, HEAD L335-L343,
    PR #180 L311-L319), and such a stage would write no file to resume from.
    """
    if pp < 1:
        raise ValueError(f"--pp must be >= 1, got {pp}")
    holders = dims.layers + 3  # embedding, decoder layers, final norm, lm_head: the blocks holding parameters
    if pp > holders:
        raise ValueError(f"--pp {pp} is more stages than the {holders} parameter-holding pipeline blocks of a "
                         f"{dims.layers}-layer model: nanotron would leave a stage without parameters")
    out = _assign(flavor, dims, vocab, pp)
    empty = _empty_stages(out, pp)
    if empty:
        most = max(n for n in range(1, pp) if not _empty_stages(_assign(flavor, dims, vocab, n), n))
        raise ValueError(f"--pp {pp} leaves pp-rank {empty[0]} without parameters: nanotron's cost-balanced split "
                         f"of {dims.layers} decoder layers gives it none, and nanotron refuses such a stage "
                         f"(\"Consider increasing the number of layers of your model, or put a smaller PP size\"); "
                         f"the largest PP size under {pp} that gives every stage parameters is {most}")
    return out


def _assign(flavor: Flavor, dims: Dims, vocab: int, pp: int) -> dict[str, int]:
    blocks = pipeline_blocks(dims.layers)
    cumulative = np.cumsum(np.array(block_costs(flavor, dims, vocab), dtype=np.int64))
    thresholds = [cumulative[-1] * ((r + 1) / pp) for r in range(pp)]
    rank, out = 0, {}
    for block, cost in zip(blocks, cumulative):
        out[block] = rank
        if cost > thresholds[rank]:
            rank += 1
    return out


def _empty_stages(stages: dict[str, int], pp: int) -> list[int]:
    holding = {r for b, r in stages.items() if b not in (BLOCK_CAST, BLOCK_LOSS)}
    return sorted(set(range(pp)) - holding)


# --------------------------------------------------------------------------------------------------- slice strings

Rect = tuple[tuple[int, int], ...]  # per dim [start, stop)
SlicePair = tuple[tuple[slice, ...], tuple[slice, ...]]  # (local, global)


def _fmt_int(x: int | None) -> str:
    return "None" if x is None else str(int(x))


def format_pairs(pairs: list[SlicePair]) -> str:
    """`local_global_slices_pairs` as nanotron writes it: `start,stop,step` per dim, `|` dims, `#`, `;` pairs."""
    def side(sl: tuple[slice, ...]) -> str:
        return "|".join(f"{_fmt_int(s.start)},{_fmt_int(s.stop)},{_fmt_int(s.step)}" for s in sl)

    return ";".join(f"{side(loc)}#{side(glob)}" for loc, glob in pairs)


def _parse_int(text: str) -> int | None:
    text = text.strip()
    return None if text == "None" else int(text)


def parse_pairs(text: str) -> list[SlicePair]:
    """Inverse of `format_pairs`; raises ValueError on anything else."""
    pairs = []
    for pair in text.split(";"):
        loc, glob = pair.split("#")
        sides = []
        for side in (loc, glob):
            sl = []
            for dim in side.split("|"):
                start, stop, step = (_parse_int(x) for x in dim.split(","))
                sl.append(slice(start, stop, step))
            sides.append(tuple(sl))
        if len(sides[0]) != len(sides[1]):
            raise ValueError("local and global sides have different numbers of dims")
        pairs.append((sides[0], sides[1]))
    return pairs


_NP_INT = re.compile(r"np\.\w+\((-?\d+)\)")


def parse_shape(text: str) -> tuple[int, ...]:
    """`unsharded_shape` as `str(tuple)`, including the numpy>=2 form `(np.int64(96), 32)`."""
    body = _NP_INT.sub(r"\1", text).strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise ValueError(f"not a tuple: {text!r}")
    return tuple(int(x) for x in body[1:-1].split(",") if x.strip())


def rect_of(sl: tuple[slice, ...], shape: tuple[int, ...]) -> Rect:
    """The box a tuple of slices selects in `shape`; raises ValueError for steps other than 1 or out-of-range ends."""
    if len(sl) != len(shape):
        raise ValueError(f"{len(sl)} slices for a {len(shape)}-D tensor")
    out = []
    for s, n in zip(sl, shape):
        if s.step not in (None, 1):
            raise ValueError(f"slice step {s.step} (nanotron writes contiguous slices only)")
        start = 0 if s.start is None else s.start
        stop = n if s.stop is None else s.stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"slice {start}:{stop} outside a dim of size {n}")
        out.append((start, stop))
    return tuple(out)


def rect_volume(r: Rect) -> int:
    return math.prod(b - a for a, b in r)


def rects_overlap(a: Rect, b: Rect) -> bool:
    return all(max(x0, y0) < min(x1, y1) for (x0, x1), (y0, y1) in zip(a, b))


def shard_pairs(shape: tuple[int, ...], sharding: Sharding, tp: int, rank: int) -> list[SlicePair]:
    """The slice pairs of TP rank `rank` (spec §1.4): one pair, or one per chunk for fused parameters."""
    full = tuple(slice(None) for _ in shape)
    dim = sharding.dim
    if sharding.chunks is None:
        n = shape[dim] // tp
        glob = full[:dim] + (slice(rank * n, (rank + 1) * n),) + full[dim + 1:]
        return [(full, glob)]
    pairs, g0 = [], 0
    for size in sharding.chunks:
        n = size // tp
        l0 = g0 // tp
        loc = full[:dim] + (slice(l0, l0 + n),) + full[dim + 1:]
        glob = full[:dim] + (slice(g0 + rank * n, g0 + (rank + 1) * n),) + full[dim + 1:]
        pairs.append((loc, glob))
        g0 += size
    return pairs


def local_shape(shape: tuple[int, ...], sharding: Sharding, tp: int) -> tuple[int, ...]:
    return shape[:sharding.dim] + (shape[sharding.dim] // tp,) + shape[sharding.dim + 1:]


def local_tensor(full: torch.Tensor, pairs: list[SlicePair], lshape: tuple[int, ...]) -> torch.Tensor:
    """A rank's local tensor: `local[LOCAL] = global[GLOBAL]` for each pair."""
    out = torch.empty(lshape, dtype=full.dtype)
    for loc, glob in pairs:
        out[loc] = full[glob]
    return out


def tensor_metadata(version: str, shape: tuple[int, ...], pairs: list[SlicePair]) -> dict[str, str]:
    """The `__metadata__` of a sharded parameter file (`TensorMetadata.to_str_dict`)."""
    return {"version": version, "local_global_slices_pairs": format_pairs(pairs),
            "unsharded_shape": str(tuple(int(x) for x in shape))}


# ---------------------------------------------------------------------------------------------------- RoPE order


def rope_to_hf(w: torch.Tensor | np.ndarray, heads: int) -> torch.Tensor | np.ndarray:
    """Rows of q or k from nanotron's interleaved order to HF's half-split order, per head (spec §5)."""
    rows = w.shape[0]
    d = rows // heads
    return w.reshape(heads, d // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def rope_to_nanotron(w: torch.Tensor | np.ndarray, heads: int) -> torch.Tensor | np.ndarray:
    """Inverse of `rope_to_hf`: `nt[2j] = hf[j]`, `nt[2j+1] = hf[j + d/2]` per head."""
    rows = w.shape[0]
    d = rows // heads
    return w.reshape(heads, 2, d // 2, -1).swapaxes(1, 2).reshape(w.shape)
