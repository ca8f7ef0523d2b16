"""Checks that a checkpoint's config agrees with its weights, and refusal of pickled weight files.

`check_config` runs when a source is opened (HF folders and GGUF files), before anything is planned or written:
config sizes must be positive integers, and every tensor whose shape the config fixes (embeddings, lm_head, final
norm, the seven projections of every layer) must have that shape; layers must be exactly 0 .. num_hidden_layers-1,
each with its seven projections. A mismatch would give an output no runtime loads, so it is refused in one line.

Pickled weights (`pytorch_model.bin`, `.pt`, `.pth`, `.pkl`, `.ckpt`) are never opened with pickle or torch.load:
unpickling runs code chosen by whoever wrote the file. bitconv reads safetensors and GGUF only.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bitconv.errors import SourceError
from bitconv.naming import TERNARY_PROJECTIONS

if TYPE_CHECKING:
    from bitconv.sources import ModelTensor

# Config fields that size tensors: each, when present and not null, must be a positive integer.
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "head_dim")

# Expected shapes, in terms of the sizes below ("q" = heads x head_dim rows, "kv" = kv heads x head_dim rows).
_TOP_SHAPES: dict[str, tuple[str, ...]] = {
    "model.embed_tokens.weight": ("vocab_size", "hidden_size"),
    "lm_head.weight": ("vocab_size", "hidden_size"),
    "model.norm.weight": ("hidden_size",),
}
_LAYER_SHAPES: dict[str, tuple[str, ...]] = {
    "self_attn.q_proj.weight": ("q", "hidden_size"),
    "self_attn.k_proj.weight": ("kv", "hidden_size"),
    "self_attn.v_proj.weight": ("kv", "hidden_size"),
    "self_attn.o_proj.weight": ("hidden_size", "q"),
    "mlp.gate_proj.weight": ("intermediate_size", "hidden_size"),
    "mlp.up_proj.weight": ("intermediate_size", "hidden_size"),
    "mlp.down_proj.weight": ("hidden_size", "intermediate_size"),
}
_EXPLAIN = {"q": "num_attention_heads x head_dim", "kv": "num_key_value_heads x head_dim"}
_PROJECTION_SUFFIXES = tuple(s for s in _LAYER_SHAPES if s.split(".")[1] in TERNARY_PROJECTIONS)
_LAYER = re.compile(r"model\.layers\.(0|[1-9]\d*)\.(.+)")


# ------------------------------------------------------------------------------------------------ config schema
# One declared schema for the config.json keys bitconv (or a runtime it writes for) reads: key -> (rule, check).
# Checked before any work; a value that breaks its rule is refused naming the key, the value and the rule.
# Keys not listed are carried over untouched and never interpreted.

def _is_int(v: object) -> bool:
    return type(v) is int


def _is_num(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


_MAX = 1 << 31  # sizes, ids and lengths beyond this describe no model bitconv (or any runtime) can load
_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "positive": ("a positive integer below 2^31", lambda v: _is_int(v) and 0 < v < _MAX),
    "positive?": ("null or a positive integer below 2^31", lambda v: v is None or (_is_int(v) and 0 < v < _MAX)),
    "eps": ("a number with 0 < eps < 1", lambda v: _is_num(v) and 0 < v < 1),
    "theta": ("a positive number", lambda v: _is_num(v) and v > 0),
    "number": ("a finite number", lambda v: _is_num(v) and type(v) is not bool),
    "bool": ("true or false", lambda v: type(v) is bool),
    "str": ("a string", lambda v: isinstance(v, str)),
    "str?": ("null or a string", lambda v: v is None or isinstance(v, str)),
    "dict?": ("null or an object", lambda v: v is None or isinstance(v, dict)),
    "names": ("a non-empty list of class names", lambda v: isinstance(v, list) and bool(v)
              and all(isinstance(a, str) for a in v)),
    "token?": ("null, a token id (0 <= id < 2^31) or a list of them",
               lambda v: v is None or (_is_int(v) and 0 <= v < _MAX)
               or (isinstance(v, list) and all(_is_int(i) and 0 <= i < _MAX for i in v))),
    "strs?": ("null or a list of strings", lambda v: v is None or (isinstance(v, list)
                                                                   and all(isinstance(i, str) for i in v))),
}
CONFIG_SCHEMA: dict[str, str] = {
    "hidden_size": "positive", "intermediate_size": "positive", "num_hidden_layers": "positive",
    "num_attention_heads": "positive", "num_key_value_heads": "positive?", "vocab_size": "positive",
    "head_dim": "positive?", "max_position_embeddings": "positive?", "pretraining_tp": "positive?",
    "rms_norm_eps": "eps", "rope_theta": "theta", "initializer_range": "number",
    "hidden_act": "str", "model_type": "str", "torch_dtype": "str?", "dtype": "str?", "_name_or_path": "str?",
    "license": "str?", "license_link": "str?",
    "architectures": "names", "tie_word_embeddings": "bool", "attention_bias": "bool", "mlp_bias": "bool",
    "use_cache": "bool", "rope_interleaved": "bool", "add_bos_token": "bool",
    "bos_token_id": "token?", "eos_token_id": "token?", "pad_token_id": "token?",
    "rope_scaling": "dict?", "rope_parameters": "dict?", "quantization_config": "dict?", "auto_map": "dict?",
    "bitconv": "dict?",
}
QUANT_SCHEMA: dict[str, str] = {
    "quant_method": "str", "linear_class": "str", "quantization_mode": "str", "modules_to_not_convert": "strs?",
    "use_rms_norm": "bool", "rms_norm_eps": "eps",
}
# Keys every config of a model bitconv converts must hold (per family; an unknown family needs the same sizes).
REQUIRED: dict[str, tuple[str, ...]] = {
    "default": ("hidden_size", "num_hidden_layers", "num_attention_heads"),
}


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_schema(config: Mapping, where: Path, label: str = "config.json") -> None:
    """Refuse (SourceError naming key, value and rule) a config whose values break `CONFIG_SCHEMA`."""
    for key in REQUIRED["default"]:
        if key not in config:
            raise SourceError(f"{label} has no {key!r} (required: {', '.join(REQUIRED['default'])})", path=where)
    for table, cfg, prefix in ((CONFIG_SCHEMA, config, ""),
                               (QUANT_SCHEMA, config.get("quantization_config") or {}, "quantization_config.")):
        for key, rule in table.items():
            if key in cfg:
                text, ok = _RULES[rule]
                if not ok(cfg[key]):
                    raise SourceError(f"{label} {prefix}{key} is {_short(cfg[key])}, not {text}", path=where)
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads")
    if kv is not None and kv > heads:
        raise SourceError(f"{label} num_key_value_heads {kv} is more than num_attention_heads {heads}", path=where)


def _sizes(config: Mapping, where: Path, label: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for key in SIZE_FIELDS:
        v = config.get(key)
        if v is None:
            continue
        if type(v) is not int or v <= 0:
            raise SourceError(f"{label} {key} is {v!r}, not a positive integer", path=where)
        sizes[key] = v
    heads, hidden = sizes.get("num_attention_heads"), sizes.get("hidden_size")
    kv = sizes.get("num_key_value_heads", heads)
    if heads is not None and kv is not None and heads % kv:
        raise SourceError(f"{label} num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}",
                          path=where)
    head_dim = sizes.get("head_dim")
    if head_dim is None and heads is not None and hidden is not None:
        if hidden % heads:
            raise SourceError(f"{label} hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                              "(and there is no head_dim)", path=where)
        head_dim = hidden // heads
    if head_dim is not None and heads is not None:
        sizes["q"] = heads * head_dim
        if kv is not None:
            sizes["kv"] = kv * head_dim
    return sizes


def _check_shape(name: str, shape: tuple[int, ...], dims: tuple[str, ...], sizes: dict[str, int], where: Path,
                 label: str) -> None:
    if len(shape) != len(dims):
        raise SourceError(f"is {len(shape)}-D, expected {len(dims)}-D", path=where, tensor=name, shape=shape)
    for got, dim in zip(shape, dims):
        if dim in sizes and got != sizes[dim]:
            why = f"{dim} {sizes[dim]}" if dim not in _EXPLAIN else f"{_EXPLAIN[dim]} = {sizes[dim]}"
            raise SourceError(f"does not match {label}: {why}", path=where, tensor=name, shape=shape,
                              hint=f"{label} and the weights come from different models")


def check_config(config: Mapping, tensors: Mapping[str, ModelTensor], where: Path, label: str = "config.json") \
        -> None:
    """Raise SourceError (one line, naming `where`) unless `config` and the tensors' logical shapes agree.

    `label` names the config in messages ("config.json", or "GGUF metadata" for a config rebuilt from KVs).
    """
    check_schema(config, where, label)
    sizes = _sizes(config, where, label)
    layers: dict[int, set[str]] = {}
    for name, t in tensors.items():
        if name in _TOP_SHAPES:
            _check_shape(name, t.shape, _TOP_SHAPES[name], sizes, where, label)
            continue
        m = _LAYER.fullmatch(name)
        if m is None:
            continue
        layers.setdefault(int(m.group(1)), set()).add(m.group(2))
        if m.group(2) in _LAYER_SHAPES:
            _check_shape(name, t.shape, _LAYER_SHAPES[m.group(2)], sizes, where, label)
    n = sizes.get("num_hidden_layers")
    if n is None:
        return
    extra = sorted(i for i in layers if i >= n)
    if extra:
        raise SourceError(f"the weights hold layer {extra[0]} but {label} num_hidden_layers is {n}", path=where,
                          hint=f"{label} and the weights come from different models")
    for i in range(n):
        missing = [s for s in _PROJECTION_SUFFIXES if s not in layers.get(i, set())]
        if missing:
            raise SourceError(f"{label} num_hidden_layers is {n} but tensor 'model.layers.{i}.{missing[0]}' is "
                              f"missing ({len(missing)} of the 7 projections of layer {i})", path=where,
                              hint="the checkpoint is incomplete")


# ------------------------------------------------------------------------------------------------ pickled weights

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PICKLE_REFUSAL = ("pickled weights are never loaded (unpickling runs code from the file); bitconv reads safetensors "
                  "and GGUF only")
PICKLE_HINT = "convert the checkpoint to safetensors with tools you trust, then run bitconv on that"


def sniff_pickle(head: bytes) -> str | None:
    """What a file's first bytes say it is, when it is a pickle or a torch.save zip; None otherwise."""
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    return None


def refuse_pickle(path: Path, what: str | None = None) -> SourceError:
    """The error for a pickled weight file (returned, for the caller to raise)."""
    return SourceError(f"{what or 'a pickled file'}: {PICKLE_REFUSAL}", path=path, hint=PICKLE_HINT)


def pickled_in(folder: Path) -> list[Path]:
    """Pickled weight files in `folder` (by name), e.g. pytorch_model.bin."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    except OSError:
        return []


def not_a_checkpoint(path: Path) -> SourceError:
    """The error for a SRC that is neither a folder nor a .gguf/.safetensors file (a pickle gets its own)."""
    from bitconv import safeio

    try:
        fd = safeio.open_input(path, user_named=True)  # a FIFO or device is refused here, never read (no hang)
    except SourceError as e:
        return e
    try:
        what = sniff_pickle(os.read(fd, 8))
    except OSError:
        what = None
    finally:
        os.close(fd)
    if what is not None or path.suffix.lower() in PICKLE_SUFFIXES:
        return refuse_pickle(path, what)
    return SourceError("not a checkpoint: expected a folder with config.json and *.safetensors, or a .gguf file",
                       path=path)
