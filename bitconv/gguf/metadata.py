"""GGUF metadata per model family: architecture strings, tensor names, the llama RoPE permutation and the KV sets.

Architectures (`--arch`), by the checkpoint's HF `architectures[0]`:

| HF class          | default        | also                         | graph facts that matter here                   |
|-------------------|----------------|------------------------------|------------------------------------------------|
| BitNetForCausalLM | `bitnet-b1.58` | `bitnet-25`, upstream bitnet | output.weight allowed (`bitnet`: always tied)  |
| BitnetForCausalLM | `bitnet`       | `bitnet-b1.58`, `bitnet-25`  | 1bitLLM sub-norms inner_attn_ln / ffn_layernorm|
| LlamaForCausalLM  | `llama`        | -                            | q/k rows permuted for llama.cpp's NORM rope    |

KV sets, each in its reference converter's order (`PROFILES`, chosen by arch and by which tool makes the type):

* `bitnet.cpp` (arch bitnet; i2_s, tl1, tl2, f32, f16): bitnet.cpp convert-hf-to-gguf-bitnet.py (37c247c) BitnetModel,
  then for i2_s what llama-quantize adds (general.quantization_version, last).
* `bitnet.cpp-llama` (arch llama, same types): its LlamaModel (vocab_size, rope.dimension_count, linear rope scaling).
* `convert-ms` (archs bitnet-b1.58 / bitnet-25, every type): convert-ms-to-gguf-bitnet.py's order, which Microsoft's
  official 2B-4T GGUF has (add_bos_token among the hparams, scores for BPE vocabs, no tokenizer.ggml.pre).
* `upstream` / `upstream-llama` (tq1_0, tq2_0, bf16): llama.cpp convert_hf_to_gguf.py (0c1e570) BitnetModel /
  LlamaModel: general.type, title-cased general.name, general.size_label, key/value_length, quantization_version
  before the vocab.

general.name is the model folder's basename ("input" for the goldens); upstream title-cases it ("Input").
# ref: spec gguf-bitnet-cpp.md §4.1-4.4, §8; gguf-upstream.md §2.2-2.4; the golden MANIFESTs
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bitconv.errors import LayoutError, UsageError
from bitconv.ggml_types import GGUF_QUANTIZATION_VERSION
from bitconv.gguf.kv import KV


@dataclass(frozen=True)
class GGUFArch:
    """One GGUF architecture string and what bitconv must know about it."""

    name: str
    permute_qk: bool  # llama.cpp NORM rope: q/k rows interleaved
    has_output: bool  # the graph has an output (lm_head) tensor; `bitnet` always ties it to token_embd
    sub_norms: tuple[str, str]  # HF module names of the attention / FFN sub-norms when read back
    hf_class: str  # config reconstruction: architectures[0], model_type, hidden_act
    model_type: str
    hidden_act: str


ARCHS: dict[str, GGUFArch] = {a.name: a for a in (
    GGUFArch("bitnet-b1.58", False, True, ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), "BitNetForCausalLM",
             "bitnet", "relu2"),
    GGUFArch("bitnet-25", False, True, ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), "BitNetForCausalLM",
             "bitnet", "relu2"),
    GGUFArch("bitnet", False, False, ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"), "BitnetForCausalLM",
             "llama", "silu"),
    GGUFArch("llama", True, True, ("", ""), "LlamaForCausalLM", "llama", "silu"),
)}

# What a file reads back as, by the activation it declares (`<arch>.hidden_activation`, else its graph's default):
# relu2 is the 2B4T family (BitNetForCausalLM, attn_sub_norm / ffn_sub_norm), silu the 1bitLLM family, whatever the
# arch string, so a relu2 model written as upstream `bitnet` comes back as the model it is.
_FAMILIES = {"relu2": ("BitNetForCausalLM", "bitnet", ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")),
             "silu": ("BitnetForCausalLM", "llama", ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"))}


def read_arch(name: str, activation: str) -> GGUFArch:
    """The GGUFArch a file of arch `name` whose FFN computes `activation` (silu / relu2) reads back as."""
    base = ARCHS[name]
    if name == "llama" or activation not in _FAMILIES:
        return replace(base, hidden_act=activation)
    cls, model_type, sub_norms = _FAMILIES[activation]
    return replace(base, hf_class=cls, model_type=model_type, sub_norms=sub_norms, hidden_act=activation)


# HF architectures[0] -> (default arch, allowed archs)
HF_ARCHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "BitNetForCausalLM": ("bitnet-b1.58", ("bitnet-b1.58", "bitnet-25", "bitnet")),
    "BitnetForCausalLM": ("bitnet", ("bitnet", "bitnet-b1.58", "bitnet-25")),
    "LlamaForCausalLM": ("llama", ("llama",)),
}


def resolve_arch(config: dict, arch: str | None) -> GGUFArch:
    """The GGUF architecture for a checkpoint config and an optional `--arch`; UsageError when it does not fit."""
    hf = (config.get("architectures") or ["?"])[0]
    if hf not in HF_ARCHS:
        raise UsageError(f"no GGUF architecture for HF architecture {hf!r}; bitconv converts "
                         f"{', '.join(HF_ARCHS)}")
    default, allowed = HF_ARCHS[hf]
    name = default if arch is None else arch
    if name not in ARCHS:
        raise UsageError(f"unknown --arch {name!r}; choose one of {', '.join(allowed)}")
    if name not in allowed:
        raise UsageError(f"--arch {name} does not fit a {hf} checkpoint; choose one of {', '.join(allowed)}")
    return ARCHS[name]


# ------------------------------------------------------------------------------------------------ tensor names

_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.inner_attn_ln": "attn_sub_norm",
          "self_attn.attn_sub_norm": "attn_sub_norm", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "mlp.ffn_layernorm": "ffn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)\.weight")
SKIPPED = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")  # the converters drop these


def gguf_name(hf: str, tensor_shape: tuple[int, ...] | None = None) -> str:
    """HF tensor name -> GGUF name; LayoutError for a tensor no GGUF BitNet graph has."""
    if hf in _TOP:
        return _TOP[hf]
    m = _HF_LAYER.fullmatch(hf)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.weight"
    raise LayoutError("no GGUF name for this tensor (GGUF BitNet graphs have embeddings, norms, sub-norms and the "
                      "seven projections)", tensor=hf, shape=tensor_shape)


def hf_name(gguf: str, arch: GGUFArch) -> str | None:
    """GGUF tensor name -> HF name for `arch` (sub-norm spelling by family); None when unknown."""
    top = {v: k for k, v in _TOP.items()}
    if gguf in top:
        return top[gguf]
    m = _GGUF_LAYER.fullmatch(gguf)
    if not m:
        return None
    inverse = {v: k for k, v in _LAYER.items() if k not in ("self_attn.inner_attn_ln", "self_attn.attn_sub_norm",
                                                            "mlp.ffn_layernorm", "mlp.ffn_sub_norm")}
    inverse.update({"attn_sub_norm": arch.sub_norms[0], "ffn_sub_norm": arch.sub_norms[1]})
    module = inverse.get(m.group(2))
    return None if not module else f"model.layers.{m.group(1)}.{module}.weight"


# ------------------------------------------------------------------------------------------------ RoPE permutation


def permute_heads(hf: str, config: dict) -> int | None:
    """Heads to permute over for a llama q/k projection (None for every other tensor)."""
    if hf.endswith(".self_attn.q_proj.weight"):
        return int(config["num_attention_heads"])
    if hf.endswith(".self_attn.k_proj.weight"):
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def permute_rows(w: np.ndarray, n_head: int, inverse: bool = False) -> np.ndarray:
    """llama.cpp's q/k permutation of rows: (n_head, 2, d/2, K) -> (n_head, d/2, 2, K), or its inverse.

    # ref: convert_hf_to_gguf.py LlamaModel.permute; spec gguf-bitnet-cpp.md §4.4
    """
    m = w.shape[0]
    if m % (2 * n_head):
        raise LayoutError(f"rows {m} are not a multiple of 2 * {n_head} heads; the llama RoPE permutation cannot "
                          "apply", shape=tuple(w.shape))
    split = (n_head, m // n_head // 2, 2) if inverse else (n_head, 2, m // n_head // 2)
    return np.ascontiguousarray(w.reshape(*split, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


# ------------------------------------------------------------------------------------------------ KV sets


@dataclass(frozen=True)
class Meta:
    """Everything the KV builders read: the arch, the config, and facts about the output file."""

    arch: str
    config: dict
    name: str
    file_type: int
    n_params: int
    quantized_by_llama_quantize: bool  # i2_s: the file llama-quantize would write
    add_prefix_space: bool | None = None
    hidden_activation: str | None = None  # written as <arch>.hidden_activation when set
    warning: str | None = None  # written as bitconv.warning (a --force'd file that runs correctly nowhere)

    def hp(self, *keys: str) -> Any:
        for k in keys:
            if self.config.get(k) is not None:
                return self.config[k]
        return None

    @property
    def n_head(self) -> int:
        return int(self.hp("num_attention_heads", "n_head"))

    @property
    def head_dim(self) -> int:
        return int(self.hp("head_dim") or int(self.hp("hidden_size")) // self.n_head)

    @property
    def rope_theta(self) -> float | None:
        rp = self.config.get("rope_parameters")
        return self.hp("rope_theta") or (rp.get("rope_theta") if isinstance(rp, dict) else None)

    @property
    def linear_rope_factor(self) -> float | None:
        rs = self.config.get("rope_scaling")
        if isinstance(rs, dict) and (rs.get("type") or rs.get("rope_type")) == "linear" and "factor" in rs:
            return float(rs["factor"])
        return None


def _a(m: Meta, key: str) -> str:
    return f"{m.arch}.{key}"


def _opt(make: Callable[[str, Any], KV], key: str, value: Any) -> KV | None:
    return None if value is None else make(key, value)


def title(name: str) -> str:
    """Upstream's name rule: words split on '-', lower-case words capitalised unless a version or a number."""
    words = name.strip().replace("-", " ").split()
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(\.\d+)*|\d.*)$", w) else w for w in words)


def size_label(n: int) -> str:
    """Upstream's general.size_label: parameters rounded to at least two digits, e.g. 1001728 -> "1.0M"."""
    limit, suffix = next(((lim, suf) for lim, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M")) if n > lim), (1e3, "K"))
    scaled = n / limit
    digits = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{digits}f}{suffix}"


# field id -> builder (None = not written for this model)
FIELDS: dict[str, Callable[[Meta], KV | None]] = {
    "architecture": lambda m: KV.string("general.architecture", m.arch),
    "type": lambda m: KV.string("general.type", "model"),
    "name": lambda m: KV.string("general.name", m.name),
    "title_name": lambda m: KV.string("general.name", title(m.name)),
    "size_label": lambda m: KV.string("general.size_label", size_label(m.n_params)),
    "vocab_size": lambda m: KV.u32(_a(m, "vocab_size"), m.hp("vocab_size")),
    "block_count": lambda m: KV.u32(_a(m, "block_count"), m.hp("num_hidden_layers", "n_layers", "n_layer")),
    "context_length": lambda m: _opt(KV.u32, _a(m, "context_length"), m.hp("max_position_embeddings", "n_ctx")),
    "embedding_length": lambda m: KV.u32(_a(m, "embedding_length"), m.hp("hidden_size", "n_embd")),
    "feed_forward_length": lambda m: _opt(KV.u32, _a(m, "feed_forward_length"), m.hp("intermediate_size")),
    "head_count": lambda m: KV.u32(_a(m, "attention.head_count"), m.n_head),
    "head_count_kv": lambda m: _opt(KV.u32, _a(m, "attention.head_count_kv"), m.hp("num_key_value_heads")),
    "rope_freq_base": lambda m: _opt(KV.f32, _a(m, "rope.freq_base"), m.rope_theta),
    "rms_eps": lambda m: _opt(KV.f32, _a(m, "attention.layer_norm_rms_epsilon"), m.hp("rms_norm_eps")),
    # upstream reads hparams through transformers' AutoConfig, whose LlamaConfig always has head_dim
    "key_length": lambda m: _opt(KV.u32, _a(m, "attention.key_length"), _autoconfig_head_dim(m)),
    "value_length": lambda m: _opt(KV.u32, _a(m, "attention.value_length"), _autoconfig_head_dim(m)),
    "rope_dims": lambda m: KV.u32(_a(m, "rope.dimension_count"), m.head_dim),
    "file_type": lambda m: KV.u32("general.file_type", m.file_type),
    "rope_scaling_linear_1": lambda m: KV.string(_a(m, "rope.scaling.type"), "linear"),
    "rope_scaling_factor_1": lambda m: KV.f32(_a(m, "rope.scaling.factor"), 1.0),
    "rope_scaling_type": lambda m: _opt(KV.string, _a(m, "rope.scaling.type"),
                                        "linear" if m.linear_rope_factor else None),
    "rope_scaling_factor": lambda m: _opt(KV.f32, _a(m, "rope.scaling.factor"), m.linear_rope_factor),
    "add_bos_true": lambda m: KV.boolean("tokenizer.ggml.add_bos_token", True),
    "add_space_prefix": lambda m: _opt(KV.boolean, "tokenizer.ggml.add_space_prefix", m.add_prefix_space),
    "hidden_activation": lambda m: _opt(KV.string, _a(m, "hidden_activation"), m.hidden_activation),
    "warning": lambda m: _opt(KV.string, WARNING_KEY, m.warning),
    "quantization_version": lambda m: KV.u32("general.quantization_version", GGUF_QUANTIZATION_VERSION),
    "quantization_version_if_quantize": lambda m: KV.u32("general.quantization_version", GGUF_QUANTIZATION_VERSION)
    if m.quantized_by_llama_quantize else None,
}
_AUTOCONFIG_HEAD_DIM = ("llama",)  # model_types whose transformers config carries head_dim


def _autoconfig_head_dim(m: Meta) -> int | None:
    if m.hp("head_dim") is not None or m.config.get("model_type") in _AUTOCONFIG_HEAD_DIM:
        return m.head_dim
    return None


VOCAB = "VOCAB"  # where the tokenizer KVs go
WARNING_KEY = "bitconv.warning"

_HF_COMMON = ("block_count", "context_length", "embedding_length", "feed_forward_length", "head_count",
              "head_count_kv", "rope_freq_base", "rms_eps")


@dataclass(frozen=True)
class Profile:
    fields: tuple[str, ...]
    vocab_style: str  # key of vocab.STYLES


PROFILES: dict[str, Profile] = {
    "bitnet.cpp": Profile(("architecture", "name", *_HF_COMMON, "file_type", "vocab_size", "rope_scaling_linear_1",
                           "rope_scaling_factor_1", "hidden_activation", VOCAB, "quantization_version_if_quantize",
                           "warning"), "bitnet.cpp"),
    "bitnet.cpp-llama": Profile(("architecture", "name", *_HF_COMMON, "file_type", "vocab_size", "rope_dims",
                                 "rope_scaling_type", "rope_scaling_factor", "add_space_prefix", "hidden_activation",
                                 VOCAB, "quantization_version_if_quantize", "warning"), "bitnet.cpp"),
    "convert-ms": Profile(("architecture", "name", "vocab_size", "context_length", "embedding_length", "block_count",
                           "feed_forward_length", "rope_dims", "head_count", "head_count_kv", "add_bos_true",
                           "rms_eps", "rope_freq_base", "file_type", "hidden_activation", VOCAB,
                           "quantization_version_if_quantize", "warning"),
                          "convert-ms"),
    "upstream": Profile(("architecture", "type", "title_name", "size_label", *_HF_COMMON, "key_length",
                         "value_length", "file_type", "rope_scaling_linear_1", "rope_scaling_factor_1",
                         "quantization_version", "hidden_activation", VOCAB, "warning"), "upstream"),
    "upstream-llama": Profile(("architecture", "type", "title_name", "size_label", "block_count", "context_length",
                               "embedding_length", "feed_forward_length", "head_count", "head_count_kv",
                               "rope_scaling_type", "rope_scaling_factor", "rope_freq_base", "rms_eps", "key_length",
                               "value_length", "file_type", "vocab_size", "rope_dims", "quantization_version",
                               "add_space_prefix", "hidden_activation", VOCAB, "warning"), "upstream"),
}

# (arch, tool that makes the target type) -> profile
PROFILE_OF: dict[tuple[str, str], str] = {
    ("bitnet", "bitnet.cpp"): "bitnet.cpp", ("bitnet", "upstream"): "upstream",
    ("llama", "bitnet.cpp"): "bitnet.cpp-llama", ("llama", "upstream"): "upstream-llama",
    ("bitnet-b1.58", "bitnet.cpp"): "convert-ms", ("bitnet-b1.58", "upstream"): "convert-ms",
    ("bitnet-25", "bitnet.cpp"): "convert-ms", ("bitnet-25", "upstream"): "convert-ms",
}


def build_kvs(profile: str, meta: Meta, vocab: list[KV]) -> list[KV]:
    """The KV list of `profile`, with the tokenizer KVs at its VOCAB slot (keys already written are not repeated)."""
    out: list[KV] = []
    for f in PROFILES[profile].fields:
        if f == VOCAB:
            seen = {kv.key for kv in out}
            out += [kv for kv in vocab if kv.key not in seen]
        elif (kv := FIELDS[f](meta)) is not None:
            out.append(kv)
    return out
