"""A GGUF file as a checkpoint: HF tensor names and shapes, ternary projections decoded, config rebuilt from the KVs.

* Names: GGUF -> HF by architecture (`bitconv.formats.gguf.metadata.hf_name`); the sub-norms get the family's spelling
  (1bitLLM `inner_attn_ln` / `ffn_layernorm` for arch `bitnet`, `attn_sub_norm` / `ffn_sub_norm` for
  `bitnet-b1.58` / `bitnet-25`). For arch `llama` the q/k RoPE permutation is undone.
* Ternary projections: every GGML type a registered layout declares (`ggml_type_layouts`), through that layout's
  `unpack`; tiled layouts need the `kernel_config.ini` they were packed with, next to the file
  (`<name>.kernel_config.ini` or `kernel_config.ini`).
  F32/F16/BF16 projections (a converter's f32/f16 file) give codes = sign, scale = max|w| when the values are exactly
  ternary x scale, and are ternarized like a master otherwise.
* Passthrough: F32/F16/BF16 tensors are plain stored tensors (copied byte for byte); Q8_0 ones are dequantized to
  float32 by a loader.
* config.json: architectures / model_type / hidden_act by arch, sizes from the `<arch>.*` KVs, vocab_size from
  token_embd, tie_word_embeddings from the absence of output.weight, special token ids from `tokenizer.ggml.*`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from bitconv.core import naming
from bitconv.core.errors import LayoutError, SourceError
from bitconv.core.lazytorch import torch
from bitconv.core.tensors import Ternary, checked_scale
from bitconv.formats.gguf.hf_tokenizer import hf_tokenizer_files
from bitconv.formats.gguf.metadata import ARCHS, GGUFArch, hf_name, permute_heads, permute_rows, read_arch
from bitconv.formats.gguf.quants import dequantize_q8_0
from bitconv.formats.gguf.reader import GGUFFile, GGUFTensor, read_gguf
from bitconv.formats.gguf.types import by_id
from bitconv.formats.safetensors import TensorInfo, pread_exact
from bitconv.layouts import Layout, get_layout, ggml_type_layouts, kernel_kinds, layout_class
from bitconv.layouts.kernel_config import INI_NAME, KernelConfig
from bitconv.layouts.runtimes import ACTIVATIONS, default_activation
from bitconv.quant import ternarize
from bitconv.sources import validate
from bitconv.sources.checkpoint import Checkpoint, ModelTensor
from bitconv.sources.safetensors import with_file

# GGML type -> ternary layout name, from what each layout declares
PACKED = ggml_type_layouts()
FLOATS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
# `<arch>.*` KVs the config is built from, and what each must hold (a corrupt file can hold any value type).
_POSITIVE_INT_KVS = ("embedding_length", "attention.head_count", "attention.head_count_kv", "block_count",
                     "feed_forward_length", "attention.key_length", "rope.dimension_count", "context_length",
                     "vocab_size")
_FLOAT_KVS = ("attention.layer_norm_rms_epsilon", "rope.freq_base")


def open_gguf(path: str | Path, dialect: str = "auto", compute: str = "float32") -> Checkpoint:
    """Open a GGUF file (ternary projections of any registered GGUF layout, or F32/F16/BF16) as a Checkpoint;
    `compute`: the arithmetic float projections are ternarized in."""
    p = Path(path)
    g = read_gguf(p, dialect)
    if g.arch not in ARCHS:
        raise SourceError(f"GGUF architecture {g.arch!r} is not one bitconv reads ({', '.join(ARCHS)})", path=p)
    arch = read_arch(g.arch, file_activation(g))
    config = gguf_config(g, arch)
    layouts: dict[str, Layout] = {}
    tensors: dict[str, ModelTensor] = {}
    for t in g.tensors.values():
        name = hf_name(t.name, arch)
        if name is None:
            raise SourceError("tensor has no HF counterpart in a BitNet model (bitconv does not read extra tensors "
                              "such as per-tensor .scale)", path=p, tensor=t.name)
        tensors[name] = _tensor(g, t, name, arch, config, layouts, compute)
    validate.check_config(config, tensors, p, "GGUF metadata")
    packed = sorted({lay.name for lay in layouts.values()})
    return Checkpoint(p, "gguf", config, tensors, [], [p], layout=packed[0] if len(packed) == 1 else
                      ("+".join(packed) or None), quant_compute=compute)


def file_activation(g: GGUFFile) -> str:
    """The FFN activation a GGUF declares (`<arch>.hidden_activation`), else its arch's graph default."""
    key = f"{g.arch}.hidden_activation"
    act = g.get(key)
    if act is None:
        return default_activation(g.arch)
    if act not in ACTIVATIONS:
        raise SourceError(f"GGUF metadata {key} is {act!r}; bitconv reads {' or '.join(ACTIVATIONS)}", path=g.path)
    return act


def _tensor(g: GGUFFile, t: GGUFTensor, name: str, arch: GGUFArch, config: dict,
            layouts: dict[str, Layout], compute: str) -> ModelTensor:
    raw = TensorInfo(t.name, "U8", (t.nbytes,), g.path, t.offset, t.nbytes)
    tname = t.type.name
    if naming.is_ternary(name, len(t.shape)):
        heads = permute_heads(name, config) if arch.permute_qk else None
        if tname in PACKED:
            layout = layouts.setdefault(tname, _layout(g, tname))
            return ModelTensor(name, t.shape, "U8", [raw], _packed_loader(g, t, layout, heads))
        if tname in FLOATS:
            return ModelTensor(name, t.shape, tname, [raw], _float_loader(g, t, heads), compute=compute)
        raise SourceError(f"projection weight has type {tname}, which bitconv cannot decode", path=g.path,
                          tensor=t.name, hint=_collision_hint(g, t))
    if tname in FLOATS:
        return ModelTensor(name, t.shape, tname, [TensorInfo(name, tname, t.shape, g.path, t.offset, t.nbytes)])
    if tname == "Q8_0":
        def load() -> torch.Tensor:
            return torch.from_numpy(dequantize_q8_0(g.read(t), t.shape))

        def rows(r0: int, r1: int) -> torch.Tensor:  # Q8_0 blocks never cross a row: rows decode alone
            row_bytes = t.nbytes // t.shape[0]
            buf = np.empty((r1 - r0) * row_bytes, dtype=np.uint8)
            pread_exact(g.path, t.offset + r0 * row_bytes, memoryview(buf), t.name)
            return torch.from_numpy(dequantize_q8_0(buf, (r1 - r0, *t.shape[1:])))

        return ModelTensor(name, t.shape, "F32", [raw], loader=load, row_loader=rows if len(t.shape) == 2 else None)
    raise SourceError(f"tensor has type {tname}, which bitconv cannot decode", path=g.path, tensor=t.name)


def _collision_hint(g: GGUFFile, t: GGUFTensor) -> str | None:
    """For an id bitnet.cpp's fork gives another meaning than upstream, say which reading was taken and why."""
    fork = by_id(t.type.id, "bitnet.cpp")
    if g.dialect != "upstream" or fork is None or fork.name == t.type.name:
        return None
    return (f"type id {t.type.id} is {fork.name} in bitnet.cpp's fork, but the tensor sizes in this file fit "
            f"upstream {t.type.name}, so it was read as upstream")


def _layout(g: GGUFFile, tname: str) -> Layout:
    layout = PACKED[tname]
    cls = layout_class(layout)
    if not cls.needs_kernel_config:
        return get_layout(layout)
    params: dict = {"kernel_config": KernelConfig.from_ini(kernel_config_path(g.path))}
    if cls.ggml_aliases:  # one layout under several type ids: built for the id the file uses
        params["type_id"] = next(t.type.id for t in g.tensors.values() if t.type.name == tname)
    return get_layout(layout, **params)


def kernel_config_path(path: Path) -> Path:
    for cand in (path.with_name(f"{path.stem}.{INI_NAME}"), path.with_name(INI_NAME)):
        if os.path.lexists(cand):  # then read through safeio: a link out of the folder or a FIFO is refused
            return cand
    tiled = "/".join(layout_class(n).ggml_type for n in kernel_kinds())
    raise SourceError(f"{tiled} tensors need the {INI_NAME} they were packed with, next to the file",
                      path=path, hint=f"copy it to {path.with_name(INI_NAME)}")


def _unpermute(g: GGUFFile, t: GGUFTensor, codes: np.ndarray, heads: int | None) -> np.ndarray:
    if heads is None:
        return codes
    try:
        return permute_rows(codes, heads, inverse=True)
    except LayoutError as e:  # head counts from the KVs that do not fit the rows (a corrupt or edited file)
        raise SourceError(str(e), path=g.path, tensor=t.name) from None


def _packed_loader(g: GGUFFile, t: GGUFTensor, layout: Layout, heads: int | None):
    def load() -> Ternary:
        try:
            tern = layout.unpack({"data": g.read(t)}, t.shape)
        except LayoutError as e:
            raise SourceError(f"cannot decode {t.type.name} data: {e}", path=g.path, tensor=t.name) from None
        codes = np.asarray(tern.codes)
        scale = tern.scale if tern.scale == 0 and not codes.any() else \
            checked_scale(tern.scale, tensor=t.name, path=g.path)  # an all-zero tensor may store 0
        return Ternary(_unpermute(g, t, codes, heads), scale)

    return load


def _float_loader(g: GGUFFile, t: GGUFTensor, heads: int | None):
    def load(compute: str) -> Ternary:
        w = torch.from_numpy(g.read(t).view(FLOATS[t.type.name]).reshape(t.shape).copy())
        if t.type.name == "BF16":
            w = w.view(torch.int16).view(torch.bfloat16)
        tern = exact_ternary(w.float()) or with_file(g.path, ternarize, w, compute, name=t.name)
        return Ternary(_unpermute(g, t, np.asarray(tern.codes), heads), tern.scale)

    return load


def exact_ternary(w: torch.Tensor) -> Ternary | None:
    """codes = sign(w), scale = max|w| when every non-zero |w| equals that scale (a dequantized ternary weight)."""
    a = w.abs()
    scale = a.max()
    nonzero = a != 0
    if not bool(nonzero.any()) or not bool((a[nonzero] == scale).all()):
        return None
    return Ternary(torch.sign(w).to(torch.int8).numpy(), np.float32(scale.item()))


# ------------------------------------------------------------------------------------------------ config.json


def _short(x: float) -> float:
    """A float32 KV as the shortest decimal that rounds to it (9.99999974738e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def gguf_config(g: GGUFFile, arch: GGUFArch) -> dict:
    """A config.json for the model in `g`, enough for bitconv's HF pack/unpack and transformers' loaders."""
    def kv(key: str):
        v = g.get(f"{arch.name}.{key}")
        bad_int = key in _POSITIVE_INT_KVS and (type(v) is not int or v <= 0)
        bad_float = key in _FLOAT_KVS and (type(v) not in (int, float) or not np.isfinite(v))
        if v is not None and (bad_int or bad_float):
            raise SourceError(f"GGUF metadata {arch.name}.{key} is {v!r}, not a "
                              f"{'positive integer' if bad_int else 'finite number'}", path=g.path)
        return v

    n_embd, n_head = kv("embedding_length"), kv("attention.head_count")
    if n_embd is None or n_head is None or kv("block_count") is None:
        raise SourceError(f"GGUF lacks {arch.name}.embedding_length / attention.head_count / block_count",
                          path=g.path)
    embd = g.tensors.get("token_embd.weight")
    head_dim = kv("attention.key_length") or kv("rope.dimension_count")
    cfg = {
        "architectures": [arch.hf_class], "model_type": arch.model_type, "hidden_act": arch.hidden_act,
        "hidden_size": n_embd, "intermediate_size": kv("feed_forward_length"),
        "num_hidden_layers": kv("block_count"), "num_attention_heads": n_head,
        "num_key_value_heads": kv("attention.head_count_kv") or n_head,
        "head_dim": head_dim if head_dim and head_dim != n_embd // n_head else None,
        "vocab_size": embd.shape[0] if embd is not None and embd.shape else kv("vocab_size"),
        "max_position_embeddings": kv("context_length"),
        "rms_norm_eps": _short(kv("attention.layer_norm_rms_epsilon") or 1e-5),
        "rope_theta": _short(kv("rope.freq_base")) if kv("rope.freq_base") is not None else None,
        "bos_token_id": g.get("tokenizer.ggml.bos_token_id"), "eos_token_id": g.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": g.get("tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": "output.weight" not in g.tensors, "torch_dtype": "bfloat16",
    }
    return {k: v for k, v in cfg.items() if v is not None}


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, size: int) -> GGUFFile:
    return read_gguf(path)


def gguf_header(path: str | Path) -> GGUFFile:
    """`read_gguf(path)`, cached while the file is unchanged (plans read a source's KVs more than once)."""
    st = Path(path).stat()
    return _cached(str(path), st.st_mtime_ns, st.st_size)


def tokenizer_files(ck: Checkpoint) -> dict[str, bytes]:
    """transformers tokenizer files rebuilt from a GGUF checkpoint's vocabulary (`formats.gguf.hf_tokenizer`): what
    an HF folder written from it needs beside its config; {} when the file holds no vocabulary bitconv can rebuild."""
    if ck.kind != "gguf":
        return {}
    return hf_tokenizer_files(gguf_header(ck.path).get, ck.config.get("max_position_embeddings"))
