"""bitnet.cpp's I2_S GGUF tensor data (fork ggml type 36): 2-bit codes in 128-element blocks + one float32 scale.

| field  | shape            | dtype | meaning                                                                   |
|--------|------------------|-------|---------------------------------------------------------------------------|
| `data` | [M*K/4 + 32]     | U8    | the tensor's bytes in the GGUF data section (ggml_nbytes), laid out as:   |
|        |   [0, n/4)       |       |   packed codes: block b = elements [128b, 128b+128) of the row-major      |
|        |                  |       |   [M, K] tensor -> bytes [32b, 32b+32); byte p holds elements p, p+32,    |
|        |                  |       |   p+64, p+96 in bits 7:6, 5:4, 3:2, 1:0; code = t + 1 (-1->0, 0->1, 1->2) |
|        |   [n/4, n/4+4)   |       |   float32 LE magnitude scale (W = t * scale)                              |
|        |   [n/4+4, n/4+32)|       |   28 zero bytes (the Python writers' tail; llama-quantize leaves garbage) |

n = M*K. GGUF tensor info: dims (ne0, ne1) = (K, M), type 36. Only the canonical x86 layout is written (the
post-Nov-2025 ARM builds use 64-element blocks and the non-ACT_PARALLEL x86 build interleaves rows; both are other
byte orders under the same id).
The format needs n % 128 == 0; bitconv requires K % 128 == 0, because the runtime's dot product walks each row from
byte row*K/4 in whole blocks, so a block that straddles two rows would be read wrong.

Worked example: the first block's elements 0, 32, 64, 96 = (+1, 0, -1, +1) give codes (2, 1, 0, 2), so byte 0 is
0b10_01_00_10 = 0x92; scale 0.5 is stored as bytes 00 00 00 3f right after the n/4 code bytes.
# ref: microsoft/BitNet src/ggml-bitnet-mad.cpp quantize_i2_s (6076696 l.46-92), utils/convert-hf-to-gguf-bitnet.py
#      quantize_to_i2_s (HEAD l.666-727); spec gguf-bitnet-cpp.md §2.1-2.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from bitconv.core import native
from bitconv.core.errors import FormatError, LayoutError
from bitconv.core.tensors import FieldSpec, Ternary, checked_scale
from bitconv.layouts.registry import Layout
from bitconv.layouts.runtimes import BITNET_2024, BITNET_2026_01, BITNET_2026_07, IK_LLAMA, LLAMA_CPP

BLOCK = 128  # elements per block
BLOCK_BYTES = 32
SCALE_SLOT = 32  # float32 scale + 28 zero bytes


PACK_BLOCKS = 1 << 11  # 128-element blocks packed per step (256 KiB of codes): temporaries stay in L2


def pack_i2s_codes(codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int8 codes (n elements, n % 128 == 0) -> n/4 bytes in the canonical I2_S block layout (into `out`).

    byte = sum_g (c_g + 1) << (6 - 2g) = (c_0 << 6) + (c_1 << 4) + (c_2 << 2) + c_3 + 85, computed in uint8 (mod 256,
    exact because the true value lies in 0..255): five vectorised passes, no widened temporaries.
    """
    flat = np.ascontiguousarray(codes, dtype=np.int8).view(np.uint8).reshape(-1, 4, BLOCK_BYTES)
    out = np.empty(flat.shape[0] * BLOCK_BYTES, dtype=np.uint8) if out is None else out
    ck = native.kernels()
    if ck is not None:  # the same bytes in one C pass (bitconv/_ckernels.c pack2, 32-byte spans, high bits first)
        ck.pack2(flat.reshape(-1), out.reshape(-1), BLOCK_BYTES, 1, 1, BLOCK_BYTES, 0)
        return out
    dst = out.reshape(-1, BLOCK_BYTES)
    tmp = np.empty((min(PACK_BLOCKS, flat.shape[0]), BLOCK_BYTES), dtype=np.uint8)
    for a in range(0, flat.shape[0], PACK_BLOCKS):
        c = flat[a:a + PACK_BLOCKS]
        o = dst[a:a + PACK_BLOCKS]
        t = tmp[:o.shape[0]]
        np.left_shift(c[:, 0], 6, out=o)
        for g in (1, 2):
            np.left_shift(c[:, g], 6 - 2 * g, out=t)
            np.add(o, t, out=o)
        np.add(o, c[:, 3], out=o)
        np.add(o, 85, out=o)
    return out


def unpack_i2s_codes(packed: np.ndarray, tensor: str | None = None) -> np.ndarray:
    """n/4 canonical I2_S bytes -> int8 codes (flat). The unused code 0b11 raises FormatError."""
    b = np.asarray(packed, dtype=np.uint8).reshape(-1, 1, BLOCK_BYTES)
    c = (b >> np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)) & 3
    if bool((c == 3).any()):
        raise FormatError("I2_S data holds the code 0b11, which is not a ternary value", tensor=tensor,
                          hint="the file is corrupt or uses another I2_S byte order")
    return (c.astype(np.int8) - 1).reshape(-1)


def scale_slot(scale: float) -> np.ndarray:
    """The 32 bytes after the payload: float32 LE scale, then 28 zeros."""
    out = np.zeros(SCALE_SLOT, dtype=np.uint8)
    out[:4] = np.array([scale], dtype="<f4").view(np.uint8)
    return out


def read_scale(data: np.ndarray, offset: int) -> np.float32:
    return np.float32(np.asarray(data, dtype=np.uint8)[offset:offset + 4].view("<f4")[0])


def fork_2bit_nbytes(dims: tuple[int, ...]) -> int:
    """ggml_nbytes of the fork's 2-bit types (I2_S, TL1): n/4 code bytes + the 32-byte scale slot."""
    return math.prod(dims) // 4 + SCALE_SLOT  # ref: fork ggml_nbytes I2_S / TL1 case: n/4 + 32


class GGUFI2S(Layout, name="gguf-i2-s", container="gguf"):
    description = "bitnet.cpp I2_S (ggml type 36): 2-bit codes, 128-element blocks, float32 per-tensor scale"
    ggml_type: ClassVar[str] = "I2_S"
    ggml_type_id: ClassVar[int] = 36
    ggml_dialect = "bitnet.cpp"
    file_type: ClassVar[int] = 40
    gguf_tool = "bitnet.cpp"
    quantized = True  # bitnet.cpp's convert writes f32, then llama-quantize makes I2_S
    deploy_check = True
    runtime_support = {"I2_S": {
        LLAMA_CPP: "type id 36 is a removed type upstream (\"TYPE_IQ4_NL_4_4 REMOVED\"): the file does not load",
        BITNET_2024: "", BITNET_2026_01: "", BITNET_2026_07: "",
        IK_LLAMA: "I2_S loads but computes wrong logits (vec_dot NULL; measured max |dlogit| 72.7): convert it with "
                  "ik's llama-quantize to IQ1_BN / IQ2_BN"}}

    @classmethod
    def ggml_nbytes(cls, dims: tuple[int, ...]) -> int:
        return fork_2bit_nbytes(dims)

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        self._require_2d(shape, tensor)
        m, k = shape
        if k % BLOCK:
            raise LayoutError(f"I2_S needs in_features % 128 == 0 (got {k}); the runtime reads whole 128-element "
                              "blocks per row", tensor=tensor, shape=shape,
                              hint="leave this tensor unconverted or pick another --to format")
        return {"data": FieldSpec((self.ggml_nbytes(self.gguf_dims(shape)),), "U8")}

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        (nbytes,) = self.spec(t.shape)["data"].shape
        data = np.empty(nbytes, dtype=np.uint8)
        pack_i2s_codes(t.codes, data[:nbytes - SCALE_SLOT])
        data[nbytes - SCALE_SLOT:] = scale_slot(t.scale)
        return {"data": data}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        (nbytes,) = self.spec(shape)["data"].shape
        data = np.asarray(fields["data"], dtype=np.uint8).reshape(-1)
        if data.size != nbytes:
            raise LayoutError(f"I2_S data is {data.size} bytes, expected {nbytes}", shape=tuple(shape))
        n4 = nbytes - SCALE_SLOT
        codes = unpack_i2s_codes(data[:n4]).reshape(shape)
        return Ternary(codes, checked_scale(read_scale(data, n4), codes, stored="I2_S scale"))
