"""transformers' packed BitNet layout: 4 ternary codes per uint8 along dim 0, in four contiguous row blocks.

| field          | shape              | dtype | meaning                                                     |
|----------------|--------------------|-------|-------------------------------------------------------------|
| `weight`       | [out / 4, in]      | U8    | byte [r, c] holds code(W[r + i*R, c]) + 1 in bits 2i..2i+1  |
| `weight_scale` | [1]                | BF16  | autobitlinear: scale (W ≈ q * ws); bitlinear: 1/scale (W ≈ q / ws) |

R = out / 4. Code map: -1 -> 0b00, 0 -> 0b01, +1 -> 0b10; 0b11 is never written and is rejected on read.
Worked example (one column, out = 8, R = 2): codes [1, 0, -1, 1, 0, 0, 1, -1] pack to bytes [146, 25]:
146 = 0b10_01_00_10 holds rows 0, 2, 4, 6 from the low bits up; 25 = 0b00_01_10_01 holds rows 1, 3, 5, 7.
out % 4 != 0 is refused: neither BitLinear (floor) nor AutoBitLinear offline (exact check) can load it.
# ref: transformers/integrations/bitnet.py pack_weights / unpack_weights; spec hf-packed.md §1-2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from bitconv.core import native
from bitconv.core.errors import FormatError, LayoutError
from bitconv.core.tensors import FieldSpec, Ternary
from bitconv.layouts.registry import Layout, decode_scale, encode_scale

VALUES_PER_BYTE = 4


PACK_BLOCK_BYTES = 1 << 18  # packed bytes made per step: temporaries stay in L2 whatever the tensor


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """int8 codes [out, in] (out % 4 == 0) -> uint8 [out/4, in] in transformers' blocked layout.

    Packed rows [a, b) take code rows [a, b), [R+a, R+b), [2R+a, 2R+b), [3R+a, 3R+b): made a block of rows at a time.
    byte = sum_i (c_i + 1) * 4^i = (c_3 << 6) + (c_2 << 4) + (c_1 << 2) + c_0 + 85, which uint8 arithmetic (mod 256,
    the codes' int8 bytes as uint8) computes exactly because the true value lies in 0..255: five vectorised passes.
    """
    c = np.ascontiguousarray(codes).view(np.uint8)
    r = c.shape[0] // VALUES_PER_BYTE
    out = np.empty((r, *c.shape[1:]), dtype=np.uint8)
    ck = native.kernels()
    if ck is not None:  # the same bytes in one C pass (bitconv/_ckernels.c pack2: one block of 4 * R rows)
        span = out.size
        ck.pack2(c.reshape(-1)[:4 * span], out.reshape(-1), span, 0, 1, span, 0)
        return out
    row_bytes = max(1, out[:1].size)
    step = max(1, PACK_BLOCK_BYTES // row_bytes)
    tmp = np.empty(min(r, step) * row_bytes, dtype=np.uint8)
    for a in range(0, r, step):
        b = min(r, a + step)
        o = out[a:b]
        t = tmp[:o.size].reshape(o.shape)
        np.left_shift(c[3 * r + a:3 * r + b], 6, out=o)
        for i in (2, 1):
            np.left_shift(c[i * r + a:i * r + b], 2 * i, out=t)
            np.add(o, t, out=o)
        np.add(o, c[a:b], out=o)
        np.add(o, 85, out=o)
    return out




def unpack_codes(packed: np.ndarray, out_features: int, tensor: str | None = None) -> np.ndarray:
    """uint8 [out/4, in] -> int8 codes [out, in]: code of pair i = ((byte >> 2i) & 3) - 1, low pair first.
    A 0b11 pair (not a ternary code) raises FormatError."""
    p = np.ascontiguousarray(packed, dtype=np.uint8)
    flat = p.reshape(-1)
    ck = native.kernels()
    if ck is not None:  # the same codes in one C pass (bitconv/_ckernels.c unpack2), the 0b11 check in it
        codes = np.empty((VALUES_PER_BYTE, *p.shape), dtype=np.int8)
        if flat.size and ck.unpack2(flat, codes.reshape(-1), flat.size, 0, 1, flat.size, 0):
            raise _bad_pair(packed, tensor)
        return codes.reshape(VALUES_PER_BYTE * p.shape[0], *p.shape[1:])[:out_features]
    if any(bool(np.any(b & (b >> 1) & 0x55))  # both bits of some pair set (checked a slice at a time: no full-size
           for b in (flat[a:a + PACK_BLOCK_BYTES] for a in range(0, flat.size, PACK_BLOCK_BYTES))):  # temporaries)
        raise _bad_pair(packed, tensor)
    codes = np.empty((VALUES_PER_BYTE, *p.shape), dtype=np.int8)
    cu = codes.reshape(VALUES_PER_BYTE, -1).view(np.uint8)
    for a in range(0, flat.size, PACK_BLOCK_BYTES):  # cache-sized slices: three in-place uint8 passes per pair
        src = flat[a:a + PACK_BLOCK_BYTES]
        for i in range(VALUES_PER_BYTE):
            o = cu[i, a:a + PACK_BLOCK_BYTES]
            np.right_shift(src, 2 * i, out=o)
            np.bitwise_and(o, 3, out=o)
            np.subtract(o, 1, out=o)  # 0 -> 255 (= -1 as int8)
    return codes.reshape(VALUES_PER_BYTE * p.shape[0], *p.shape[1:])[:out_features]


def _bad_pair(packed: np.ndarray, tensor: str | None) -> FormatError:
    return FormatError("packed weight holds the bit pair 0b11, which is not a ternary code", tensor=tensor,
                       shape=tuple(packed.shape), hint="the file is corrupt or not an HF packed checkpoint")


class _HFPacked(Layout):
    linear_class: ClassVar[str]
    scale_dtype = "BF16"

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        self._require_2d(shape, tensor)
        out, k = shape
        if out % VALUES_PER_BYTE:
            raise LayoutError(f"HF packed layout needs out_features % 4 == 0 (got {out}); transformers cannot load "
                              "it", tensor=tensor, shape=shape,
                              hint="leave this module unconverted or pick another --to format")
        return {"weight": FieldSpec((out // VALUES_PER_BYTE, k), "U8"), "weight_scale": FieldSpec((1,), "BF16")}

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        self.spec(t.shape)
        return {"weight": pack_codes(t.codes), "weight_scale": encode_scale(t.scale, "BF16", self.scale_inverted)}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        codes = unpack_codes(fields["weight"], shape[0], tensor=tensor)
        return Ternary(codes, decode_scale(fields["weight_scale"], self.scale_inverted))


class HFAutoBitLinear(_HFPacked, name="hf-autobitlinear", container="hf"):
    description = "transformers packed, linear_class autobitlinear (weight_scale = scale; microsoft 2B-4T)"
    linear_class = "autobitlinear"
    deploy_check = True


class HFBitLinear(_HFPacked, name="hf-bitlinear", container="hf"):
    description = "transformers packed, linear_class bitlinear (weight_scale = 1/scale; HF1BitLLM, onebitllms)"
    linear_class = "bitlinear"
    scale_inverted = True



def bitnet_quant_config(src_config: dict, linear_class: str, mode: str) -> dict:
    """A `quantization_config` transformers loads without remote code; keeps `lm_head` out of conversion."""
    qc: dict = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode}
    old = src_config.get("quantization_config")
    if isinstance(old, dict):
        mtnc = old.get("modules_to_not_convert")
        if isinstance(mtnc, list):  # an explicit list disables transformers' defaults (spec §3.2)
            qc["modules_to_not_convert"] = mtnc if "lm_head" in mtnc else [*mtnc, "lm_head"]
        for k in ("use_rms_norm", "rms_norm_eps"):
            if k in old:
                qc[k] = old[k]
    return qc
