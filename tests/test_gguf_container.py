"""The GGUF container on its own: writer, strict reader, dialects, KV encoding, vocab export, names, permutation."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import bitconv.layouts  # noqa: F401 - the layouts register the ternary GGML types the container reads
from bitconv.core.errors import LayoutError, SourceError, UsageError
from bitconv.formats.gguf import KV, TensorEntry, ValueType, build_header, read_gguf, write_gguf
from bitconv.formats.gguf.metadata import ARCHS, gguf_name, hf_name, permute_rows, resolve_arch, size_label, title
from bitconv.formats.gguf.quants import dequantize_q8_0, quantize_q8_0
from bitconv.formats.gguf.types import by_id, tensor_nbytes
from bitconv.formats.gguf.vocab import load_vocab, vocab_kvs
from tests.conftest import GOLDEN

GOLDEN_FILES = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.glob("gguf-*/**/*.gguf"))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------------------------------------ writer / reader


@pytest.mark.parametrize("rel", GOLDEN_FILES)
def test_golden_files_rewrite_byte_identical(rel, tmp_path):
    """Reader -> writer reproduces every reference file: KV encoding, tensor infos, offsets and padding."""
    src = GOLDEN / rel
    g = read_gguf(src)
    entries = [TensorEntry(t.name, t.dims, t.type.id, t.nbytes) for t in g.tensors.values()]
    header, _ = build_header(g.kvs.values(), entries)
    assert header == src.read_bytes()[: len(header)] and len(header) == g.data_start
    write_gguf(tmp_path / "x.gguf", g.kvs.values(), [(e, g.read(e.name)) for e in entries])
    assert (tmp_path / "x.gguf").read_bytes() == src.read_bytes()


def test_golden_types_and_dialect():
    i2s = read_gguf(GOLDEN / "gguf-i2s/ggml-model-i2_s.gguf")
    assert i2s.dialect == "bitnet.cpp"
    t = i2s.tensors["blk.0.ffn_down.weight"]
    assert (t.type.name, t.dims, t.shape, t.nbytes) == ("I2_S", (256, 128), (128, 256), 128 * 256 // 4 + 32)
    assert i2s.tensors["token_embd.weight"].type.name == "Q8_0"
    tl2 = read_gguf(GOLDEN / "gguf-tl/tl2/ggml-model-tl2.gguf")
    assert {t.type.name for t in tl2.tensors.values()} == {"F16", "F32", "TL2"}
    assert tl2.tensors["blk.0.ffn_down.weight"].nbytes == 30080  # pad32(NB) + 32 for M=256, K=512 (MANIFEST span)
    tq = read_gguf(GOLDEN / "gguf-tq/ggml-model-tq2_0.gguf")
    assert tq.get("general.name") == "Input" and tq.get("general.file_type") == 37


def test_dialect_upstream_refuses_fork_ids():
    with pytest.raises(SourceError) as e:
        read_gguf(GOLDEN / "gguf-i2s/ggml-model-i2_s.gguf", dialect="upstream")
    assert "36" in one_line(e) and "IQ4_NL_4_4" in str(e.value) and "bitnet.cpp dialect" in str(e.value)
    with pytest.raises(SourceError) as e:  # 39 read as MXFP4 does not fit the TL2 tensors' bytes
        read_gguf(GOLDEN / "gguf-tl/tl2/ggml-model-tl2.gguf", dialect="upstream")
    one_line(e)
    with pytest.raises(UsageError):
        read_gguf(GOLDEN / "gguf-tq/ggml-model-tq2_0.gguf", dialect="nope")


def _single(tmp_path: Path, type_id: int, dims: tuple[int, ...], nbytes: int, arch: str = "llama") -> Path:
    p = tmp_path / f"t{type_id}.gguf"
    write_gguf(p, [KV.string("general.architecture", arch)],
               [(TensorEntry("blk.0.attn_q.weight", dims, type_id, nbytes), np.zeros(nbytes, np.uint8))])
    return p


def test_auto_dialect_by_size(tmp_path):
    """Id 39 outside a bitnet arch: TL2 when the bytes fit TL2, MXFP4 when they fit MXFP4."""
    tl2 = tensor_nbytes(by_id(39, "bitnet.cpp"), (256, 256))
    assert read_gguf(_single(tmp_path, 39, (256, 256), tl2)).tensors["blk.0.attn_q.weight"].type.name == "TL2"
    mx = tensor_nbytes(by_id(39, "upstream"), (256, 256))
    (tmp_path / "m").mkdir()
    g = read_gguf(_single(tmp_path / "m", 39, (256, 256), mx))
    assert g.dialect == "upstream" and g.tensors["blk.0.attn_q.weight"].type.name == "MXFP4"
    assert by_id(42, "bitnet.cpp").name == "TL2_42" and by_id(42, "upstream").name == "Q2_0"


def test_fork_type_ids_written_and_read(tmp_path):
    """gguf-py's writer refuses raw fork ids without tricks; ours takes any id with a byte size."""
    kvs = [KV.string("general.architecture", "bitnet"), KV.u32("u", 7), KV.f32("f", 0.5), KV.boolean("b", True),
           KV(key="i8", type=ValueType.INT8, value=-3), KV(key="u64", type=ValueType.UINT64, value=2**40),
           KV(key="f64", type=ValueType.FLOAT64, value=0.25),
           KV.array("s", ValueType.STRING, ["a", "ü", ""]), KV.array("i", ValueType.INT32, [1, -2, 3])]
    n42 = tensor_nbytes(by_id(42, "bitnet.cpp"), (512, 256))
    tensors = [(TensorEntry("a", (256, 128), 36, 8224), (np.arange(8224) % 251).astype(np.uint8)),
               (TensorEntry("b", (256, 256), 38, 16416), np.full(16416, 7, np.uint8)),
               (TensorEntry("c", (512, 256), 42, n42), np.ones(n42, np.uint8))]
    write_gguf(tmp_path / "f.gguf", kvs, tensors)
    g = read_gguf(tmp_path / "f.gguf")
    assert [t.type.name for t in g.tensors.values()] == ["I2_S", "TL1", "TL2_42"]
    for e, data in tensors:
        assert np.array_equal(g.read(e.name), data)
        assert g.tensors[e.name].offset % 32 == 0
    assert [g.get(k.key) for k in kvs] == ["bitnet", 7, 0.5, True, -3, 2**40, 0.25, ["a", "ü", ""], [1, -2, 3]]


def test_gguf_py_reads_our_upstream_types(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    kvs = [KV.string("general.architecture", "llama"), KV.array("tokenizer.ggml.tokens", ValueType.STRING, ["x"])]
    write_gguf(tmp_path / "u.gguf", kvs, [(TensorEntry("w", (64, 4), 0, w.nbytes), w),
                                          (TensorEntry("h", (64, 4), 1, w.nbytes // 2), w.astype(np.float16))])
    r = gguf.GGUFReader(tmp_path / "u.gguf")
    assert np.array_equal(r.tensors[0].data, w) and np.array_equal(r.tensors[1].data, w.astype(np.float16))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "llama"


def test_writer_state_errors(tmp_path):
    from bitconv.formats.gguf import GGUFWriter

    w = GGUFWriter(tmp_path / "w.gguf", [], [TensorEntry("a", (4,), 0, 16), TensorEntry("b", (4,), 0, 16)])
    with pytest.raises(RuntimeError, match="expected 'a'"):
        w.write("b", np.zeros(4, np.float32))
    with pytest.raises(RuntimeError, match="16 bytes"):
        w.write("a", np.zeros(3, np.float32))
    w.write("a", np.zeros(4, np.float32))
    with pytest.raises(RuntimeError, match="closed before 'b'"):
        w.close()


# ------------------------------------------------------------------------------------------------ corrupt files


def _golden_bytes() -> bytes:
    return (GOLDEN / "gguf-tq/ggml-model-tq2_0.gguf").read_bytes()


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("mutate, fragment", [
    (lambda b: b"GGML" + b[4:], "not a GGUF file"),
    (lambda b: b"", "not a GGUF file"),
    (lambda b: b"GGUF\x03", "truncated GGUF"),
    (lambda b: b[:4] + struct.pack("<I", 1) + b[8:], "version 1 is not supported"),
    (lambda b: b[:4] + struct.pack(">I", 3) + b[8:], "big-endian"),
    (lambda b: b[:2000], "truncated or corrupt GGUF"),
    (lambda b: b[:9000], "truncated GGUF"),
    (lambda b: b[:-100], "truncated file"),
    (lambda b: b[:8] + struct.pack("<Q", 10**12) + b[16:], "more than the file can hold"),
])
def test_corrupt_files_one_line_errors(tmp_path, mutate, fragment):
    with pytest.raises(SourceError) as e:
        read_gguf(_write(tmp_path, mutate(_golden_bytes())))
    assert fragment in one_line(e)


def test_bad_lengths_offsets_and_types(tmp_path):
    b = bytearray(_golden_bytes())
    g = read_gguf(GOLDEN / "gguf-tq/ggml-model-tq2_0.gguf")
    # first KV key length -> larger than the file
    bad = bytes(b[:24]) + struct.pack("<Q", 10**9) + bytes(b[32:])
    with pytest.raises(SourceError) as e:
        read_gguf(_write(tmp_path, bad))
    assert "declares 1000000000 bytes" in one_line(e)
    # last tensor info: type id and offset fields sit just before the data padding
    last = list(g.tensors.values())[-1]
    name = last.name.encode()
    pos = bytes(b).rindex(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 8 * len(last.dims)
    for patch, fragment in ((struct.pack("<I", 99), "unknown GGML type id 99"),
                            (struct.pack("<I", 0) + struct.pack("<Q", 10**8), "offset out of range"),
                            (struct.pack("<I", 0) + struct.pack("<Q", last.offset - g.data_start + 4),
                             "not a multiple of the alignment"),
                            (struct.pack("<I", 0) + struct.pack("<Q", 0), "overlaps")):
        bad = bytes(b[:pos]) + patch + bytes(b[pos + len(patch):])
        with pytest.raises(SourceError) as e:
            read_gguf(_write(tmp_path, bad))
        assert fragment in one_line(e)
    # a KV value type that does not exist
    key = b"general.architecture"
    kpos = bytes(b).index(key) + len(key)
    with pytest.raises(SourceError) as e:
        read_gguf(_write(tmp_path, bytes(b[:kpos]) + struct.pack("<I", 77) + bytes(b[kpos + 4:])))
    assert "unknown metadata value type 77" in one_line(e)


# ------------------------------------------------------------------------------------------------ vocab


def test_spm_vocab_equals_converters(tmp_path):
    src = GOLDEN / "gguf-tq/input"
    v = load_vocab(src, json.loads((src / "config.json").read_text()), "upstream")
    ref = read_gguf(GOLDEN / "gguf-tq/ggml-model-tq2_0.gguf").kvs
    got = vocab_kvs(v, "upstream")
    assert [kv.key for kv in got] == [k for k in ref if k.startswith("tokenizer.")]
    assert all(kv.encode() == ref[kv.key].encode() for kv in got)


def test_spm_vocab_pads_to_vocab_size(models):
    m = models("1bitllm")
    cfg = json.loads((m / "config.json").read_text())
    v = load_vocab(m, dict(cfg, vocab_size=cfg["vocab_size"] + 3), "bitnet.cpp")
    assert v.tokens[-3:] == ["[PAD1]", "[PAD2]", "[PAD3]"] and v.types[-1] == 5 and v.scores[-1] == -1000.0
    assert v.special_ids == {"bos": 1, "eos": 2} and v.add_special == {"bos": True, "eos": False}


def test_bpe_vocab(models):
    m = models("bitnet-2b4t")
    cfg = json.loads((m / "config.json").read_text())
    tj = json.loads((m / "tokenizer.json").read_text())
    v = load_vocab(m, cfg, "upstream")
    assert v.model == "gpt2" and v.pre == "llama-bpe" and len(v.tokens) == cfg["vocab_size"] and v.scores is None
    assert v.tokens[:3] == ["!", '"', "#"] and v.tokens[504] == "<|begin_of_text|>" and v.types[504] == 3
    assert v.tokens[-1] == f"[PAD{cfg['vocab_size'] - 1}]" and v.types[-1] == 5
    assert v.merges[0] == " ".join(tj["model"]["merges"][0]) and len(v.merges) == len(tj["model"]["merges"])
    assert v.special_ids == {"bos": 504, "eos": 505} and v.add_special == {"bos": True}
    assert v.chat_template.startswith("{{ bos_token }}")
    ms = load_vocab(m, cfg, "convert-ms")
    assert ms.scores[0] == 0.0 and ms.scores[504] == -1000.0
    keys = [kv.key for kv in vocab_kvs(ms, "convert-ms")]
    assert "tokenizer.ggml.pre" not in keys and keys[:2] == ["tokenizer.ggml.model", "tokenizer.ggml.tokens"]


def test_no_tokenizer_is_an_error(tmp_path):
    with pytest.raises(SourceError) as e:
        load_vocab(tmp_path, {}, "upstream")
    assert "no tokenizer" in one_line(e)


# ------------------------------------------------------------------------------------------------ metadata


def test_names_round_trip():
    for hf, gg in [("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight"),
                   ("model.norm.weight", "output_norm.weight"),
                   ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"),
                   ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
                   ("model.layers.1.post_attention_layernorm.weight", "blk.1.ffn_norm.weight")]:
        assert gguf_name(hf) == gg and hf_name(gg, ARCHS["bitnet"]) == hf
    assert gguf_name("model.layers.0.self_attn.inner_attn_ln.weight") == "blk.0.attn_sub_norm.weight"
    assert gguf_name("model.layers.0.mlp.ffn_sub_norm.weight") == "blk.0.ffn_sub_norm.weight"
    assert hf_name("blk.0.attn_sub_norm.weight", ARCHS["bitnet"]) == "model.layers.0.self_attn.inner_attn_ln.weight"
    assert hf_name("blk.0.ffn_sub_norm.weight", ARCHS["bitnet-b1.58"]) == "model.layers.0.mlp.ffn_sub_norm.weight"
    assert hf_name("blk.0.attn_q.scale", ARCHS["bitnet"]) is None
    with pytest.raises(LayoutError) as e:
        gguf_name("model.vision.weight")
    one_line(e)


def test_resolve_arch():
    assert resolve_arch({"architectures": ["BitNetForCausalLM"]}, None).name == "bitnet-b1.58"
    assert resolve_arch({"architectures": ["BitNetForCausalLM"]}, "bitnet").name == "bitnet"
    assert resolve_arch({"architectures": ["BitnetForCausalLM"]}, None).name == "bitnet"
    assert resolve_arch({"architectures": ["LlamaForCausalLM"]}, None).permute_qk
    for cfg, arch, frag in (({"architectures": ["BitNetForCausalLM"]}, "gpt2", "unknown --arch"),
                            ({"architectures": ["LlamaForCausalLM"]}, "bitnet", "does not fit"),
                            ({"architectures": ["MistralForCausalLM"]}, None, "no GGUF architecture")):
        with pytest.raises(UsageError) as e:
            resolve_arch(cfg, arch)
        assert frag in one_line(e)


def test_llama_permutation_matches_reference_formula():
    n_head, d, k = 4, 8, 3
    w = np.arange(n_head * d * k).reshape(n_head * d, k)
    p = permute_rows(w, n_head)
    for h in range(n_head):
        for i in range(d // 2):
            for j in range(2):  # permuted row h*d + 2i + j <- original row h*d + j*d/2 + i
                assert np.array_equal(p[h * d + 2 * i + j], w[h * d + j * d // 2 + i])
    assert np.array_equal(permute_rows(p, n_head, inverse=True), w)
    with pytest.raises(LayoutError):
        permute_rows(np.zeros((6, 2)), 4)


def test_upstream_name_rules():
    assert title("input") == "Input" and title("bitnet-b1.58-2B-4T") == "Bitnet B1.58 2B 4T"
    assert size_label(1_001_728) == "1.0M" and size_label(2_412_000_000) == "2.4B" and size_label(740_000) == "740K"


def test_q8_0_matches_gguf_py():
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32) * 0.5
    q = quantize_q8_0(x)
    assert np.array_equal(q, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(-1))
    assert np.allclose(dequantize_q8_0(q, x.shape), gguf.quants.dequantize(q.reshape(8, -1),
                                                                           gguf.GGMLQuantizationType.Q8_0))
