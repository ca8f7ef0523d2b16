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

from bitconv.core import dtypes, native
from bitconv.core.errors import LayoutError
from bitconv.core.lazytorch import is_tensor, torch

Q8_0_BLOCK = 32


def to_float_type(x: torch.Tensor, type_name: str) -> np.ndarray:
    """A float tensor as the bytes of GGUF type F32, F16, BF16 or Q8_0 (uint8 or typed numpy, C order)."""
    return _CONVERT[type_name](x)


def stored_to_float_type(a: np.ndarray, dtype: str, type_name: str) -> np.ndarray:
    """A stored float tensor given as its numpy storage (safetensors `dtype`; BF16 as uint16 bits) as the bytes of
    GGUF type `type_name`. The same bytes as `to_float_type` of the torch tensor; the conversions that are exact
    (same type; bf16 -> F32 moves the 16 bits up), done by the C kernels (bf16 -> F16) or in numpy (Q8_0) run
    without torch, the others through torch. The result may be `a` itself (same type)."""
    if dtype == type_name and type_name in FLOAT_NBYTES:
        return a
    if type_name == "Q8_0" and dtype in FLOAT_NBYTES:
        return quantize_q8_0(a, bf16_bits=dtype == "BF16")
    if dtype == "BF16" and type_name == "F32":
        return dtypes.f32_of_bf16(a)
    if dtype == "BF16" and type_name == "F16":
        out = _f16_of_bf16_bits(a)
        if out is not None:
            return out
    return to_float_type(dtypes.from_numpy_storage(a, dtype), type_name)


def _f16_of_bf16_bits(bits: np.ndarray) -> np.ndarray | None:
    """bf16 bit patterns as float16 in the C kernels (F16C, 8 values per instruction; round to nearest even through
    float32, as the converters' `.astype(np.float16)`); None without the kernels, F16C or a contiguous input."""
    ck = native.kernels()
    if ck is None or not bits.flags.c_contiguous:
        return None
    out = np.empty(bits.shape, dtype=np.float16)
    return out if ck.f16_of_bf16(bits.view(np.int16), out.view(np.uint16)) else None


def _f32(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float32).contiguous().numpy()


def _f16(x: torch.Tensor) -> np.ndarray:
    # round to nearest even, as the converters' float32 .astype(np.float16); bf16 -> f16 goes through float32 exactly
    if x.dtype == torch.bfloat16 and x.is_contiguous():
        out = _f16_of_bf16_bits(x.view(torch.int16).numpy())
        if out is not None:
            return out
    return x.to(torch.float16).contiguous().numpy()


def _bf16(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def quantize_q8_0(x: np.ndarray | torch.Tensor, *, bf16_bits: bool = False) -> np.ndarray:
    """float rows (last dim % 32 == 0; numpy float32 / float16, bf16 bit patterns as uint16 with `bf16_bits`, or
    any torch float dtype) -> Q8_0 blocks as uint8.
    # ref: quantize_row_q8_0_ref

    A slice of blocks at a time, transposed to value-major order ([32, blocks] float32: the per-block max is 31
    elementwise maxima over long rows instead of one short reduction per block), so every pass is vectorised and
    the temporaries stay cache-sized whatever the tensor size. The arithmetic is the reference's, in float32:
    d = max|x| / 127, id = d ? 1/d : 0, q = roundf(x * id) (half away from zero: floor(|x| * id + 0.5), sign of x).
    """
    if is_tensor(x):
        bf16 = x.dtype == torch.bfloat16
        src = (x.contiguous().view(torch.int16).numpy().view(np.uint16) if bf16 else x.contiguous().numpy())
    else:
        bf16, src = bf16_bits, np.asarray(x)
        src = src.view(np.uint16) if bf16 else src
    blocks = src.reshape(-1, Q8_0_BLOCK)
    n = blocks.shape[0]
    out = np.empty((n, 2 + Q8_0_BLOCK), dtype=np.uint8)
    ck = native.kernels()
    if bf16 and ck is not None and ck.q8_0_bf16(blocks, out):  # the same bytes in one C pass; numpy on NaN/Inf
        return out.reshape(-1)
    buf = _Q8Buffers(min(_Q8_0_SLICE, n))
    for b0 in range(0, n, _Q8_0_SLICE):  # numpy only: no torch thread pool is woken for each small slice
        m = min(_Q8_0_SLICE, n - b0)
        if bf16:  # float32 bits = bf16 bits << 16 (exact), transposed on the way
            np.left_shift(blocks[b0:b0 + m].T, 16, out=buf.x[:, :m].view(np.uint32), dtype=np.uint32)
        else:
            np.copyto(buf.x[:, :m], blocks[b0:b0 + m].T, casting="same_kind")
        _q8_0_slice(buf, m, out[b0:b0 + m])
    return out.reshape(-1)


_Q8_0_SLICE = 2048  # blocks per slice (256 KiB of float32: stays in cache)


class _Q8Buffers:
    def __init__(self, s: int) -> None:
        self.x = np.empty((Q8_0_BLOCK, s), dtype=np.float32)
        self.a = np.empty((Q8_0_BLOCK, s), dtype=np.float32)
        self.q = np.empty((Q8_0_BLOCK, s), dtype=np.int8)
        self.d = np.empty(s, dtype=np.float32)
        self.inv = np.empty(s, dtype=np.float32)
        self.sign = np.empty((Q8_0_BLOCK, s), dtype=np.uint32)


_SIGN_BIT = np.uint32(0x80000000)


def _q8_0_slice(buf: _Q8Buffers, m: int, out: np.ndarray) -> None:
    x, a, q, d, inv = buf.x[:, :m], buf.a[:, :m], buf.q[:, :m], buf.d[:m], buf.inv[:m]
    np.abs(x, out=a)
    np.maximum.reduce(a, axis=0, out=d)
    np.divide(d, np.float32(127), out=d)
    with np.errstate(divide="ignore"):
        np.divide(np.float32(1), d, out=inv)
    inv[d == 0] = 0
    np.multiply(a, inv, out=a)  # |x * id| == |x| * id exactly
    np.add(a, np.float32(0.5), out=a)
    np.floor(a, out=a)  # roundf: half away from zero, applied to |v|
    # the sign back: a's sign bit is clear (|x| * id + 0.5, floored), so OR-ing in x's sign bit is copysign(a, x),
    # bit for bit (a zero stays zero as an int8), at a fraction of numpy's copysign cost
    sign = buf.sign[:, :m]
    np.bitwise_and(x.view(np.uint32), _SIGN_BIT, out=sign)
    np.bitwise_or(a.view(np.uint32), sign, out=a.view(np.uint32))
    np.copyto(q, a, casting="unsafe")
    out.view(np.float16)[:, 0] = d  # the row's first two bytes (the rows are 34 bytes: float16-aligned)
    out[:, 2:] = q.T.view(np.uint8)


def _q8_0(x: torch.Tensor) -> np.ndarray:
    return quantize_q8_0(x if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else x.float())


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
