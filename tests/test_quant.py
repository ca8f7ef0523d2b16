"""Ternarization: the canonical float32 recipe, the onebitllms bf16 mode, and the edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv import quant
from bitconv.core.errors import SourceError
from bitconv.quant import ternarize


@pytest.fixture(autouse=True, params=["native", "numpy"])
def kernels(request, monkeypatch):
    """Every test here runs through the C kernels and through the numpy path (BITCONV_PURE_PYTHON=1)."""
    if request.param == "native" and not quant.native_kernels():
        pytest.fail("bitconv._ckernels is not built: pip install -e . compiles it (needs a C compiler)")
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1" if request.param == "numpy" else "0")
    return request.param


def weight_quant_reference(w: torch.Tensor):
    # transformers WeightQuant (eager): s = 1/mean|w|.clamp(1e-5); q = clamp(round(w*s), -1, 1)
    wf = w.float()
    s = 1.0 / wf.abs().mean().clamp_(min=1e-5)
    return (wf * s).round().clamp(-1, 1).to(torch.int8), s


def onebitllms_reference(w: torch.Tensor):
    w = w.to(torch.bfloat16)
    s = 1.0 / w.abs().mean().clamp_(min=1e-5)
    return (w * s).round().clamp_(-1, 1).to(torch.int8), s


@pytest.mark.parametrize("shape", [(64, 64), (384, 128), (7, 13), (1000, 37)])
@pytest.mark.parametrize("seed", range(3))
def test_float32_matches_weight_quant(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    codes, s = weight_quant_reference(w)
    t = ternarize(w)
    np.testing.assert_array_equal(t.codes, codes.numpy())
    assert t.scale == np.float32((1.0 / s).item())
    assert np.float32(1.0) / t.scale == np.float32(s.item())  # 1/(1/s) round-trips exactly in float32


def test_exact_half_ties_round_to_even():
    # mean|w| = 1 -> s = 1: values 0.5 and -0.5 round to 0, 1.5 rounds to 2 -> clamps to 1
    w = torch.tensor([[0.5, -0.5, 1.5, -1.5], [0.75, 0.25, 1.0, -0.5]], dtype=torch.float32)
    w = w / w.abs().mean()
    w = w.bfloat16()
    ref, _ = weight_quant_reference(w)
    np.testing.assert_array_equal(ternarize(w).codes, ref.numpy())


def test_large_magnitudes_clamp():
    w = torch.tensor([[100.0, -100.0, 0.0, 0.001]]).bfloat16()
    np.testing.assert_array_equal(ternarize(w).codes, [[1, -1, 0, 0]])


@pytest.mark.parametrize("seed", range(3))
def test_bfloat16_mode_matches_onebitllms(seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(256, 512, generator=g) * 0.02).bfloat16()
    codes, s = onebitllms_reference(w)
    t = ternarize(w, "bfloat16")
    np.testing.assert_array_equal(t.codes, codes.numpy())
    # the magnitude reproduces the bf16 inverse scale exactly when rounded back to bf16
    assert torch.tensor(1.0 / float(t.scale)).bfloat16() == s
    assert np.mean(t.codes != ternarize(w).codes) < 0.01


def test_modes_differ_somewhere():
    # spec hf-packed.md §7.1: the bf16 arithmetic changes a small fraction of codes
    diffs = []
    for seed in range(6):
        w = (torch.randn(256, 512, generator=torch.Generator().manual_seed(seed)) * 0.02).bfloat16()
        diffs.append(np.mean(ternarize(w, "bfloat16").codes != ternarize(w).codes))
    assert max(diffs) > 0 and max(diffs) < 0.01


def test_all_zero_weight():
    t = ternarize(torch.zeros(8, 8, dtype=torch.bfloat16))
    assert not t.codes.any()
    assert t.scale == np.float32(1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_is_an_error(bad):
    w = torch.zeros(4, 4, dtype=torch.bfloat16)
    w[1, 2] = bad
    with pytest.raises(SourceError, match=r"q_proj.*NaN or Inf"):
        ternarize(w, name="model.layers.0.self_attn.q_proj.weight")


def test_input_not_modified():
    w = (torch.randn(32, 32) * 0.02).bfloat16()
    before = w.clone()
    ternarize(w)
    assert torch.equal(w, before)


def test_thread_count_does_not_change_scale():
    w = (torch.randn(2048, 1024, generator=torch.Generator().manual_seed(5)) * 0.02).bfloat16()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ternarize(w)
        torch.set_num_threads(2)
        b = ternarize(w)
    finally:
        torch.set_num_threads(old)
    assert a.scale == b.scale
    np.testing.assert_array_equal(a.codes, b.codes)


def test_bf16_fast_path_equals_float32_path_on_every_bf16_value():
    """Every finite bf16 bit pattern, ternarized with a range of scales, through both code paths."""
    from bitconv.quant import _ternarize_bf16_input

    pats = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    pats = pats[torch.isfinite(pats)]
    for scale_seed in range(5):
        g = torch.Generator().manual_seed(scale_seed)
        # mix all patterns with a random block so the absmean (hence the threshold) varies
        extra = (torch.randn(4096, generator=g) * 10 ** (-scale_seed)).bfloat16()
        w = torch.cat([pats[torch.abs(pats.float()) < 10 ** (2 - scale_seed)], extra]).reshape(1, -1)
        fast = _ternarize_bf16_input(w, None, __import__("bitconv.quant", fromlist=["Workspace"]).Workspace())
        codes, s = weight_quant_reference(w)
        np.testing.assert_array_equal(fast.codes, codes.numpy())
        assert fast.scale == np.float32((1.0 / s).item())
        assert ternarize(w.float()).codes.tolist() == codes.numpy().tolist()  # the generic path agrees too


@pytest.mark.parametrize("shape", [(3, 5), (4, 33), (2, 32769), (97, 2049), (520, 1031), (1, (1 << 20) + 7)])
@pytest.mark.parametrize("chunk", [97, 4096, 1 << 18])
def test_in_memory_bf16_pieces_match_weight_quant(shape, chunk, monkeypatch):
    """A bf16 weight held in memory is ternarized in cache-sized pieces (|w| summed in torch's order a piece at a
    time, codes a piece at a time): the same codes and scale as the whole-tensor recipe, on awkward sizes, with
    exact threshold hits and an all-zero row."""
    from bitconv import quant

    monkeypatch.setattr(quant, "CHUNKED_MIN_ELEMS", 0)
    monkeypatch.setattr(quant, "CHUNK_ELEMS", chunk)
    g = torch.Generator().manual_seed(shape[1])
    w = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    if w.numel() > 4:
        w.reshape(-1)[:3] = w.reshape(-1).abs().float().mean().bfloat16() / 2
    if shape[0] > 1:
        w[1] = 0
    codes, s = weight_quant_reference(w)
    t = ternarize(w)
    np.testing.assert_array_equal(t.codes, codes.numpy())
    assert t.scale.tobytes() == np.float32((1.0 / s).item()).tobytes()
    assert t.scale.tobytes() == quant._ternarize_bf16_input(w, None, quant.Workspace()).scale.tobytes()


def test_in_memory_bf16_pieces_keep_nan_an_error(monkeypatch):
    from bitconv import quant

    monkeypatch.setattr(quant, "CHUNKED_MIN_ELEMS", 0)
    w = torch.zeros(64, 64, dtype=torch.bfloat16)
    w[3, 5] = float("nan")
    with pytest.raises(SourceError, match="NaN"):
        ternarize(w, name="x.weight")
