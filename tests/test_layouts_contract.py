"""The contract every registered layout must keep, plus HF packed specifics (worked example, transformers oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv import dtypes
from bitconv.errors import FormatError, LayoutError
from bitconv.layouts import get_layout, list_layouts
from bitconv.layouts.hf_packed import pack_codes, unpack_codes
from bitconv.tensors import Ternary

# Storage precision of each layout's scale (relative). F32 scales are exact; BF16 keeps 8 significant bits.
SCALE_REL_TOL = {"F32": 0.0, "BF16": 2.0**-8, "F16": 2.0**-11}
# awkward shapes; the GGUF ones (rows % 32, in_features % 256) still hold non-power-of-two sizes
SHAPES = [(4, 1), (8, 3), (12, 7), (64, 64), (836, 545), (256, 700), (4, 1024), (96, 256), (160, 768), (384, 1536)]
ILLEGAL = [(5, 8), (3, 3), (10, 64), (37, 64), (8,), (0, 8)]


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
ILLEGAL_PAIRS = [(n, s) for n in list_layouts() for s in ILLEGAL if not legal(get_layout(n), s)]


def test_every_layout_has_legal_and_illegal_cases():
    assert {n for n, _ in LEGAL_PAIRS} == set(list_layouts())
    assert {n for n, _ in ILLEGAL_PAIRS} == set(list_layouts())


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


@pytest.mark.parametrize("name,shape", ILLEGAL_PAIRS)
def test_illegal_shapes_raise_layout_error(name, shape):
    lay = get_layout(name)
    with pytest.raises(LayoutError) as e:
        lay.spec(shape, tensor="model.layers.0.mlp.gate_proj.weight")
    msg = str(e.value)
    assert "gate_proj" in msg and str(list(shape)) in msg


@pytest.mark.parametrize("name", ["hf-bitlinear", "hf-autobitlinear"])
def test_hf_rule_named_in_error(name):
    with pytest.raises(LayoutError, match=r"out_features % 4 == 0 \(got 37\)"):
        get_layout(name).spec((37, 64), tensor="x.weight")


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


def test_hf_rejects_bit_pattern_11():
    with pytest.raises(FormatError, match="0b11"):
        unpack_codes(np.array([[0b11]], dtype=np.uint8), 4, tensor="x.weight")


@pytest.mark.parametrize("out_features", [4, 8, 12, 64, 132, 384, 836])
def test_hf_pack_equals_transformers_pack_weights(out_features):
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    codes = np.random.default_rng(out_features).integers(-1, 2, size=(out_features, 19), dtype=np.int8)
    theirs = bitnet.pack_weights(torch.from_numpy(codes.copy()).to(torch.int8))
    assert pack_codes(codes).tobytes() == theirs.numpy().tobytes()
    mine = unpack_codes(pack_codes(codes), out_features)
    back = bitnet.unpack_weights(theirs, dtype=torch.float32)
    np.testing.assert_array_equal(mine, back.numpy().astype(np.int8))
