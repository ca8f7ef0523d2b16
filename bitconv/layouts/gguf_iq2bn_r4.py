"""ik_llama.cpp's IQ2_BN_R4 (ggml type 335, file type 337): IQ2_BN with rows interleaved in groups of 4.

| field  | shape               | dtype | meaning                                                                      |
|--------|---------------------|-------|------------------------------------------------------------------------------|
| `data` | [M * (4 + K/4)]     | U8    | M/4 groups of 4 rows, 4 * (4 + K/4) bytes each, group laid out as:           |
|        |   [0, 16)           |       |   the 4 float32 LE row scales (rows 4r .. 4r+3; 0 on an all-zero row)        |
|        |   [16 + 64b, +64)   |       |   block b (elements [64b, 64b+64) of each row): byte 16*l + 4*k + i holds    |
|        |                     |       |   elements 16l+i, 16l+i+4, 16l+i+8, 16l+i+12 of row k in bits 1:0 .. 7:6     |

Trit = code + 1; l, i, k = 0..3. Same size as IQ2_BN (2 bits per weight + 32 bits per row) and the same scale
(float32, exact). Needs in_features % 64 == 0 and out_features % 4 == 0; for a tensor whose out_features is not a
multiple of 4 llama-quantize keeps IQ2_BN, and so does `bitconv pack --type iq2_bn_r4` (`fallback_layout`).
Activations are quantized to Q8_K16 for this type, so ik_llama.cpp has no in_features limit here (it has 512 for
IQ2_BN); `llama-cli -rtr` makes the same repack of an IQ2_BN file at load time.

Worked example: in block 0, row k = 1 with elements 0, 4, 8, 12 = (+1, 0, -1, +1) -> trits (2, 1, 0, 2) gives
byte 16*0 + 4*1 + 0 = 4 of the block = 0b10_00_01_10 = 0x86 (IQ2_BN would put elements 0, 16, 32, 48 there).
# ref: ikawrakow/ik_llama.cpp 8337e4cd ggml/src/iqk/iqk_quantize.cpp repack_iq2_bn (l.5931-5989),
#      quantize_iq2_bn_r4 (l.5992-6006), dequantize_row_iq2_bn_r4 (l.6008-6027); src/llama-quantize.cpp l.1708;
#      spec gguf-ik-llama.md §6.4
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from bitconv.core.errors import FormatError, LayoutError
from bitconv.core.tensors import FieldSpec, Ternary
from bitconv.layouts._ikbn import QK, IKBNLayout, check_in_features, row_trits, ternary_from_rows
from bitconv.layouts.runtimes import IK_LLAMA

R = 4  # rows per group
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 1, 4, 1)


class GGUFIQ2BNR4(IKBNLayout, name="gguf-iq2-bn-r4", container="gguf"):
    description = "ik_llama.cpp IQ2_BN_R4 (type 335): IQ2_BN with 4 rows interleaved per 64-weight block"
    ggml_type: ClassVar[str] = "IQ2_BN_R4"
    ggml_type_id: ClassVar[int] = 335
    file_type: ClassVar[int] = 337
    fallback_layout = "gguf-iq2-bn"  # for out_features % 4 != 0, as llama-quantize does
    scale_dtype = "F32"
    row_dtype: ClassVar[np.dtype] = np.dtype("<f4")
    block_bytes: ClassVar[int] = 16
    ggml_block = (QK, 16)
    runtime_support = {"IQ2_BN_R4": {IK_LLAMA: ""}}  # elsewhere: "does not compute IQ2_BN_R4"
    nominal_bpw: ClassVar[float] = 2.0

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        m, k = check_in_features(self, shape, tensor)
        if m % R:
            raise LayoutError(f"IQ2_BN_R4 interleaves rows in groups of 4: needs out_features % 4 == 0 (got {m})",
                              tensor=tensor, shape=shape, hint="use --type iq2_bn for this tensor")
        return {"data": FieldSpec((m * self.row_bytes(k),), "U8")}

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        self.spec(t.shape)
        m, k = t.shape
        nb = k // QK
        trits, d = row_trits(t, self.row_dtype, self.ggml_type)
        # [group, row k, block, l, bit slot, i] -> OR over bit slots -> [group, block, l, row k, i]
        t6 = trits.reshape(m // R, R, nb, 4, 4, 4)
        q = t6[:, :, :, :, 0] | (t6[:, :, :, :, 1] << 2) | (t6[:, :, :, :, 2] << 4) | (t6[:, :, :, :, 3] << 6)
        out = np.empty((m // R, R * self.row_bytes(k)), dtype=np.uint8)
        out[:, :R * 4] = d.view(np.uint8).reshape(m // R, R * 4)
        out[:, R * 4:] = q.transpose(0, 2, 3, 1, 4).reshape(m // R, nb * 64)
        return {"data": out.reshape(-1)}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        m, k = shape
        nb = k // QK
        groups = self._rows(fields, shape).reshape(m // R, -1)
        d = np.ascontiguousarray(groups[:, :R * 4]).view(self.row_dtype).reshape(-1)
        q = groups[:, R * 4:].reshape(m // R, nb, 4, R, 1, 4)  # [group, block, l, row k, 1, i]
        t = (q >> _SHIFTS) & 3  # [group, block, l, row k, bit slot, i]
        if bool((t == 3).any()):
            raise FormatError("IQ2_BN_R4 data holds the 2-bit value 3, which is not a trit", shape=tuple(shape),
                              hint="the file is corrupt or not IQ2_BN_R4")
        trits = np.ascontiguousarray(t.transpose(0, 3, 1, 2, 4, 5)).reshape(m, k)
        return ternary_from_rows(trits, d, shape, self.ggml_type)
