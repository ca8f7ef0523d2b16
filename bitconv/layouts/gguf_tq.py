"""Upstream ggml's ternary types TQ1_0 (id 34) and TQ2_0 (id 35): 256-weight blocks, each with an fp16 `d`.

Blocks run along each row (in_features = ne0, which must be a multiple of 256), rows in order; trit q = t + 1.

| field  | shape           | dtype | meaning                                                                       |
|--------|-----------------|-------|-------------------------------------------------------------------------------|
| `data` | [M*K/256 * 54]  | U8    | TQ1_0 blocks: qs[48] base-3 packed trits, qh[4], d (fp16 LE) at bytes 52..53  |
| `data` | [M*K/256 * 66]  | U8    | TQ2_0 blocks: qs[64] 2-bit trits, d (fp16 LE) at bytes 64..65                 |

TQ2_0: element e of a block sits in byte 32*(e//128) + e%32, bits 2*((e%128)//32) .. +1.
TQ1_0: five trits per byte as v = sum_n q_n * 3^(4-n) stored as ceil(v*256/243) = (v*256 + 242) // 243, decoded as
trit n = ((byte * 3^n) mod 256) * 3 >> 8. qs[0:32] hold elements e < 160 (byte e%32, n = e//32); qs[32:48] hold
160 <= e < 240 (byte 32 + (e-160)%16, n = (e-160)//16); qh[0:4] hold e >= 240 (byte (e-240)%4, n = (e-240)//4, four
trits, the fifth slot 0).

`d` is what gguf-py / ggml's quantizer computes on W = codes * scale: d = fp16(max|W| of the block). So every block
with a non-zero code stores fp16(scale), and **an all-zero block stores d = 0** (bitconv keeps this, so the bytes equal
`gguf.quants.quantize(codes * scale, TQ*_0)` and the upstream converter's files; it decodes to the same zeros).
Unpack therefore reads the per-tensor scale from any block with d != 0, as float32(fp16(scale)): relative error
<= 2^-11 against the float32 scale (exact for bf16 scales >= 2^-17). A tensor whose blocks are all zero has no
stored scale; unpack returns `bitconv.quant.EPS` (1e-5), the scale `ternarize` gives an all-zero weight. Non-zero
`d` values that differ between blocks (a TQ file quantized from non-ternary weights) raise LayoutError; codes in a
block with d = 0 are returned as 0, which is what the runtime computes.

Worked example (TQ1_0): trits (q0..q4) = (2, 1, 0, 1, 2) -> v = 162 + 27 + 0 + 3 + 2 = 194 -> byte
(194*256 + 242) // 243 = 205; decoding 205: n=0 -> 205*3 >> 8 = 2, n=1 -> (615 mod 256 = 103)*3 >> 8 = 1, ...
# ref: gguf-py 0.19.0 gguf/quants.py TQ1_0 / TQ2_0 (l.575-653); ggml-quants.c quantize_row_tq{1,2}_0_ref;
#      spec gguf-upstream.md §1.2-1.4, §3.1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from bitconv.core import native
from bitconv.core.errors import LayoutError
from bitconv.core.tensors import EPS, FieldSpec, Ternary
from bitconv.layouts.registry import Layout
from bitconv.layouts.runtimes import BITNET_2024, BITNET_2026_01, BITNET_2026_07, IK_LLAMA, LLAMA_CPP

QK = 256  # weights per block
PACK_BLOCKS = 2048  # 256-weight blocks packed per step (512 KiB of codes: the chunk stays in cache)
_POW3 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)
_DEC3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_TQ1_BYTE = ((np.arange(256, dtype=np.uint32) * 256 + 242) // 243).astype(np.uint8)  # v (0..242) -> stored byte


def _fp16_d(scale: float, tensor: str | None) -> np.ndarray:
    """fp16 bytes of the scale, as ggml stores d = max|codes*scale| for a block with a non-zero code."""
    s = np.float32(scale)
    with np.errstate(over="ignore"):
        d = np.array([s], dtype=np.float32).astype(np.float16)
    if not (np.isfinite(s) and s > 0 and np.isfinite(d[0]) and d[0] > 0):
        raise LayoutError(f"TQ blocks store the scale as fp16; scale {float(s)!r} has no positive finite fp16 value",
                          tensor=tensor, hint="the scale must lie in (3e-8, 65504]")
    return d.view(np.uint8)


class _GGUFTQ(Layout):
    ggml_type: ClassVar[str]
    scale_dtype = "F16"  # one fp16 d per 256-weight block
    vec_dot_type = "Q8_K"  # llama.cpp quantizes a matmul's input to Q8_K for these weights (ggml type_traits)
    block_bytes: ClassVar[int]

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        self._require_2d(shape, tensor)
        m, k = shape
        if k % QK:
            raise LayoutError(f"{self.ggml_type} needs in_features % 256 == 0 (got {k}); blocks run along rows",
                              tensor=tensor, shape=shape,
                              hint="leave this tensor unconverted or pick another --to format")
        return {"data": FieldSpec((self.ggml_nbytes(self.gguf_dims(shape)),), "U8")}

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        """[n_blocks, block_bytes - 2] -> trits uint8 [n_blocks, 256]."""
        raise NotImplementedError

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        """A few thousand blocks at a time, each chunk transposed to word-major order ([32, blocks] of uint64: word
        j holds elements 8j..8j+7 of every block), so every arithmetic pass runs over long contiguous rows and the
        base-3 / 2-bit sums are done eight trits per uint64 operation (no byte ever overflows: values stay <= 242)."""
        self.spec(t.shape)
        codes = np.ascontiguousarray(t.codes, dtype=np.int8).reshape(-1, QK)
        n = codes.shape[0]
        out = np.empty((n, self.block_bytes), dtype=np.uint8)
        ck = native.kernels()
        if ck is not None:  # the same block bytes in one C pass (bitconv/_ckernels.c), then d where a code is non-zero
            flat, cflat = out.reshape(-1), codes.reshape(-1)
            self._encode_native(ck, cflat, flat)
            try:
                d = int(_fp16_d(t.scale, None).view(np.uint16)[0])
            except LayoutError:  # refused only where a block needs d (an all-zero tensor stores none)
                if ck.block_d(cflat, flat, QK, self.block_bytes, 0):
                    raise
                return {"data": flat}
            ck.block_d(cflat, flat, QK, self.block_bytes, d)
            return {"data": flat}
        words = codes.view(np.uint64)  # [n, 32]
        b = min(PACK_BLOCKS, n)
        ctb = np.empty((QK // 8, b), dtype=np.uint64)
        res = np.empty((b, (self.block_bytes - 2 + 7) // 8), dtype=np.uint64)
        nonzero = np.empty(n, dtype=bool)
        for a in range(0, n, PACK_BLOCKS):  # a chunk of blocks at a time: temporaries stay cache-sized
            m = min(PACK_BLOCKS, n - a)
            ct = ctb[:, :m]
            np.copyto(ct, words[a:a + m].T)
            np.not_equal(np.bitwise_or.reduce(ct, axis=0), 0, out=nonzero[a:a + m])  # a block with a non-zero code
            q8 = ct.view(np.uint8)
            np.add(q8, 1, out=q8)  # trits q = t + 1 (bytewise: no carries)
            r = res[:m]
            np.copyto(r, self._encode_words(ct).T)
            self._finish_into(r.view(np.uint8)[:, :self.block_bytes - 2], out[a:a + m, :-2])
        return {"data": self._finish_scales(out, nonzero, t.scale)}

    @staticmethod
    def _finish_scales(out: np.ndarray, nonzero: np.ndarray, scale: np.float32) -> np.ndarray:
        """Each block's fp16 d: the scale where the block holds a non-zero code, else 0 (as the reference writes)."""
        out[:, -2:] = 0
        if nonzero.any():
            out[nonzero, -2:] = _fp16_d(scale, None)
        return out.reshape(-1)

    def _encode_native(self, ck, codes: np.ndarray, out: np.ndarray) -> None:
        """Every block's payload (all but the trailing d) by the C kernel, into `out` (blocks of block_bytes)."""
        raise NotImplementedError

    def _encode_words(self, ct: np.ndarray) -> np.ndarray:
        """Trits in word-major order [32, m] (uint64, 8 trits each) -> the block payload words [k, m]."""
        raise NotImplementedError

    def _finish_into(self, v: np.ndarray, out: np.ndarray) -> None:
        out[...] = v

    def _encode(self, q: np.ndarray) -> np.ndarray:
        """trits q = t + 1, uint8 [n_blocks, 256] -> [n_blocks, block_bytes - 2] (the same bytes as `pack`)."""
        ct = np.ascontiguousarray(np.ascontiguousarray(q, dtype=np.uint8).view(np.uint64).T)
        v = np.ascontiguousarray(self._encode_words(ct).T).view(np.uint8)[:, :self.block_bytes - 2]
        out = np.empty((q.shape[0], self.block_bytes - 2), dtype=np.uint8)
        self._finish_into(v, out)
        return out

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        (nbytes,) = self.spec(shape)["data"].shape
        data = np.asarray(fields["data"], dtype=np.uint8).reshape(-1)
        if data.size != nbytes:
            raise LayoutError(f"{self.ggml_type} data is {data.size} bytes, expected {nbytes}", shape=tuple(shape))
        blocks = data.reshape(-1, self.block_bytes)
        d = np.ascontiguousarray(blocks[:, -2:]).view(np.float16).reshape(-1)
        codes = self._decode(blocks[:, :-2]).astype(np.int8) - 1
        live = d != 0
        codes[~live] = 0
        ds = np.unique(d[live])
        if ds.size > 1:
            raise LayoutError(f"{self.ggml_type} blocks carry {ds.size} different scales d (e.g. {float(ds[0])!r}, "
                              f"{float(ds[-1])!r}); this is not a ternary tensor with one scale", shape=tuple(shape),
                              hint="it was quantized from non-ternary weights")
        scale = np.float32(ds[0]) if ds.size else np.float32(EPS)
        return Ternary(codes.reshape(shape), scale)


class GGUFTQ10(_GGUFTQ, name="gguf-tq1-0", container="gguf"):
    description = "upstream ggml TQ1_0 (type 34): 5 trits per byte, 256-weight blocks of 54 bytes, fp16 d"
    ggml_type: ClassVar[str] = "TQ1_0"
    ggml_type_id: ClassVar[int] = 34
    file_type: ClassVar[int] = 36
    block_bytes: ClassVar[int] = 54
    ggml_block = (QK, 54)
    runtime_support = {"TQ1_0": {LLAMA_CPP: "", BITNET_2024: "", BITNET_2026_01: "", BITNET_2026_07: "",
                                 IK_LLAMA: "no type 34 in ik_llama.cpp: the loader dies with SIGFPE"}}

    def _encode_words(self, ct: np.ndarray) -> np.ndarray:
        """v = sum_n q_n * 3^(4-n) by Horner's rule, eight bytes per uint64 op (every partial value <= 242, so no
        byte carries into the next): words 0..3 <- elements 0..159 (digit n = words 4n..4n+3), words 4..5 <- 160..239
        (digit n = words 20+2n, 21+2n), word 6 (low half) <- 240..255 (digit n = 32-bit half n of words 30..31)."""
        m = ct.shape[1]
        v = np.empty((7, m), dtype=np.uint64)

        def horner(digits: list[np.ndarray], dst: np.ndarray) -> None:
            np.copyto(dst, digits[0])
            for d in digits[1:]:
                np.multiply(dst, 3, out=dst)
                np.add(dst, d, out=dst)

        horner([ct[4 * i:4 * i + 4] for i in range(5)], v[0:4])
        horner([ct[20 + 2 * i:22 + 2 * i] for i in range(5)], v[4:6])
        lo, hi = np.uint64(0xFFFFFFFF), np.uint64(32)
        horner([ct[30] & lo, ct[30] >> hi, ct[31] & lo, ct[31] >> hi], v[6])
        np.multiply(v[6], 3, out=v[6])  # the fifth trit slot of qh is 0
        return v

    def _encode_native(self, ck, codes: np.ndarray, out: np.ndarray) -> None:
        ck.pack_tq1(codes, out, self.block_bytes)

    def _finish_into(self, v: np.ndarray, out: np.ndarray) -> None:
        """byte = (v*256 + 242) // 243, in uint16 (v*256 + 242 <= 62194)."""
        t = np.left_shift(v, 8, dtype=np.uint16)
        np.add(t, 242, out=t)
        np.floor_divide(t, 243, out=t)
        np.copyto(out, t, casting="unsafe")

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        n = qs.shape[0]

        def trits(b: np.ndarray, k: int) -> np.ndarray:  # [n, B] bytes -> [n, k*B], trit n-major
            x = (b[:, None, :] * _DEC3[:k].reshape(1, k, 1)).astype(np.uint16)  # uint8 product wraps mod 256
            return ((x * 3) >> 8).astype(np.uint8).reshape(n, -1)

        return np.concatenate([trits(qs[:, :32], 5), trits(qs[:, 32:48], 5), trits(qs[:, 48:52], 4)], axis=1)


class GGUFTQ20(_GGUFTQ, name="gguf-tq2-0", container="gguf"):
    description = "upstream ggml TQ2_0 (type 35): 2-bit trits, 256-weight blocks of 66 bytes, fp16 d"
    ggml_type: ClassVar[str] = "TQ2_0"
    ggml_type_id: ClassVar[int] = 35
    file_type: ClassVar[int] = 37
    block_bytes: ClassVar[int] = 66
    ggml_block = (QK, 66)
    runtime_support = {"TQ2_0": {LLAMA_CPP: "", BITNET_2024: "", BITNET_2026_01: "", BITNET_2026_07: "",
                                 IK_LLAMA: "no type 35 in ik_llama.cpp: the loader dies with SIGFPE"}}
    deploy_check = True

    def _encode_native(self, ck, codes: np.ndarray, out: np.ndarray) -> None:
        ck.pack2(codes, out, 32, 0, 2, self.block_bytes, 0)  # two 128-code halves of 32 bytes, then d

    def _encode_words(self, ct: np.ndarray) -> np.ndarray:
        """byte = q_0 | q_1 << 2 | q_2 << 4 | q_3 << 6 over the four 32-element groups of each 128-element half:
        half h, group i is words 16h + 4i .. +3; eight bytes per uint64 op (q <= 2, so q << 6 stays in its byte)."""
        v = np.empty((8, ct.shape[1]), dtype=np.uint64)
        t = np.empty((4, ct.shape[1]), dtype=np.uint64)
        for h in (0, 1):
            g = ct[16 * h:16 * h + 16]
            o = v[4 * h:4 * h + 4]
            np.left_shift(g[12:16], np.uint64(6), out=o)
            for i in (2, 1):
                np.left_shift(g[4 * i:4 * i + 4], np.uint64(2 * i), out=t)
                np.bitwise_or(o, t, out=o)
            np.bitwise_or(o, g[0:4], out=o)
        return v

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        g = (qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
        if bool((g == 3).any()):
            raise LayoutError("TQ2_0 data holds the 2-bit value 3, which is not a trit",
                              hint="the file is corrupt or not TQ2_0")
        return g.reshape(-1, QK)
