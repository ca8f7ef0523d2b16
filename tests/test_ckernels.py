"""The optional C kernels (`bitconv/_ckernels.c`) against torch and against the numpy path they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv import quant, torchsum
from bitconv.core.errors import SourceError

ck = pytest.importorskip("bitconv._ckernels", reason="built by pip install -e . (test_native_kernels_built fails)")

SIZES = [1, 3, 7, 31, 32, 33, 127, 4099, torchsum.GRAIN - 1, torchsum.GRAIN, torchsum.GRAIN + 5,
         3 * torchsum.GRAIN + 17, 16 * 16 * 64 * 3 + 1, 1_000_003]


def _bits(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    return (torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()


def test_native_kernels_built():
    assert quant.native_kernels(), "bitconv._ckernels missing or switched off: bf16 ternarization runs in numpy"


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_abs_sum_equals_torch(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lanes = torchsum.calibrate(threads)
        assert lanes is not None
        for i, n in enumerate(SIZES):
            w = _bits(n, i)
            want = w.float().abs().sum().numpy().tobytes()
            got = np.float32(ck.abs_sum_bf16(w.view(torch.int16).numpy(), threads, lanes)).tobytes()
            assert got == want, (n, threads)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("lanes", torchsum.CANDIDATE_LANES)
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_abs_sum_equals_replay_for_every_lane_count(lanes, threads):
    """The C order is the numpy replay's order for every vector width, not only the one this torch build uses."""
    for i, n in enumerate(SIZES):
        w = _bits(n, 100 + i, scale=3.0)  # wide exponents: orders that differ give different float32 sums
        mags = w.float().abs().numpy()
        want = torchsum.replay_sum(lambda s, c, a=mags: a[s:s + c], n, lanes, threads, piece=1 << 12)
        got = np.float32(ck.abs_sum_bf16(w.view(torch.int16).numpy(), threads, lanes))
        assert got.tobytes() == want.tobytes(), (n, lanes, threads)


def test_abs_sum_order_matters_here():
    """The probe data is sensitive to the order: a plain float32 sum differs (so the tests above can fail)."""
    w = _bits(1_000_003, 7, scale=3.0)
    plain = np.float32(np.cumsum(w.float().abs().numpy(), dtype=np.float32)[-1])
    assert plain.tobytes() != w.float().abs().sum().numpy().tobytes()


def test_abs_sum_ignores_sign_and_keeps_nan_and_inf():
    w = torch.tensor([-1.0, 2.0, -3.0, 0.0], dtype=torch.bfloat16)
    assert ck.abs_sum_bf16(w.view(torch.int16).numpy(), 1, 8) == 6.0
    for bad in (float("nan"), float("inf"), float("-inf")):
        w[1] = bad
        got = ck.abs_sum_bf16(w.view(torch.int16).numpy(), 1, 8)
        assert np.isnan(got) if bad != bad else np.isinf(got)


@pytest.mark.parametrize("threshold", [-1, 0, 1, 0x3C00, 0x3F00, 0x7F7F, 0x7FFF])
def test_codes_on_every_bf16_pattern(threshold):
    bits = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    out = np.full(bits.size, 7, dtype=np.int8)
    ck.codes_bf16(bits, out, threshold)
    mag = bits.view(np.uint16) & 0x7FFF
    want = np.where(mag > threshold, np.where(bits < 0, -1, 1), 0).astype(np.int8)
    np.testing.assert_array_equal(out, want)


def test_kernels_refuse_mismatched_buffers():
    bits = np.zeros(8, dtype=np.int16)
    with pytest.raises(ValueError, match="one byte per bf16 element"):
        ck.codes_bf16(bits, np.empty(7, np.int8), 0)
    with pytest.raises(ValueError, match="out of range"):
        ck.abs_sum_bf16(bits.view(np.uint8)[:15], 1, 8)
    with pytest.raises(ValueError, match="out of range"):
        ck.abs_sum_bf16(bits, 0, 8)
    with pytest.raises(TypeError):
        ck.codes_bf16(bits, bytes(8), 0)  # read-only output


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 33), (2, 32769), (97, 2049), (640, 2560), (1, (1 << 20) + 7)])
def test_native_ternarize_equals_numpy_path(shape, monkeypatch):
    g = torch.Generator().manual_seed(shape[1])
    w = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    if w.numel() > 4:
        w.reshape(-1)[:3] = w.reshape(-1).abs().float().mean().bfloat16() / 2  # threshold hits
    if shape[0] > 1:
        w[1] = 0
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "0")
    native = quant.ternarize(w)
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    ref = quant.ternarize(w)
    np.testing.assert_array_equal(native.codes, ref.codes)
    assert native.scale.tobytes() == ref.scale.tobytes()


def test_native_ternarize_zero_and_nan(monkeypatch):
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "0")
    z = quant.ternarize(torch.zeros(64, 300, dtype=torch.bfloat16))
    assert not z.codes.any() and z.scale == np.float32(1e-5)
    bad = torch.zeros(64, 300, dtype=torch.bfloat16)
    bad[5, 7] = float("nan")
    with pytest.raises(SourceError, match="NaN"):
        quant.ternarize(bad, name="x.weight")


def test_native_path_falls_back_when_torch_order_is_unknown(monkeypatch):
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "0")
    monkeypatch.setattr(torchsum, "calibrate", lambda threads=None: None)
    w = _bits(4096, 3).reshape(64, 64)
    assert quant._ternarize_bf16_native(w, None) is None
    t = quant.ternarize(w)  # the whole-tensor torch path
    wf = w.float()
    s = 1.0 / wf.abs().mean().clamp(min=1e-5)
    np.testing.assert_array_equal(t.codes, (wf * s).round().clamp(-1, 1).to(torch.int8).numpy())


LAYOUT_SHAPES = [(4, 256), (12, 512), (8, 768), (16, 1536), (128, 2560)]


def _layout_cases():
    from bitconv.layouts import list_layouts

    return list_layouts()


@pytest.mark.parametrize("name", _layout_cases())
def test_every_layout_packs_the_same_bytes_natively(name, monkeypatch):
    """Every registered layout, through the C kernels and through numpy: identical bytes, on shapes with an odd
    number of blocks per row, an all-zero row and an all-zero 256-element block."""
    from bitconv.core.errors import LayoutError
    from bitconv.core.tensors import Ternary
    from bitconv.layouts import get_layout

    layout = get_layout(name)
    checked = 0
    for m, k in LAYOUT_SHAPES:
        try:
            layout.spec((m, k))
        except LayoutError:
            continue
        g = np.random.default_rng(m * k)
        codes = g.integers(-1, 2, size=(m, k), dtype=np.int8)
        codes[1] = 0
        codes[2, :256] = 0
        t = Ternary(codes, np.float32(0.0123))
        monkeypatch.setenv("BITCONV_PURE_PYTHON", "0")
        native = layout.pack(t)
        monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
        ref = layout.pack(t)
        assert native.keys() == ref.keys()
        for f in ref:
            assert np.asarray(native[f]).tobytes() == np.asarray(ref[f]).tobytes(), (name, m, k, f)
        checked += 1
    assert checked, f"no test shape fits {name}"


@pytest.mark.parametrize("desc", [0, 1])
@pytest.mark.parametrize("span", [1, 3, 15, 16, 17, 32, 33, 64, 100])
def test_pack2_every_span_and_group_placement(span, desc):
    """The vectorized loop and its remainder, both shift orders, blocks placed with a group stride and offset (the
    bytes between blocks are left alone), against the formula written out in numpy."""
    gb, go, ng = 3, 5, 4
    gs = go + gb * span + 7
    codes = np.random.default_rng(span * 2 + desc).integers(-1, 2, ng * gb * 4 * span, dtype=np.int8)
    out = np.full(ng * gs, 0xA5, np.uint8)
    ck.pack2(codes, out, span, desc, gb, gs, go)
    t = (codes.astype(np.uint8) + 1).reshape(ng, gb, 4, span)
    shifts = np.array([6, 4, 2, 0] if desc else [0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    want = np.full((ng, gs), 0xA5, np.uint8)
    want[:, go:go + gb * span] = np.bitwise_or.reduce(t << shifts, axis=2).reshape(ng, gb * span)
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("desc", [0, 1])
@pytest.mark.parametrize("span", [1, 15, 16, 17, 33, 100])
def test_unpack2_inverts_pack2_and_flags_0b11(span, desc):
    gb, go, ng = 2, 3, 5
    gs = go + gb * span + 4
    codes = np.random.default_rng(7 * span + desc).integers(-1, 2, ng * gb * 4 * span, dtype=np.int8)
    packed = np.full(ng * gs, 0xFF, np.uint8)  # 0b11 everywhere outside the blocks: never read
    ck.pack2(codes, packed, span, desc, gb, gs, go)
    back = np.full_like(codes, 9)
    assert ck.unpack2(packed, back, span, desc, gb, gs, go) is False
    assert back.tobytes() == codes.tobytes()
    packed[(ng - 1) * gs + go + gb * span - 1] |= 0x0C  # one field of the last payload byte becomes 0b11
    assert ck.unpack2(packed, back, span, desc, gb, gs, go) is True


@pytest.mark.parametrize("shape", [(4, 1), (8, 5), (12, 4099), (256, 300)])
def test_hf_unpack_natively_equals_numpy(shape, monkeypatch):
    from bitconv.core.errors import FormatError
    from bitconv.layouts import hf_packed

    codes = np.random.default_rng(shape[1]).integers(-1, 2, shape, dtype=np.int8)
    packed = hf_packed.pack_codes(codes)
    native = hf_packed.unpack_codes(packed, shape[0])
    bad = packed.copy()
    bad.reshape(-1)[-1] |= 0xC0
    with pytest.raises(FormatError, match="0b11"):
        hf_packed.unpack_codes(bad, shape[0], tensor="w")
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    assert native.tobytes() == hf_packed.unpack_codes(packed, shape[0]).tobytes() == codes.tobytes()
    with pytest.raises(FormatError, match="0b11"):
        hf_packed.unpack_codes(bad, shape[0], tensor="w")


def test_block_d_writes_d_where_a_block_has_a_non_zero_code():
    """TQ's per-block d: the 16 bits where a block holds a non-zero code (one in its last position counts), zero
    elsewhere, the payload bytes left alone; the count of blocks that got d."""
    qk, bb, n = 256, 66, 7
    codes = np.random.default_rng(3).integers(-1, 2, n * qk, dtype=np.int8)
    codes[:qk] = 0
    codes[3 * qk:4 * qk] = 0
    codes[5 * qk:6 * qk] = 0
    codes[6 * qk - 1] = -1  # block 5: non-zero only in its last code
    out = np.full(n * bb, 0xA5, np.uint8)
    assert ck.block_d(codes, out, qk, bb, 0x3C01) == 5
    want = np.full((n, bb), 0xA5, np.uint8)
    nonzero = codes.reshape(n, qk).any(axis=1)
    want[:, -2:] = np.where(nonzero[:, None], np.array([0x01, 0x3C], np.uint8), 0)
    assert out.tobytes() == want.tobytes()
    with pytest.raises(ValueError):
        ck.block_d(codes[:-8], out, qk, bb, 1)  # not whole blocks
    with pytest.raises(ValueError):
        ck.block_d(codes, out[:-1], qk, bb, 1)  # output too small
    with pytest.raises(ValueError):
        ck.block_d(codes, out, qk, bb, 0x10000)  # d is 16 bits


def test_same_bytes():
    a = np.arange(1000, dtype=np.int16)
    assert ck.same_bytes(a, a.copy()) is True and ck.same_bytes(a[:0], a[:0]) is True
    b = a.copy()
    b[999] ^= 1
    assert ck.same_bytes(a, b) is False and ck.same_bytes(a, a[:999]) is False


@pytest.mark.parametrize("kernel, args", [("pack2", (8, 0, 1, 8, 0)), ("pack_tq1", (54,)),
                                          ("pack_iq1bn", (1, 13, 0))])
def test_pack_kernels_refuse_short_buffers(kernel, args):
    fn = getattr(ck, kernel)
    with pytest.raises(ValueError, match="pack"):
        fn(np.zeros(100, np.int8), np.zeros(1000, np.uint8), *args)  # not whole blocks
    with pytest.raises(ValueError, match="too small"):
        fn(np.zeros(256, np.int8), np.zeros(8, np.uint8), *args)


def test_q8_0_matches_numpy_on_awkward_values(monkeypatch):
    """Q8_0 of bf16 values through C and numpy: ties at .5, tiny blocks (subnormal fp16 d), zero blocks, huge
    magnitudes (d above fp16's range -> inf), negative zeros; NaN blocks make the kernel hand over to numpy."""
    from bitconv.formats.gguf.quants import quantize_q8_0

    g = torch.Generator().manual_seed(8)
    x = torch.randn(64, 256, generator=g)
    x[0] = 0
    x[1, :32] = -0.0
    x[2] *= 1e-6
    x[3] *= 1e-9
    x[4] *= 1e30
    x[5, :32] = torch.arange(32) - 16.0  # max 16 -> d = 16/127: many exact halves after scaling
    x[6, :32] = 127.0
    x[7] = torch.where(x[7] > 0, 1.5, -2.5)
    w = x.bfloat16()
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "0")
    native = quantize_q8_0(w)
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    ref = quantize_q8_0(w)
    assert native.tobytes() == ref.tobytes()
    bad = w.clone()
    bad[9, 3] = float("nan")
    assert not ck.q8_0_bf16(bad.view(torch.int16).numpy(), np.empty(64 * 256 // 32 * 34, np.uint8))
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "0")
    handed_over = quantize_q8_0(bad)
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    assert handed_over.tobytes() == quantize_q8_0(bad).tobytes()


def test_half_conversion_on_every_bf16_block_maximum():
    """The kernel's fp16 d equals numpy's float32 -> float16 cast for every positive finite bf16 block maximum
    (subnormal d, ties to even, d above fp16's range -> inf)."""
    pats = np.arange(1, 0x7F80, dtype=np.uint16)  # every positive finite bf16 pattern
    x = np.zeros((pats.size, 32), dtype=np.uint16)
    x[:, 0] = pats
    x[:, 1] = pats // 2  # a second, smaller value per block
    out = np.empty(pats.size * 34, np.uint8)
    assert ck.q8_0_bf16(x.view(np.int16), out)
    d = out.reshape(-1, 34)[:, :2].copy().view(np.float16).reshape(-1)
    amax = (pats.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore"):  # d above 65504 is inf in both
        want = (amax / np.float32(127)).astype(np.float16)
    assert d.tobytes() == want.tobytes()



@pytest.mark.parametrize("n", [65536, 65535, 9, 1])
def test_f16_of_bf16_equals_torch_on_every_pattern(n, monkeypatch):
    """bf16 -> f16 (GGUF token_embd / output): the F16C kernel and the torch fallback give torch's bits for all
    65536 bf16 patterns (subnormals, overflow to inf, NaN payloads), whole and with a ragged tail."""
    from bitconv.formats.gguf import quants

    every = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)[:n].contiguous()
    want = every.to(torch.float16).numpy().view(np.uint16)
    got = quants.to_float_type(every, "F16")
    assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), want)
    out = np.zeros(n, dtype=np.uint16)
    assert ck.f16_of_bf16(every.view(torch.int16).numpy(), out)  # this machine has AVX2 + F16C
    assert np.array_equal(out, want)
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    assert np.array_equal(quants.to_float_type(every, "F16").view(np.uint16), want)


def test_pack_tl2_refuses_what_is_not_whole_tiles():
    codes = np.zeros(64 * 288, np.int8)
    out = np.zeros(64 * 288, np.uint8)
    ck.pack_tl2(codes, out, 64, 288, 288, 64, 96)  # whole tiles: accepted
    with pytest.raises(ValueError, match="whole TL2 tiles"):
        ck.pack_tl2(codes, out, 64, 288, 288, 48, 96)  # BM not a multiple of 32
    with pytest.raises(ValueError, match="whole TL2 tiles"):
        ck.pack_tl2(codes, out, 64, 288, 240, 64, 96)  # K3 not whole BK tiles
    with pytest.raises(ValueError, match="not M x K"):
        ck.pack_tl2(codes[:-1], out, 64, 288, 288, 64, 96)
    with pytest.raises(ValueError, match="too small"):
        ck.pack_tl2(codes, out[:100], 64, 288, 288, 64, 96)
