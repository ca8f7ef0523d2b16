"""GGUF ternary layouts (I2_S, TL1, TL2, TQ1_0, TQ2_0) against the reference tools' own files, plus kernel configs.

Goldens (fixtures/golden/gguf-*, copied from the reference runs, see each MANIFEST.md): the bf16 `input/` master is
ternarized with `bitconv.quant.ternarize` and packed; the bytes must equal the tensor data the reference wrote.
Match levels:
* TL1, TL2, TQ1_0, TQ2_0: the whole tensor data (TL: packed tiles + zero pad + scale slot; TQ: every block).
* I2_S: payload + scale (the first n/4 + 4 bytes). llama-quantize leaves 28 stale work-buffer bytes after the scale
  (spec gguf-bitnet-cpp.md §2.4) where bitconv writes zeros; a separate test replays that buffer and then matches the
  whole data too.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from bitconv.core.errors import LayoutError, UsageError
from bitconv.core.tensors import Ternary
from bitconv.formats.gguf.ggml_types import GGML_TYPES
from bitconv.layouts import get_layout
from bitconv.layouts.gguf_i2s import pack_i2s_codes
from bitconv.layouts.kernel_config import (
    PRESET_SHAPES,
    KernelConfig,
    KernelEntry,
    check_entry,
    codegen_params,
    derive,
    derive_entry,
)
from bitconv.quant import EPS, ternarize

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden"
GGUF_LAYOUTS = ["gguf-i2-s", "gguf-tl1", "gguf-tl2", "gguf-tq1-0", "gguf-tq2-0"]
HF_NAME = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}


# --- a minimal GGUF v3 reader (gguf-py's GGUFReader rejects the fork's ids 36/38 and mis-sizes 39) -------------------
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf(path: Path) -> tuple[dict, list[tuple[str, tuple[int, ...], int, int]], bytes]:
    """(KVs, [(name, dims, type id, absolute data offset)], file bytes)."""
    buf = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (v,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n:pos].decode()

    def value(t: int):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(_SCALAR[t])

    assert buf[:4] == b"GGUF"
    pos = 4
    assert take("I") == 3
    n_tensors, n_kv = take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = tuple(take("Q") for _ in range(take("I")))
        infos.append((name, dims, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    return kv, [(n, d, t, start + o) for n, d, t, o in infos], buf


def golden_tensors(case: str, gguf: str, type_id: int):
    """Yield (gguf name, HF shape, Ternary from the bf16 master, absolute offset, file bytes) per ternary tensor."""
    master = load_file(GOLDEN / case / "input" / "model.safetensors")
    _, infos, buf = read_gguf(GOLDEN / case / gguf)
    found = 0
    for name, dims, typ, off in infos:
        if typ != type_id:
            continue
        _, blk, part, _ = name.split(".")
        t = ternarize(master[f"model.layers.{blk}.{HF_NAME[part]}.weight"])
        assert tuple(reversed(dims)) == t.shape
        found += 1
        yield name, t.shape, t, off, buf
    assert found >= 7


def tl_layout(kind: str, **kw):
    cfg = KernelConfig.from_ini(GOLDEN / "gguf-tl" / kind / "kernel_config.ini")
    return get_layout(f"gguf-{kind}", kernel_config=cfg, **kw)


# --- golden bytes ----------------------------------------------------------------------------------------------------
def test_i2s_golden_payload_and_scale():
    lay = get_layout("gguf-i2-s")
    for name, shape, t, off, buf in golden_tensors("gguf-i2s", "ggml-model-i2_s.gguf", 36):
        ours = lay.pack(t)["data"]
        n4 = shape[0] * shape[1] // 4
        gold = np.frombuffer(buf, np.uint8, ours.size, off)
        assert lay.gguf_dims(shape) == (shape[1], shape[0])
        # payload + scale are exact; the 28 bytes after the scale are stale in llama-quantize's file, zeros in ours
        assert ours[:n4 + 4].tobytes() == gold[:n4 + 4].tobytes(), name
        assert not ours[n4 + 4:].any()
        back = lay.unpack({"data": gold.copy()}, shape)
        np.testing.assert_array_equal(back.codes, t.codes)
        assert back.scale == t.scale  # I2_S stores RN32(1/RN32(1/m)), which is exactly Ternary.scale


def test_i2s_golden_whole_data_with_llama_quantize_tail_replay():
    # llama-quantize reuses one work buffer; I2_S writes n/4 + 4 bytes into it and emits n/4 + 32, so each tail is
    # what an earlier tensor left there. The only earlier writer here is token_embd (Q8_0, first in the file).
    lay = get_layout("gguf-i2-s")
    _, infos, buf = read_gguf(GOLDEN / "gguf-i2s" / "ggml-model-i2_s.gguf")
    emb = next(i for i in infos if i[0] == "token_embd.weight")
    n_emb = emb[1][0] * emb[1][1]
    work = bytearray(4 * n_emb)
    work[:n_emb // 32 * 34] = buf[emb[3]:emb[3] + n_emb // 32 * 34]  # Q8_0: 34 bytes per 32 values
    tails = 0
    for name, _, t, off, buf in golden_tensors("gguf-i2s", "ggml-model-i2_s.gguf", 36):
        ours = lay.pack(t)["data"]
        n = ours.size
        work[:n - 28] = ours[:n - 28].tobytes()
        assert bytes(work[:n]) == buf[off:off + n], name
        tails += any(work[n - 28:n])
    assert tails  # the golden tails really are non-zero, so the replay is what makes them match


@pytest.mark.parametrize("kind, type_id", [("tl1", 38), ("tl2", 39)])
def test_tl_golden_whole_data(kind, type_id):
    lay = tl_layout(kind)
    for name, shape, t, off, buf in golden_tensors("gguf-tl", f"{kind}/ggml-model-{kind}.gguf", type_id):
        ours = lay.pack(t)["data"]
        assert ours.size == lay.spec(shape)["data"].nbytes
        assert ours.tobytes() == buf[off:off + ours.size], name  # tiles, zero pad, scale, 28 zeros: all of it
        back = lay.unpack({"data": np.frombuffer(buf, np.uint8, ours.size, off)}, shape)
        np.testing.assert_array_equal(back.codes, t.codes)
        assert back.scale == t.scale


def test_tl_golden_tensor_spans():
    # the next tensor starts pad32(nbytes) after this one: the hidden scale slot is inside our `data`
    for kind in ("tl1", "tl2"):
        lay = tl_layout(kind)
        _, infos, buf = read_gguf(GOLDEN / "gguf-tl" / kind / f"ggml-model-{kind}.gguf")
        for (name, dims, typ, off), nxt in zip(infos, infos[1:]):
            if typ in (38, 39):
                assert nxt[3] - off == lay.spec(tuple(reversed(dims)))["data"].nbytes, name


def test_tl2_type_id_42_same_bytes():
    t39, t42 = tl_layout("tl2"), tl_layout("tl2", type_id=42)
    assert (t39.ggml_type, t42.ggml_type) == ("TL2", "TL2_42")
    assert GGML_TYPES[t42.ggml_type].id == 42 and GGML_TYPES[t39.ggml_type].id == 39
    t = Ternary(np.random.default_rng(0).integers(-1, 2, (256, 512), dtype=np.int8), np.float32(0.02))
    assert t39.pack(t)["data"].tobytes() == t42.pack(t)["data"].tobytes()
    with pytest.raises(UsageError, match="39 .* or 42"):
        get_layout("gguf-tl2", type_id=40)


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
def test_tq_golden_whole_data(qtype):
    gguf = pytest.importorskip("gguf")
    lay = get_layout(f"gguf-{qtype.lower()}")
    fname = f"ggml-model-{qtype.lower()}.gguf"
    reader = gguf.GGUFReader(GOLDEN / "gguf-tq" / fname)
    by_name = {t.name: np.asarray(t.data).reshape(-1) for t in reader.tensors}
    type_id = GGML_TYPES[qtype].id
    for name, shape, t, _, _ in golden_tensors("gguf-tq", fname, type_id):
        ours = lay.pack(t)["data"]
        assert ours.tobytes() == by_name[name].tobytes(), name
        back = lay.unpack({"data": by_name[name]}, shape)
        np.testing.assert_array_equal(back.codes, t.codes)
        assert back.scale == np.float32(np.float16(t.scale))  # the scale survives at fp16 precision


# --- TQ against gguf-py's quantizer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (16, 768), (64, 1024)])
@pytest.mark.parametrize("seed", range(3))
def test_tq_equals_gguf_py_quantize(qtype, shape, seed):
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=shape, dtype=np.int8)
    if codes.size > 256:
        codes[0, :256] = 0  # an all-zero block
    if shape[0] > 2:
        codes[2, -256:] = 0
    scale = np.float32(rng.uniform(1e-4, 0.2))
    want = gguf.quants.quantize(codes.astype(np.float32) * scale, gguf.GGMLQuantizationType[qtype])
    lay = get_layout(f"gguf-{qtype.lower()}")
    ours = lay.pack(Ternary(codes, scale))["data"]
    assert ours.tobytes() == want.tobytes()
    blocks = ours.reshape(-1, GGML_TYPES[qtype].type_size)
    assert (not blocks[0, -2:].any()) == (codes.size > 256)  # all-zero block: d = 0, as gguf-py / ggml write it
    back = lay.unpack({"data": ours}, shape)
    np.testing.assert_array_equal(back.codes, codes)
    assert back.scale == np.float32(np.float16(scale))
    deq = gguf.quants.dequantize(want, gguf.GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(deq, back.dequantize())


@pytest.mark.parametrize("name", ["gguf-tq1-0", "gguf-tq2-0"])
def test_tq_all_zero_tensor_and_mixed_scales(name):
    lay = get_layout(name)
    zero = Ternary(np.zeros((2, 512), dtype=np.int8), np.float32(EPS))
    data = lay.pack(zero)["data"]
    assert not data.reshape(-1, GGML_TYPES[lay.ggml_type].type_size)[:, -2:].any()  # every d = 0
    back = lay.unpack({"data": data}, (2, 512))
    assert not back.codes.any() and back.scale == np.float32(EPS)  # no stored scale: ternarize's all-zero scale
    a = lay.pack(Ternary(np.ones((1, 256), dtype=np.int8), np.float32(0.5)))["data"]
    b = lay.pack(Ternary(np.ones((1, 256), dtype=np.int8), np.float32(0.25)))["data"]
    with pytest.raises(LayoutError, match="different scales"):
        lay.unpack({"data": np.concatenate([a, b])}, (2, 256))
    with pytest.raises(LayoutError, match="fp16"):
        lay.pack(Ternary(np.ones((1, 256), dtype=np.int8), np.float32(1e5)))


@pytest.mark.parametrize("pure", ["0", "1"])
@pytest.mark.parametrize("name", ["gguf-tq1-0", "gguf-tq2-0"])
def test_tq_scale_without_fp16_value_is_refused_only_where_a_block_stores_it(name, pure, monkeypatch):
    """A scale above fp16's range is refused once a block needs its d; an all-zero tensor stores d = 0 everywhere
    and packs (C kernels and numpy alike)."""
    monkeypatch.setenv("BITCONV_PURE_PYTHON", pure)
    lay = get_layout(name)
    data = lay.pack(Ternary(np.zeros((2, 512), dtype=np.int8), np.float32(1e5)))["data"]
    assert not data.reshape(-1, GGML_TYPES[lay.ggml_type].type_size)[:, -2:].any()
    codes = np.zeros((2, 512), dtype=np.int8)
    codes[1, 300] = -1
    with pytest.raises(LayoutError, match="fp16"):
        lay.pack(Ternary(codes, np.float32(1e5)))


# --- worked examples from the module docstrings ----------------------------------------------------------------------
def test_i2s_worked_example():
    codes = np.zeros(128, dtype=np.int8)
    codes[[0, 32, 64, 96]] = [1, 0, -1, 1]
    assert pack_i2s_codes(codes)[0] == 0x92
    data = get_layout("gguf-i2-s").pack(Ternary(codes.reshape(1, 128), np.float32(0.5)))["data"]
    assert data[32:36].tobytes() == bytes([0, 0, 0, 0x3F]) and data.size == 64 and not data[36:].any()


def test_tl1_worked_example():
    codes = np.zeros((32, 16), dtype=np.int8)
    codes[0, :2] = [1, -1]
    codes[1, :4] = [0, 1, -1, -1]
    lay = get_layout("gguf-tl1", kernel_config=KernelConfig((KernelEntry(32, 16, 32, 16, 32),)))
    data = lay.pack(Ternary(codes, np.float32(1)))["data"]
    assert data[0] == 0x64 and data[1] == (5 << 4 | 0)


def test_tq1_worked_example():
    q = np.ones(256, dtype=np.int8)  # trits q = t + 1 = 1
    q[[0, 32, 64, 96, 128]] = [2, 1, 0, 1, 2]
    data = get_layout("gguf-tq1-0").pack(Ternary((q - 1).reshape(1, 256), np.float32(1)))["data"]
    assert data[0] == 205


# --- awkward but legal shapes (the shared contract test's shapes skip most GGUF layouts) -----------------------------
AWKWARD = {
    "gguf-i2-s": [(1, 128), (3, 384), (5, 640), (37, 1152)],
    "gguf-tl1": [(32, 16), (96, 48), (160, 80), (224, 1040)],
    "gguf-tl2": [(32, 256), (64, 288), (96, 320), (160, 352), (64, 280), (32, 264), (224, 456)],
    "gguf-tq1-0": [(1, 256), (3, 512), (7, 768)],
    "gguf-tq2-0": [(1, 256), (3, 512), (7, 768)],
}


@pytest.mark.parametrize("name, shape", [(n, s) for n, ss in AWKWARD.items() for s in ss])
@pytest.mark.parametrize("seed", range(2))
def test_awkward_legal_shapes_round_trip(name, shape, seed):
    lay = get_layout(name)
    rng = np.random.default_rng(seed)
    t = Ternary(rng.integers(-1, 2, size=shape, dtype=np.int8), np.float32(rng.uniform(1e-3, 0.1)))
    spec = lay.spec(shape)
    data = lay.pack(t)["data"]
    assert data.dtype == np.uint8 and data.shape == spec["data"].shape
    assert lay.gguf_dims(shape) == (shape[1], shape[0])
    back = lay.unpack({"data": data}, shape)
    np.testing.assert_array_equal(back.codes, t.codes)
    assert lay.pack(back)["data"].tobytes() == data.tobytes()


@pytest.mark.parametrize("name, shape, rule", [
    ("gguf-i2-s", (4, 64), "in_features % 128 == 0"),
    ("gguf-tl1", (48, 64), "M % 32 == 0"),
    ("gguf-tl1", (64, 264), "K % 16 == 0"),
    ("gguf-tl2", (64, 128), "K >= 256"),
    ("gguf-tl2", (64, 257), r"\(K % BK\) % 32 == 0"),
    ("gguf-tq1-0", (4, 384), "in_features % 256 == 0"),
    ("gguf-tq2-0", (4, 128), "in_features % 256 == 0"),
])
def test_illegal_shape_names_tensor_shape_and_rule(name, shape, rule):
    with pytest.raises(LayoutError, match=rule) as e:
        get_layout(name).spec(shape, tensor="model.layers.3.mlp.down_proj.weight")
    assert "down_proj" in str(e.value) and str(list(shape)) in str(e.value)


def test_every_gguf_layout_declares_its_ggml_type():
    for name in GGUF_LAYOUTS:
        lay = get_layout(name)
        assert lay.container == "gguf" and lay.ggml_type in GGML_TYPES


# --- kernel config ---------------------------------------------------------------------------------------------------
GOLDEN_TILES = {  # the codegen arguments the golden runs used (gguf-tl/MANIFEST.md)
    "tl1": ((128, 256, 128), (64, 128, 128), (32, 64, 32)),
    "tl2": ((128, 256, 128), (96, 96, 192), (32, 32, 32)),
}
GOLDEN_SHAPES = ((256, 256), (512, 256), (256, 512))
B2B4T = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]
LLAMA3_8B = [(14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)]


@pytest.mark.parametrize("kind", ["tl1", "tl2"])
def test_to_ini_equals_codegen_output(kind):
    bms, bks, sms = GOLDEN_TILES[kind]
    cfg = KernelConfig(tuple(KernelEntry(m, k, a, b, c) for (m, k), a, b, c in zip(GOLDEN_SHAPES, bms, bks, sms)),
                       kind)
    path = GOLDEN / "gguf-tl" / kind / "kernel_config.ini"
    assert cfg.to_ini().encode() == path.read_bytes()
    assert KernelConfig.from_ini(path, kind) == cfg
    params = codegen_params(cfg, model="tiny")
    assert not params.preset and params.script == f"utils/codegen_{kind}.py"
    assert params.argv() == ["--model", "tiny", "--BM", ",".join(map(str, bms)), "--BK", ",".join(map(str, bks)),
                             "--bm", ",".join(map(str, sms))]


# setup_env.py gen_code() arguments, written out independently of bitconv.layouts.kernel_config's table
SETUP_ENV = {
    ("tl1", "bitnet_b1_58-large"): ["256,128,256", "128,64,128", "32,64,32"],
    ("tl1", "bitnet_b1_58-3B"): ["160,320,320", "64,128,64", "32,64,32"],
    ("tl1", "Llama3-8B-1.58-100B-tokens"): ["256,128,256,128", "128,64,128,64", "32,64,32,64"],
    ("tl2", "bitnet_b1_58-large"): ["256,128,256", "96,192,96", "32,32,32"],
    ("tl2", "bitnet_b1_58-3B"): ["160,320,320", "96,96,96", "32,32,32"],
    ("tl2", "Llama3-8B-1.58-100B-tokens"): ["256,128,256,128", "96,96,96,96", "32,32,32,32"],
}


@pytest.mark.parametrize("kind, model", list(SETUP_ENV))
def test_derive_reproduces_shipped_presets(kind, model):
    shapes = list(PRESET_SHAPES[model])
    cfg = derive(kind, shapes[::-1] + shapes)  # order and duplicates of the model's tensors do not matter
    assert cfg.shapes == tuple(shapes)
    p = cfg.codegen_params()
    assert p.preset and p.model == model
    bms, bks, sms = SETUP_ENV[kind, model]
    assert p.argv() == ["--model", model, "--BM", bms, "--BK", bks, "--bm", sms]


@pytest.mark.parametrize("kind", ["tl1", "tl2"])
@pytest.mark.parametrize("shapes", [GOLDEN_SHAPES, B2B4T, LLAMA3_8B, [(256, 256)], [(1024, 4096)]])
def test_derive_covers_model_shapes(kind, shapes):
    names = {f"t{i}.weight": s for i, s in enumerate(shapes)}
    cfg = derive(kind, names)
    assert set(cfg.shapes) == set(shapes)
    lay = get_layout(f"gguf-{kind}", kernel_config=cfg)
    for e in cfg.entries:
        check_entry(kind, e)
        assert lay.spec(e.shape)["data"].nbytes > e.M * e.K // 8
    assert KernelConfig.from_ini_text(cfg.to_ini(), kind) == cfg


@pytest.mark.parametrize("kind", ["tl1", "tl2"])
def test_2b4t_shapes_round_trip(kind):
    lay = get_layout(f"gguf-{kind}", kernel_config=derive(kind, B2B4T))
    rng = np.random.default_rng(7)
    for shape in B2B4T:
        t = Ternary(rng.integers(-1, 2, size=shape, dtype=np.int8), np.float32(0.0123))
        back = lay.unpack(lay.pack(t), shape)
        np.testing.assert_array_equal(back.codes, t.codes)
        assert back.scale == t.scale


@pytest.mark.parametrize("kind, shape, rule", [
    ("tl1", (100, 256), "M % 32 == 0"),
    ("tl1", (256, 264), "K % 16 == 0"),
    ("tl2", (100, 2560), "M % 32 == 0"),
    ("tl2", (256, 128), "K >= 256"),
    ("tl2", (256, 257), "none exists"),
])
def test_derive_impossible_shape_raises(kind, shape, rule):
    with pytest.raises(LayoutError, match=rule) as e:
        derive(kind, {"model.layers.0.self_attn.q_proj.weight": (256, 256),
                      "model.layers.0.mlp.up_proj.weight": shape})
    assert "up_proj" in str(e.value) and str(list(shape)) in str(e.value)


def test_config_validation_and_lookup():
    with pytest.raises(LayoutError, match="bm == 32"):  # the shipped large-TL2 preset .ini has bmm = 64
        KernelConfig((KernelEntry(1536, 1536, 128, 192, 64),), "tl2")
    with pytest.raises(LayoutError, match="K % BK == 0"):
        check_entry("tl1", KernelEntry(256, 256, 128, 96, 32))
    with pytest.raises(LayoutError, match="twice"):
        KernelConfig((KernelEntry(256, 256, 128, 64, 32),) * 2)
    with pytest.raises(LayoutError, match="bm, bk, bmm"):
        KernelConfig.from_ini_text("[Kernels_0]\nm = 1\n")
    lay = tl_layout("tl1")
    with pytest.raises(LayoutError, match=r"no entry for \(M=1024, K=256\)") as e:
        lay.spec((1024, 256), tensor="blk.0.ffn_up.weight")
    assert "ffn_up" in str(e.value)
    assert derive_entry("tl1", 1024, 256) == KernelEntry(1024, 256, 256, 128, 32)  # without a config: derived
    assert get_layout("gguf-tl1").spec((1024, 256))["data"].nbytes == 1024 * 256 // 4 + 32
