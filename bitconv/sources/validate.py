"""Checks that a checkpoint's config agrees with its weights.

`check_config` runs when a source is opened (HF folders and GGUF files), before anything is planned or written:
config sizes must be positive integers, and every tensor whose shape the config fixes (embeddings, lm_head, final
norm, the seven projections of every layer) must have that shape; layers must be exactly 0 .. num_hidden_layers-1,
each with its seven projections. A mismatch would give an output no runtime loads, so it is refused in one line.

Pickled weight files are refused by `bitconv.core.pickled`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bitconv.core.errors import SourceError
from bitconv.core.naming import PROJECTION_SHAPES, TERNARY_PROJECTIONS

if TYPE_CHECKING:
    from bitconv.sources.checkpoint import ModelTensor

# Config fields that size tensors: each, when present and not null, must be a positive integer.
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "head_dim")

# Expected shapes, in terms of the sizes below ("q" = heads x head_dim rows, "kv" = kv heads x head_dim rows).
_TOP_SHAPES: dict[str, tuple[str, ...]] = {
    "model.embed_tokens.weight": ("vocab_size", "hidden_size"),
    "lm_head.weight": ("vocab_size", "hidden_size"),
    "model.norm.weight": ("hidden_size",),
}
_LAYER_SHAPES: dict[str, tuple[str, ...]] = {f"{m}.weight": dims for m, dims in PROJECTION_SHAPES.items()}
_EXPLAIN = {"q": "num_attention_heads x head_dim", "kv": "num_key_value_heads x head_dim"}
_PROJECTION_SUFFIXES = tuple(s for s in _LAYER_SHAPES if s.split(".")[1] in TERNARY_PROJECTIONS)
_LAYER = re.compile(r"model\.layers\.(0|[1-9]\d*)\.(.+)")


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
    arch = config.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise SourceError(f"{label} architectures is {arch!r}, not a list of class names", path=where)
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
