"""Deterministic generator of tiny bf16 BitNet b1.58 "master" checkpoints in Hugging Face layout.

`make_tiny(out_dir, arch)` writes a complete model directory (config, weights, generation config, a real tokenizer)
for one of three BitNet families, small enough for unit tests. Everything is computed from the arguments: the same
arguments give byte-identical files. Tokenizers are built by code here (a small BPE trainer over a built-in English
text); no tokenizer library and no network are used.

Weights: one `torch.Generator().manual_seed(seed)` draws `torch.randn(shape)` for every tensor in the arch's
documented order (`ArchSpec.head`, then `ArchSpec.layer` for each layer, then `ArchSpec.tail`, then `lm_head` when
untied), mapped by kind (linear `x*0.02`, embedding `x*0.5`, norm `1+0.2*x`) and cast to bf16. With the seeds and
shapes of the golden reference cases this reproduces their `input/model.safetensors` byte for byte (and, for the
1bitLLM-style cases, their `config.json`); see fixtures/README.md.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from bitconv.core.naming import PROJECTION_SHAPES
from bitconv.formats.gguf.hf_tokenizer import SPM_PIECE_TYPE, spm_model_bytes

# --------------------------------------------------------------------------------------------------------------------
# Static tables: tensors, configs, architectures, variants
# --------------------------------------------------------------------------------------------------------------------

# module name (without ".weight"; layer modules relative to model.layers.N) -> (shape as size names, init kind).
# Size names: V vocab, H hidden (= heads * head_dim), KV kv_heads * head_dim, I intermediate. The projections' shapes
# are the one table's (`core.naming.PROJECTION_SHAPES`), in these names.
_SIZE_NAME = {"q": "H", "kv": "KV", "hidden_size": "H", "intermediate_size": "I"}
_TENSORS: dict[str, tuple[tuple[str, ...], str]] = {
    "model.embed_tokens": (("V", "H"), "embed"),
    "model.norm": (("H",), "norm"),
    "lm_head": (("V", "H"), "linear"),
    "input_layernorm": (("H",), "norm"),
    **{m: ((_SIZE_NAME[o], _SIZE_NAME[i]), "linear") for m, (o, i) in PROJECTION_SHAPES.items()},
    "self_attn.attn_sub_norm": (("H",), "norm"),
    "self_attn.inner_attn_ln": (("H",), "norm"),
    "post_attention_layernorm": (("H",), "norm"),
    "mlp.ffn_sub_norm": (("I",), "norm"),
    "mlp.ffn_layernorm": (("I",), "norm"),
}

_INIT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x * 0.02,
    "embed": lambda x: x * 0.5,
    "norm": lambda x: 1 + 0.2 * x,
}


@dataclass(frozen=True)
class _Var:
    """Placeholder in a config template, filled from the resolved sizes and token ids."""

    key: str


_BITNET_2B4T_CONFIG = {
    "architectures": ["BitNetForCausalLM"],
    "model_type": "bitnet",
    "hidden_act": "relu2",
    "hidden_size": _Var("hidden_size"),
    "intermediate_size": _Var("intermediate_size"),
    "num_hidden_layers": _Var("num_hidden_layers"),
    "num_attention_heads": _Var("num_attention_heads"),
    "num_key_value_heads": _Var("num_key_value_heads"),
    "vocab_size": _Var("vocab_size"),
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "bos_token_id": _Var("bos_token_id"),
    "eos_token_id": _Var("eos_token_id"),
    "tie_word_embeddings": _Var("tie_word_embeddings"),
    "initializer_range": 0.02,
    "use_cache": True,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "torch_dtype": "bfloat16",
}

# Alphabetical, as save_pretrained writes it (the published HF1BitLLM / Falcon-E repos).
_LLAMA_BITNET_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": _Var("bos_token_id"),
    "eos_token_id": _Var("eos_token_id"),
    "head_dim": _Var("head_dim"),
    "hidden_act": "silu",
    "hidden_size": _Var("hidden_size"),
    "initializer_range": 0.02,
    "intermediate_size": _Var("intermediate_size"),
    "max_position_embeddings": 4096,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": _Var("num_attention_heads"),
    "num_hidden_layers": _Var("num_hidden_layers"),
    "num_key_value_heads": _Var("num_key_value_heads"),
    "pretraining_tp": 1,
    "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": _Var("tie_word_embeddings"),
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": _Var("vocab_size"),
}

# Key order of the golden 1bitLLM-style inputs (gguf-i2s / gguf-tl / gguf-tq), so those configs are reproducible.
_1BITLLM_CONFIG = {
    "architectures": ["BitnetForCausalLM"],
    "model_type": "llama",
    "hidden_size": _Var("hidden_size"),
    "intermediate_size": _Var("intermediate_size"),
    "num_attention_heads": _Var("num_attention_heads"),
    "num_key_value_heads": _Var("num_key_value_heads"),
    "num_hidden_layers": _Var("num_hidden_layers"),
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "vocab_size": _Var("vocab_size"),
    "bos_token_id": _Var("bos_token_id"),
    "eos_token_id": _Var("eos_token_id"),
    "hidden_act": "silu",
    "tie_word_embeddings": _Var("tie_word_embeddings"),
    "torch_dtype": "bfloat16",
}


@dataclass(frozen=True)
class ArchSpec:
    """One BitNet family: default seed and tying, tensor draw order, config template, tokenizer kind."""

    name: str
    seed: int
    tied: bool
    kv_heads: int  # default num_key_value_heads (4 heads by default)
    tokenizer: str  # key of _TOKENIZERS: "byte-bpe" (tokenizer.json) or "spm" (tokenizer.model)
    head: tuple[str, ...]  # top-level modules drawn before the layers
    layer: tuple[str, ...]  # per-layer modules, relative to model.layers.N
    tail: tuple[str, ...]  # top-level modules drawn after the layers (lm_head follows when untied)
    config: dict


ARCHS: dict[str, ArchSpec] = {
    "bitnet-2b4t": ArchSpec(
        name="bitnet-2b4t", seed=2001, tied=True, kv_heads=2, tokenizer="byte-bpe",
        head=("model.embed_tokens",),
        layer=("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "self_attn.attn_sub_norm", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
               "mlp.down_proj", "mlp.ffn_sub_norm"),
        tail=("model.norm",),
        config=_BITNET_2B4T_CONFIG,
    ),
    "llama-bitnet": ArchSpec(
        name="llama-bitnet", seed=2101, tied=False, kv_heads=2, tokenizer="byte-bpe",
        head=("model.embed_tokens",),
        layer=("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        tail=("model.norm",),
        config=_LLAMA_BITNET_CONFIG,
    ),
    "1bitllm": ArchSpec(
        name="1bitllm", seed=2201, tied=True, kv_heads=4, tokenizer="spm",
        head=("model.embed_tokens", "model.norm"),
        layer=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
               "self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
        tail=(),
        config=_1BITLLM_CONFIG,
    ),
}

_DEFAULT_SIZES = {"hidden_size": 256, "intermediate_size": 768, "num_layers": 2, "num_heads": 4, "vocab_size": 512}

# The fixture set written by fixtures/generate.py: variant directory name -> make_tiny keyword arguments.
VARIANTS: dict[str, dict] = {
    "bitnet-2b4t": {"arch": "bitnet-2b4t"},
    "bitnet-2b4t-untied": {"arch": "bitnet-2b4t", "tied": False},
    "bitnet-2b4t-sharded": {"arch": "bitnet-2b4t", "max_shard_bytes": 1_000_000},
    "llama-bitnet": {"arch": "llama-bitnet"},
    "llama-bitnet-tied": {"arch": "llama-bitnet", "tied": True},
    "1bitllm": {"arch": "1bitllm"},
    "1bitllm-untied": {"arch": "1bitllm", "tied": False},
}

_ST_METADATA = {"format": "pt"}

# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def make_tiny(
    out_dir: str | Path,
    arch: str = "bitnet-2b4t",
    *,
    tied: bool | None = None,
    seed: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    vocab_size: int | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write a tiny bf16 master checkpoint of `arch` (a key of `ARCHS`) into `out_dir` and return its path.

    `out_dir` must not exist or be empty. Written files: `config.json`, `generation_config.json`, the weights
    (`model.safetensors`, or when `max_shard_bytes` is given and the tensors total more than that,
    `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json` split the way transformers does), and the
    tokenizer (`tokenizer.json` for byte-level BPE archs, `tokenizer.model` for SentencePiece archs, plus
    `tokenizer_config.json` and `special_tokens_map.json`).

    Defaults: `tied` and `seed` from the arch, num_kv_heads from the arch (2, or 4 for 1bitllm), hidden 256,
    intermediate 768, 2 layers, 4 heads, vocab 512. The same arguments always produce byte-identical files.
    """
    spec = _arch(arch)
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive number of bytes, got {max_shard_bytes!r}")
    sizes = _resolve_sizes(
        spec, hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size,
    )
    tied = spec.tied if tied is None else tied
    tok = _TOKENIZERS[spec.tokenizer](sizes["vocab_size"], spec.config["max_position_embeddings"])
    values = {**sizes, "bos_token_id": tok.bos, "eos_token_id": tok.eos, "tie_word_embeddings": tied}
    files = {
        "config.json": _json_bytes(_fill(spec.config, values), newline=False),
        "generation_config.json": _json_bytes({"bos_token_id": tok.bos, "eos_token_id": tok.generation_eos}),
        **tok.files,
    }
    tensors = _draw_weights(spec, sizes, tied, spec.seed if seed is None else seed)
    out = _prepare_dir(Path(out_dir))
    for name, data in files.items():
        (out / name).write_bytes(data)
    _save_weights(out, tensors, max_shard_bytes)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Sizes, config, weights
# --------------------------------------------------------------------------------------------------------------------


def _arch(name: str) -> ArchSpec:
    if name not in ARCHS:
        raise ValueError(f"unknown arch {name!r}; choose one of: {', '.join(ARCHS)}")
    return ARCHS[name]


def _resolve_sizes(spec: ArchSpec, **given: int | None) -> dict[str, int]:
    """Config-named sizes plus the short size names used by _TENSORS (H, I, V, KV)."""
    s = {k: v if given.get(k) is None else given[k] for k, v in _DEFAULT_SIZES.items()}
    kv = spec.kv_heads if given.get("num_kv_heads") is None else given["num_kv_heads"]
    for name, value in {**s, "num_kv_heads": kv}.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if s["hidden_size"] % s["num_heads"] or s["num_heads"] % kv:
        raise ValueError(
            f"need hidden_size % num_heads == 0 and num_heads % num_kv_heads == 0, "
            f"got hidden_size={s['hidden_size']}, num_heads={s['num_heads']}, num_kv_heads={kv}"
        )
    head_dim = s["hidden_size"] // s["num_heads"]
    return {
        "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_layers"], "num_attention_heads": s["num_heads"], "num_key_value_heads": kv,
        "vocab_size": s["vocab_size"], "head_dim": head_dim,
        "H": s["hidden_size"], "I": s["intermediate_size"], "V": s["vocab_size"], "KV": kv * head_dim,
    }


def _fill(template: dict, values: dict) -> dict:
    return {k: values[v.key] if isinstance(v, _Var) else v for k, v in template.items()}


def _tensor_plan(spec: ArchSpec, n_layers: int, tied: bool) -> list[tuple[str, str]]:
    """(module name, _TENSORS key) in draw order."""
    layers = [(f"model.layers.{i}.{m}", m) for i in range(n_layers) for m in spec.layer]
    tail = spec.tail if tied else (*spec.tail, "lm_head")
    return [(m, m) for m in spec.head] + layers + [(m, m) for m in tail]


def _draw_weights(spec: ArchSpec, sizes: dict[str, int], tied: bool, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, key in _tensor_plan(spec, sizes["num_hidden_layers"], tied):
        dims, kind = _TENSORS[key]
        x = torch.randn([sizes[d] for d in dims], generator=gen)
        tensors[f"{module}.weight"] = _INIT[kind](x).to(torch.bfloat16)
    return tensors


def _save_weights(out: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> None:
    shards = _split_shards(tensors, max_shard_bytes) if max_shard_bytes else [list(tensors)]
    if len(shards) == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata=_ST_METADATA)
        return
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(out / filename), metadata=_ST_METADATA)
        weight_map.update(dict.fromkeys(names, filename))
    metadata = {
        "total_parameters": sum(t.numel() for t in tensors.values()),
        "total_size": sum(_nbytes(t) for t in tensors.values()),
    }
    index = {"metadata": metadata, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_bytes(_json_bytes(index, sort_keys=True))


def _split_shards(tensors: dict[str, torch.Tensor], limit: int) -> list[list[str]]:
    """huggingface_hub's split: greedy in key order; a tensor over the limit gets a shard of its own."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, t in tensors.items():
        n = _nbytes(t)
        if n > limit:
            shards.append([name])
            continue
        if size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    return shards + [current] if current else shards


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def _prepare_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; make_tiny needs a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _json_bytes(obj: object, *, newline: bool = True, sort_keys: bool = False) -> bytes:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + ("\n" if newline else "")
    return text.encode("utf-8")


@dataclass(frozen=True)
class _Tokenizer:
    files: dict[str, bytes]  # file name -> content
    bos: int
    eos: int
    generation_eos: int | list[int]


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def _special_tokens_map(names: dict[str, str]) -> dict:
    return {role: {k: v for k, v in _added_token(tok).items() if k != "special"} for role, tok in names.items()}


# --------------------------------------------------------------------------------------------------------------------
# BPE training (shared by both tokenizers)
# --------------------------------------------------------------------------------------------------------------------

# Built-in training text (lowercase, a small alphabet so that every SentencePiece vocab of 320+ holds its characters).
_CORPUS = """
the model reads a list of numbers and writes a list of numbers. each weight of a ternary model is minus one, zero
or plus one, and a single scale for the whole matrix brings the numbers back to the size they had before. the
converter reads the weights of the master model, rounds each weight to the nearest of the three values, and
writes them in the layout that the runtime expects. some layouts store four weights in a byte, some store five
weights in a byte, and some store the weights in blocks with the scale next to them.
a small model is good for tests. it has two layers, four heads and a short vocabulary, so the tests run in a
second and the files fit in a few megabytes. the numbers in the small model are random, so the text that it
writes is not meaningful, but the shapes and the names of the tensors are the same as in the large model.
the tokenizer turns the text into a list of tokens. it starts with the bytes of the text and then merges the
pairs that are seen most often in the training text, one pair at a time, until the vocabulary is full. the
same text and the same rules give the same merges every time, so the files are the same on every machine.
when the converter writes a model, it also writes the config, the generation config and the tokenizer files,
so that the runtime can load the model without any other files. the config names the architecture, the sizes
of the layers and the ids of the special tokens that begin and end the text.
there are three kinds of model here. the first has sub norms inside the attention and inside the feed forward
block, and its activation is the square of the relu. the second is a plain llama model whose linear layers are
rounded to ternary values while it runs. the third is the older model that named its sub norms in a different
way and used a sentencepiece tokenizer with byte fallback.
the weights are drawn from one random generator in a fixed order, the linear weights are small, the embedding
weights are larger, and the norm weights are close to one. then all of them are stored as brain floats of
sixteen bits, which keep the range of a float but only a few bits of the fraction.
a test loads the files, checks the names, the shapes and the types of the tensors, runs the model on a few
tokens, and checks that the tokenizer gives back the same text that it was given. if any of these checks
fails, the converter is not trusted with a real model until the problem is found and fixed.
"""


def _learn_merges(words: Counter, budget: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Greedy BPE over symbol tuples: merge the most frequent adjacent pair (ties: smallest pair) until `budget`
    new symbols exist or no pair occurs twice. Returns (merges, new symbols in creation order)."""
    merges: list[tuple[str, str]] = []
    new: list[str] = []
    known = {s for w in words for s in w}
    while len(new) < budget:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        best = min(pairs, key=lambda p: (-pairs[p], p), default=None)
        if best is None or pairs[best] < 2:
            break
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            new.append(best[0] + best[1])
        words = _apply_merge(words, best)
    return merges, new


def _apply_merge(words: Counter, pair: tuple[str, str]) -> Counter:
    merged: Counter = Counter()
    for word, count in words.items():
        out: list[str] = []
        i = 0
        while i < len(word):
            if word[i:i + 2] == pair:
                out.append(pair[0] + pair[1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        merged[tuple(out)] += count
    return merged


# --------------------------------------------------------------------------------------------------------------------
# Byte-level BPE tokenizer.json (GPT-2 / Llama-3 style)
# --------------------------------------------------------------------------------------------------------------------

_BPE_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_BPE_BOS, _BPE_EOS, _BPE_EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"

# Llama-3's pre-tokenizer regex (run by the tokenizers library) and an ASCII approximation used for training.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_TRAIN_SPLIT = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _byte_alphabet() -> tuple[list[str], dict[int, str]]:
    """GPT-2's bytes_to_unicode, listed in GPT-2 token-id order (printable bytes first)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    rest = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(rest)}
    return [table[b] for b in printable + rest], table


def _byte_words(table: dict[int, str]) -> Counter:
    words: Counter = Counter()
    for piece in _TRAIN_SPLIT.findall(_CORPUS.strip()):
        words[tuple(table[b] for b in piece.encode("utf-8"))] += 1
    return words


def _byte_bpe_tokenizer(vocab_size: int, max_positions: int) -> _Tokenizer:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json of a Llama-3-style byte-level BPE."""
    order, table = _byte_alphabet()
    budget = vocab_size - len(order) - len(_BPE_SPECIALS)
    if budget < 0:
        raise ValueError(f"vocab_size {vocab_size} < {len(order) + len(_BPE_SPECIALS)} (256 bytes + special tokens)")
    merges, new = _learn_merges(_byte_words(table), budget)
    vocab = {s: i for i, s in enumerate(order + new)}
    ids = {tok: len(vocab) + i for i, tok in enumerate(_BPE_SPECIALS)}
    tokenizer_config = {
        "added_tokens_decoder": {str(i): _added_token(tok) for tok, i in ids.items()},
        "bos_token": _BPE_BOS,
        "chat_template": _CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": _BPE_EOS,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_positions,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    files = {
        "tokenizer.json": _json_bytes(_tokenizer_json(vocab, merges, ids)),
        "tokenizer_config.json": _json_bytes(tokenizer_config),
        "special_tokens_map.json": _json_bytes(_special_tokens_map({"bos_token": _BPE_BOS, "eos_token": _BPE_EOS})),
    }
    return _Tokenizer(files, ids[_BPE_BOS], ids[_BPE_EOS], [ids[_BPE_EOS], ids[_BPE_EOT]])


def _tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]], special_ids: dict[str, int]) -> dict:
    bos = {"SpecialToken": {"id": _BPE_BOS, "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, **_added_token(tok)} for tok, i in special_ids.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": _BPE_BOS, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {_BPE_BOS: {"id": _BPE_BOS, "ids": [special_ids[_BPE_BOS]], "tokens": [_BPE_BOS]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
            "vocab": vocab, "merges": [list(m) for m in merges],
        },
    }


# --------------------------------------------------------------------------------------------------------------------
# SentencePiece tokenizer.model (Llama style: BPE with byte fallback), serialized with a tiny protobuf writer
# --------------------------------------------------------------------------------------------------------------------

_SPM_SPACE = "\u2581"
_SPM_SPECIALS = (("<unk>", "unknown"), ("<s>", "control"), ("</s>", "control"))


def _spm_pieces(vocab_size: int) -> list[tuple[str, float, str]]:
    """Specials, 256 byte pieces, then learned merges (scores 0, -1, ...), then single characters (lower scores)."""
    fixed = [(p, 0.0, t) for p, t in _SPM_SPECIALS] + [(f"<0x{b:02X}>", 0.0, "byte") for b in range(256)]
    slots = vocab_size - len(fixed)
    if slots < 0:
        raise ValueError(f"vocab_size {vocab_size} < {len(fixed)} (<unk>, <s>, </s> + 256 byte pieces)")
    words = Counter(tuple(_SPM_SPACE + w) for w in _CORPUS.split())
    chars = Counter()
    for word, count in words.items():
        for ch in word:
            chars[ch] += count
    singles = sorted(chars, key=lambda c: (-chars[c], c))[:slots]
    _, merged = _learn_merges(words, slots - len(singles))
    learned = [(p, float(-i), "normal") for i, p in enumerate(merged + singles)]
    return fixed + learned


def _spm_model_bytes(pieces: list[tuple[str, float, str]]) -> bytes:
    return spm_model_bytes(((p, sc, SPM_PIECE_TYPE[t]) for p, sc, t in pieces), byte_fallback=True, unk_id=0,
                           bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)


def _spm_tokenizer(vocab_size: int, max_positions: int) -> _Tokenizer:
    """tokenizer.model, tokenizer_config.json, special_tokens_map.json of a Llama-style SentencePiece BPE."""
    names = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_token(p) for i, (p, _) in enumerate(_SPM_SPECIALS)},
        **names,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": max_positions,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    files = {
        "tokenizer.model": _spm_model_bytes(_spm_pieces(vocab_size)),
        "tokenizer_config.json": _json_bytes(tokenizer_config),
        "special_tokens_map.json": _json_bytes(_special_tokens_map(names)),
    }
    return _Tokenizer(files, 1, 2, 2)


_TOKENIZERS: dict[str, Callable[[int, int], _Tokenizer]] = {"byte-bpe": _byte_bpe_tokenizer, "spm": _spm_tokenizer}
