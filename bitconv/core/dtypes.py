"""Static dtype facts: safetensors dtype name -> numpy storage dtype, torch dtype, item size.

numpy has no bfloat16, so BF16 data is carried as its raw uint16 bits in numpy and reinterpreted in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DType:
    name: str  # safetensors spelling, e.g. "BF16"
    itemsize: int
    np_storage: np.dtype  # numpy dtype of the raw bytes (BF16 -> uint16)
    torch: torch.dtype
    is_float: bool


_TABLE = [
    DType("F64", 8, np.dtype("<f8"), torch.float64, True),
    DType("F32", 4, np.dtype("<f4"), torch.float32, True),
    DType("F16", 2, np.dtype("<f2"), torch.float16, True),
    DType("BF16", 2, np.dtype("<u2"), torch.bfloat16, True),
    DType("I64", 8, np.dtype("<i8"), torch.int64, False),
    DType("I32", 4, np.dtype("<i4"), torch.int32, False),
    DType("I16", 2, np.dtype("<i2"), torch.int16, False),
    DType("I8", 1, np.dtype("i1"), torch.int8, False),
    DType("U8", 1, np.dtype("u1"), torch.uint8, False),
    DType("BOOL", 1, np.dtype("?"), torch.bool, False),
]
DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
BY_TORCH: dict[torch.dtype, DType] = {d.torch: d for d in _TABLE}

# Lower-case names users type (`--dtype bf16`) and torch spellings, mapped to safetensors names.
ALIASES = {"bf16": "BF16", "bfloat16": "BF16", "f16": "F16", "fp16": "F16", "float16": "F16", "f32": "F32",
           "fp32": "F32", "float32": "F32", "u8": "U8", "uint8": "U8", "i8": "I8", "int8": "I8"}


def get(name: str) -> DType:
    return DTYPES[ALIASES.get(name, name)]


def to_numpy_storage(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a tensor's raw bytes in its storage dtype (BF16 -> uint16)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_numpy_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    """The inverse of `to_numpy_storage`: a torch tensor sharing memory with `a`."""
    d = DTYPES[dtype]
    a = np.ascontiguousarray(a)
    if d.name == "BF16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a.view(d.np_storage))
