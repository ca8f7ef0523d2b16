"""ik_llama.cpp's IQ1_BN / IQ2_BN / IQ2_BN_R4: golden bytes, ik's logits, awkward shapes, round trips, runtime rules.

Goldens (fixtures/golden/gguf-ikbn, see its MANIFEST.md): ik_llama.cpp 8337e4cd's llama-quantize
`--token-embedding-type q8_0 ... iq1_bn|iq2_bn` of bitconv's I2_S file of `input/`, plus ik's own logits. The
IQ2_BN_R4 expectation is built here from the IQ2_BN golden by the spec's repack formula (gguf-ik-llama.md §6.4,
which records that ik's R4 file equals that repack). The row encoders below are written from the spec's pseudo-code
(§3, §4), element by element, independently of bitconv's vectorized layouts.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bitconv import pipeline
from bitconv.cli import app
from bitconv.core.errors import FormatError, LayoutError, SourceError, UsageError
from bitconv.core.tensors import Ternary
from bitconv.formats.gguf import read_gguf
from bitconv.formats.gguf.kv import KV
from bitconv.formats.gguf.types import by_id, pad
from bitconv.formats.gguf.writer import TensorEntry, build_header, write_gguf
from bitconv.layouts import get_layout, layout_class
from bitconv.layouts.gguf_iq1bn import BYTE_OF_IDX, TRITS_OF_BYTE
from bitconv.quant import EPS
from bitconv.sinks.gguf import _tensor_layout, pack_gguf, plan_pack_gguf
from bitconv.sources import ModelTensor, open_source
from bitconv.verify.reference import reference_logits
from tests.conftest import GOLDEN

GOLD = GOLDEN / "gguf-ikbn"
IK_TYPES = ("iq1_bn", "iq2_bn", "iq2_bn_r4")
LAYOUT = {"iq1_bn": "gguf-iq1-bn", "iq2_bn": "gguf-iq2-bn", "iq2_bn_r4": "gguf-iq2-bn-r4"}
# spec gguf-ik-llama.md §8 / MANIFEST "Runtime": ik vs bitconv's online reference, max |dlogit| 0.35 % (IQ1_BN) /
# 0.33 % (IQ2_BN) of the reference logit range; the bound is that figure rounded up to the next 0.01 %.
LOGIT_BOUND = 0.0036
runner = CliRunner()


# ------------------------------------------------------------------------------------------------ spec encoders


def spec_row_iq2bn(x: np.ndarray) -> bytes:
    """spec §3, one float32 row -> bytes, literally."""
    d = np.float32(np.abs(x).max())
    th = np.float32(0.5) * d
    out = bytearray(np.array([d], "<f4").tobytes())
    for b in range(len(x) // 64):
        e = x[64 * b:64 * b + 64]
        t = [1 if abs(v) < th else (0 if v < 0 else 2) for v in e]
        out += bytes(t[j] | t[j + 16] << 2 | t[j + 32] << 4 | t[j + 48] << 6 for j in range(16))
    return bytes(out)


def spec_row_iq1bn(x: np.ndarray) -> bytes:
    """spec §4, one float32 row -> bytes, literally."""
    d = np.float32(np.abs(x).max())
    th = np.float32(0.5) * d
    out = bytearray(np.array([d], "<f4").astype("<f2").tobytes())
    for b in range(len(x) // 64):
        e = x[64 * b:64 * b + 64]
        t = [1 if abs(v) < th else (0 if v < 0 else 2) for v in e]
        ql = []
        for g in range(4):
            for k in range(3):
                idx = sum(3**i * t[16 * g + 5 * k + i] for i in range(5))
                ql.append((256 * idx + 242) // 243)
        v13 = sum(3**g * t[16 * g + 15] for g in range(4))
        out += bytes(ql) + bytes([(256 * v13 + 242) // 243])
    return bytes(out)


SPEC_ROW = {"gguf-iq1-bn": spec_row_iq1bn, "gguf-iq2-bn": spec_row_iq2bn}


def spec_r4_from_iq2bn(data: bytes, m: int, k: int) -> bytes:
    """spec §6.4 applied to IQ2_BN rows: byte[16l + 4k + i] = c_k[16l+i] | c_k[16l+i+4] << 2 | ... (index arrays)."""
    nb = k // 64
    rows = np.frombuffer(data, np.uint8).reshape(m, 4 + k // 4)
    qs = rows[:, 4:].reshape(m, nb, 16)
    c = np.empty((m, nb, 64), np.uint8)
    for i in range(4):  # IQ2_BN decode (§3): element 16i + j sits in bits 2i of byte j
        c[:, :, 16 * i:16 * i + 16] = (qs >> (2 * i)) & 3
    c4 = c.reshape(m // 4, 4, nb, 64)
    ll, kk, ii = np.meshgrid(range(4), range(4), range(4), indexing="ij")
    pos, e = (16 * ll + 4 * kk + ii).ravel(), (16 * ll + ii).ravel()
    kk = kk.ravel()
    blocks = np.empty((m // 4, nb, 64), np.uint8)
    blocks[:, :, pos] = (c4[:, kk, :, e] | c4[:, kk, :, e + 4] << 2 | c4[:, kk, :, e + 8] << 4
                         | c4[:, kk, :, e + 12] << 6).transpose(1, 2, 0)
    scales = rows[:, :4].reshape(m // 4, 16)
    return np.concatenate([scales, blocks.reshape(m // 4, -1)], axis=1).tobytes()


# ------------------------------------------------------------------------------------------------ golden bytes


@pytest.mark.parametrize("gguf_type", ["iq1_bn", "iq2_bn"])
@pytest.mark.parametrize("embd", ["q8_0", None])  # None: the ik types' default embedding type is q8_0
def test_golden_whole_file(tmp_path, gguf_type, embd):
    out = tmp_path / "o" / "model.gguf"
    rep = pack_gguf(GOLD / "input", out, gguf_type, embd_type=embd)
    assert out.read_bytes() == (GOLD / f"ggml-model-{gguf_type}.gguf").read_bytes()
    assert rep.extra["arch"] == "bitnet" and rep.extra["embd_type"] == "Q8_0" and rep.extra["warnings"] == []
    assert rep.extra["runs_on"] == "runs on: ik_llama.cpp 8337e4cd"
    cmd = next(v["command"] for v in rep.extra["runtimes"] if v["runs"])
    assert cmd.startswith("llama-cli -m model.gguf") and cmd.endswith(" -rtr" if gguf_type == "iq2_bn" else "-n 32")


def _r4_expectation() -> bytes:
    """The IQ2_BN golden with file type 337, tensor types 335 and every IQ2_BN payload repacked by the formula."""
    g = read_gguf(GOLD / "ggml-model-iq2_bn.gguf")
    kvs = [KV.u32(k, 337) if k == "general.file_type" else kv for k, kv in g.kvs.items()]
    entries, payloads = [], []
    for t in g.tensors.values():
        raw = g.read(t).tobytes()
        if t.type.name == "IQ2_BN":
            raw = spec_r4_from_iq2bn(raw, *t.shape)
        entries.append(TensorEntry(t.name, t.dims, 335 if t.type.name == "IQ2_BN" else t.type.id, len(raw)))
        payloads.append(raw)
    header, _ = build_header(kvs, entries)
    return header + b"".join(p + bytes(pad(len(p)) - len(p)) for p in payloads)


def test_golden_r4_is_the_repacked_iq2bn(tmp_path):
    want = _r4_expectation()
    gold = (GOLD / "ggml-model-iq2_bn.gguf").read_bytes()
    assert len(want) == len(gold) and want != gold
    out = tmp_path / "model.gguf"
    pack_gguf(GOLD / "input", out, "iq2_bn_r4")
    assert out.read_bytes() == want


def test_golden_reader_sizes_and_codes():
    master = open_source(GOLD / "input")
    for name, lay, meta, block in (("iq1_bn", "gguf-iq1-bn", 2, 13), ("iq2_bn", "gguf-iq2-bn", 4, 16)):
        g = read_gguf(GOLD / f"ggml-model-{name}.gguf")
        assert g.dialect == "bitnet.cpp"
        down = g.tensors["blk.0.ffn_down.weight"]
        assert down.nbytes == 512 * (meta + 640 // 64 * block)  # MANIFEST: 67584 / 83968
        ck = open_source(g.path)
        assert ck.layout == lay
        for t in master.ternary_tensors():
            a, b = t.ternary(), ck.tensors[t.name].ternary()
            assert np.array_equal(a.codes, b.codes), t.name
            want = np.float32(np.float16(a.scale)) if name == "iq1_bn" else a.scale  # fp16-rounded / exact
            assert b.scale == want and b.scale.dtype == np.float32, t.name


def test_ids_resolve_in_every_dialect_and_ne0_rule(tmp_path):
    for dialect in ("upstream", "bitnet.cpp"):
        assert [by_id(i, dialect).name for i in (134, 135, 335)] == ["IQ1_BN", "IQ2_BN", "IQ2_BN_R4"]
    # an ik file with a non-BitNet arch keeps upstream auto-detection, and still sizes the IQ rows
    data = np.zeros(8 * (4 + 64 // 4), np.uint8)
    write_gguf(tmp_path / "u.gguf", [KV.string("general.architecture", "llama")],
               [(TensorEntry("blk.0.ffn_up.weight", (64, 8), 135, data.size), data)])
    g = read_gguf(tmp_path / "u.gguf")
    assert g.dialect == "upstream" and g.tensors["blk.0.ffn_up.weight"].nbytes == 160
    write_gguf(tmp_path / "bad.gguf", [KV.string("general.architecture", "llama")],
               [(TensorEntry("blk.0.ffn_up.weight", (96, 8), 134, 8 * 22), np.zeros(8 * 22, np.uint8))])
    with pytest.raises(SourceError, match=r"IQ1_BN needs ne0 % 64 == 0"):
        read_gguf(tmp_path / "bad.gguf")


# ------------------------------------------------------------------------------------------------ ik's logits


@pytest.mark.parametrize("gguf_type", ["iq1_bn", "iq2_bn"])
def test_reference_forward_matches_ik_logits(gguf_type):
    ik = load_file(GOLD / "ik_logits.safetensors")
    ids, theirs = ik["input_ids"], ik[f"logits_{gguf_type}"][0]
    ours = reference_logits(open_source(GOLD / "input"), ids, "online")[0]
    rng = float(ours.max() - ours.min())
    assert float((ours - theirs).abs().max()) <= LOGIT_BOUND * rng
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_logit_check_fails_on_a_broken_model():
    """The bound has teeth: the plain bf16 (non-ternary) model is far outside it."""
    ik = load_file(GOLD / "ik_logits.safetensors")
    ours = reference_logits(open_source(GOLD / "input"), ik["input_ids"], "plain")[0]
    assert float((ours - ik["logits_iq2_bn"][0]).abs().max()) > 10 * LOGIT_BOUND * float(ours.max() - ours.min())


# ------------------------------------------------------------------------------------------------ layouts


def _random(shape, seed, zero_rows=()):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=shape, dtype=np.int8)
    codes[list(zero_rows)] = 0
    return Ternary(codes, np.float32(rng.uniform(1e-3, 0.1)))


@pytest.mark.parametrize("name", ["gguf-iq1-bn", "gguf-iq2-bn"])
@pytest.mark.parametrize("shape", [(8, 192), (12, 320), (4, 64), (3, 576)])  # odd blocks per row: 3, 5, 1, 9
def test_layout_bytes_equal_spec_encoder_row_by_row(name, shape):
    t = _random(shape, shape[1], zero_rows=(1,))
    lay = get_layout(name)
    data = lay.pack(t)["data"].tobytes()
    w = t.codes.astype(np.float32) * t.scale
    assert data == b"".join(SPEC_ROW[name](row) for row in w)
    back = lay.unpack({"data": np.frombuffer(data, np.uint8)}, shape)
    assert np.array_equal(back.codes, t.codes)


@pytest.mark.parametrize("shape", [(8, 192), (12, 320), (4, 64)])
def test_r4_equals_spec_repack_of_iq2bn(shape):
    t = _random(shape, 7, zero_rows=(2,))
    iq2 = get_layout("gguf-iq2-bn").pack(t)["data"].tobytes()
    r4 = get_layout("gguf-iq2-bn-r4").pack(t)["data"].tobytes()
    assert r4 == spec_r4_from_iq2bn(iq2, *shape)
    back = get_layout("gguf-iq2-bn-r4").unpack({"data": np.frombuffer(r4, np.uint8)}, shape)
    assert np.array_equal(back.codes, t.codes) and back.scale == t.scale


@pytest.mark.parametrize("name, row", [("gguf-iq1-bn", b"\0\0" + (b"\xff" * 12 + bytes([85])) * 3),
                                       ("gguf-iq2-bn", b"\0" * 4 + b"\xaa" * 48),
                                       ("gguf-iq2-bn-r4", None)])
def test_all_zero_rows(name, row):
    lay = get_layout(name)
    t = _random((8, 192), 3, zero_rows=(0, 5))
    data = lay.pack(t)["data"]
    if row is not None:  # spec §5: scale 0, every code +1
        rows = data.reshape(8, -1)
        assert rows[0].tobytes() == row and rows[5].tobytes() == row
    back = lay.unpack({"data": data}, (8, 192))
    assert np.array_equal(back.codes, t.codes) and not back.codes[[0, 5]].any()
    assert abs(float(back.scale) / float(t.scale) - 1) <= 2.0**-11
    zero = lay.unpack(lay.pack(Ternary(np.zeros((4, 64), np.int8), np.float32(0.5))), (4, 64))
    assert not zero.codes.any() and zero.scale == np.float32(EPS)


@pytest.mark.parametrize("name", list(LAYOUT.values()))
@pytest.mark.parametrize("shape", [(8, 96), (8, 100), (4, 32)])
def test_in_features_not_multiple_of_64_refused(name, shape):
    with pytest.raises(LayoutError) as e:
        get_layout(name).spec(shape, tensor="model.layers.0.mlp.up_proj.weight")
    msg = str(e.value)
    assert f"in_features % 64 == 0 (got {shape[1]})" in msg and "up_proj" in msg and str(list(shape)) in msg


def test_r4_rows_rule_and_pipeline_fallback():
    with pytest.raises(LayoutError, match=r"out_features % 4 == 0 \(got 6\)"):
        get_layout("gguf-iq2-bn-r4").spec((6, 64))
    r4 = get_layout("gguf-iq2-bn-r4")
    def tern(shape):
        return ModelTensor("model.layers.0.mlp.up_proj.weight", shape, "BF16", [], lambda c: None)

    odd, even = tern((6, 64)), tern((8, 64))
    assert _tensor_layout(odd, r4).ggml_type == "IQ2_BN" and _tensor_layout(even, r4) is r4


def test_iq1bn_byte_map_every_value():
    idx = np.arange(243)
    trits = TRITS_OF_BYTE[BYTE_OF_IDX]  # [243, 5], position i = 0 least significant
    assert np.array_equal((trits * 3 ** np.arange(5)).sum(axis=1), idx)
    assert np.array_equal(BYTE_OF_IDX, (256 * idx + 242) // 243)


@pytest.mark.parametrize("g", range(4))
@pytest.mark.parametrize("trit", range(3))
def test_iq1bn_extra_byte_every_position(g, trit):
    """Element 16g+15 of a block goes to trit position g of `extra`; the other 60 elements do not touch it."""
    lay = get_layout("gguf-iq1-bn")
    codes = np.zeros((1, 64), np.int8)
    codes[0, 0] = 1  # keep the row live (scale != 0)
    codes[0, 16 * g + 15] = trit - 1
    block = lay.pack(Ternary(codes, np.float32(1.0)))["data"][2:]
    v = sum(3**h * (trit if h == g else 1) for h in range(4))
    assert block[12] == (256 * v + 242) // 243
    assert np.array_equal(lay.unpack({"data": lay.pack(Ternary(codes, np.float32(1.0)))["data"]}, (1, 64)).codes,
                          codes)


def test_iq1bn_extra_byte_all_81_values():
    lay = get_layout("gguf-iq1-bn")
    combos = np.array(np.meshgrid(*[range(3)] * 4, indexing="ij")).reshape(4, -1).T  # [81, 4]
    codes = np.zeros((81, 64), np.int8)
    codes[:, 0] = 1
    codes[:, [15, 31, 47, 63]] = combos - 1
    data = lay.pack(Ternary(codes, np.float32(0.25)))["data"].reshape(81, 15)
    assert sorted(data[:, 14].tolist()) == sorted(((256 * np.arange(81) + 242) // 243).tolist())
    assert np.array_equal(lay.unpack({"data": data.reshape(-1)}, (81, 64)).codes, codes)


def test_worked_examples():
    iq2 = np.zeros((1, 64), np.int8)
    iq2[0, [0, 16, 32, 48]] = [1, 0, -1, 1]
    assert get_layout("gguf-iq2-bn").pack(Ternary(iq2, np.float32(0.5)))["data"][:5].tobytes() == \
        bytes([0, 0, 0, 0x3F, 0x86])
    iq1 = np.zeros((1, 64), np.int8)
    iq1[0, :5] = [1, 0, -1, -1, 1]
    assert get_layout("gguf-iq1-bn").pack(Ternary(iq1, np.float32(0.5)))["data"][2] == 176
    assert TRITS_OF_BYTE[176].tolist() == [2, 1, 0, 0, 2]
    r4 = np.zeros((4, 64), np.int8)
    r4[1, [0, 4, 8, 12]] = [1, 0, -1, 1]
    r4[0, 1] = 1  # keep row 0 live (its trits elsewhere are 1)
    assert get_layout("gguf-iq2-bn-r4").pack(Ternary(r4, np.float32(0.5)))["data"][16 + 4] == 0x86


def test_declared_facts():
    facts = {n: layout_class(n) for n in LAYOUT.values()}
    assert [(c.ggml_type_id, c.file_type, c.scale_dtype, c.nominal_bpw) for c in facts.values()] == \
        [(134, 136, "F16", 1.625), (135, 137, "F32", 2.0), (335, 337, "F32", 2.0)]
    assert [c.runtime_fact().min_in_features for c in facts.values()] == [512, 512, None]
    assert get_layout("gguf-iq1-bn").bits_per_weight((8, 2560)) == pytest.approx(1.625 + 16 / 2560)


def test_unpack_refuses_mixed_row_scales_and_bad_codes():
    lay = get_layout("gguf-iq2-bn")
    data = lay.pack(_random((4, 64), 1))["data"].reshape(4, -1).copy()
    data[2, :4] = np.array([0.75], "<f4").view(np.uint8)
    with pytest.raises(FormatError, match="2 different scales"):
        lay.unpack({"data": data.reshape(-1)}, (4, 64))
    data = lay.pack(_random((4, 64), 1))["data"].reshape(4, -1).copy()
    data[0, 4] = 0xFF
    with pytest.raises(FormatError, match="2-bit value 3"):
        lay.unpack({"data": data.reshape(-1)}, (4, 64))
    with pytest.raises(LayoutError, match="fp16"):
        get_layout("gguf-iq1-bn").pack(Ternary(np.ones((1, 64), np.int8), np.float32(1e6)))


# ------------------------------------------------------------------------------------------------ pack rules


def test_small_in_features_written_with_warning(models, tmp_path):
    m = models("1bitllm")  # in_features 256 / 768
    for gguf_type in IK_TYPES:
        out = tmp_path / f"{gguf_type}.gguf"
        rep = pack_gguf(m, out, gguf_type)
        assert out.is_file()
        warn = " ".join(rep.extra["warnings"])
        ik = next(v for v in rep.extra["runtimes"] if v["name"].startswith("ik_llama.cpp"))
        if gguf_type == "iq1_bn":  # written (the file is right), with the runtime's abort named
            assert "in_features 256 < 512" in warn and "first matmul aborts" in warn and not ik["runs"]
        else:  # IQ2_BN runs with -rtr (repacked at load), IQ2_BN_R4 has no limit
            assert warn == "" and ik["runs"]
    assert "-rtr" in next(v for v in pack_gguf(m, tmp_path / "r.gguf", "iq2_bn").extra["runtimes"]
                          if v["name"].startswith("ik_llama.cpp"))["command"]
    big = plan_pack_gguf(open_source(GOLD / "input"), "iq1_bn")
    assert big.extra["warnings"] == []


def _ik(extra: dict) -> dict:
    return next(v for v in extra["runtimes"] if v["name"].startswith("ik_llama.cpp"))


def test_other_types_say_ik_cannot_run_them(models):
    src = open_source(models("1bitllm"))
    assert "wrong logits" in _ik(plan_pack_gguf(src, "i2_s").extra)["why"]
    assert "no type 35" in _ik(plan_pack_gguf(src, "tq2_0").extra)["why"]
    assert _ik(plan_pack_gguf(src, "iq2_bn").extra)["runs"]


def test_arch_rules_for_ik(models, tmp_path):
    b2 = open_source(models("bitnet-2b4t"))
    assert plan_pack_gguf(b2, "iq2_bn").arch.name == "bitnet-25"  # default for a relu² model
    assert plan_pack_gguf(b2, "iq2_bn", arch="bitnet-b1.58").arch.name == "bitnet-b1.58"  # same graph in ik
    assert plan_pack_gguf(b2, "i2_s").arch.name == "bitnet-b1.58"  # other types keep their default
    with pytest.raises(UsageError) as e:  # ik's `bitnet` graph is SiLU: runs nowhere correctly
        pack_gguf(b2, tmp_path / "o" / "x.gguf", "iq2_bn", arch="bitnet")
    msg = str(e.value)
    assert "computes silu, the model needs relu2" in msg and "--force" in msg and "\n" not in msg
    assert not (tmp_path / "o").exists()
    one = open_source(models("1bitllm"))
    assert plan_pack_gguf(one, "iq1_bn").arch.name == "bitnet"
    with pytest.raises(UsageError, match="computes relu2, the model needs silu"):
        plan_pack_gguf(one, "iq1_bn", arch="bitnet-25")


def test_shape_rule_refused_before_writing(models, tmp_path):
    m = models("1bitllm", hidden_size=160, num_heads=2, num_kv_heads=2)  # K = 160 is not a multiple of 64
    for gguf_type in IK_TYPES:
        with pytest.raises(LayoutError, match=r"in_features % 64 == 0 \(got 160\)"):
            pack_gguf(m, tmp_path / "o" / "x.gguf", gguf_type)
        assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ round trips


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One source of every kind, each with in_features % 64 == 0."""
    base = tmp_path_factory.mktemp("iksrc")
    from bitconv import tiny

    master = tiny.make_tiny(base / "master", "bitnet-2b4t")
    out = {"bf16-master": master, "1bitllm": tiny.make_tiny(base / "m1", "1bitllm"),
           "llama": tiny.make_tiny(base / "ml", "llama-bitnet")}
    pipeline.quantize(master, base / "ternary")
    out["bitconv-ternary"] = base / "ternary"
    pipeline.pack_hf(master, base / "packed")
    out["hf-packed"] = base / "packed"
    pack_gguf(master, base / "i2s.gguf", "i2_s")
    out["gguf-i2_s"] = base / "i2s.gguf"
    from bitconv.sinks.nanotron import to_nanotron

    to_nanotron(out["llama"], base / "nt-tp2", tp=2)  # the shipped Nanotron fixtures have in_features 32 / 48
    out["nanotron"] = base / "nt-tp2"
    return out


@pytest.mark.parametrize("gguf_type", IK_TYPES)
@pytest.mark.parametrize("kind", ["bf16-master", "1bitllm", "llama", "bitconv-ternary", "hf-packed", "gguf-i2_s",
                                  "nanotron"])
def test_round_trip_every_source_kind(sources, tmp_path, kind, gguf_type):
    src = open_source(sources[kind])
    out = tmp_path / "x.gguf"
    pack_gguf(src, out, gguf_type)
    back = open_source(out)
    assert back.layout == LAYOUT[gguf_type]
    n = 0
    for t in src.ternary_tensors():
        a, b = t.ternary(), back.tensors[t.name].ternary()
        assert np.array_equal(a.codes, b.codes), t.name
        want = np.float32(np.float16(a.scale)) if gguf_type == "iq1_bn" else np.float32(a.scale)
        assert b.scale == want, (t.name, a.scale, b.scale)
        n += 1
    assert n > 0
    again = tmp_path / "again.gguf"  # GGUF -> GGUF of the same type: identical bytes
    pack_gguf(out, again, gguf_type)
    assert again.read_bytes() == out.read_bytes()


# ------------------------------------------------------------------------------------------------ CLI, card, demo


def test_cli_pack_inspect_unpack(models, tmp_path):
    m = models("1bitllm")
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["pack", str(m), "--to", "gguf", "--type", "iq2_bn", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "runs on: ik_llama.cpp" in r.output and "-rtr" in r.output
    r = runner.invoke(app, ["inspect", str(out), "--no-tensors"])
    assert r.exit_code == 0 and "gguf-iq2-bn" in r.output
    r = runner.invoke(app, ["unpack", str(out), "-o", str(tmp_path / "bf16")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["pack", str(m), "--to", "hf", "--embd-type", "q8_0", "-o", str(tmp_path / "h")])
    assert r.exit_code == 2 and "--embd-type" in r.output


def test_cli_arch_refusal_exit_2(models, tmp_path):
    r = runner.invoke(app, ["pack", str(models("bitnet-2b4t")), "--to", "gguf", "--type", "iq1_bn", "--arch",
                            "bitnet", "-o", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "needs relu2" in r.output and "--force" in r.output


@pytest.mark.slow
def test_cli_verify_golden(tmp_path):
    r = runner.invoke(app, ["verify", str(GOLD / "ggml-model-iq1_bn.gguf"), "--ref", str(GOLD / "input")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("name, flags", [("ggml-model-iq2_bn.gguf", " -rtr"), ("ggml-model-iq1_bn.gguf", "")])
def test_model_card_gives_the_ik_command(tmp_path, name, flags):
    from bitconv.publish.card import plan_upload

    art = tmp_path / name
    shutil.copyfile(GOLD / name, art)
    card = plan_upload(art, "me/tiny-ik", base_model="microsoft/x", base_card="").card
    assert f"llama-cli -m {name} -p" in card and "ik_llama.cpp" in card
    assert (f"-n 32{flags}" in card) if flags else ("-rtr" not in card)
