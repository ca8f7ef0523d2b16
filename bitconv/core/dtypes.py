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
