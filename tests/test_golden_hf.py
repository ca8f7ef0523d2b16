"""Golden: transformers' own packing of the hf-packed case, reproduced byte for byte (fixtures/golden/hf-packed)."""

from __future__ import annotations

import pytest

from bitconv import pipeline

CASES = {"bitlinear": "packed-bitlinear", "autobitlinear": "packed-autobitlinear-offline"}


@pytest.mark.parametrize("linear_class", CASES)
@pytest.mark.parametrize("via_ternary", [False, True])
def test_pack_matches_golden_bytes(golden_hf, tmp_path, linear_class, via_ternary):
    src = golden_hf / "input"
    if via_ternary:  # master -> bitconv ternary -> HF packed gives the same bytes as master -> HF packed
        pipeline.quantize(src, tmp_path / "tern")
        src = tmp_path / "tern"
    pipeline.pack_hf(src, tmp_path / "out", linear_class=linear_class)
    want = golden_hf / CASES[linear_class]
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "out" / f).read_bytes() == (want / f).read_bytes(), f


@pytest.mark.parametrize("linear_class", CASES)
def test_repack_same_class_is_byte_identical(golden_hf, tmp_path, linear_class):
    pipeline.pack_hf(golden_hf / CASES[linear_class], tmp_path / "out", linear_class=linear_class)
    got = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert got == (golden_hf / CASES[linear_class] / "model.safetensors").read_bytes()


def test_unpack_config_matches_online_golden(golden_hf, tmp_path):
    pipeline.unpack_hf(golden_hf / "packed-autobitlinear-offline", tmp_path / "bf16")
    want = (golden_hf / "master-online-autobitlinear" / "config.json").read_bytes()
    assert (tmp_path / "bf16" / "config.json").read_bytes() == want
