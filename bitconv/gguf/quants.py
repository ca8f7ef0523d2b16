"""Non-ternary GGUF tensor data: float types for norms, embeddings and dequantized weights, and Q8_0 embeddings.

| type | bytes per 32 values | encoding                                                                          |
|------|---------------------|-----------------------------------------------------------------------------------|
| F32  | 128                 | IEEE float32 LE                                                                   |
| F16  | 64                  | IEEE float16 LE, round to nearest even from float32                               |
| BF16 | 64                  | top 16 bits of float32, round to nearest even                                     |
| Q8_0 | 34                  | per 32 values: fp16 d = max|x| / 127, then int8 q = roundf(x / d) (half away)     |

# ref: ggml-quants.c quantize_row_q8_0_ref; gguf-py quants.py Q8_0 / BF16
"""

from __future__ import annotations

import numpy as np
import torch

from bitconv.errors import LayoutError

Q8_0_BLOCK = 32


def to_float_type(x: torch.Tensor, type_name: str) -> np.ndarray:
    """A float tensor as the bytes of GGUF type F32, F16, BF16 or Q8_0 (uint8 or typed numpy, C order)."""
    return _CONVERT[type_name](x)


def _f32(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float32).contiguous().numpy()


def _f16(x: torch.Tensor) -> np.ndarray:
    # round to nearest even, as the converters' float32 .astype(np.float16); bf16 -> f16 goes through float32 exactly
    return x.to(torch.float16).contiguous().numpy()


def _bf16(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 rows (last dim % 32 == 0) -> Q8_0 blocks as uint8. # ref: quantize_row_q8_0_ref

    Works through the blocks a slice at a time with in-place arithmetic, so its temporaries stay a few MB whatever
    the tensor size (a 128256 x 2560 embedding would otherwise need several float32 copies of itself).
    """
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, Q8_0_BLOCK)
    out = np.empty((blocks.shape[0], 2 + Q8_0_BLOCK), dtype=np.uint8)
    for b0 in range(0, blocks.shape[0], _Q8_0_SLICE):
        _q8_0_slice(blocks[b0:b0 + _Q8_0_SLICE], out[b0:b0 + _Q8_0_SLICE])
    return out.reshape(-1)


_Q8_0_SLICE = 1 << 15  # blocks per slice (4 MiB of float32)


def _q8_0_slice(blocks: np.ndarray, out: np.ndarray) -> None:
    a = np.abs(blocks)
    d = a.max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    a *= inv  # |x * inv| == |x| * inv exactly
    a += np.float32(0.5)
    np.floor(a, out=a)  # roundf: half away from zero, applied to |v|; the sign goes back below
    q = a.astype(np.int8)
    np.negative(q, out=q, where=blocks < 0)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)


def _q8_0(x: torch.Tensor) -> np.ndarray:
    return quantize_q8_0(_f32(x))


def dequantize_q8_0(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    b = np.asarray(data, dtype=np.uint8).reshape(-1, 2 + Q8_0_BLOCK)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (b[:, 2:].view(np.int8).astype(np.float32) * d).reshape(shape)


_CONVERT = {"F32": _f32, "F16": _f16, "BF16": _bf16, "Q8_0": _q8_0}
FLOAT_NBYTES = {"F32": 4, "F16": 2, "BF16": 2}


def float_type_nbytes(type_name: str, shape: tuple[int, ...], tensor: str | None = None) -> int:
    """Bytes of a tensor of `shape` (HF order) stored as F32 / F16 / BF16 / Q8_0; LayoutError when it cannot be."""
    n = int(np.prod(shape))
    if type_name == "Q8_0":
        if shape[-1] % Q8_0_BLOCK:
            raise LayoutError(f"Q8_0 needs the row length to be a multiple of {Q8_0_BLOCK} (got {shape[-1]})",
                              tensor=tensor, shape=shape, hint="use --embd-type f16")
        return n // Q8_0_BLOCK * (2 + Q8_0_BLOCK)
    return n * FLOAT_NBYTES[type_name]
