"""ik_llama.cpp's IQ1_BN (ggml type 134, file type 136): an fp16 row scale, then base-3 trits, 64 weights in 13 bytes.

| field  | shape                  | dtype | meaning                                                                  |
|--------|------------------------|-------|--------------------------------------------------------------------------|
| `data` | [M * (2 + 13*K/64)]    | U8    | M rows of 2 + 13*K/64 bytes each, row r laid out as:                     |
|        |   [0, 2)               |       |   fp16 LE row scale d = fp16(m) (round to nearest even; 0 on a zero row)  |
|        |   [2 + 13b, 2 + 13b+13)|       |   block b = elements [64b, 64b+64): ql[0..11], extra (see below)         |

Inside a block the 64 elements form 4 groups g of 16. Trit t = code + 1. For k = 0..2, byte ql[3g + k] holds the
5 elements 16g + 5k + i (i = 0..4) as idx = sum_i 3^i * t (element 16g+5k is the LEAST significant trit), stored as
`(256*idx + 242) // 243` (= ceil(256*idx/243), 0..255). The 16th element of each group goes to `extra`:
v = sum_g 3^g * t[16g + 15], stored the same way. Decoding trit position i of a byte q: v = (q * 3^(4-i)) mod 256,
t = (3*v) >> 8. All 243 values survive the map. TQ1_0 uses the same byte map but another element order.

K = in_features must be a multiple of 64; blocks never straddle rows; GGUF dims (K, M), type 134. 1.625 bits per
weight + 16 bits per row. The scale is stored as fp16: W = code * float(d), relative error <= 2^-11 against the
float32 scale; a scale with no positive finite fp16 value is refused. An all-zero row stores d = 0 and trits 2
(ql = 0xFF, extra = 85), as llama-quantize writes it (see _ikbn.py). Runtime facts in `_ikbn.IK_RUNTIME`
(in_features < 512 aborts ik's CPU matmul, and `-rtr` has no IQ1_BN_R4 to repack to).

Worked example: elements 0..4 of a block = (+1, 0, -1, -1, +1) -> trits (2, 1, 0, 0, 2) -> idx = 2 + 3 + 0 + 0 +
2*81 = 167 -> ql[0] = (167*256 + 242) // 243 = 176. Decoding 176: i=0 -> (176*81 mod 256 = 176)*3 >> 8 = 2,
i=1 -> (176*27 mod 256 = 144)*3 >> 8 = 1, i=2 -> (176*9 mod 256 = 48)*3 >> 8 = 0, i=3 -> 16*3 >> 8 = 0,
i=4 -> 176*3 >> 8 = 2. An all-zero row's extra: v = 2*(1+3+9+27) = 80 -> (80*256 + 242) // 243 = 85.
# ref: ikawrakow/ik_llama.cpp 8337e4cd ggml/src/iqk/iqk_quantize.cpp quantize_one_row_1bn (l.176-214),
#      dequantize_row_iq1_bn (l.375-396), ggml/src/ggml-common.h block_iq1_bn (l.563-568); spec gguf-ik-llama.md §4
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bitconv.layouts._ikbn import QK, IKBNLayout
from bitconv.layouts.runtimes import BITNET_2024, BITNET_2026_01, BITNET_2026_07, IK_LLAMA, LLAMA_CPP

# idx (0..242) -> stored byte; stored byte -> its 5 trits (positions i = 0..4, i = 0 least significant)
BYTE_OF_IDX = ((np.arange(243, dtype=np.uint32) * 256 + 242) // 243).astype(np.uint8)
TRITS_OF_BYTE = ((((np.arange(256, dtype=np.uint32)[:, None] * np.array([81, 27, 9, 3, 1], dtype=np.uint32))
                   % 256) * 3) >> 8).astype(np.uint8)  # [256, 5]
_POW3 = (1, 3, 9, 27, 81)


# byte(idx) = (256*idx + 242) // 243 as one multiply-add and shift (exact for idx 0..242: checked below)
_MAP_SHIFT = 21
_MAP_MUL = -(-(1 << _MAP_SHIFT) // 243)
_K1, _K2, _S = np.uint64(256 * _MAP_MUL), np.uint64(242 * _MAP_MUL), np.uint64(_MAP_SHIFT)
assert np.array_equal((np.arange(243, dtype=np.uint64) * _K1 + _K2) >> _S, BYTE_OF_IDX.astype(np.uint64))
# x * _TUPLE puts b0 + 3*b1 + 9*b2 + 27*b3 + 81*b4 (bytes b0..b4 of x, each a trit) in byte 4: every partial sum
# in bytes 0..4 stays <= 242, so no byte carries into the next
_TUPLE = np.uint64(81 + (27 << 8) + (9 << 16) + (3 << 24) + (1 << 32))
_U = {n: np.uint64(n) for n in (3, 8, 9, 16, 24, 27, 32, 40, 48, 56, 0xFF)}


def _tuple_byte(x: np.ndarray) -> np.ndarray:
    """uint64 words whose bytes 0..4 are five trits (position 0 least significant) -> their stored byte, in place."""
    np.multiply(x, _TUPLE, out=x)
    np.right_shift(x, _U[32], out=x)
    np.bitwise_and(x, _U[0xFF], out=x)
    return _map_bytes(x)


def _map_bytes(x: np.ndarray) -> np.ndarray:
    np.multiply(x, _K1, out=x)
    np.add(x, _K2, out=x)
    np.right_shift(x, _S, out=x)
    return x


def encode_iq1bn_blocks(trits: np.ndarray) -> np.ndarray:
    """trits uint8 [n, 64] -> [n, 13] (ql[12], extra).

    Each 16-trit group is two uint64 words (lo = trits 0..7, hi = 8..15): the three 5-trit tuples are lo, lo >> 40
    | hi << 24 and hi >> 16 (bytes 0..4), summed in one multiply each (`_TUPLE`); the 16th trit is hi's top byte.
    The 13 bytes of a block are then assembled as two words (bytes 0..7 and 8..12)."""
    t = np.ascontiguousarray(trits, dtype=np.uint8).reshape(-1, QK)
    n = t.shape[0]
    w = t.view(np.uint64).reshape(n * 4, 2)
    lo = np.ascontiguousarray(w[:, 0])
    hi = np.ascontiguousarray(w[:, 1])
    mid = np.right_shift(lo, _U[40])
    np.bitwise_or(mid, np.left_shift(hi, _U[24]), out=mid)
    top = np.right_shift(hi, _U[56]).reshape(n, 4)  # trit 15 of each group
    v = _tuple_byte(lo)  # ql[3g], then ql[3g+1] << 8 and ql[3g+2] << 16: a group's three bytes
    np.bitwise_or(v, np.left_shift(_tuple_byte(mid), _U[8], out=mid), out=v)
    np.right_shift(hi, _U[16], out=hi)
    np.bitwise_or(v, np.left_shift(_tuple_byte(hi), _U[16], out=hi), out=v)
    v = v.reshape(n, 4)
    extra = top[:, 3] * _U[27]
    extra += top[:, 2] * _U[9]
    extra += top[:, 1] * _U[3]
    extra += top[:, 0]
    _map_bytes(extra)
    out = np.empty((n, 2), dtype=np.uint64)
    a, b = out[:, 0], out[:, 1]  # bytes 0..7: groups 0, 1 and two bytes of group 2; bytes 8..12: the rest, extra
    np.left_shift(v[:, 1], _U[24], out=a)
    a |= v[:, 0]
    a |= v[:, 2] << _U[48]
    np.right_shift(v[:, 2], _U[16], out=b)
    b |= v[:, 3] << _U[8]
    b |= extra << _U[32]
    return out.view(np.uint8)[:, :13]


def decode_iq1bn_blocks(blocks: np.ndarray) -> np.ndarray:
    """[n, 13] -> trits uint8 [n, 64]. Every byte decodes to trits in 0..2 (no invalid pattern to detect)."""
    b = blocks.reshape(-1, 13)
    out = np.empty((b.shape[0], 4, 16), dtype=np.uint8)
    out[:, :, :15] = TRITS_OF_BYTE[b[:, :12]].reshape(-1, 4, 15)
    out[:, :, 15] = TRITS_OF_BYTE[b[:, 12]][:, :4]
    return out.reshape(-1, QK)


class GGUFIQ1BN(IKBNLayout, name="gguf-iq1-bn", container="gguf"):
    description = "ik_llama.cpp IQ1_BN (type 134): fp16 row scale + base-3 trits, 64-weight blocks of 13 bytes"
    ggml_type: ClassVar[str] = "IQ1_BN"
    ggml_type_id: ClassVar[int] = 134
    file_type: ClassVar[int] = 136
    scale_dtype = "F16"
    row_dtype: ClassVar[np.dtype] = np.dtype("<f2")
    block_bytes: ClassVar[int] = 13
    ggml_block = (QK, 13)
    runtime_support = {"IQ1_BN": {LLAMA_CPP: "type id 134 is unknown upstream",
                                  **dict.fromkeys((BITNET_2024, BITNET_2026_01, BITNET_2026_07),
                                                  "type id 134 is unknown to bitnet.cpp"), IK_LLAMA: ""}}
    nominal_bpw: ClassVar[float] = 1.625

    def _encode_native(self, ck, codes: np.ndarray, out: np.ndarray, nb: int, row_bytes: int) -> bool:
        ck.pack_iq1bn(codes, out, nb, row_bytes, self.row_meta)
        return True

    def _encode(self, trits: np.ndarray) -> np.ndarray:
        return encode_iq1bn_blocks(trits)

    def _decode(self, blocks: np.ndarray) -> np.ndarray:
        return decode_iq1bn_blocks(blocks)
