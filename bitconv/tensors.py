"""Pure data shared by every module: a ternary tensor and the spec of one stored field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bitconv import dtypes
from bitconv.errors import FormatError


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


def checked_scale(scale: float, codes: np.ndarray | None = None, *, path: object | None = None,
                  tensor: str | None = None, stored: str = "scale") -> np.float32:
    """`scale` as a float32 magnitude, or a `FormatError` naming the tensor: a stored scale must be finite and
    positive (zero only for a tensor whose codes are all zero). NaN, ±Inf, 0 or a negative value would write NaN or
    sign-flipped weights into every layout."""
    s = np.float32(scale)
    ok = bool(np.isfinite(s)) and (s > 0 or (s == 0 and codes is not None and not np.any(codes)))
    if not ok:
        raise FormatError(f"{stored} is {float(s)!r}; a ternary tensor's scale must be finite and positive",
                          path=path, tensor=tensor, hint="the checkpoint is corrupt; re-export it from its master")
    return s
