"""Static dtype facts: safetensors dtype name -> numpy storage dtype, torch dtype, item size.

numpy has no bfloat16, so BF16 data is carried as its raw uint16 bits in numpy and reinterpreted in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on first use, so that `bitconv --help` and `layouts` do not pay for it
    import torch


@dataclass(frozen=True)
class DType:
    name: str  # safetensors spelling, e.g. "BF16"
    itemsize: int
    np_storage: np.dtype  # numpy dtype of the raw bytes (BF16 -> uint16)
    torch_name: str  # attribute of the torch module, e.g. "bfloat16"
    is_float: bool

    @property
    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.torch_name)


_TABLE = [
    DType("F64", 8, np.dtype("<f8"), "float64", True),
    DType("F32", 4, np.dtype("<f4"), "float32", True),
    DType("F16", 2, np.dtype("<f2"), "float16", True),
    DType("BF16", 2, np.dtype("<u2"), "bfloat16", True),
    DType("I64", 8, np.dtype("<i8"), "int64", False),
    DType("I32", 4, np.dtype("<i4"), "int32", False),
    DType("I16", 2, np.dtype("<i2"), "int16", False),
    DType("I8", 1, np.dtype("i1"), "int8", False),
    DType("U8", 1, np.dtype("u1"), "uint8", False),
    DType("BOOL", 1, np.dtype("?"), "bool", False),
]
DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}


def __getattr__(name: str) -> object:
    if name == "BY_TORCH":  # torch dtype -> DType, built on first use (imports torch)
        return {d.torch: d for d in _TABLE}
    raise AttributeError(name)


# Lower-case names users type (`--dtype bf16`) and torch spellings, mapped to safetensors names.
ALIASES = {"bf16": "BF16", "bfloat16": "BF16", "f16": "F16", "fp16": "F16", "float16": "F16", "f32": "F32",
           "fp32": "F32", "float32": "F32", "u8": "U8", "uint8": "U8", "i8": "I8", "int8": "I8"}


def get(name: str) -> DType:
    return DTYPES[ALIASES.get(name, name)]


_U16 = np.uint32(16)


def f32_of_bf16(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bf16 bit patterns (uint16 or int16) as float32, exactly: the 16 bits moved up (NaN payloads kept), into `out`
    (float32, the same size) when given."""
    out = np.empty(bits.shape, dtype=np.float32) if out is None else out
    np.left_shift(bits.view(np.uint16), _U16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def bf16_of_f32(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even; NaN -> 0x7FC0: torch's conversion, in numpy
    (tests compare the two on every float32 class: normals, subnormals, ties, overflow to Inf, NaN)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((b + (np.uint32(0x7FFF) + ((b >> _U16) & np.uint32(1)))) >> _U16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def to_numpy_storage(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a tensor's raw bytes in its storage dtype (BF16 -> uint16)."""
    import torch

    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_numpy_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    """The inverse of `to_numpy_storage`: a torch tensor sharing memory with `a`."""
    import torch

    d = DTYPES[dtype]
    a = np.ascontiguousarray(a)
    if d.name == "BF16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a.view(d.np_storage))
