"""Absmean ternarization of bf16 master weights (BitNet b1.58).

Canonical recipe (`../shared/spec/README.md` convention 2, transformers `WeightQuant`):
    w = float32(W); m = max(mean(|w|), 1e-5)  # torch's float32 reduction
    s = 1 / m; codes = clamp(round_half_even(w * s), -1, 1); scale = float32(1 / s)
# ref: transformers/integrations/bitnet.py WeightQuant; spec hf-packed.md §7

`compute="bfloat16"` reproduces onebitllms' `quantize_to_1bit`, which does the same arithmetic in bf16
(about 0.2 % of codes differ from the float32 recipe). # ref: hf-packed.md §7.1, §8.1
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from bitconv import torchsum
from bitconv.core import dtypes, native
from bitconv.core.errors import SourceError, UsageError
from bitconv.core.lazytorch import is_tensor, torch
from bitconv.core.tensors import EPS, Ternary

COMPUTE_MODES = ("float32", "bfloat16")


def native_kernels() -> bool:
    """Whether bf16 ternarization runs in the C kernels (`bitconv.core.native`; numpy gives the same bytes)."""
    return native.kernels() is not None


def compute_mode(value: str) -> str:
    """The one check of a compute mode (`--compute`, `open_source(src, compute=...)`): case-folded, or a
    UsageError naming the choices."""
    key = str(value).strip().lower()
    if key not in COMPUTE_MODES:
        raise UsageError(f"--compute must be one of {', '.join(COMPUTE_MODES)}, got {value!r}")
    return key


class Workspace:
    """Reusable scratch buffers, so streaming many tensors does not pay page faults for fresh allocations.

    Buffers are per thread (`bitconv.sinks.prefetch` computes two tensors at once on worker threads); a thread's
    buffers are freed when it ends.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, key: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get((key, dtype))
        if buf is None or buf.numel() < numel:
            bufs.pop((key, dtype), None)  # free the old one first: peak is the new size, not old + new
            buf = torch.empty(numel, dtype=dtype)
            bufs[(key, dtype)] = buf
        return buf[:numel]


_DEFAULT_WS = Workspace()


def ternarize(w: torch.Tensor, compute: str = "float32", *, name: str | None = None,
              ws: Workspace | None = None) -> Ternary:
    """Ternarize one weight tensor. `w` is any float tensor (bf16 masters normally); it is not modified.

    Returns codes (int8 numpy, same shape) and the float32 magnitude scale. A weight whose mean |w| is not finite
    (NaN or Inf inside) raises `SourceError` naming `name`; an all-zero weight gives all-zero codes and scale 1e-5.
    """
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute must be one of {COMPUTE_MODES}, got {compute!r}")
    if compute == "bfloat16":
        return _ternarize_bf16(w, name)
    ws = ws or _DEFAULT_WS
    if w.dtype == torch.bfloat16:
        if w.is_contiguous() and native_kernels():
            got = _ternarize_bf16_native(w, name)
            if got is not None:
                return got
        if w.numel() >= CHUNKED_MIN_ELEMS and w.is_contiguous():
            flat = w.reshape(-1)
            got = ternarize_blocks(lambda start, count: flat[start:start + count], tuple(w.shape), name=name,
                                   block=CHUNK_ELEMS, ws=ws)
            if got is not None:
                return got
        return _ternarize_bf16_input(w, name, ws)
    n = w.numel()
    wf = ws.get("w", n, torch.float32).view(w.shape)
    wf.copy_(w)  # exact for f16 inputs
    a = ws.get("abs", n, torch.float32).view(w.shape)
    torch.abs(wf, out=a)
    m = a.mean()  # the same kernel and order as `w.float().abs().mean()`
    _check_finite(m, name, w.shape)
    s = 1.0 / m.clamp(min=EPS)
    x = wf.mul_(s)
    # clamp(round_half_even(x), -1, 1) == (x > 0.5) - (x < -0.5) for every finite x; one pass cheaper.
    pos = ws.get("pos", n, torch.bool).view(w.shape)
    neg = ws.get("neg", n, torch.bool).view(w.shape)
    torch.gt(x, 0.5, out=pos)
    torch.lt(x, -0.5, out=neg)
    codes = pos.to(torch.int8)
    codes.sub_(neg.view(torch.int8))
    return Ternary(codes.numpy(), np.float32((1.0 / s).item()))


# Every non-negative finite bf16 value, indexed by its bit pattern (0x0000 .. 0x7F7F), as float32.
_BF16_MAGNITUDES = dtypes.f32_of_bf16(np.arange(0, 0x7F80, dtype=np.uint16))


def _ternarize_bf16_input(w: torch.Tensor, name: str | None, ws: Workspace) -> Ternary:
    """The float32 recipe for bf16 weights, computed on the bf16 bit patterns (fewer passes over memory).

    code(w) = sign(w) * [fl32(|w| * s) > 0.5], and fl32(v * s) is monotone in v, so the codes are decided by one
    threshold on the magnitude bits: Tb = the largest bf16 magnitude whose product with s rounds to <= 0.5.
    Bit-identical to `clamp(round_half_even(float32(w) * s), -1, 1)` (tests check it).
    """
    n = w.numel()
    a = ws.get("abs", n, torch.float32).view(w.shape)
    bits = w.view(torch.int16).numpy()
    _bf16_magnitudes(w, a.numpy())  # the same values as `w.float().abs()`
    m = a.mean()  # the same kernel and order as `w.float().abs().mean()`
    _check_finite(m, name, w.shape)
    coder = BlockCoder(1.0 / m.clamp(min=EPS), ws=ws)  # the codes: one threshold on the magnitude bits
    codes = np.empty(w.shape, dtype=np.int8)
    coder.bits(bits.reshape(-1), codes.reshape(-1))
    return Ternary(codes, coder.scale)


def _bf16_threshold(s: torch.Tensor | np.float32) -> int:
    """The largest bf16 magnitude bit pattern whose float32 product with s is <= 0.5 (products are monotone in the
    magnitude, so the patterns at or below it are a prefix of the table): codes are |w| > it, signed."""
    with np.errstate(over="ignore"):
        return int(np.count_nonzero(_BF16_MAGNITUDES * np.float32(s) <= np.float32(0.5))) - 1


def _ternarize_bf16_native(w: torch.Tensor, name: str | None) -> Ternary | None:
    """`ternarize_bf16_bits` of a contiguous bf16 tensor."""
    return ternarize_bf16_bits(w.reshape(-1).view(torch.int16).numpy(), tuple(w.shape), name)


def ternarize_bf16_bits(bits: np.ndarray, shape: tuple[int, ...], name: str | None = None) -> Ternary | None:
    """The float32 recipe for a bf16 weight given as its bit patterns (int16 or uint16, C-contiguous, any shape of
    `shape`'s size), in two C passes (`bitconv/_ckernels.c`) and no torch: torch's float32 sum of |w| in torch's own
    order (`torchsum`'s replay, |w| made in registers), then the codes from the magnitude threshold. The same bytes
    as `ternarize` of the tensor (tests check it against the recipe written in torch); None without the kernels or
    where torch's order cannot be replayed here (the caller then ternarizes a torch tensor)."""
    ck = native.kernels()
    if ck is None:
        return None
    threads, lanes = torchsum.reduction_order()
    if lanes is None:
        return None
    flat = bits.reshape(-1).view(np.int16)
    coder = BlockCoder(_inverse_mean(np.float32(ck.abs_sum_bf16(flat, threads, lanes)), flat.size, name, shape))
    codes = np.empty(shape, dtype=np.int8)
    coder.bits(flat, codes.reshape(-1))
    return Ternary(codes, coder.scale)


def ternarize_bf16_stream(read_bits: Callable[[int, int], np.ndarray], shape: tuple[int, ...],
                          name: str | None = None, block: int | None = None) -> Ternary | None:
    """`ternarize_bf16_bits` of a weight read a block at a time (`read_bits(start, count)`: those elements' bit
    patterns, valid until the next call), in two passes (the sum in torch's order, then the codes): memory is the
    codes plus a block, whatever the weight's size, and no torch. None where `ternarize_bf16_bits` would be."""
    block = block or BLOCK_ELEMS
    n = int(np.prod(shape))
    total = torchsum.exact_abs_sum_bf16(lambda start, count: read_bits(start, count).view(np.int16), n, piece=block)
    if total is None:  # no kernels, or no replayable order
        return None
    coder = BlockCoder(_inverse_mean(total, n, name, shape))
    codes = np.empty(n, dtype=np.int8)
    for start in range(0, n, block):
        count = min(block, n - start)
        coder.bits(read_bits(start, count), codes[start:start + count])
    return Ternary(codes.reshape(shape), coder.scale)


def _inverse_mean(total: np.float32, n: int, name: str | None, shape: tuple[int, ...]) -> np.float32:
    """s = 1 / max(mean |w|, EPS) from torch's float32 sum of |w|, as torch computes it (`1.0 / m.clamp(min=EPS)`:
    a float32 reciprocal); a mean that is not finite is refused naming the tensor."""
    m = mean_of_sum(total, n)
    _check_finite(m, name, shape)
    return np.float32(1) / np.maximum(m, np.float32(EPS))


def mean_of_sum(total: np.float32, n: int) -> np.float32:
    """torch's `mean` from its float32 sum: `sum.div_(n)`, a float32 division by n rounded to float32 first (the
    integer is a wrapped scalar of the float32 op)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.float32(total) / np.float32(n)


def _ternarize_bf16(w: torch.Tensor, name: str | None) -> Ternary:
    # ref: onebitllms utils/quantization_utils.py weight_quant, run on bf16 tensors
    w16 = w.to(torch.bfloat16)
    m = w16.abs().mean()
    _check_finite(m, name, w.shape)
    s = 1.0 / m.clamp(min=EPS)
    codes = (w16 * s).round().clamp(-1, 1).to(torch.int8)
    return Ternary(codes.numpy(), np.float32(1.0) / np.float32(s.float().item()))


def _check_finite(m: torch.Tensor | np.float32, name: str | None, shape: tuple[int, ...]) -> None:
    if not np.isfinite(float(m)):
        raise SourceError("weight contains NaN or Inf values; it cannot be ternarized", tensor=name,
                          shape=tuple(shape), hint="check the checkpoint that produced it")


# Weights above STREAM_MIN_ELEMS elements are ternarized from BLOCK_ELEMS-element blocks in two passes, so the
# float32 copy of a whole projection (940 MB for a 70B FFN matrix) is never made. Below it the one-pass path is faster.
STREAM_MIN_ELEMS = 1 << 25
BLOCK_ELEMS = 1 << 22

BlockReader = Callable[[int, int], "torch.Tensor"]  # (first element, count) -> 1-D float tensor, valid until next call


def rows_block_reader(rows: Callable[[int, int], torch.Tensor], cols: int,
                      dtype: torch.dtype | None = None) -> BlockReader:
    """A `BlockReader` over a reader of rows [r0, r1) of a 2-D tensor with `cols` columns: the rows covering the
    element range are read and cut (an empty range reads nothing)."""
    def read(start: int, count: int) -> torch.Tensor:
        if count == 0:
            return torch.empty(0, dtype=torch.bfloat16 if dtype is None else dtype)
        r0, r1 = start // cols, -(-(start + count) // cols)
        off = start - r0 * cols
        return rows(r0, r1).reshape(-1)[off:off + count]

    return read

# bf16 weights of at least CHUNKED_MIN_ELEMS elements held in memory (a mapped master) take the two-pass path too,
# in CHUNK_ELEMS-element pieces: |w| is made a cache-sized piece at a time and summed in torch's order at once
# (`torchsum`), so the float32 copy of the whole weight is never written and read back; the codes are made a piece
# at a time as well (three passes over a piece that stays in cache instead of over the whole tensor).
CHUNKED_MIN_ELEMS = 1 << 20
CHUNK_ELEMS = 1 << 18


def _bf16_magnitudes(w: torch.Tensor, out: np.ndarray) -> np.ndarray:
    """|w| as float32 into `out` (`torchsum.bf16_magnitudes` of its bits; numpy on this thread, so torch's intra-op
    pool is not woken for each piece)."""
    return torchsum.bf16_magnitudes(w.view(torch.int16).numpy(), out)


def ternarize_blocks(read: BlockReader, shape: tuple[int, ...], *, name: str | None = None,
                     block: int | None = None, ws: Workspace | None = None, compute: str = "float32") \
        -> Ternary | None:
    """The recipe of `ternarize`, reading the weight a block at a time in two passes: mean |w| first (torch's
    float32 reduction order replayed exactly, `bitconv.torchsum`), codes second. Bit-identical to
    `ternarize(whole, compute)` (tests check it on awkward sizes); memory is the codes plus a few blocks.

    Returns None when this torch build's reduction order cannot be replayed: the caller ternarizes the whole tensor.
    """
    block = block or BLOCK_ELEMS
    ws = ws or _DEFAULT_WS
    s = block_scale(read, shape, name=name, block=block, ws=ws, compute=compute)
    if s is None:
        return None
    n = int(np.prod(shape))
    codes = np.empty(n, dtype=np.int8)
    coder = BlockCoder(s, compute, ws)
    for start in range(0, n, block):
        count = min(block, n - start)
        coder(read(start, count), codes[start:start + count])
    return Ternary(codes.reshape(shape), coder.scale)


def block_scale(read: BlockReader, shape: tuple[int, ...], *, name: str | None = None, block: int | None = None,
                ws: Workspace | None = None, compute: str = "float32") -> np.float32 | torch.Tensor | None:
    """`ternarize`'s s = 1 / max(mean |w|, EPS) (float32; a bf16 tensor for compute="bfloat16"), from one pass of
    blocks summed in torch's reduction order. None when that order cannot be replayed on this torch build."""
    block = block or BLOCK_ELEMS
    ws = ws or _DEFAULT_WS
    n = int(np.prod(shape))
    if compute == "bfloat16":
        if not _bf16_mean_replayable():
            return None

        def magnitudes16(start: int, count: int) -> np.ndarray:
            a = ws.get("blk_abs", count, torch.float32)
            a.copy_(read(start, count).to(torch.bfloat16).abs())
            return a.numpy()

        total = torchsum.exact_sum(magnitudes16, n, piece=block)
        if total is None:
            return None
        m = torch.from_numpy(np.array(total, dtype=np.float32)).div_(n).to(torch.bfloat16)
        _check_finite(m, name, torch.Size(shape))
        return 1.0 / m.clamp(min=EPS)

    scratch: dict[str, np.ndarray] = {}

    def magnitudes(start: int, count: int) -> np.ndarray:
        w = read(start, count)
        buf = scratch.get("abs")
        if buf is None or buf.size < count:
            buf = scratch["abs"] = ws.get("blk_abs", max(count, min(block, n)), torch.float32).numpy()
        out = buf[:count]
        if w.dtype == torch.bfloat16:
            return _bf16_magnitudes(w, out)
        a = torch.from_numpy(out)
        a.copy_(w)
        return a.abs_().numpy()

    total = None
    if n and read(0, 1).dtype == torch.bfloat16:  # rows summed in C as they are read, where the kernels are built
        total = torchsum.exact_abs_sum_bf16(lambda start, count: read(start, count).view(torch.int16).numpy(), n,
                                            piece=block)
    if total is None:
        total = torchsum.exact_sum(magnitudes, n, piece=block)
    if total is None:
        return None
    return _inverse_mean(total, n, name, tuple(shape))


class BlockCoder:
    """The codes of `ternarize` for blocks of one weight, given its `block_scale` s (elementwise: any split of the
    weight into blocks gives the same codes). `scale` is the magnitude scale `ternarize` returns with them."""

    def __init__(self, s: np.float32 | torch.Tensor, compute: str = "float32", ws: Workspace | None = None) -> None:
        self.s, self.compute, self.ws = s, compute, ws or _DEFAULT_WS
        if compute == "bfloat16":
            self.scale = np.float32(1.0) / np.float32(s.float().item())
        else:
            self.scale = np.float32(1) / np.float32(s)  # torch's 1.0 / s: a float32 reciprocal
        self._tb: tuple[np.int16, np.uint16] | None = None

    def __call__(self, w: torch.Tensor, out: np.ndarray) -> np.ndarray:
        """Codes of the 1-D float block `w` into the int8 array `out` (same length); returns `out`."""
        count = out.size
        if self.compute == "bfloat16":
            out[...] = (w.to(torch.bfloat16) * self.s).round().clamp(-1, 1).to(torch.int8).numpy()
            return out
        if w.dtype == torch.bfloat16:
            return self.bits(w.view(torch.int16).numpy(), out)
        pos = self.ws.get("blk_pos", count, torch.bool).numpy()[:count]
        neg = self.ws.get("blk_neg", count, torch.bool).numpy()[:count]
        x = self.ws.get("blk_w", count, torch.float32)[:count]
        x.copy_(w)
        x.mul_(self.s)
        torch.gt(x, 0.5, out=torch.from_numpy(pos))
        torch.lt(x, -0.5, out=torch.from_numpy(neg))
        np.subtract(pos.view(np.int8), neg.view(np.int8), out=out)
        return out

    def bits(self, bits: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The float32 recipe's codes of a block given as bf16 bit patterns (int16 or uint16, 1-D) into `out`: one
        threshold on the magnitude bits (`_bf16_threshold`), in one C pass, or in numpy with the workspace's
        buffers (the same codes); no torch tensor."""
        if self._tb is None:
            t = _bf16_threshold(self.s)
            self._tb = (np.int16(t), np.uint16(0x8000 + t))
        tb, tn = self._tb
        signed = bits.view(np.int16)
        ck = native.kernels()
        if ck is not None:
            ck.codes_bf16(signed, out, int(tb))
            return out
        count = out.size
        pos = self.ws.get("blk_pos", count, torch.bool).numpy()[:count]
        neg = self.ws.get("blk_neg", count, torch.bool).numpy()[:count]
        np.greater(signed, tb, out=pos)  # positive and above the threshold (negative patterns are < 0 as int16)
        np.greater(signed.view(np.uint16), tn, out=neg)  # sign bit set and magnitude above the threshold
        np.subtract(pos.view(np.int8), neg.view(np.int8), out=out)
        return out


_BF16_MEAN_OK: list[bool] = []


def _bf16_mean_replayable() -> bool:
    """Whether this torch build's bf16 `mean` is bf16(float32 sum / n) with the float32 sum in the order
    `torchsum` replays (true since torch 2.1: CPU half-type means go through a float32 sum); checked once on probes."""
    if not _BF16_MEAN_OK:
        g = torch.Generator().manual_seed(16)
        ok = True
        for n in torchsum.PROBE_SIZES:
            w = (torch.randn(n, generator=g) * 0.02).bfloat16()
            a = w.abs().float().numpy()
            tot = torchsum.exact_sum(lambda s, c, a=a: a[s:s + c], n, piece=1 << 16)
            if tot is None or torch.from_numpy(np.array(tot, dtype=np.float32)).div_(n).to(torch.bfloat16) \
                    .view(torch.int16).item() != w.abs().mean().view(torch.int16).item():
                ok = False
                break
        _BF16_MEAN_OK.append(ok)
    return _BF16_MEAN_OK[0]


def dequantize(t: Ternary, dtype: torch.dtype | None = None) -> torch.Tensor:
    """codes * scale, computed in float32 and rounded once to `dtype` (default bfloat16)."""
    dtype = torch.bfloat16 if dtype is None else dtype
    return (torch.from_numpy(t.codes).to(torch.float32) * float(t.scale)).to(dtype)


# ------------------------------------------------------------------------------------------------------ lifting
# The inverse direction: a float weight that ternarizes back to given codes and magnitude scale. Both forms put the
# non-zeros at `lift_magnitude`: online_lift as a Ternary of that one magnitude (`unpack --values online`), lift as
# bf16 weights split between the two bf16 neighbours of it (Nanotron latents, where mean|W| must match closely).


def lift_magnitude(codes: np.ndarray | torch.Tensor, scale: float) -> float | None:
    """b = scale * n / nnz: online WeightQuant re-derives mean|W| = b * nnz / n = scale and every ±b * (1/scale)
    rounds back to ±1. None when every code is zero."""
    a = np.asarray(codes)
    nnz = int(np.count_nonzero(a))
    return None if nnz == 0 else float(scale) * a.size / nnz


def online_lift(t: Ternary) -> Ternary:
    """Codes with the magnitude transformers' online WeightQuant turns back into `t`'s scale.

    Online mode re-derives the scale as mean|W|. For W = codes * b that is p * b (p = fraction of non-zero codes),
    while every non-zero W * s = ±1/p rounds back to ±1. Storing b = scale / p therefore gives back the same codes
    and the same scale (to bf16 rounding): the unpacked model *is* the packed model when loaded online.
    """
    b = lift_magnitude(t.codes, t.scale)
    return t if b is None else Ternary(t.codes, np.float32(b))


def lift(codes: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    """A bf16 weight whose absmean ternarization gives exactly `codes` and (to ~1e-7) magnitude `scale`.

    Nonzeros get one of two adjacent bf16 magnitudes around `lift_magnitude` (scale * n / nnz), so that mean|W| ==
    scale as closely as float32 allows; each |W| / mean|W| >= 1 rounds to ±1 (in float32 and in bf16 arithmetic),
    zeros stay 0. The first k non-zeros (row-major) take the upper magnitude. `Lifter` gives the same bytes a block
    at a time.
    # ref: spec nanotron.md §3.3 (W_latent = W_tern / (s · mean|W_tern|)), in bitconv's magnitude convention
    """
    c = torch.as_tensor(np.asarray(codes)).to(torch.int8)
    lifter = Lifter(c.numel(), int(torch.count_nonzero(c)), scale)
    return lifter(c.reshape(-1)).reshape(c.shape)


class Lifter:
    """`lift` of a tensor of `n` codes, `nnz` of them non-zero, fed as consecutive row-major blocks (a running
    count of the non-zeros seen decides which take the upper magnitude): the blocks concatenated are `lift`'s."""

    def __init__(self, n: int, nnz: int, scale: float) -> None:
        self.n, self.nnz, self.seen = n, nnz, 0
        self.zero = nnz == 0
        if self.zero:
            return
        target = float(scale) * n / nnz  # lift_magnitude
        lo = torch.tensor(target, dtype=torch.float32).to(torch.bfloat16)
        if float(lo) > target:
            lo = torch.nextafter(lo, torch.tensor(0.0, dtype=torch.bfloat16))
        hi = torch.nextafter(lo, torch.tensor(float("inf"), dtype=torch.bfloat16))
        step = float(hi) - float(lo)
        self.k = min(max(round((target - float(lo)) * nnz / step), 0), nnz) if step > 0 else 0
        self.lo, self.hi = lo, hi

    def __call__(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The bf16 weights of the next block of codes (any shape; row-major order): ±lo or ±hi as bit patterns,
        in a few vectorized passes (the block holding the k-th non-zero is split at it)."""
        c = codes.numpy() if is_tensor(codes) else np.asarray(codes)
        flat = c.reshape(-1).astype(np.int8, copy=False)
        if self.zero:
            return torch.zeros(c.shape, dtype=torch.bfloat16)
        nnz = int(np.count_nonzero(flat))
        upper = min(max(self.k - self.seen, 0), nnz)  # non-zeros of this block that take the upper magnitude
        self.seen += nnz
        out = np.empty(flat.size, dtype=np.uint16)
        if 0 < upper < nnz:
            cut = int(np.flatnonzero(flat)[upper - 1]) + 1
            self._bits(flat[:cut], self.hi, out[:cut])
            self._bits(flat[cut:], self.lo, out[cut:])
        else:
            self._bits(flat, self.hi if upper else self.lo, out)
        return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).reshape(c.shape)

    @staticmethod
    def _bits(codes: np.ndarray, mag: torch.Tensor, out: np.ndarray) -> None:
        signed_bits(codes, int(mag.view(torch.int16).item()) & 0xFFFF, out)


def signed_bits(codes: np.ndarray, mag_bits: int, out: np.ndarray) -> np.ndarray:
    """out (uint16) = the bf16 bits of codes * m for the bf16 magnitude with bits `mag_bits`: +0 for a zero code,
    the sign bit set for -1. No float temporaries."""
    c = codes.reshape(-1)
    np.multiply(c != 0, np.uint16(mag_bits), out=out, dtype=np.uint16)
    out |= (c < 0).view(np.uint8).astype(np.uint16) << np.uint16(15)
    return out


def dequantized_bits(codes: np.ndarray, scale: float) -> np.ndarray:
    """`dequantize(Ternary(codes, scale))`'s bf16 bits (uint16, codes' shape) without its float32 temporaries:
    codes * float32(scale) is exactly ±float32(scale) or +0, rounded once to bf16."""
    mag = torch.tensor(float(scale), dtype=torch.float32).to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
    out = np.empty(codes.shape, dtype=np.uint16)
    signed_bits(np.asarray(codes, dtype=np.int8), mag, out.reshape(-1))
    return out
