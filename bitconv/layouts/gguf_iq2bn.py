"""ik_llama.cpp's IQ2_BN (ggml type 135, file type 137): a float32 row scale, then 2-bit trits in 64-weight blocks.

| field  | shape                 | dtype | meaning                                                                 |
|--------|-----------------------|-------|-------------------------------------------------------------------------|
| `data` | [M * (4 + K/4)]       | U8    | M rows (output channels) of 4 + K/4 bytes each, row r laid out as:      |
|        |   [0, 4)              |       |   float32 LE row scale d = m (the tensor's scale; 0 on an all-zero row) |
|        |   [4+16b, 4+16b+16)   |       |   block b = elements [64b, 64b+64) of the row: byte j holds elements j, |
|        |                       |       |   j+16, j+32, j+48 in bits 1:0, 3:2, 5:4, 7:6; trit = code + 1          |

K = in_features (ne0) must be a multiple of 64; blocks never straddle rows. GGUF tensor info: dims (K, M), type 135;
the tensor info has no field for the row scale, so a reader must size rows itself (gguf-py cannot: PyPI 0.19.0
rejects id 135, ik's own copy sizes the tensor 4 bytes per row short). 2 bits per weight + 32 bits per row.
The scale is stored exactly (float32): W = code * d. An all-zero row stores d = 0 and trits 2 (bytes 0xAA), as
llama-quantize writes it (see _ikbn.py); runtime facts in `_ikbn.IK_RUNTIME` (in_features < 512 aborts ik's CPU
matmul; load with `-rtr` or pack `iq2_bn_r4`).

Worked example: a row of 64 weights with element 0 = +1, element 16 = 0, element 32 = -1, element 48 = +1 (and
scale 0.5) has trits (2, 1, 0, 2) there, so block byte 0 is 0b10_00_01_10 = 0x86; the row starts 00 00 00 3f 86.
# ref: ikawrakow/ik_llama.cpp 8337e4cd ggml/src/iqk/iqk_quantize.cpp quantize_one_row_2bn (l.216-241),
#      dequantize_row_iq2_bn (l.418-434), ggml/src/ggml-common.h block_iq2_bn (l.573-576); spec gguf-ik-llama.md §3
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bitconv.core.errors import FormatError
from bitconv.layouts._ikbn import QK, IKBNLayout
from bitconv.layouts.runtimes import BITNET_2024, BITNET_2026_01, BITNET_2026_07, IK_LLAMA, LLAMA_CPP

_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
_ITEM16 = np.dtype((np.void, 16))  # one 16-trit group, copied as a unit


def encode_iq2bn_blocks(trits: np.ndarray) -> np.ndarray:
    """trits uint8 [n, 64] -> [n, 16]: byte j = t[j] | t[j+16] << 2 | t[j+32] << 4 | t[j+48] << 6.

    Each 16-trit group is moved whole (a 16-byte item) into a group-major copy, so the four shifts and ORs run
    over long contiguous uint64 rows, eight trits per operation (t <= 2: no bit leaves its byte)."""
    t = np.ascontiguousarray(trits, dtype=np.uint8).reshape(-1, QK)
    n = t.shape[0]
    groups = t.view(_ITEM16).reshape(n, 4)
    g = np.empty((4, n), dtype=_ITEM16)
    for i in range(4):
        np.copyto(g[i], groups[:, i])
    w = g.view(np.uint64).reshape(4, 2 * n)
    out = w[0]
    for i in (1, 2, 3):
        np.left_shift(w[i], np.uint64(2 * i), out=w[i])
        np.bitwise_or(out, w[i], out=out)
    return out.view(np.uint8).reshape(n, 16)


def decode_iq2bn_blocks(qs: np.ndarray) -> np.ndarray:
    """[n, 16] -> trits uint8 [n, 64]; the unused 2-bit value 3 raises FormatError."""
    t = (qs.reshape(-1, 1, 16) >> _SHIFTS) & 3
    if bool((t == 3).any()):
        raise FormatError("IQ2_BN data holds the 2-bit value 3, which is not a trit",
                          hint="the file is corrupt or not IQ2_BN")
    return t.reshape(-1, QK)


class GGUFIQ2BN(IKBNLayout, name="gguf-iq2-bn", container="gguf"):
    description = "ik_llama.cpp IQ2_BN (type 135): float32 row scale + 2-bit trits in 64-weight blocks of 16 bytes"
    ggml_type: ClassVar[str] = "IQ2_BN"
    ggml_type_id: ClassVar[int] = 135
    file_type: ClassVar[int] = 137
    scale_dtype = "F32"
    row_dtype: ClassVar[np.dtype] = np.dtype("<f4")
    block_bytes: ClassVar[int] = 16
    ggml_block = (QK, 16)
    runtime_support = {"IQ2_BN": {LLAMA_CPP: "type id 135 is unknown upstream",
                                  **dict.fromkeys((BITNET_2024, BITNET_2026_01, BITNET_2026_07),
                                                  "type id 135 is unknown to bitnet.cpp"), IK_LLAMA: ""}}
    nominal_bpw: ClassVar[float] = 2.0

    def _encode(self, trits: np.ndarray) -> np.ndarray:
        return encode_iq2bn_blocks(trits)

    def _encode_native(self, ck, codes: np.ndarray, out: np.ndarray, nb: int, row_bytes: int) -> bool:
        ck.pack2(codes, out, 16, 0, nb, row_bytes, self.row_meta)  # byte j = t[j] | t[j+16] << 2 | ...
        return True

    def _decode(self, blocks: np.ndarray) -> np.ndarray:
        return decode_iq2bn_blocks(blocks)
