"""Pure data shared by every module: a ternary tensor and the spec of one stored field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bitconv.core import dtypes
from bitconv.core.errors import FormatError

EPS = 1e-5  # floor of the absmean scale (bitconv.quant): an all-zero weight gets this scale


@dataclass(frozen=True)
class Ternary:
    """A ternary weight: `W ≈ codes * scale`.

    `codes`: int8 in {-1, 0, 1}, shape (out_features, in_features).
    `scale`: float32 magnitude (≈ mean|W|), one per tensor. This is the only meaning of "scale" in bitconv;
    formats that store an inverse (HF `bitlinear`) convert at their own edge.
    """

    codes: np.ndarray
    scale: np.float32

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        return self.codes.astype(np.float32) * np.float32(self.scale)


@dataclass(frozen=True)
class FieldSpec:
    """Shape and safetensors dtype name of one stored field of a packed tensor."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtypes.DTYPES[self.dtype].itemsize


def checked_scale(value: object, codes: np.ndarray | None = None, *, tensor: str | None = None,
                  path: object | None = None, stored: str = "weight scale") -> np.float32:
    """A stored per-tensor scale as float32, or a `FormatError` naming the tensor unless finite and > 0 (0 only for
    a tensor whose `codes` are given and all zero).

    A NaN, ±Inf, 0 or negative scale would make every dequantized weight NaN, zero or sign-flipped: no model any
    runtime loads. (A quantizer never writes one: absmean is floored at 1e-5.) As SRC this is bad input (exit 2); as
    the OUT of `verify` a verification failure (exit 1)."""

    s = np.float32(value)
    if not (np.isfinite(s) and (s > 0 or (s == 0 and codes is not None and not np.any(codes)))):
        raise FormatError(f"{stored} is {float(s)!r}; a scale must be finite and > 0", path=path, tensor=tensor,
                          hint="the checkpoint is corrupt (NaN/Inf/0/negative weight_scale)")
    return s


def row_ranges(n_rows: int, row_bytes: int, block_bytes: int, align: int = 1):  # noqa: ANN201 (an iterator)
    """(r0, r1) blocks of about `block_bytes` covering rows [0, n_rows): whole multiples of `align` rows (the last
    block may be shorter), at least one `align` per block. The one rule for every row-block loop that streams a
    tensor (sinks' row-loaded copies, Nanotron parameters, verify's comparisons)."""
    step = max(align, block_bytes // max(row_bytes, 1) // align * align)
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)
