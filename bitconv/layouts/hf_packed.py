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

import numpy as np

from bitconv.errors import LayoutError
from bitconv.layouts import Layout
from bitconv.tensors import FieldSpec, Ternary

VALUES_PER_BYTE = 4


def f32_to_bf16_bits(x: float) -> np.ndarray:
    """[x] rounded to bfloat16 (nearest, ties to even) as raw uint16 bits, shape [1]."""
    import torch  # imported on first use: listing layouts stays free of torch

    return torch.tensor([x], dtype=torch.float32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.float32:
    return np.float32((np.asarray(bits, dtype=np.uint16).reshape(-1)[:1].astype(np.uint32) << 16).view(np.float32)[0])


PACK_BLOCK_BYTES = 4 << 20  # packed bytes made per step: temporaries stay a few MB whatever the tensor's size


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """int8 codes [out, in] (out % 4 == 0) -> uint8 [out/4, in] in transformers' blocked layout.

    Packed rows [a, b) take code rows [a, b), [R+a, R+b), [2R+a, 2R+b), [3R+a, 3R+b): made a block of rows at a time.
    """
    import torch

    c = torch.from_numpy(np.ascontiguousarray(codes)).view(torch.uint8)
    r = c.shape[0] // VALUES_PER_BYTE
    out = torch.empty((r, *c.shape[1:]), dtype=torch.uint8)
    row_bytes = max(1, out[:1].numel())
    step = max(1, PACK_BLOCK_BYTES // row_bytes)
    for a in range(0, r, step):
        b = min(r, a + step)
        o = out[a:b]
        torch.add(c[3 * r + a:3 * r + b], 1, out=o)  # code + 1: -1 (255) wraps to 0
        o <<= 6
        for i in (2, 1):
            o |= (c[i * r + a:i * r + b] + 1) << (2 * i)
        o |= c[a:b] + 1
    return out.numpy()


# byte -> its four codes, low bit pair first: _LUT[b, i] = ((b >> 2i) & 3) - 1 (a 0b11 pair is rejected first)
_LUT = ((np.arange(256, dtype=np.uint8)[:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3).astype(np.int8) - 1


def unpack_codes(packed: np.ndarray, out_features: int, tensor: str | None = None) -> np.ndarray:
    """uint8 [out/4, in] -> int8 codes [out, in]. A 0b11 pair (not a ternary code) raises LayoutError."""
    p = np.ascontiguousarray(packed, dtype=np.uint8)
    if bool(np.any(p & (p >> 1) & 0x55)):  # both bits of some pair set
        raise LayoutError("packed weight holds the bit pair 0b11, which is not a ternary code", tensor=tensor,
                          shape=tuple(packed.shape), hint="the file is corrupt or not an HF packed checkpoint")
    codes = np.empty((VALUES_PER_BYTE, *p.shape), dtype=np.int8)
    for i in range(VALUES_PER_BYTE):  # one table lookup per row block (~2.5x faster than shift and mask)
        np.take(_LUT[:, i], p, out=codes[i])
    return codes.reshape(VALUES_PER_BYTE * p.shape[0], *p.shape[1:])[:out_features]


class _HFPacked(Layout):
    linear_class: str
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
        stored = np.float32(1.0) / np.float32(t.scale) if self.scale_inverted else np.float32(t.scale)
        return {"weight": pack_codes(t.codes), "weight_scale": f32_to_bf16_bits(float(stored))}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> Ternary:
        codes = unpack_codes(fields["weight"], shape[0])
        ws = bf16_bits_to_f32(fields["weight_scale"])
        return Ternary(codes, np.float32(1.0) / ws if self.scale_inverted else ws)


class HFAutoBitLinear(_HFPacked, name="hf-autobitlinear", container="hf"):
    description = "transformers packed, linear_class autobitlinear (weight_scale = scale; microsoft 2B-4T)"
    linear_class = "autobitlinear"


class HFBitLinear(_HFPacked, name="hf-bitlinear", container="hf"):
    description = "transformers packed, linear_class bitlinear (weight_scale = 1/scale; HF1BitLLM, onebitllms)"
    linear_class = "bitlinear"
    scale_inverted = True


HF_LAYOUTS = {"autobitlinear": "hf-autobitlinear", "bitlinear": "hf-bitlinear"}
