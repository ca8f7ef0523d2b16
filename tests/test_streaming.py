"""Streaming paths (bounded memory) against the whole-tensor paths, byte for byte.

Chunk sizes are shrunk with monkeypatch so that tiny models take the chunked code paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv import quant, torchsum
from bitconv.core.errors import SourceError
from bitconv.quant import ternarize, ternarize_blocks

# awkward sizes: below/above one vector, the 4-vector row, the level steps (16, 32 rows), GRAIN and its halves
SIZES = [(1, 1), (3, 5), (7, 9), (4, 33), (16, 129), (13, 1021), (128, 257), (3, 32768 // 3 + 1),
         (2, 32769), (5, 13107), (97, 2049), (520, 1031)]


def _reader(w: torch.Tensor):
    flat = w.reshape(-1)
    return lambda s, c: flat[s:s + c]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 8, 31, 33, 127, 129, 4099, 32767, 32768, 32769, 65537, 98_303, 262_147,
                               1_048_583])
def test_replayed_sum_equals_torch(n, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(n)
        t = (torch.randn(n, generator=g) * 0.02).abs_()
        arr = t.numpy()
        got = torchsum.exact_sum(lambda s, c: arr[s:s + c], n, piece=1 << 12)
        assert got is not None, "this torch build's reduction order was not reproduced"
        assert got.tobytes() == t.sum().numpy().tobytes()
    finally:
        torch.set_num_threads(old)


def test_replayed_sum_is_not_a_plain_sum():
    """The replay reproduces torch's order, which differs from a sequential and from numpy's pairwise sum."""
    g = torch.Generator().manual_seed(3)
    t = (torch.rand(1_000_003, generator=g) * 10).float()
    arr = t.numpy()
    seq = np.cumsum(arr, dtype=np.float32)[-1]
    assert seq.tobytes() != t.sum().numpy().tobytes()  # a naive order would not do
    assert torchsum.exact_sum(lambda s, c: arr[s:s + c], arr.size).tobytes() == t.sum().numpy().tobytes()


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("block", [97, 4096, 1 << 20])
@pytest.mark.parametrize("pure", ["0", "1"])  # the C kernels, then numpy (BITCONV_PURE_PYTHON=1)
def test_ternarize_blocks_equals_whole(shape, dtype, block, compute, pure, monkeypatch):
    monkeypatch.setenv("BITCONV_PURE_PYTHON", pure)
    g = torch.Generator().manual_seed(hash((shape, block)) % 1000)
    w = (torch.randn(shape, generator=g) * 0.02).to(dtype)
    if w.numel() > 4:  # exact threshold hits: values whose product with s lies on the 0.5 boundary
        w.reshape(-1)[:3] = w.reshape(-1).abs().float().mean().to(dtype) / 2
    whole = ternarize(w, compute)
    got = ternarize_blocks(_reader(w), tuple(shape), block=block, compute=compute)
    assert got is not None
    assert got.codes.dtype == np.int8 and got.codes.shape == tuple(shape)
    assert np.array_equal(got.codes, whole.codes)
    assert np.float32(got.scale).tobytes() == np.float32(whole.scale).tobytes()


def test_ternarize_blocks_zero_and_nan():
    z = torch.zeros(64, 300, dtype=torch.bfloat16)
    got = ternarize_blocks(_reader(z), (64, 300), block=1000)
    assert not got.codes.any() and got.scale == ternarize(z).scale
    bad = torch.randn(64, 300).bfloat16()
    bad[10, 17] = float("nan")
    with pytest.raises(SourceError, match="NaN"):
        ternarize_blocks(_reader(bad), (64, 300), name="x.weight", block=1000)


@pytest.mark.parametrize("summer", ["exact_sum", "exact_abs_sum_bf16"])
def test_ternarize_blocks_catches_a_wrong_mean(summer, monkeypatch):
    """The comparison above can fail: a sum off by one ulp (numpy replay or the C kernels) changes the scale bytes."""
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(200, 700, generator=g) * 0.02).bfloat16()
    whole = ternarize(w)
    real = getattr(torchsum, summer)
    monkeypatch.setattr(torchsum, summer, lambda *a, **k: np.nextafter(real(*a, **k), np.float32(1)))
    if summer == "exact_sum":
        monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    got = ternarize_blocks(_reader(w), (200, 700), block=4096)
    assert np.float32(got.scale).tobytes() != np.float32(whole.scale).tobytes()


def test_uncalibrated_build_falls_back(monkeypatch):
    monkeypatch.setattr(torchsum, "exact_sum", lambda *a, **k: None)
    monkeypatch.setattr(torchsum, "exact_abs_sum_bf16", lambda *a, **k: None)
    w = torch.randn(8, 8).bfloat16()
    assert ternarize_blocks(_reader(w), (8, 8)) is None


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("piece", [64, 4096, 1 << 20])
def test_streamed_c_sum_equals_torch(threads, piece):
    """The C kernels' streamed multi_row_sum (rows fed a piece at a time) gives torch's float32 sum of |w|."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, n in enumerate([5, 4099, torchsum.GRAIN + 5, 3 * torchsum.GRAIN + 17, 16 * 16 * 16 * 32 * 2 + 9,
                               1_000_003]):
            w = (torch.randn(n, generator=torch.Generator().manual_seed(i)) * 2.0).bfloat16()
            bits = w.view(torch.int16).numpy()
            got = torchsum.exact_abs_sum_bf16(lambda s, c, b=bits: b[s:s + c], n, piece=piece)
            assert got is not None
            assert np.float32(got).tobytes() == w.float().abs().sum().numpy().tobytes(), (n, threads, piece)
    finally:
        torch.set_num_threads(old)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "pread"])
@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_pack_hf_streamed_equals_whole(models, tmp_path, monkeypatch, compute, mapped):
    """Blocks mapped in place, or read into a reused buffer where the file cannot be mapped: same files."""
    from bitconv.formats import safetensors as st_format
    from bitconv.pipeline import pack_hf, quantize
    from bitconv.sources import safetensors as st_source

    src = models("bitnet-2b4t")
    pack_hf(src, tmp_path / "whole", compute=compute)
    quantize(src, tmp_path / "whole-t", compute=compute)
    monkeypatch.setattr(quant, "STREAM_MIN_ELEMS", 0)
    if not mapped:
        monkeypatch.setattr(st_source, "map_range", lambda *a: None)  # whole tensors (`_map`)
        monkeypatch.setattr(st_format, "map_range", lambda *a: None)  # blocks (`read_range`)
    monkeypatch.setattr(quant, "BLOCK_ELEMS", 1000)
    pack_hf(src, tmp_path / "streamed", compute=compute)
    quantize(src, tmp_path / "streamed-t", compute=compute)
    assert _files(tmp_path / "streamed") == _files(tmp_path / "whole")
    assert _files(tmp_path / "streamed-t") == _files(tmp_path / "whole-t")


def test_writer_queue_is_bounded_in_bytes():
    import threading

    from bitconv.sinks.background import BackgroundWriter

    gate = threading.Event()
    bw = BackgroundWriter(max_bytes=100)
    bw.submit(gate.wait, 60)  # runs (blocked) on the writer thread
    bw.submit(lambda: None, 40)
    blocked = threading.Thread(target=bw.submit, args=(lambda: None, 10))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # 60 + 40 + 10 > 100: waits for room
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    bw.submit(lambda: None, 500)  # bigger than the bound: admitted alone
    bw.finish()
    assert bw.peak_pending == 500


def _codes(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.integers(-1, 2, size=shape).astype(np.int8)
    c[:2] = 0  # all-zero blocks (TQ stores d = 0 there)
    return c


@pytest.mark.parametrize("layout_name", ["hf-autobitlinear", "hf-bitlinear", "gguf-i2-s", "gguf-tq1-0",
                                         "gguf-tq2-0"])
def test_layout_packs_in_blocks_like_whole(layout_name, monkeypatch):
    from bitconv.core.tensors import Ternary
    from bitconv.layouts import get_layout, gguf_i2s, gguf_tq, hf_packed

    t = Ternary(_codes((96, 512)), np.float32(0.0123))
    lay = get_layout(layout_name)
    whole = lay.pack(t)
    monkeypatch.setattr(hf_packed, "PACK_BLOCK_BYTES", 1000)  # 2 packed rows per block (out/4 = 24 rows)
    monkeypatch.setattr(gguf_i2s, "PACK_BLOCKS", 7)
    monkeypatch.setattr(gguf_tq, "PACK_BLOCKS", 5)
    blocked = lay.pack(t)
    assert whole.keys() == blocked.keys()
    for k in whole:
        assert whole[k].tobytes() == blocked[k].tobytes(), k
    assert np.array_equal(lay.unpack(blocked, (96, 512)).codes, t.codes)


def test_gguf_passthrough_in_row_blocks(models, tmp_path, monkeypatch):
    from bitconv.sinks import gguf as gguf_sink

    src = models("bitnet-2b4t")
    gguf_sink.pack_gguf(src, tmp_path / "whole.gguf", "tq2_0")
    monkeypatch.setattr(gguf_sink, "CHUNK_BYTES", 1000)  # embeddings a few rows at a time
    monkeypatch.setattr(quant, "STREAM_MIN_ELEMS", 0)
    monkeypatch.setattr(quant, "BLOCK_ELEMS", 777)
    gguf_sink.pack_gguf(src, tmp_path / "blocks.gguf", "tq2_0")
    assert (tmp_path / "blocks.gguf").read_bytes() == (tmp_path / "whole.gguf").read_bytes()


def test_hf_copy_in_bounded_blocks_without_copy_file_range(models, tmp_path, monkeypatch):
    import os

    from bitconv.formats import safetensors as safetensors_io
    from bitconv.pipeline import pack_hf

    src = models("bitnet-2b4t")
    pack_hf(src, tmp_path / "kernel")
    monkeypatch.setattr(safetensors_io, "_COPY_CHUNK", 999)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    pack_hf(src, tmp_path / "blocks")
    assert _files(tmp_path / "blocks") == _files(tmp_path / "kernel")


@pytest.mark.parametrize("values", ["online", "dequantized"])
def test_unpack_in_row_blocks_like_whole(models, tmp_path, monkeypatch, values):
    from bitconv import pipeline
    from bitconv.sinks import hf

    src = models("bitnet-2b4t")
    pipeline.pack_hf(src, tmp_path / "packed")
    pipeline.unpack_hf(tmp_path / "packed", tmp_path / "whole", values=values)
    monkeypatch.setattr(hf, "DEQUANT_BLOCK_ELEMS", 100)  # a row or two per block
    pipeline.unpack_hf(tmp_path / "packed", tmp_path / "blocks", values=values)
    assert _files(tmp_path / "blocks") == _files(tmp_path / "whole")


def test_planned_peak_counts_the_biggest_tensor(models, monkeypatch):
    from bitconv import memory
    from bitconv.pipeline import plan_pack_hf
    from bitconv.sinks import prefetch
    from bitconv.sources import open_source

    plan = plan_pack_hf(open_source(models("bitnet-2b4t")))
    monkeypatch.setattr(prefetch, "default_workers", lambda: 1)
    whole = plan.peak_bytes
    big = max(s.tensor.numel for s in plan.steps if s.action == "pack")
    assert whole >= memory.BASE_BYTES + big * (2 + 4 + 2 + 1)  # bf16 weight, |w| f32, signs, codes
    monkeypatch.setattr(prefetch, "default_workers", lambda: 2)  # two tensors at once: both working sets
    two = plan.peak_bytes
    assert whole + big * (2 + 4 + 2 + 1) <= two <= whole + prefetch.MAX_INFLIGHT_BYTES
    monkeypatch.setattr(quant, "STREAM_MIN_ELEMS", 0)
    monkeypatch.setattr(prefetch, "default_workers", lambda: 1)
    assert plan.peak_bytes < whole + quant.BLOCK_ELEMS * 12
    monkeypatch.setattr(prefetch, "MAX_INFLIGHT_BYTES", quant.BLOCK_ELEMS * 12)  # no room for two block passes
    monkeypatch.setattr(prefetch, "default_workers", lambda: 2)
    assert plan.peak_bytes < whole + quant.BLOCK_ELEMS * 12


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("arch", ["bitnet-2b4t", "llama-bitnet"])  # llama: q/k rows permuted per head
def test_gguf_float_types_in_row_blocks_like_whole(models, tmp_path, monkeypatch, gguf_type, arch):
    from bitconv.sinks import gguf as gguf_sink

    src = models(arch)
    monkeypatch.setattr(gguf_sink, "DEQUANT_BLOCK_ELEMS", 1 << 40)  # one block: the whole tensor
    gguf_sink.pack_gguf(src, tmp_path / "whole.gguf", gguf_type, force=True)
    monkeypatch.setattr(gguf_sink, "DEQUANT_BLOCK_ELEMS", 100)  # a head (or a row) per block
    gguf_sink.pack_gguf(src, tmp_path / "blocks.gguf", gguf_type, force=True)
    assert (tmp_path / "blocks.gguf").read_bytes() == (tmp_path / "whole.gguf").read_bytes()
    if gguf_type == "f32":  # and the values are the converters': permute(copysign(|codes| * scale, W)), not just
        import gguf  # self-consistent

        from bitconv.formats.gguf.metadata import gguf_name, permute_heads, permute_rows
        from bitconv.sources import open_source
        from bitconv.sources.safetensors import load_torch

        ck = open_source(src)
        tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "blocks.gguf").tensors}
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
            t = ck.tensors[name]
            tern = t.ternary("float32")
            w = load_torch(t.stored[0]).float().numpy()
            want = np.copysign(np.abs(tern.codes.astype(np.float32)) * tern.scale, w)
            heads = permute_heads(name, ck.config) if arch == "llama-bitnet" else None
            want = permute_rows(want, heads) if heads else want
            got = np.asarray(tensors[gguf_name(name, t.shape)].data).reshape(want.shape)
            assert got.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("name", ["gguf-tl1", "gguf-tl2"])
@pytest.mark.parametrize("shape", [(256, 1024), (96, 320), (640, 2560)])
def test_tl_packs_in_row_chunks_like_whole(name, shape, monkeypatch):
    from bitconv.core.tensors import Ternary
    from bitconv.layouts import get_layout, gguf_tl

    t = Ternary(_codes(shape, seed=shape[0]), np.float32(0.0123))
    lay = get_layout(name)
    monkeypatch.setattr(gguf_tl, "PACK_ROW_CODES", 1 << 40)
    whole = lay.pack(t)["data"]
    monkeypatch.setattr(gguf_tl, "PACK_ROW_CODES", 1)  # one BM-row tile per chunk
    chunked = lay.pack(t)["data"]
    assert chunked.tobytes() == whole.tobytes()
    assert np.array_equal(lay.unpack({"data": chunked}, shape).codes, t.codes)


def _q8_0_reference(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_0_ref on whole float32 blocks (the formula, no slicing or transposing)."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.floor(np.abs(b) * inv + np.float32(0.5)) * np.where(b < 0, -1, 1)
    return np.concatenate([d.astype(np.float16).view(np.uint8), q.astype(np.int8).view(np.uint8)], axis=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("slice_blocks", [1, 7, 2048])
def test_q8_0_slices_equal_the_reference(dtype, slice_blocks, monkeypatch):
    from bitconv.formats.gguf import quants

    monkeypatch.setattr(quants, "_Q8_0_SLICE", slice_blocks)
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(37, 96, generator=g) * 0.02).to(dtype)
    x[0, :32] = 0  # d = 0 block
    x[1, :32] = -0.0
    x[2, :32] = torch.arange(32) - 16.0  # exact halves after scaling: ties round away from zero
    x[3, 5] = 1e-6
    got = quants.to_float_type(x, "Q8_0")
    assert got.tobytes() == _q8_0_reference(x.float().numpy()).tobytes()


@pytest.mark.parametrize("elems", [1, 7, 1 << 40])
def test_parity_metrics_in_token_chunks_equal_whole(elems, monkeypatch):
    """verify's logit comparison a few tokens at a time (bounded float64 temporaries): the very same numbers as the
    whole-tensor formulas."""
    from bitconv.verify import parity

    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 9, 301, generator=g) * 3
    b = a + torch.randn(2, 9, 301, generator=g) * 0.2
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    ta, tb = a.topk(5, -1).indices, b.topk(5, -1).indices
    want = (float((a - b).abs().max()), float((la.exp() * (la - lb)).sum(-1).mean()),
            float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            float(((ta[..., :, None] == tb[..., None, :]).any(-1).float().sum(-1) / 5).mean()))
    monkeypatch.setattr(parity, "BETWEEN_ELEMS", elems)
    m = parity.ParityMetrics.between(a, b)
    assert (m.max_dlogit, m.mean_kl, m.top1, m.top5) == want


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (13, 1021), (97, 2049)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.66, 1.0])
def test_lifter_blocks_equal_lift(shape, density):
    """`quant.Lifter` fed row blocks of any size (and rows out of order, its count reset) gives `lift`'s bytes."""
    g = torch.Generator().manual_seed(shape[0] * 7 + int(density * 100))
    nz = torch.rand(shape, generator=g) < density
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1, 1)
    codes = (nz.to(torch.int8) * sign.to(torch.int8)).numpy()
    scale = 0.0123
    whole = quant.lift(codes, scale)
    assert torch.equal(whole.view(torch.int16), _lift_reference(codes, scale).view(torch.int16))
    nnz = int(np.count_nonzero(codes))
    for step in (1, 2, 5, shape[0]):
        lifter = quant.Lifter(codes.size, nnz, scale)
        got = torch.cat([lifter(codes[r:r + step]) for r in range(0, shape[0], step)])
        assert torch.equal(got.view(torch.int16), whole.view(torch.int16)), step
    lifter = quant.Lifter(codes.size, nnz, scale)
    for r in reversed(range(shape[0])):  # out of order: the count of earlier non-zeros set by the caller
        lifter.seen = int(np.count_nonzero(codes[:r]))
        assert torch.equal(lifter(codes[r:r + 1]).view(torch.int16), whole[r:r + 1].view(torch.int16))
    if 0 < nnz:
        t = ternarize(whole.float())
        assert np.array_equal(t.codes, codes)


def _lift_reference(codes: np.ndarray, scale: float) -> torch.Tensor:
    """The lift recipe in plain torch (nonzero indices, mags[:k] = hi), the oracle of `quant.Lifter`'s bit tricks."""
    c = torch.from_numpy(codes).to(torch.int8)
    n, nnz = c.numel(), int(torch.count_nonzero(c))
    if nnz == 0:
        return torch.zeros(c.shape, dtype=torch.bfloat16)
    target = scale * n / nnz
    lo = torch.tensor(target, dtype=torch.float32).to(torch.bfloat16)
    if float(lo) > target:
        lo = torch.nextafter(lo, torch.tensor(0.0, dtype=torch.bfloat16))
    hi = torch.nextafter(lo, torch.tensor(float("inf"), dtype=torch.bfloat16))
    step = float(hi) - float(lo)
    k = min(max(round((target - float(lo)) * nnz / step), 0), nnz) if step > 0 else 0
    mags = torch.full((nnz,), float(lo), dtype=torch.bfloat16)
    mags[:k] = hi
    out = torch.zeros(n, dtype=torch.bfloat16)
    idx = torch.nonzero(c.reshape(-1), as_tuple=True)[0]
    out[idx] = mags * c.reshape(-1)[idx].to(torch.bfloat16)
    return out.reshape(c.shape)


def test_gguf_q8_0_rows_decode_alone_and_verify_compares_by_rows(models, tmp_path, monkeypatch):
    """A GGUF Q8_0 embedding (the ik types' default) is read a block of rows at a time: its rows equal the whole
    tensor's, and verify's passthrough comparison streams them (it loaded the whole tensor as float32 and its
    reference beside it: 6.2 GB for a 2B4T IQ1_BN). Same verdict with one-row chunks; a changed row still fails."""
    import shutil

    from bitconv import api
    from bitconv.formats.gguf.reader import read_gguf
    from bitconv.sources import open_source
    from bitconv.verify import roundtrip

    src = models("bitnet-2b4t")
    out = tmp_path / "m.gguf"
    api.pack(src, out, to="gguf", type="iq1_bn")
    t = open_source(out).tensors["model.embed_tokens.weight"]
    assert t.row_loader is not None and t.dtype == "F32"
    whole = t.loader()
    for a, b in ((0, 1), (3, 17), (t.shape[0] - 2, t.shape[0]), (0, t.shape[0])):
        assert torch.equal(t.row_loader(a, b), whole[a:b])
    assert api.verify(out, src, parity=False).ok
    monkeypatch.setattr(roundtrip, "CHUNK_BYTES", 1)  # one row per chunk
    assert api.verify(out, src, parity=False).ok
    bad = tmp_path / "bad.gguf"
    shutil.copy(out, bad)
    info = read_gguf(bad).tensors["token_embd.weight"]
    with open(bad, "r+b") as f:  # row 5's first block: its int8 values change
        f.seek(info.offset + 5 * (info.nbytes // t.shape[0]) + 2)
        f.write(bytes([0x7F] * 32))
    rep = api.verify(bad, src, parity=False)
    assert not rep.ok and any(c.name == "model.embed_tokens.weight" and not c.ok for c in rep.roundtrip.tensors)


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 65537])
def test_map_range_reads_the_range_and_never_writes_the_file(tmp_path, offset):
    """`map_range` (blocks read in place instead of copied): the exact bytes of [offset, offset + n), a private map
    (writing into the array leaves the file alone), and a range past the end of the file is the truncation error
    (a SIGBUS if it were touched)."""
    from bitconv.formats.safetensors import map_range

    data = np.random.default_rng(0).integers(0, 256, 70_000, dtype=np.uint8)
    f = tmp_path / "x.bin"
    f.write_bytes(data.tobytes())
    n = len(data) - offset - 3
    got = map_range(f, offset, n, "t")
    assert got is not None and got.tobytes() == data[offset:offset + n].tobytes()
    got[:] = 7
    assert f.read_bytes() == data.tobytes()
    with pytest.raises(SourceError, match="truncated file"):
        map_range(f, offset, len(data) - offset + 1, "t")
    assert map_range(f, offset, 0, "t") is None
