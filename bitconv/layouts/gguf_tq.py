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

from bitconv.errors import LayoutError
from bitconv.layouts import Layout
from bitconv.tensors import FieldSpec, Ternary

QK = 256  # weights per block
PACK_BLOCKS = 1 << 14  # 256-weight blocks packed per step (4 MiB of codes)
_POW3 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)
_DEC3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


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
    block_bytes: ClassVar[int]

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        self._require_2d(shape, tensor)
        m, k = shape
        if k % QK:
            raise LayoutError(f"{self.ggml_type} needs in_features % 256 == 0 (got {k}); blocks run along rows",
                              tensor=tensor, shape=shape,
                              hint="leave this tensor unconverted or pick another --to format")
        return {"data": FieldSpec((m * k // QK * self.block_bytes,), "U8")}

    def gguf_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape))

    def _encode(self, q: np.ndarray) -> np.ndarray:
        """trits q = t + 1, uint8 [n_blocks, 256] -> [n_blocks, block_bytes - 2]."""
        raise NotImplementedError

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        """[n_blocks, block_bytes - 2] -> trits uint8 [n_blocks, 256]."""
        raise NotImplementedError

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        self.spec(t.shape)
        codes = np.asarray(t.codes, dtype=np.int8).reshape(-1, QK)
        out = np.empty((codes.shape[0], self.block_bytes), dtype=np.uint8)
        d16 = None
        for a in range(0, codes.shape[0], PACK_BLOCKS):  # a block of rows at a time: temporaries stay small
            c = codes[a:a + PACK_BLOCKS]
            o = out[a:a + PACK_BLOCKS]
            o[:, :-2] = self._encode((c + 1).view(np.uint8))
            nonzero = (c != 0).any(axis=1)
            o[:, -2:] = 0
            if nonzero.any():
                d16 = _fp16_d(t.scale, None) if d16 is None else d16
                o[nonzero, -2:] = d16
        return {"data": out.reshape(-1)}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> Ternary:
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
        from bitconv.quant import EPS  # quant imports torch: only when a tensor is decoded

        scale = np.float32(ds[0]) if ds.size else np.float32(EPS)
        return Ternary(codes.reshape(shape), scale)


class GGUFTQ10(_GGUFTQ, name="gguf-tq1-0", container="gguf"):
    description = "upstream ggml TQ1_0 (type 34): 5 trits per byte, 256-weight blocks of 54 bytes, fp16 d"
    ggml_type: ClassVar[str] = "TQ1_0"
    block_bytes: ClassVar[int] = 54

    def _encode(self, q: np.ndarray) -> np.ndarray:
        n = q.shape[0]
        w = q.astype(np.uint16)
        qs0 = (w[:, :160].reshape(n, 5, 32) * _POW3.reshape(1, 5, 1)).sum(axis=1, dtype=np.uint16)
        qs1 = (w[:, 160:240].reshape(n, 5, 16) * _POW3.reshape(1, 5, 1)).sum(axis=1, dtype=np.uint16)
        qh = (w[:, 240:].reshape(n, 4, 4) * _POW3[:4].reshape(1, 4, 1)).sum(axis=1, dtype=np.uint16)
        v = np.concatenate([qs0, qs1, qh], axis=1)
        return ((v * 256 + 242) // 243).astype(np.uint8)

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        n = qs.shape[0]

        def trits(b: np.ndarray, k: int) -> np.ndarray:  # [n, B] bytes -> [n, k*B], trit n-major
            x = (b[:, None, :] * _DEC3[:k].reshape(1, k, 1)).astype(np.uint16)  # uint8 product wraps mod 256
            return ((x * 3) >> 8).astype(np.uint8).reshape(n, -1)

        return np.concatenate([trits(qs[:, :32], 5), trits(qs[:, 32:48], 5), trits(qs[:, 48:52], 4)], axis=1)


class GGUFTQ20(_GGUFTQ, name="gguf-tq2-0", container="gguf"):
    description = "upstream ggml TQ2_0 (type 35): 2-bit trits, 256-weight blocks of 66 bytes, fp16 d"
    ggml_type: ClassVar[str] = "TQ2_0"
    block_bytes: ClassVar[int] = 66

    def _encode(self, q: np.ndarray) -> np.ndarray:
        g = q.reshape(q.shape[0], 2, 4, 32)
        return (g[:, :, 0] | (g[:, :, 1] << 2) | (g[:, :, 2] << 4) | (g[:, :, 3] << 6)).reshape(q.shape[0], 64)

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        g = (qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
        if bool((g == 3).any()):
            raise LayoutError("TQ2_0 data holds the 2-bit value 3, which is not a trit",
                              hint="the file is corrupt or not TQ2_0")
        return g.reshape(-1, QK)
