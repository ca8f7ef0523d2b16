"""Pure data shared by every module: a ternary tensor and the spec of one stored field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bitconv.core import dtypes


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
