"""The contract every registered layout must keep, plus HF packed specifics (worked example, transformers oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv import dtypes
from bitconv.errors import LayoutError
from bitconv.layouts import get_layout, list_layouts
from bitconv.layouts.hf_packed import pack_codes, unpack_codes
from bitconv.tensors import Ternary

# Storage precision of each layout's scale (relative). F32 scales are exact; BF16 keeps 8 significant bits.
SCALE_REL_TOL = {"F32": 0.0, "BF16": 2.0**-8, "F16": 2.0**-11}
# awkward shapes; the GGUF ones (rows % 32, in_features % 256) still hold non-power-of-two sizes
SHAPES = [(4, 1), (8, 3), (12, 7), (64, 64), (836, 545), (256, 700), (4, 1024), (96, 256), (160, 768), (384, 1536)]

# What each layout must refuse, with the rule its LayoutError names (spec: hf-packed.md §1, gguf-bitnet-cpp.md
# §2-3, gguf-upstream.md §1). A row fails if the layout stops refusing the shape or stops naming the rule.
NOT_2D = [((8,), "packs 2-D"), ((0, 8), "packs 2-D"), ((8, 0), "packs 2-D"), ((2, 4, 8), "packs 2-D")]
HF_RULES = [((5, 8), r"out_features % 4 == 0 \(got 5\)"), ((37, 64), r"out_features % 4 == 0 \(got 37\)"),
            ((770, 256), r"out_features % 4 == 0 \(got 770\)")]
TQ_RULES = [((64, 128), r"in_features % 256 == 0 \(got 128\)"), ((32, 700), r"in_features % 256 == 0 \(got 700\)"),
            ((256, 8), r"in_features % 256 == 0 \(got 8\)")]
TL_M_RULE = [((40, 256), r"M % 32 == 0 \(got M=40\)"), ((836, 512), r"M % 32 == 0 \(got M=836\)")]
IKBN_RULES = [((64, 100), r"in_features % 64 == 0 \(got 100\)"), ((4, 32), r"in_features % 64 == 0 \(got 32\)"),
              ((8, 1000), r"in_features % 64 == 0 \(got 1000\)")]
REFUSED: dict[str, list[tuple[tuple[int, ...], str]]] = {
    "bitconv-ternary": NOT_2D,
    "hf-autobitlinear": NOT_2D + HF_RULES,
    "hf-bitlinear": NOT_2D + HF_RULES,
    "gguf-i2-s": NOT_2D + [((64, 64), r"in_features % 128 == 0 \(got 64\)"),
                           ((4, 200), r"in_features % 128 == 0 \(got 200\)"),
                           ((256, 700), r"in_features % 128 == 0 \(got 700\)")],
    "gguf-tq1-0": NOT_2D + TQ_RULES,
    "gguf-tq2-0": NOT_2D + TQ_RULES,
    "gguf-tl1": NOT_2D + TL_M_RULE + [((64, 40), r"K % 16 == 0 \(got K=40\)"),
                                      ((32, 8), r"K % 16 == 0 \(got K=8\)")],
    "gguf-tl2": NOT_2D + TL_M_RULE + [((64, 128), r"K >= 256 \(got K=128\)"),
                                      ((64, 688), r"TL2 needs a BK .* none exists for K=688")],
    "gguf-iq1-bn": NOT_2D + IKBN_RULES,
    "gguf-iq2-bn": NOT_2D + IKBN_RULES,
    "gguf-iq2-bn-r4": NOT_2D + IKBN_RULES + [((6, 64), r"out_features % 4 == 0 \(got 6\)"),
                                             ((130, 128), r"out_features % 4 == 0 \(got 130\)")],
}
REFUSED_ROWS = [(n, shape, rule) for n, rows in REFUSED.items() for shape, rule in rows]


def random_ternary(shape, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=shape, dtype=np.int8)
    scale = np.float32(rng.uniform(1e-3, 0.1))
    return Ternary(codes, scale)


def legal(layout, shape):
    try:
        layout.spec(shape)
        return True
    except LayoutError:
        return False


@pytest.mark.parametrize("name", list_layouts())
def test_registry_lists_every_layout_once(name):
    assert get_layout(name).name == name
    assert get_layout(name.upper().replace("-", "_")).name == name


def test_unknown_layout_lists_known_ones():
    with pytest.raises(LayoutError, match="known layouts: .*hf-bitlinear"):
        get_layout("nope")


LEGAL_PAIRS = [(n, s) for n in list_layouts() for s in SHAPES if legal(get_layout(n), s)]


def test_every_layout_has_legal_and_refused_cases():
    """A new layout must list the shapes it refuses (beyond the 2-D rule, unless it has no other rule)."""
    assert {n for n, _ in LEGAL_PAIRS} == set(list_layouts())
    assert set(REFUSED) == set(list_layouts())


@pytest.mark.parametrize("name,shape,rule", REFUSED_ROWS)
def test_refused_shapes_raise_layout_error_naming_the_rule(name, shape, rule):
    lay = get_layout(name)
    with pytest.raises(LayoutError, match=rule) as e:
        lay.spec(shape, tensor="model.layers.0.mlp.gate_proj.weight")
    msg = str(e.value)
    assert "gate_proj" in msg and str(list(shape)) in msg
    with pytest.raises(LayoutError, match=rule):  # pack checks the shape too, before writing a byte
        lay.pack(Ternary(np.zeros(shape, dtype=np.int8), np.float32(0.5)))


@pytest.mark.parametrize("name", ["gguf-tl1", "gguf-tl2"])
def test_tl_kernel_config_without_the_shape_is_refused(name):
    """A given kernel_config.ini is the tiling the runtime was built with: a shape it lacks is refused, not
    derived."""
    from bitconv.kernel_config import derive

    lay = get_layout(name, kernel_config=derive(name.removeprefix("gguf-"), [(64, 256)]))
    assert lay.spec((64, 256))
    with pytest.raises(LayoutError, match=r"kernel config has no entry for \(M=128, K=256\)"):
        lay.spec((128, 256), tensor="x.weight")


@pytest.mark.parametrize("name,shape", LEGAL_PAIRS)
@pytest.mark.parametrize("seed", range(3))
def test_spec_pack_unpack_contract(name, shape, seed):
    lay = get_layout(name)
    t = random_ternary(shape, seed)
    spec = lay.spec(shape)
    fields = lay.pack(t)
    assert set(fields) == set(spec)
    for k, f in spec.items():
        assert fields[k].shape == f.shape, k
        assert fields[k].dtype == dtypes.DTYPES[f.dtype].np_storage, k
    back = lay.unpack(fields, shape)
    np.testing.assert_array_equal(back.codes, t.codes)
    assert back.codes.dtype == np.int8
    if "weight_scale" in spec:  # the declared storage (used by verify) is what the layout really writes
        assert spec["weight_scale"].dtype == lay.scale_dtype
    assert abs(float(back.scale) / float(t.scale) - 1) <= SCALE_REL_TOL[lay.scale_dtype]
    # deterministic bytes
    again = lay.pack(t)
    for k in fields:
        assert fields[k].tobytes() == again[k].tobytes()
    # packing twice through unpack is a fixed point (no drift)
    assert all(lay.pack(back)[k].tobytes() == fields[k].tobytes() for k in fields if k != "weight_scale")


def test_hf_worked_example():
    # ref: transformers unpack_weights docstring / spec hf-packed.md §1.1
    codes = np.array([1, 0, -1, 1, 0, 0, 1, -1], dtype=np.int8).reshape(8, 1)
    assert pack_codes(codes).reshape(-1).tolist() == [146, 25]
    np.testing.assert_array_equal(unpack_codes(np.array([[146], [25]], dtype=np.uint8), 8), codes)


def test_hf_scale_conventions():
    t = Ternary(np.ones((4, 4), dtype=np.int8), np.float32(0.015625))  # exact in bf16
    auto = get_layout("hf-autobitlinear").pack(t)["weight_scale"]
    inv = get_layout("hf-bitlinear").pack(t)["weight_scale"]
    as_f32 = lambda bits: float(torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float()[0])  # noqa: E731
    assert as_f32(auto) == 0.015625
    assert as_f32(inv) == 64.0


# Where each layout writes its scale, read straight from the stored bytes (not through `unpack`): field and
# byte offsets as the layout docstrings and the spec give them. I2_S and TL1/TL2 end in a 32-byte slot (4 scale
# bytes, 28 zeros); TQ blocks end in their fp16 d; the HF layouts and bitconv-ternary have a `weight_scale` field.
STORED_SCALE_AT = {
    "bitconv-ternary": lambda f, s: [f["weight_scale"].view(np.uint8)],
    "hf-autobitlinear": lambda f, s: [f["weight_scale"].view(np.uint8)],
    "hf-bitlinear": lambda f, s: [f["weight_scale"].view(np.uint8)],
    "gguf-i2-s": lambda f, s: [f["data"][-32:-28]],
    "gguf-tl1": lambda f, s: [f["data"][-32:-28]],
    "gguf-tl2": lambda f, s: [f["data"][-32:-28]],
    "gguf-tq1-0": lambda f, s: list(f["data"].reshape(-1, 54)[:, 52:54]),
    "gguf-tq2-0": lambda f, s: list(f["data"].reshape(-1, 66)[:, 64:66]),
    # ik_llama.cpp rows of shape s = (M, K): IQ1_BN fp16 + 13 bytes per 64 weights; IQ2_BN float32 + K/4 bytes;
    # IQ2_BN_R4 groups of 4 rows start with their 4 float32 scales
    "gguf-iq1-bn": lambda f, s: list(f["data"].reshape(s[0], 2 + 13 * s[1] // 64)[:, 0:2]),
    "gguf-iq2-bn": lambda f, s: list(f["data"].reshape(s[0], 4 + s[1] // 4)[:, 0:4]),
    "gguf-iq2-bn-r4": lambda f, s: list(f["data"].reshape(s[0] // 4, 4 * (4 + s[1] // 4))[:, 0:16].reshape(-1, 4)),
}
SCALE_SLOT_ZEROS = {"gguf-i2-s", "gguf-tl1", "gguf-tl2"}  # the 28 bytes after the float32 scale


def _round_to(x: np.float32, dtype: str) -> np.float32:
    t = torch.tensor([float(x)], dtype=torch.float32)
    return np.float32(t.to({"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]).float()[0])


def _decode_le(raw: np.ndarray, dtype: str) -> np.float32:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if dtype == "BF16":
        return np.float32((raw.view("<u2").astype(np.uint32) << 16).view(np.float32)[0])
    return np.float32(raw.view({"F32": "<f4", "F16": "<f2"}[dtype])[0])


def test_every_layout_says_where_its_scale_is():
    assert set(STORED_SCALE_AT) == set(list_layouts())


@pytest.mark.parametrize("name", list_layouts())
def test_declared_scale_dtype_and_inversion_are_what_is_written(name):
    """`scale_dtype` / `scale_inverted` (which verify relies on) against the bytes each layout really writes: the
    stored value decodes, in the declared dtype, to exactly the scale (or 1/scale) rounded to that dtype, and the
    scale is chosen so that every other dtype or the other inversion would give a different value."""
    lay = get_layout(name)
    scale = np.float32(0.0123)
    want_f32 = np.float32(1.0) / scale if lay.scale_inverted else scale
    candidates = {(d, inv): _round_to(np.float32(1.0) / scale if inv else scale, d)
                  for d in SCALE_REL_TOL for inv in (False, True)}
    assert len(set(candidates.values())) == len(candidates)  # every declaration reads differently
    shape = next(s for n, s in LEGAL_PAIRS if n == name and s[1] >= 256)
    codes = np.ones(shape, dtype=np.int8)  # no all-zero TQ block (those store d = 0)
    fields = lay.pack(Ternary(codes, scale))
    stored = STORED_SCALE_AT[name](fields, shape)
    width = {"F32": 4, "BF16": 2, "F16": 2}[lay.scale_dtype]
    assert stored and all(r.size == width for r in stored)
    for raw in stored:
        assert _decode_le(raw, lay.scale_dtype) == _round_to(want_f32, lay.scale_dtype)
    if name in SCALE_SLOT_ZEROS:
        assert not fields["data"][-28:].any()


def test_hf_rejects_bit_pattern_11():
    with pytest.raises(LayoutError, match="0b11"):
        unpack_codes(np.array([[0b11]], dtype=np.uint8), 4, tensor="x.weight")


@pytest.mark.slow
@pytest.mark.parametrize("out_features", [4, 8, 12, 64, 132, 384, 836])
def test_hf_pack_equals_transformers_pack_weights(out_features):
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    codes = np.random.default_rng(out_features).integers(-1, 2, size=(out_features, 19), dtype=np.int8)
    theirs = bitnet.pack_weights(torch.from_numpy(codes.copy()).to(torch.int8))
    assert pack_codes(codes).tobytes() == theirs.numpy().tobytes()
    mine = unpack_codes(pack_codes(codes), out_features)
    back = bitnet.unpack_weights(theirs, dtype=torch.float32)
    np.testing.assert_array_equal(mine, back.numpy().astype(np.int8))
