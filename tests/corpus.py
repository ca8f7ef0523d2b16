"""A corpus of broken and hostile inputs, generated at test time from tiny valid checkpoints (no committed binaries).

Each `Case` builds one input under a scratch folder and names the command to run on it and the exact text its
one-line error must hold. `tests/test_hostile.py` runs every case through the CLI and checks the contract: exit
code 2, one `error: ` line naming `file` and holding every `expect` fragment, no traceback, nothing written, the
input unchanged, memory bounded (an address-space limit far below the sizes `lying` cases declare).

Bases (tiny valid checkpoints) are built once per session under `BASES.root` and copied per case:
    st        bitnet-2b4t bf16 master, hidden 64, 1 layer, one model.safetensors
    sharded   the same, sharded (index + 6 shards)
    packed    `pack` of st (HF packed, autobitlinear)        ternary   `quantize` of st
    gguf      I2_S GGUF of a hidden-128 bitnet-2b4t model    nt        Nanotron TP=2 checkpoint of a llama-bitnet
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitconv import tiny
from bitconv.formats.gguf import KV, TensorEntry, read_gguf, write_gguf
from bitconv.formats.gguf.kv import encode_string
from bitconv.formats.gguf.types import by_id, tensor_nbytes

Builder = Callable[[Path], Path]

PACK = ("pack", "{src}", "-o", "{out}")
PACK_GGUF = ("pack", "{src}", "--to", "gguf", "--type", "f16", "-o", "{out}")
QUANTIZE = ("quantize", "{src}", "-o", "{out}")
INSPECT = ("inspect", "{src}")
TO_HF = ("convert", "{src}", "--to", "hf-bf16", "-o", "{out}")
MARKER = "UNPICKLED"  # what the hostile pickles create when unpickled; must never appear


@dataclass(frozen=True)
class Case:
    id: str
    build: Builder  # scratch folder -> the SRC to give bitconv
    expect: tuple[str, ...]  # fragments of the one error line
    file: str  # the file (or folder) name the error line must name
    command: tuple[str, ...] = PACK
    lying: bool = False  # declares sizes far beyond the file: must not allocate them
    out: Callable[[Path], Path] | None = None  # scratch folder -> OUT (default `tmp/out`), built after SRC


# ------------------------------------------------------------------------------------------------------ bases

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 1, "vocab_size": 320}
TOKENIZER_KV = "tokenizer."


class _Bases:
    """Tiny valid checkpoints, built on first use under `root` (set by the test session, else a temp folder)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.tiny: Callable[..., Path] | None = None  # the test session's shared factory (conftest `models`)
        self._built: dict[str, Path] = {}

    def make_tiny(self, name: str, arch: str, **kw: object) -> Path:
        """A tiny master: from the session's shared factory when there is one, else built under `root`."""
        if self.tiny is not None:
            return self.tiny(arch, **kw)
        assert self.root is not None
        return tiny.make_tiny(self.root / name, arch, **kw)

    def get(self, name: str) -> Path:
        if name not in self._built:
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="bitconv-corpus-"))
            self._built[name] = _BASE_BUILDERS[name](self.root)
        return self._built[name]


BASES = _Bases()


def _st(root: Path) -> Path:
    return BASES.make_tiny("st", "bitnet-2b4t", **SMALL)


def _sharded(root: Path) -> Path:
    return BASES.make_tiny("sharded", "bitnet-2b4t", max_shard_bytes=20_000, **SMALL)


def _packed(root: Path) -> Path:
    from bitconv import pipeline

    return pipeline.pack_hf(BASES.get("st"), root / "packed").out


def _ternary(root: Path) -> Path:
    from bitconv import pipeline

    return pipeline.quantize(BASES.get("st"), root / "ternary").out


def _m128(root: Path) -> Path:
    return BASES.make_tiny("m128", "bitnet-2b4t", hidden_size=128, intermediate_size=256, num_layers=1,
                           vocab_size=320)


def _gguf(root: Path) -> Path:
    from bitconv.sinks.gguf import pack_gguf

    (root / "gguf").mkdir()
    return pack_gguf(BASES.get("m128"), root / "gguf" / "model.gguf", "i2_s").out


def _gguf_compact(root: Path) -> Path:
    """The I2_S GGUF without its tokenizer KVs: a small header, so byte mutations mostly hit structure."""
    (root / "gguf-compact").mkdir()
    kvs, tensors = gguf_parts(BASES.get("gguf"))
    out = root / "gguf-compact" / "model.gguf"
    write_gguf(out, [k for k in kvs if not k.key.startswith(TOKENIZER_KV)], tensors)
    return out


def _tl1(root: Path) -> Path:
    from bitconv.sinks.gguf import pack_gguf

    (root / "tl1").mkdir()
    return pack_gguf(BASES.get("m128"), root / "tl1" / "model.gguf", "tl1").out


def _llama(root: Path) -> Path:
    return BASES.make_tiny("llama", "llama-bitnet", **SMALL)


def _nt(root: Path) -> Path:
    from bitconv.sinks.nanotron import to_nanotron

    return to_nanotron(BASES.get("llama"), root / "nt", tp=2).out


_BASE_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "st": _st, "sharded": _sharded, "packed": _packed, "ternary": _ternary, "m128": _m128, "gguf": _gguf,
    "gguf-compact": _gguf_compact, "llama": _llama, "nt": _nt, "tl1": _tl1,
}

# (base, command) pairs that must succeed unmutated: the corpus errors come from the mutations, not the bases.
CONTROLS = (("st", PACK), ("sharded", QUANTIZE), ("packed", PACK), ("ternary", PACK_GGUF), ("gguf", PACK),
            ("gguf-compact", INSPECT), ("nt", TO_HF))


def clone(base: str, tmp: Path) -> Path:
    """A private writable copy of a base: the folder `tmp/src`, or the file `tmp/<its name>`."""
    src = BASES.get(base)
    if src.is_file():
        dst = tmp / src.name
        shutil.copyfile(src, dst)
        if (src.parent / "kernel_config.ini").is_file():  # a TL GGUF travels with its kernel config
            shutil.copyfile(src.parent / "kernel_config.ini", tmp / "kernel_config.ini")
        return dst
    dst = tmp / "src"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------ safetensors


def st_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path: Path, header: dict | bytes, data: bytes) -> None:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def st_rewrite(path: Path, mutate: Callable[[dict], object]) -> None:
    header, data = st_header(path)
    mutate(header)
    st_write(path, header, data)


def st_tensor(path: Path, name: str) -> np.ndarray:
    """A stored tensor's raw bytes (uint8), for rewriting values in place."""
    header, data = st_header(path)
    a, b = header[name]["data_offsets"]
    return np.frombuffer(data[a:b], dtype=np.uint8).copy()


def st_put(path: Path, name: str, raw: np.ndarray) -> None:
    header, data = st_header(path)
    a, b = header[name]["data_offsets"]
    st_write(path, header, data[:a] + raw.tobytes() + data[b:])


Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"
EMBED = "model.embed_tokens.weight"


def on_file(base: str, fname: str, mutate: Callable[[Path], object]) -> Builder:
    """Clone `base`, then mutate its file `fname`."""
    def build(tmp: Path) -> Path:
        src = clone(base, tmp)
        mutate(src / fname if src.is_dir() else src)
        return src

    return build


def st_file(mutate: Callable[[Path], object], base: str = "st") -> Builder:
    return on_file(base, "model.safetensors", mutate)


def st_head(mutate: Callable[[dict], object], base: str = "st") -> Builder:
    return st_file(lambda p: st_rewrite(p, mutate), base)


def st_drop(name: str) -> Callable[[Path], None]:
    """Remove one tensor, header entry and bytes: the file stays a valid (contiguous) safetensors container."""
    def drop(path: Path) -> None:
        header, data = st_header(path)
        a, b = header.pop(name)["data_offsets"]
        for k, e in header.items():
            if k != "__metadata__" and e["data_offsets"][0] >= b:
                e["data_offsets"] = [e["data_offsets"][0] - (b - a), e["data_offsets"][1] - (b - a)]
        st_write(path, header, data[:a] + data[b:])
    return drop


def _set(name: str, **fields: object) -> Callable[[dict], None]:
    return lambda h: h[name].update(fields)


def _cut(n: int) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(p.read_bytes()[:n])


def _raw_header(head: bytes) -> Callable[[Path], None]:
    return lambda p: st_write(p, head, st_header(p)[1])


def _overlap(h: dict) -> None:
    a = h[EMBED]["data_offsets"][0]
    h[NORM]["data_offsets"] = [a, a + 128]


def _out_of_range(h: dict) -> None:
    end = max(e["data_offsets"][1] for k, e in h.items() if k != "__metadata__")
    h[NORM]["data_offsets"] = [end + 4096, end + 4096 + 128]


def _values(name: str, value: float) -> Callable[[Path], None]:
    def mutate(p: Path) -> None:
        w = torch.full((st_tensor(p, name).size // 2,), value, dtype=torch.bfloat16)
        st_put(p, name, w.view(torch.uint8).numpy())

    return mutate


def _drop_projections(h: dict) -> None:
    for k in [k for k in h if k.endswith("_proj.weight")]:
        h[k.replace(".weight", ".latent")] = h.pop(k)


def _two_files(p: Path) -> None:
    shutil.copyfile(p, p.with_name("a.safetensors"))
    p.rename(p.with_name("b.safetensors"))


SAFETENSORS = [
    Case("st-empty-file", st_file(lambda p: p.write_bytes(b"")), ("header length is missing",), "model.safetensors"),
    Case("st-truncated-to-4-bytes", st_file(_cut(4)), ("truncated safetensors file (4 bytes",), "model.safetensors"),
    Case("st-truncated-header", st_file(_cut(300)), ("corrupt safetensors header: declares", "file has 300"),
         "model.safetensors"),
    Case("st-header-length-larger-than-file", st_file(lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}")),
         ("declares 1000000000000 header bytes but the file has 10",), "model.safetensors", lying=True),
    Case("st-header-length-max-u64", st_file(lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:])),
         ("declares 18446744073709551615 header bytes",), "model.safetensors", INSPECT, lying=True),
    Case("st-header-not-json", st_file(_raw_header(b"{oops!!}")), ("not valid JSON",), "model.safetensors"),
    Case("st-header-not-utf8", st_file(_raw_header(b'{"\xff\xfe": 1}')), ("not valid JSON", "utf-8"),
         "model.safetensors"),
    Case("st-header-nested-200k-deep", st_file(_raw_header(b"[" * 200_000 + b"]" * 200_000)),
         ("JSON nested too deeply",), "model.safetensors"),
    Case("st-header-is-array", st_file(_raw_header(b"[1, 2]")), ("not a JSON object",), "model.safetensors"),
    Case("st-metadata-not-object", st_head(lambda h: h.update(__metadata__=[1])), ("__metadata__ is not an object",),
         "model.safetensors"),
    Case("st-entry-not-object", st_head(lambda h: h.update({NORM: "x"})), ("entry is not an object", NORM),
         "model.safetensors"),
    Case("st-truncated-data", st_file(_cut(-1000)), ("truncated file",), "model.safetensors"),
    Case("st-truncated-data-by-1-byte", st_file(_cut(-1)), ("truncated file",), "model.safetensors"),
    Case("st-offsets-out-of-range", st_head(_out_of_range), ("data ends at byte", "truncated file", NORM),
         "model.safetensors"),
    Case("st-offsets-overlap", st_head(_overlap), ("overlaps",), "model.safetensors"),
    Case("st-offsets-reversed", st_head(_set(NORM, data_offsets=[128, 0])), ("bad data_offsets [128, 0]",),
         "model.safetensors"),
    Case("st-offsets-negative", st_head(_set(NORM, data_offsets=[-128, 0])), ("bad data_offsets [-128, 0]",),
         "model.safetensors"),
    Case("st-offsets-float", st_head(_set(NORM, data_offsets=[0.0, 128.0])), ("bad data_offsets",),
         "model.safetensors"),
    Case("st-offsets-missing", st_head(lambda h: h[NORM].pop("data_offsets")), ("bad data_offsets None",),
         "model.safetensors"),
    Case("st-unknown-dtype", st_head(_set(NORM, dtype="F4")), ("unknown dtype 'F4'", NORM), "model.safetensors"),
    Case("st-dtype-missing", st_head(lambda h: h[NORM].pop("dtype")), ("unknown dtype None",), "model.safetensors"),
    Case("st-shape-bytes-mismatch", st_head(_set(NORM, shape=[999])), ("needs 1998",), "model.safetensors"),
    Case("st-shape-negative", st_head(_set(NORM, shape=[-64])), ("bad shape [-64]",), "model.safetensors"),
    Case("st-shape-boolean", st_head(_set(NORM, shape=[True, 64])), ("bad shape [True, 64]",), "model.safetensors"),
    Case("st-huge-shape-small-offsets", st_head(_set(NORM, shape=[10**12, 10**6])), ("needs 2000000000000000000",),
         "model.safetensors", lying=True),
    Case("st-huge-shape-consistent-offsets",
         st_head(_set(Q, dtype="F32", shape=[2**20, 2**20], data_offsets=[0, 2**42])),
         ("data ends at byte", "truncated file"), "model.safetensors", QUANTIZE, lying=True),
    Case("st-two-files-no-index", st_file(_two_files), ("2 .safetensors files but no model.safetensors.index.json",),
         "src"),
    Case("st-no-weights", st_file(lambda p: p.unlink()), ("no weights",), "src"),
    Case("st-no-projections", st_head(_drop_projections), ("no ternary projection weights",), "src"),
]

# ------------------------------------------------------------------------------------------------ sharded + index

INDEX = "model.safetensors.index.json"


def _index(mutate: Callable[[dict, Path], object]) -> Builder:
    def build(tmp: Path) -> Path:
        src = clone("sharded", tmp)
        index = json.loads((src / INDEX).read_text())
        mutate(index, src)
        (src / INDEX).write_text(json.dumps(index))
        return src

    return build


def _shards(src: Path) -> list[Path]:
    return sorted(src.glob("model-*.safetensors"))


def _point(name: str, target: Callable[[Path], str]) -> Callable[[dict, Path], None]:
    """Map tensor `name` to `target(src)`, after putting a valid copy of its shard there when that is possible."""
    def mutate(index: dict, src: Path) -> None:
        shard = src / index["weight_map"][name]
        dest = target(src)
        where = src / dest  # an absolute `dest` stays absolute
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shard, where)  # a real shard waits there: only the rule stops bitconv from reading it
        index["weight_map"][name] = dest

    return mutate


def _duplicate_across_shards(tmp: Path) -> Path:
    from safetensors.torch import load_file, save_file

    src = clone("sharded", tmp)
    index = json.loads((src / INDEX).read_text())
    home = index["weight_map"][Q]
    other = next(p for p in _shards(src) if p.name != home)
    tensors = load_file(str(other))  # safetensors, never pickle
    tensors[Q] = load_file(str(src / home))[Q]
    save_file(tensors, str(other), metadata={"format": "pt"})
    return src


def _missing_shard(index: dict, src: Path) -> None:
    (src / index["weight_map"][Q]).unlink()


def _shard_is_folder(index: dict, src: Path) -> None:
    (src / index["weight_map"][Q]).unlink()
    (src / index["weight_map"][Q]).mkdir()


def _lying_shard(index: dict, src: Path) -> None:
    p = src / index["weight_map"][Q]
    p.write_bytes(struct.pack("<Q", 2**62) + p.read_bytes()[8:])


INDEXED = [
    Case("idx-names-missing-shard", _index(_missing_shard), ("but the file is missing", "model-0000"), INDEX),
    Case("idx-shard-is-a-folder", _index(_shard_is_folder), ("is a folder, not a regular file",), ".safetensors"),
    Case("idx-lists-tensor-shard-lacks",
         _index(lambda i, s: i["weight_map"].update({"model.layers.7.mlp.up_proj.weight": i["weight_map"][Q]})),
         ("index lists 'model.layers.7.mlp.up_proj.weight'", "does not hold it"), "model-0000"),
    Case("idx-shard-holds-unlisted-tensor", _index(lambda i, s: i["weight_map"].pop(Q)),
         ("does not list", Q), "model-0000"),
    Case("idx-traversal-dotdot", _index(_point(Q, lambda s: "../outside.safetensors")),
         ("'../outside.safetensors'", "not a file name in this folder"), INDEX),
    Case("idx-traversal-absolute", _index(_point(Q, lambda s: str(s.parent / "abs.safetensors"))),
         ("abs.safetensors", "not a file name in this folder"), INDEX),
    Case("idx-traversal-subfolder", _index(_point(Q, lambda s: "sub/model.safetensors")),
         ("'sub/model.safetensors'", "not a file name in this folder"), INDEX),
    Case("idx-shard-not-a-string", _index(lambda i, s: i["weight_map"].update({Q: 3})),
         ("to 3, which is not a file name",), INDEX),
    Case("idx-not-json", on_file("sharded", INDEX, lambda p: p.write_text("{not json")), ("index is not valid JSON",),
         INDEX),
    Case("idx-is-array", on_file("sharded", INDEX, lambda p: p.write_text("[]")), ("index is not a JSON object",),
         INDEX, QUANTIZE),
    Case("idx-no-weight-map", _index(lambda i, s: i.pop("weight_map")), ("index has no weight_map",), INDEX),
    Case("idx-weight-map-is-list", _index(lambda i, s: i.update(weight_map=[Q])), ("index has no weight_map",),
         INDEX),
    Case("idx-duplicate-tensor-across-shards", _duplicate_across_shards, ("duplicate tensor", Q), "model-0000",
         QUANTIZE),
    Case("idx-shard-header-lies", _index(_lying_shard), ("declares 4611686018427387904 header bytes",),
         "model-0000", lying=True),
]

# ------------------------------------------------------------------------------------------------ config.json

CONFIG = "config.json"


def _cfg(mutate: Callable[[dict], object], base: str = "st") -> Builder:
    def rewrite(p: Path) -> None:
        cfg = json.loads(p.read_text())
        mutate(cfg)
        p.write_text(json.dumps(cfg))

    return on_file(base, CONFIG, rewrite)


def _cfg_set(**fields: object) -> Builder:
    return _cfg(lambda c: c.update(fields))


CONFIGS = [
    Case("cfg-missing", on_file("st", CONFIG, lambda p: p.unlink()), ("config.json is missing",), CONFIG),
    Case("cfg-not-json", on_file("st", CONFIG, lambda p: p.write_text("{'a': 1}")), ("config.json is not valid JSON",),
         CONFIG),
    Case("cfg-nested-100k-deep", on_file("st", CONFIG, lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
         ("nested too deeply",), CONFIG),
    Case("cfg-is-array", on_file("st", CONFIG, lambda p: p.write_text("[]")), ("config.json is not a JSON object",),
         CONFIG),
    Case("cfg-hidden-size-mismatch", _cfg_set(hidden_size=128), (EMBED, "does not match config.json: hidden_size 128"),
         CONFIG),
    Case("cfg-hidden-size-not-int", _cfg_set(hidden_size="64"), ("hidden_size is '64', not a positive integer",),
         CONFIG, INSPECT),
    Case("cfg-heads-mismatch", _cfg_set(num_attention_heads=8),
         ("k_proj", "num_key_value_heads x head_dim = 16"), CONFIG),
    Case("cfg-heads-not-dividing-hidden", _cfg_set(num_attention_heads=6),
         ("hidden_size 64 is not a multiple of num_attention_heads 6",), CONFIG),
    Case("cfg-heads-zero", _cfg_set(num_attention_heads=0), ("num_attention_heads is 0, not a positive integer",),
         CONFIG),
    Case("cfg-kv-heads-mismatch", _cfg_set(num_key_value_heads=4), ("num_key_value_heads x head_dim = 64",), CONFIG),
    Case("cfg-kv-heads-not-dividing", _cfg_set(num_key_value_heads=3),
         ("num_attention_heads 4 is not a multiple of num_key_value_heads 3",), CONFIG),
    Case("cfg-head-dim-mismatch", _cfg_set(head_dim=8, num_key_value_heads=4),
         ("o_proj", "num_attention_heads x head_dim = 32"), CONFIG),
    Case("cfg-vocab-mismatch", _cfg_set(vocab_size=32000), (EMBED, "vocab_size 32000"), CONFIG, QUANTIZE),
    Case("cfg-intermediate-mismatch", _cfg_set(intermediate_size=256), ("down_proj", "intermediate_size 256"),
         CONFIG),
    Case("cfg-more-layers-than-weights", _cfg_set(num_hidden_layers=2),
         ("num_hidden_layers is 2 but tensor 'model.layers.1.self_attn.q_proj.weight' is missing",), CONFIG),
    Case("cfg-architectures-not-a-list", _cfg_set(architectures=5), ("architectures is 5, not a non-empty list",),
         CONFIG, INSPECT),
    Case("cfg-unknown-linear-class", _cfg(lambda c: c["quantization_config"].update(linear_class="foo"), "packed"),
         ("quantization_config.linear_class 'foo'",), CONFIG),
]

# ------------------------------------------------------------------------------------------------ weight values


def _packed_weight(value: int) -> Builder:
    name = "model.layers.0.mlp.down_proj.weight"
    return st_file(lambda p: st_put(p, name, np.full(st_tensor(p, name).size, value, np.uint8)), "packed")


def _ternary_codes(p: Path) -> None:
    st_put(p, Q, np.full(st_tensor(p, Q).size, 5, np.uint8))


WEIGHTS = [
    Case("w-nan-projection", st_file(_values(Q, float("nan"))), (Q, "NaN or Inf"), "model.safetensors"),
    Case("w-inf-projection", st_file(_values("model.layers.0.mlp.up_proj.weight", float("inf"))), ("NaN or Inf",),
         "model.safetensors", QUANTIZE),
    Case("w-nan-projection-to-gguf", st_file(_values(Q, float("nan"))), ("NaN or Inf",), "model.safetensors",
         PACK_GGUF),
    Case("w-projection-int16", st_head(_set(Q, dtype="I16")), ("master projection weight must be BF16/F16/F32",
                                                              "found I16"), "model.safetensors"),
    Case("w-packed-code-0b11", _packed_weight(0xFF), ("bit pair 0b11",), "model.safetensors"),
    Case("w-packed-missing-scale",
         st_file(st_drop("model.layers.0.mlp.down_proj.weight_scale"), "packed"),
         ("has no 'model.layers.0.mlp.down_proj.weight_scale'",), "model.safetensors"),
    Case("w-ternary-code-5", st_file(_ternary_codes, "ternary"), ("codes outside {-1, 0, 1}",), "model.safetensors"),
]

# ------------------------------------------------------------------------------------------------ pickles


class _Hostile:
    """Unpickling this runs `open(marker, "w")`: the proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def hostile_pickle(marker: Path, protocol: int = 4) -> bytes:
    return pickle.dumps({"model.embed_tokens.weight": _Hostile(marker)}, protocol=protocol)


def _pickle_file(name: str, protocol: int = 4) -> Builder:
    def build(tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(hostile_pickle(tmp / MARKER, protocol))
        return p

    return build


def _torch_zip(tmp: Path) -> Path:
    p = tmp / "model.pt"
    torch.save({"weight": torch.zeros(4), "hook": _Hostile(tmp / MARKER)}, p)
    return p


def _bin_folder(tmp: Path) -> Path:
    src = clone("st", tmp)
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(hostile_pickle(tmp / MARKER, 2))
    return src


def _pickle_as_safetensors(tmp: Path) -> Path:
    src = clone("st", tmp)
    (src / "model.safetensors").write_bytes(hostile_pickle(tmp / MARKER, 3))
    return src


def _index_names_bin(tmp: Path) -> Path:
    src = clone("sharded", tmp)
    index = json.loads((src / INDEX).read_text())
    old = index["weight_map"][Q]
    (src / old).unlink()
    (src / "pytorch_model-00001-of-00002.bin").write_bytes(hostile_pickle(tmp / MARKER, 5))
    index["weight_map"] = {k: ("pytorch_model-00001-of-00002.bin" if v == old else v)
                           for k, v in index["weight_map"].items()}
    (src / INDEX).write_text(json.dumps(index))
    return src


PICKLES = [
    Case("pickle-pkl-file", _pickle_file("weights.pkl"), ("a pickle (protocol 4)", "never loaded",
                                                          "safetensors and GGUF only"), "weights.pkl", INSPECT),
    Case("pickle-protocol-0-bin-file", _pickle_file("pytorch_model.bin", 0), ("never loaded",), "pytorch_model.bin"),
    Case("pickle-torch-save-zip", _torch_zip, ("a zip archive (torch.save)", "never loaded"), "model.pt"),
    Case("pickle-pytorch-model-bin-folder", _bin_folder, ("a pickled file", "safetensors and GGUF only"),
         "pytorch_model.bin", QUANTIZE),
    Case("pickle-named-model-safetensors", _pickle_as_safetensors, ("a pickle (protocol 3)", "never loaded"),
         "model.safetensors"),
    Case("pickle-index-names-bin-shard", _index_names_bin, ("a pickle (protocol 5)", "never loaded"),
         "pytorch_model-00001-of-00002.bin"),
    Case("pickle-named-gguf", _pickle_file("model.gguf"), ("not a GGUF file",), "model.gguf"),
]

# ------------------------------------------------------------------------------------------------ GGUF


def gguf_parts(path: Path) -> tuple[list[KV], list[tuple[TensorEntry, np.ndarray]]]:
    g = read_gguf(path)
    return list(g.kvs.values()), [(TensorEntry(t.name, t.dims, t.type.id, t.nbytes), g.read(t))
                                  for t in g.tensors.values()]


def _gguf(kvs: Callable[[list[KV]], list[KV]] = lambda k: k,
          tensors: Callable[[list], list] = lambda t: t) -> Builder:
    """A GGUF rebuilt from the base with its KVs and tensor list transformed (offsets laid out again)."""
    def build(tmp: Path) -> Path:
        k, t = gguf_parts(BASES.get("gguf"))
        p = tmp / "model.gguf"
        write_gguf(p, kvs(k), tensors(t))
        return p

    return build


def _gguf_bytes(mutate: Callable[[bytes], bytes], base: str = "gguf") -> Builder:
    def build(tmp: Path) -> Path:
        p = clone(base, tmp)
        p.write_bytes(mutate(p.read_bytes()))
        return p

    return build


def _patch(raw: bytes, pos: int, data: bytes) -> bytes:
    return raw[:pos] + data + raw[pos + len(data):]


def kv_pos(raw: bytes, key: str) -> int:
    """Byte position of a KV pair (its key's u64 length)."""
    return raw.index(encode_string(key))


def ti_pos(raw: bytes, name: str) -> int:
    """Byte position of a tensor info's n_dims field."""
    return raw.rindex(encode_string(name)) + 8 + len(name.encode())


def _ti_field(name: str, field: str, value: bytes) -> Callable[[bytes], bytes]:
    def mutate(raw: bytes) -> bytes:
        pos = ti_pos(raw, name)
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        at = {"n_dims": pos, "dims": pos + 4, "type": pos + 4 + 8 * n_dims, "offset": pos + 8 + 8 * n_dims}[field]
        return _patch(raw, at, value)

    return mutate


def _kv_field(key: str, field: str, value: bytes) -> Callable[[bytes], bytes]:
    def mutate(raw: bytes) -> bytes:
        pos = kv_pos(raw, key)
        at = {"key_len": pos, "type": pos + 8 + len(key), "value": pos + 12 + len(key)}[field]
        return _patch(raw, at, value)

    return mutate


ARCH = "bitnet-b1.58"
GQ, GK = "blk.0.attn_q.weight", "blk.0.attn_k.weight"  # same length: one can be renamed to the other in place
U32, U64 = (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<Q", v))


def _kv_replace(key: str, kv: KV | None) -> Callable[[list[KV]], list[KV]]:
    return lambda kvs: [kv if k.key == key else k for k in kvs if k.key != key or kv is not None]


def _arch_kv(key: str, kv: Callable[[str], KV] | None) -> Callable[[list[KV]], list[KV]]:
    full = f"{ARCH}.{key}"
    return _kv_replace(full, kv(full) if kv is not None else None)


def _as_llama(kvs: list[KV]) -> list[KV]:
    """The same model under the upstream `llama` architecture (no fork-only ids allowed to force the dialect)."""
    out = []
    for k in kvs:
        if k.key == "general.architecture":
            out.append(KV.string(k.key, "llama"))
        elif k.key.startswith(f"{ARCH}."):
            out.append(KV(k.key.replace(ARCH, "llama", 1), k.type, k.value, k.item_type))
        else:
            out.append(k)
    return out


def llama_tensors(tensors: list) -> list:
    """The base's tensors a `llama` GGUF holds (no BitNet sub-norms)."""
    return [(e, d) for e, d in tensors if "sub_norm" not in e.name]


def _llama_heads(heads: int, kv_heads: int, rope_dims: int) -> Callable[[list[KV]], list[KV]]:
    sizes = {"llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
             "llama.rope.dimension_count": rope_dims}
    return lambda kvs: [KV.u32(k.key, sizes[k.key]) if k.key in sizes else k for k in _as_llama(kvs)]


def _projections_as(type_id: int, dialect: str) -> Callable[[list], list]:
    """Every I2_S projection re-typed as `type_id`, sized as that id means in `dialect`, zero data."""
    def retype(tensors: list) -> list:
        out = []
        for e, data in tensors:
            if e.type_id == 36:
                n = tensor_nbytes(by_id(type_id, dialect), e.dims)
                e, data = TensorEntry(e.name, e.dims, type_id, n), np.zeros(n, np.uint8)
            out.append((e, data))
        return out

    return retype


def _replace_tensor(name: str, type_id: int, data: np.ndarray) -> Callable[[list], list]:
    def replace(tensors: list) -> list:
        return [(TensorEntry(e.name, e.dims, type_id, data.nbytes), data) if e.name == name else (e, d)
                for e, d in tensors]

    return replace


def _add_tensor(name: str) -> Callable[[list], list]:
    return lambda t: [*t, (TensorEntry(name, (1,), 0, 4), np.ones(1, np.float32))]


def _nan_f32(n: int) -> np.ndarray:
    w = np.full(n, 0.02, np.float32)
    w[::7] = np.nan
    return w


def _u64_dims(a: int, b: int) -> bytes:
    return U64(a) + U64(b)


GGUF = [
    Case("gguf-wrong-magic", _gguf_bytes(lambda b: b"GGML" + b[4:]), ("not a GGUF file", "b'GGML'"), "model.gguf"),
    Case("gguf-empty-file", _gguf_bytes(lambda b: b""), ("not a GGUF file",), "model.gguf", INSPECT),
    Case("gguf-version-1", _gguf_bytes(lambda b: _patch(b, 4, U32(1))), ("GGUF version 1 is not supported",),
         "model.gguf"),
    Case("gguf-version-99", _gguf_bytes(lambda b: _patch(b, 4, U32(99))), ("GGUF version 99 is not supported",),
         "model.gguf", PACK_GGUF),
    Case("gguf-version-big-endian", _gguf_bytes(lambda b: _patch(b, 4, struct.pack(">I", 3))), ("big-endian",),
         "model.gguf"),
    Case("gguf-truncated-header", _gguf_bytes(lambda b: b[:20]), ("truncated GGUF: 20 bytes",), "model.gguf"),
    Case("gguf-truncated-in-metadata", _gguf_bytes(lambda b: b[:1000]), ("truncated",), "model.gguf"),
    Case("gguf-truncated-tensor-data", _gguf_bytes(lambda b: b[:-1000]), ("truncated file",), "model.gguf"),
    Case("gguf-tensor-count-huge", _gguf_bytes(lambda b: _patch(b, 8, U64(2**62))),
         ("declares 4611686018427387904 tensors", "more than the file can hold"), "model.gguf", lying=True),
    Case("gguf-kv-count-huge", _gguf_bytes(lambda b: _patch(b, 16, U64(10**15))),
         ("1000000000000000 metadata pairs",), "model.gguf", lying=True),
    Case("gguf-key-length-beyond-file", _gguf_bytes(_kv_field("general.architecture", "key_len", U64(10**12))),
         ("metadata key", "declares 1000000000000 bytes"), "model.gguf", lying=True),
    Case("gguf-string-value-beyond-file", _gguf_bytes(_kv_field("general.architecture", "value", U64(2**63))),
         ("value of 'general.architecture'", "declares 9223372036854775808 bytes"), "model.gguf", lying=True),
    Case("gguf-array-count-beyond-file",
         _gguf_bytes(_kv_field("tokenizer.ggml.tokens", "value", U32(8) + U64(2**40))),
         ("array 'tokenizer.ggml.tokens' declares 1099511627776 items",), "model.gguf", lying=True),
    Case("gguf-unknown-kv-type", _gguf_bytes(_kv_field("general.architecture", "type", U32(77))),
         ("unknown metadata value type 77",), "model.gguf"),
    Case("gguf-nested-array", _gguf_bytes(_kv_field("tokenizer.ggml.tokens", "value", U32(9))),
         ("nested arrays",), "model.gguf"),
    Case("gguf-tensor-offset-out-of-range", _gguf_bytes(_ti_field(GQ, "offset", U64(2**40))),
         ("offset out of range", GQ), "model.gguf"),
    Case("gguf-tensor-offset-misaligned", _gguf_bytes(_ti_field(GQ, "offset", U64(4))),
         ("data offset 4 is not a multiple of the alignment 32",), "model.gguf"),
    Case("gguf-tensor-overlap", _gguf_bytes(_ti_field(GQ, "offset", U64(0))), ("overlaps",), "model.gguf"),
    Case("gguf-unknown-type-id", _gguf_bytes(_ti_field(GQ, "type", U32(99))), ("unknown GGML type id 99",),
         "model.gguf"),
    Case("gguf-five-dims", _gguf_bytes(_ti_field(GQ, "n_dims", U32(5))), ("5 dimensions (ggml allows 4)",),
         "model.gguf"),
    Case("gguf-huge-dims", _gguf_bytes(_ti_field("token_embd.weight", "dims", _u64_dims(2**40, 2**20))),
         ("token_embd.weight", "offset out of range"), "model.gguf", lying=True),
    Case("gguf-duplicate-tensor-name",
         _gguf_bytes(lambda b: _patch(b, ti_pos(b, GK) - len(GK), GQ.encode())),
         ("tensor name appears twice", GQ), "model.gguf"),
    Case("gguf-alignment-7", _gguf(lambda k: [*k, KV.u32("general.alignment", 7)]),
         ("general.alignment 7 is not a power of two",), "model.gguf"),
    Case("gguf-alignment-string", _gguf(lambda k: [*k, KV.string("general.alignment", "32")]),
         ("general.alignment is stored as STRING; ggml's loader requires UINT32",), "model.gguf"),
    Case("gguf-id39-sized-as-mxfp4", _gguf(_as_llama, _projections_as(39, "upstream")),
         ("type MXFP4", "type id 39 is TL2 in bitnet.cpp's fork"), "model.gguf"),
    Case("gguf-id39-sized-as-tl2", _gguf(_as_llama, _projections_as(39, "bitnet.cpp")),
         ("TL1/TL2 tensors need the kernel_config.ini",), "model.gguf"),
    Case("gguf-id42-sized-as-q2_0", _gguf(_as_llama, _projections_as(42, "upstream")),
         ("type Q2_0", "type id 42 is TL2_42 in bitnet.cpp's fork"), "model.gguf", INSPECT),
    Case("gguf-llama-head-dim-1", _gguf(_llama_heads(128, 64, 1), llama_tensors),
         ("blk.0.attn_k.weight", "the llama RoPE permutation cannot apply"), "model.gguf"),
    Case("gguf-unknown-architecture", _gguf(_kv_replace("general.architecture", KV.string("general.architecture",
                                                                                          "gpt2"))),
         ("GGUF architecture 'gpt2' is not one bitconv reads",), "model.gguf"),
    Case("gguf-missing-head-count", _gguf(_arch_kv("attention.head_count", None)),
         ("GGUF lacks bitnet-b1.58.embedding_length / attention.head_count",), "model.gguf"),
    Case("gguf-head-count-zero", _gguf(_arch_kv("attention.head_count", lambda k: KV.u32(k, 0))),
         ("attention.head_count is 0, not a positive integer",), "model.gguf"),
    Case("gguf-head-count-string", _gguf(_arch_kv("attention.head_count", lambda k: KV.string(k, "4"))),
         ("attention.head_count is '4', not a positive integer",), "model.gguf", INSPECT),
    Case("gguf-head-count-inconsistent", _gguf(_arch_kv("attention.head_count", lambda k: KV.u32(k, 3))),
         ("GGUF metadata num_attention_heads 3 is not a multiple of num_key_value_heads 2",), "model.gguf"),
    Case("gguf-embedding-length-mismatch", _gguf(_arch_kv("embedding_length", lambda k: KV.u32(k, 256))),
         ("does not match GGUF metadata: hidden_size 256",), "model.gguf"),
    Case("gguf-block-count-beyond-tensors", _gguf(_arch_kv("block_count", lambda k: KV.u32(k, 10**9))),
         ("num_hidden_layers is 1000000000 but tensor 'model.layers.1.self_attn.q_proj.weight' is missing",),
         "model.gguf", lying=True),
    Case("gguf-rms-eps-string", _gguf(_arch_kv("attention.layer_norm_rms_epsilon", lambda k: KV.string(k, "x"))),
         ("layer_norm_rms_epsilon is 'x', not a finite number",), "model.gguf"),
    Case("gguf-extra-tensor", _gguf(tensors=_add_tensor("blk.0.attn_q.scale")), ("no HF counterpart",), "model.gguf"),
    Case("gguf-q8_0-projection", _gguf(tensors=_replace_tensor(GQ, 8, np.zeros(128 * 128 // 32 * 34, np.uint8))),
         ("projection weight has type Q8_0, which bitconv cannot decode",), "model.gguf"),
    Case("gguf-nan-f32-projection", _gguf(tensors=_replace_tensor(GQ, 0, _nan_f32(128 * 128))),
         (GQ, "NaN or Inf"), "model.gguf"),
]

# ------------------------------------------------------------------------------------------------ Nanotron

NT_QKV = "model/model/decoder/0/pp_block/attn/qkv_proj"
RANK = "model_weight_pp-rank-0-of-1_tp-rank-{}-of-2.safetensors"


def _nt(mutate: Callable[[Path], object]) -> Builder:
    def build(tmp: Path) -> Path:
        src = clone("nt", tmp)
        mutate(src / NT_QKV)
        return src

    return build


def _meta(rank: int, **fields: str | None) -> Callable[[Path], None]:
    def mutate(qkv: Path) -> None:
        def edit(h: dict) -> None:
            for k, v in fields.items():
                if v is None:
                    h["__metadata__"].pop(k)
                else:
                    h["__metadata__"][k] = v

        st_rewrite(qkv / RANK.format(rank), edit)

    return mutate


def _both(**fields: str) -> Callable[[Path], None]:
    return lambda qkv: [_meta(r, **fields)(qkv) for r in (0, 1)]


def _copy_pairs(qkv: Path) -> None:
    pairs = st_header(qkv / RANK.format(0))[0]["__metadata__"]["local_global_slices_pairs"]
    _meta(1, local_global_slices_pairs=pairs)(qkv)


def _rename(new: str) -> Callable[[Path], None]:
    return lambda qkv: (qkv / RANK.format(1)).rename(qkv / new)


def _nt_json(name: str, mutate: Callable[[dict], object]) -> Builder:
    def build(tmp: Path) -> Path:
        src = clone("nt", tmp)
        data = json.loads((src / name).read_text())
        mutate(data)
        (src / name).write_text(json.dumps(data))
        return src

    return build


def _many_pairs(qkv: Path) -> None:
    """Each rank's 64 rows as 64 one-row slices x 64 one-column slices: 8192 pairs (nanotron writes 3 per rank)."""
    for r in (0, 1):
        pairs = [f"{i},{i + 1},None|{c},{c + 1},None#{r * 64 + i},{r * 64 + i + 1},None|{c},{c + 1},None"
                 for i in range(64) for c in range(0, 64)]
        _meta(r, local_global_slices_pairs=";".join(pairs))(qkv)


def _nan_latent(qkv: Path) -> None:
    p = qkv / RANK.format(0)
    _values("data", float("nan"))(p)


def _second_tensor(qkv: Path) -> None:
    p = qkv / RANK.format(0)
    header, data = st_header(p)
    header["extra"] = {"dtype": "BF16", "shape": [1], "data_offsets": [len(data), len(data) + 2]}
    st_write(p, header, data + b"\0\0")


NANOTRON = [
    Case("nt-missing-rank", _nt(lambda q: (q / RANK.format(1)).unlink()),
         ("missing rank: tp-rank 1 of 2 has no file",), "qkv_proj", TO_HF),
    Case("nt-overlapping-slices", _nt(_copy_pairs), ("overlapping slices",), "qkv_proj", TO_HF),
    Case("nt-gapped-slices", _nt(_both(unsharded_shape="(136, 64)")), ("gapped slices", "(136, 64)"), "qkv_proj"),
    Case("nt-mismatched-unsharded-shape", _nt(_meta(1, unsharded_shape="(999, 64)")),
         ("mismatched unsharded_shape", "(999, 64)"), "qkv_proj", TO_HF),
    Case("nt-huge-unsharded-shape", _nt(_both(unsharded_shape="(1000000000000, 64)")), ("gapped slices",),
         "qkv_proj", lying=True),
    Case("nt-slice-out-of-range", _nt(_meta(1, local_global_slices_pairs="0,64,None|None,None,None#"
                                            "0,99999999999,None|None,None,None")),
         ("bad local_global_slices_pairs",), "qkv_proj", TO_HF),
    Case("nt-unknown-shard-version", _nt(_meta(0, version="9.9")), ("unknown checkpoint version '9.9'",), "qkv_proj",
         TO_HF),
    Case("nt-unknown-checkpoint-version", _nt_json("checkpoint_metadata.json", lambda d: d.update(version="7.0")),
         ("unknown checkpoint version '7.0'",), "checkpoint_metadata.json", TO_HF),
    Case("nt-duplicate-rank", _nt(lambda q: shutil.copyfile(
        q / RANK.format(0), q / "model_model_weight.safetensors_pp-rank-0-of-1_tp-rank-0-of-2.safetensors")),
         ("overlapping shards", "both tp-rank 0"), "qkv_proj", TO_HF),
    Case("nt-rank-out-of-range", _nt(_rename("model_weight_pp-rank-0-of-1_tp-rank-2-of-2.safetensors")),
         ("rank out of range", "tp 2 of 2"), "tp-rank-2-of-2", TO_HF),
    Case("nt-tp-sizes-disagree", _nt(_rename("model_weight_pp-rank-0-of-1_tp-rank-1-of-3.safetensors")),
         ("disagree on the TP size",), "qkv_proj", TO_HF),
    Case("nt-unreadable-slices", _nt(_meta(0, local_global_slices_pairs="garbage")), ("unreadable shard metadata",),
         "tp-rank-0-of-2", TO_HF),
    Case("nt-no-slice-metadata", _nt(_meta(0, local_global_slices_pairs=None)),
         ("no 'local_global_slices_pairs' in its metadata",), "tp-rank-0-of-2", TO_HF),
    Case("nt-two-tensors-in-shard", _nt(_second_tensor), ("exactly one tensor named 'data'",), "tp-rank-0-of-2",
         TO_HF),
    Case("nt-bad-file-name", _nt(_rename("model_weight_rank1.safetensors")), ("not a nanotron weight file name",),
         "model_weight_rank1.safetensors", TO_HF),
    Case("nt-truncated-shard", _nt(lambda q: _cut(-100)(q / RANK.format(1))), ("truncated file",), "tp-rank-1-of-2",
         TO_HF),
    Case("nt-model-config-lacks-hidden-size", _nt_json("model_config.json", lambda d: d.pop("hidden_size")),
         ("model config lacks a size field",), "model_config.json", TO_HF),
    Case("nt-unsupported-model-config", _nt_json("model_config.json", lambda d: d.pop("is_bitnet_config")),
         ("unsupported nanotron model config",), "model_config.json", TO_HF),
    Case("nt-8192-slice-pairs", _nt(_many_pairs), ("8192 local_global_slices_pairs", "more than bitconv accepts"),
         "qkv_proj", TO_HF, lying=True),
    Case("nt-nan-latent", _nt(_nan_latent), ("qkv_proj.weight", "NaN or Inf"), "qkv_proj"),
    Case("nt-missing-parameter", _nt(lambda q: shutil.rmtree(q.parents[4] / "final_layer_norm")),
         ("missing parameter 'model.final_layer_norm.pp_block.weight'",), "src/model", TO_HF),
]

# ------------------------------------------------------------------------------------------------ round two (issue 13)
# Links out of SRC, special files, OUT aliasing SRC, bad scales, report paths, token files, ini files, configs.

SECRET = "SECRET-THAT-MUST-NOT-LEAVE"


def _secret(tmp: Path, name: str = "secret.txt", text: str = SECRET) -> Path:
    """A file outside SRC (beside it in the scratch folder) that a hostile link points at."""
    d = tmp / "elsewhere"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d / name


def _link(base: str, name: str, target: Callable[[Path], str | Path]) -> Builder:
    """`base` with `name` replaced by a symbolic link to `target(tmp)`."""
    def build(tmp: Path) -> Path:
        src = clone(base, tmp)
        folder = src if src.is_dir() else src.parent
        (folder / name).unlink(missing_ok=True)
        os.symlink(target(tmp), folder / name)
        return src
    return build


def _moved_out(base: str, name: str) -> Callable[[Path], Path]:
    """Moves SRC's `name` outside SRC and returns where it went (a real file of the checkpoint, linked back)."""
    def target(tmp: Path) -> Path:
        d = tmp / "elsewhere"
        d.mkdir(exist_ok=True)
        shutil.copyfile(BASES.get(base) / name, d / name)
        return d / name
    return target


def _fifo(base: str, name: str) -> Builder:
    def build(tmp: Path) -> Path:
        src = clone(base, tmp)
        folder = src if src.is_dir() else src.parent
        (folder / name).unlink(missing_ok=True)
        os.mkfifo(folder / name)
        return src
    return build


def _sparse(base: str, name: str, size: int = 4 << 30) -> Builder:
    def build(tmp: Path) -> Path:
        src = clone(base, tmp)
        with open(src / name, "r+b") as f:
            f.truncate(size)  # sparse: no disk used
        return src
    return build


def _fifo_gguf(tmp: Path) -> Path:
    os.mkfifo(tmp / "model.gguf")
    return tmp / "model.gguf"


def _scale(value: float, base: str = "packed", name: str = "model.layers.0.mlp.down_proj.weight_scale") -> Builder:
    """`name` (a one-value weight_scale) set to `value` in its stored dtype."""
    def mutate(p: Path) -> None:
        dtype = st_header(p)[0][name]["dtype"]
        v = np.full(1, value, np.float32)
        raw = {"F32": v, "F16": v.astype(np.float16), "BF16": (v.view(np.uint32) >> 16).astype(np.uint16)}[dtype]
        st_put(p, name, raw.view(np.uint8))
    return st_file(mutate, base)


def _master_with_scale(p: Path) -> None:
    header, data = st_header(p)
    end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    header["model.layers.0.self_attn.q_proj.weight_scale"] = {"dtype": "F32", "shape": [1],
                                                              "data_offsets": [end, end + 4]}
    st_write(p, header, data[:end] + np.float32(1.0).tobytes())


def _nt_broken(name: str, text: str) -> Builder:
    """The Nanotron base with no recorded vocabulary (so side files decide), `name` replaced by `text`."""
    def build(tmp: Path) -> Path:
        src = clone("nt", tmp)
        meta = json.loads((src / "checkpoint_metadata.json").read_text())
        meta.pop("custom_metas", None)
        (src / "checkpoint_metadata.json").write_text(json.dumps(meta))
        (src / name).write_text(text)
        return src
    return build


def _with_ref(tmp: Path) -> Path:
    """OUT = a packed checkpoint (the SRC of verify) and REF = the master beside it at tmp/ref."""
    shutil.copytree(BASES.get("st"), tmp / "ref")
    return clone("packed", tmp)


def _tokens_file(content: str) -> Builder:
    def build(tmp: Path) -> Path:
        src = _with_ref(tmp)
        (tmp / "tokens.txt").write_text(content)
        return src
    return build


def _ini_file(content: bytes) -> Builder:
    def build(tmp: Path) -> Path:
        src = clone("st", tmp)
        (tmp / "my.ini").write_bytes(content)
        return src
    return build


def _ini_beside_out(make: Callable[[Path], object]) -> Callable[[Path], Path]:
    def out(tmp: Path) -> Path:
        (tmp / "o").mkdir()
        make(tmp / "o" / "kernel_config.ini")
        return tmp / "o" / "model.gguf"
    return out


def _alias_link(rel: str) -> Callable[[Path], Path]:
    """OUT reached through a link to SRC: `tmp/alias -> tmp/src`, OUT = tmp/alias/<rel>."""
    def out(tmp: Path) -> Path:
        os.symlink(tmp / "src", tmp / "alias")
        return tmp / "alias" / rel if rel else tmp / "alias"
    return out


def _hardlink_gguf(tmp: Path) -> Path:
    os.link(tmp / "model.gguf", tmp / "copy.gguf")
    return tmp / "copy.gguf"


def _dangling(tmp: Path) -> Path:
    os.symlink(tmp / "nowhere" / "x", tmp / "dangling")
    return tmp / "dangling"


def _deep_yaml(tmp: Path) -> Path:
    return _nt_broken("config.yaml", "".join(" " * i + "a:\n" for i in range(5000)) + " " * 5000 + "b: 1\n")(tmp)


VERIFY = ("verify", "{src}", "--ref", "{tmp}/ref", "--no-parity")
VERIFY_TOKENS = ("verify", "{src}", "--ref", "{tmp}/ref", "--tokens", "{tmp}/tokens.txt")
PACK_TL1 = ("pack", "{src}", "--to", "gguf", "--type", "tl1", "-o", "{out}")
OVERWRITE = ("pack", "{src}", "-o", "{out}", "--overwrite")
SIDE = "side-effects: a link out of SRC is never read"

ROUND_TWO = [
    # 1. links out of SRC: side files, config, index, weights (never read, never copied, never uploaded)
    Case("link-license-to-environ", _link("st", "LICENSE", lambda t: "/proc/self/environ"),
         ("symbolic link", "outside the checkpoint folder"), "LICENSE"),
    Case("link-tokenizer-outside", _link("st", "tokenizer.json", _secret), ("symbolic link",), "tokenizer.json",
         QUANTIZE),
    Case("link-notice-to-etc", _link("st", "NOTICE", lambda t: "/etc/hostname"), ("symbolic link",), "NOTICE",
         PACK_GGUF),
    Case("link-chat-template-dangling", _link("st", "chat_template.jinja", lambda t: t / "gone"),
         ("symbolic link",), "chat_template.jinja"),
    Case("link-config-outside", _link("st", "config.json", _moved_out("st", "config.json")), ("symbolic link",),
         "config.json", INSPECT),
    Case("link-weights-outside", _link("st", "model.safetensors", _moved_out("st", "model.safetensors")),
         ("symbolic link",), "model.safetensors"),
    Case("link-index-outside", _link("sharded", INDEX, _moved_out("sharded", INDEX)), ("symbolic link",), INDEX,
         QUANTIZE),
    Case("link-shard-outside", _link("sharded", "model-00002-of-00006.safetensors",
                                     _moved_out("sharded", "model-00002-of-00006.safetensors")),
         ("symbolic link",), "model-00002-of-00006.safetensors", QUANTIZE),
    Case("link-nanotron-tokenizer-outside", _link("nt", "tokenizer.json", _secret), ("symbolic link",),
         "tokenizer.json", TO_HF),
    Case("link-gguf-kernel-config-outside", _link("tl1", "kernel_config.ini", lambda t: "/etc/hostname"),
         ("symbolic link",), "kernel_config.ini", INSPECT),
    # 6. special files and unbounded reads: never read, never a hang
    Case("special-config-fifo", _fifo("st", "config.json"), ("is a FIFO", "regular files only"), "config.json",
         INSPECT),
    Case("special-index-fifo", _fifo("sharded", INDEX), ("is a FIFO",), INDEX, QUANTIZE),
    Case("special-tokenizer-fifo", _fifo("st", "tokenizer.json"), ("is a FIFO",), "tokenizer.json"),
    Case("special-gguf-fifo", _fifo_gguf, ("is a FIFO",), "model.gguf", INSPECT),
    Case("special-kernel-config-fifo", _fifo("tl1", "kernel_config.ini"), ("is a FIFO",), "kernel_config.ini",
         INSPECT),
    Case("special-config-4gb-sparse", _sparse("st", "config.json"), ("4294967296 bytes", "more than the 16 MiB"),
         "config.json", INSPECT),
    Case("special-index-4gb-sparse", _sparse("sharded", INDEX), ("more than the 64 MiB",), INDEX, QUANTIZE),
    Case("special-tokenizer-4gb-sparse", _sparse("st", "tokenizer.json"), ("more than the 512 MiB",),
         "tokenizer.json"),
    Case("special-kernel-config-dev-zero", lambda t: clone("st", t), ("is a character device",), "/dev/zero",
         (*PACK_TL1, "--kernel-config", "/dev/zero")),
    Case("special-nanotron-yaml-fifo", _fifo("nt", "config.yaml"), ("is a FIFO",), "config.yaml", TO_HF),
    # 3. OUT reaching SRC through another path; 9. OUT's parent checked before anything is read
    Case("alias-out-is-src-through-link", lambda t: clone("st", t), ("would overwrite or sit inside the input",),
         "alias", OVERWRITE, out=_alias_link("")),
    Case("alias-out-inside-src-through-link", lambda t: clone("st", t), ("sit inside the input",), "alias",
         PACK, out=_alias_link("packed")),
    Case("alias-src-inside-out", lambda t: clone("st", t), ("holds the input",), "", OVERWRITE,
         out=lambda t: t),
    Case("alias-gguf-out-hard-link-of-src", lambda t: clone("gguf", t), ("input",), "copy.gguf",
         ("pack", "{src}", "--to", "gguf", "--type", "i2_s", "-o", "{out}", "--overwrite"), out=_hardlink_gguf),
    Case("out-dangling-link-checked-first", _fifo("st", "config.json"), ("dangling symbolic link",), "dangling",
         out=_dangling),
    # 5. bad scales in a packed / ternary SRC, refused naming the tensor
    Case("w-packed-scale-nan", _scale(float("nan")), ("down_proj.weight_scale", "must be finite and > 0"),
         "model.safetensors", PACK_GGUF),
    Case("w-packed-scale-inf", _scale(float("inf")), ("down_proj.weight_scale", "inf"), "model.safetensors",
         ("unpack", "{src}", "-o", "{out}")),
    Case("w-packed-scale-zero", _scale(0.0), ("down_proj.weight_scale", "0.0"), "model.safetensors", PACK_GGUF),
    Case("w-packed-scale-negative", _scale(-0.5), ("down_proj.weight_scale", "-0.5"), "model.safetensors",
         ("unpack", "{src}", "-o", "{out}")),
    Case("w-ternary-scale-nan", _scale(float("nan"), "ternary", "model.layers.0.self_attn.q_proj.weight_scale"),
         ("q_proj.weight_scale", "nan"), "model.safetensors", ("unpack", "{src}", "-o", "{out}")),
    Case("w-ternary-scale-neg-inf", _scale(float("-inf"), "ternary", "model.layers.0.self_attn.q_proj.weight_scale"),
         ("q_proj.weight_scale", "-inf"), "model.safetensors", PACK_GGUF),
    # 8. never an internal error
    Case("w-master-stores-weight-scale", st_file(_master_with_scale), ("q_proj.weight_scale", "mixes master"),
         "model.safetensors"),
    Case("cfg-rms-norm-eps-string", _cfg_set(rms_norm_eps="x"), ("rms_norm_eps is 'x', not a number",), CONFIG),
    Case("cfg-max-position-negative", _cfg_set(max_position_embeddings=-1), ("max_position_embeddings is -1",),
         CONFIG, PACK_GGUF),
    Case("cfg-hidden-size-null", _cfg_set(hidden_size=None), ("hidden_size is None, not a positive integer",),
         CONFIG),
    Case("cfg-hidden-act-list", _cfg_set(hidden_act=["silu"]), ("hidden_act is ['silu'], not a string",), CONFIG,
         PACK_GGUF),
    Case("cfg-hidden-size-missing", _cfg(lambda c: c.pop("hidden_size")), ("has no 'hidden_size'",), CONFIG,
         INSPECT),
    Case("cfg-eos-float", _cfg_set(eos_token_id=1.5), ("eos_token_id is 1.5",), CONFIG, PACK_GGUF),
    Case("cfg-quant-config-eps-nan", _cfg(lambda c: c["quantization_config"].update(rms_norm_eps=float("nan")),
                                         "packed"), ("quantization_config.rms_norm_eps is nan",), CONFIG),
    Case("nt-broken-tokenizer-json", _nt_broken("tokenizer.json", "{\"model\": "), ("tokenizer.json",
                                                                                   "not valid JSON"),
         "tokenizer.json", TO_HF),
    Case("nt-tokenizer-json-wrong-shape", _nt_broken("tokenizer.json", "[1, 2]"), ("not a JSON object",),
         "tokenizer.json", TO_HF),
    Case("nt-config-yaml-nested-deep", _deep_yaml, ("nested too deeply",), "config.yaml", TO_HF),
    Case("ini-beside-out-is-folder", lambda t: clone("st", t), ("exists and is not a regular file",),
         "kernel_config.ini", PACK_TL1, out=_ini_beside_out(lambda p: p.mkdir())),
    Case("ini-beside-out-not-utf8", lambda t: clone("st", t), ("a different kernel config already exists",),
         "kernel_config.ini", PACK_TL1, out=_ini_beside_out(lambda p: p.write_bytes(b"\xff\xfe[K]\n"))),
    Case("ini-malformed-one-line", _ini_file(b"garbage\n"), ("not a kernel_config.ini",), "my.ini",
         (*PACK_TL1, "--kernel-config", "{tmp}/my.ini")),
    Case("ini-not-utf8", _ini_file(b"[Kernels_0]\nm = \xff\n"), ("not UTF-8",), "my.ini",
         (*PACK_TL1, "--kernel-config", "{tmp}/my.ini")),
    # 4. report paths naming an input; 6. token files
    Case("report-junit-over-ref-weights", _with_ref, ("report path is an input file",), "model.safetensors",
         (*VERIFY, "--junit", "{tmp}/ref/model.safetensors")),
    Case("report-json-over-ref-config", _with_ref, ("report path is an input file",), "config.json",
         (*VERIFY, "--report", "{tmp}/ref/config.json")),
    Case("report-json-over-out-weights", _with_ref, ("report path is an input file",), "model.safetensors",
         (*VERIFY, "--report", "{src}/model.safetensors")),
    Case("tokens-one-long-sequence", _tokens_file(" ".join(["1"] * 60_000)), ("at most 2048 ids",), "tokens.txt",
         VERIFY_TOKENS),
    Case("tokens-too-many-sequences", _tokens_file("1 2\n" * 500), ("500 sequence(s)", "at most 64"),
         "tokens.txt", VERIFY_TOKENS),
    Case("tokens-float-ids", _tokens_file("[[1.0, 2.5, 3]]"), ("1.0 is not a token id",), "tokens.txt",
         VERIFY_TOKENS),
    Case("tokens-bool-ids", _tokens_file("[[true, false]]"), ("True is not a token id",), "tokens.txt",
         VERIFY_TOKENS),
    Case("tokens-negative-ids", _tokens_file("3 -1 2"), ("'-1' is not a token id",), "tokens.txt", VERIFY_TOKENS),
]

CASES: list[Case] = SAFETENSORS + INDEXED + CONFIGS + WEIGHTS + PICKLES + GGUF + NANOTRON + ROUND_TWO


def out_of(case: Case, tmp: Path) -> Path:
    return case.out(tmp) if case.out is not None else tmp / "out"


def command_of(case: Case, src: Path, out: Path) -> list[str]:
    """The command line; `{tmp}` is the scratch folder (SRC's parent)."""
    return [a.format(src=src, out=out, tmp=src.parent) for a in case.command]


def check_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


check_unique()


# ------------------------------------------------------------------------------------------------------ config fuzz
# 27 config.json keys x 16 values x 8 commands: every run ends in exit 0 or a one-line exit 2, never exit 3.

CONFIG_FUZZ_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act",
    "tie_word_embeddings", "architectures", "model_type", "rope_scaling", "attention_bias", "mlp_bias",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "torch_dtype", "quantization_config",
    "use_cache", "pretraining_tp", "rope_parameters", "bitconv")
CONFIG_FUZZ_VALUES = (None, "x", -1, 0, 1, 2**40, 1.5, float("nan"), float("inf"), True, [], [1, "a"], {},
                      {"a": [1]}, "", -1e30)
CONFIG_FUZZ_COMMANDS = (
    INSPECT, ("check", "{src}"), PACK, ("pack", "{src}", "--to", "gguf", "--type", "i2_s", "-o", "{out}.gguf"),
    ("pack", "{src}", "--to", "gguf", "--type", "tq2_0", "-o", "{out}.gguf"), QUANTIZE,
    ("convert", "{src}", "--to", "nanotron", "-o", "{out}"), ("pack", "{src}", "--dry-run", "--json", "-o", "{out}"))
