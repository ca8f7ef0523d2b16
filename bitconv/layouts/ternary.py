"""bitconv's own ternary checkpoint layout: plain int8 codes plus a float32 magnitude scale.

| field          | shape            | dtype | meaning                                  |
|----------------|------------------|-------|------------------------------------------|
| `weight`       | [out, in]        | I8    | codes in {-1, 0, 1}                      |
| `weight_scale` | [1]              | F32   | magnitude: W ≈ weight * weight_scale     |

Worked example: W = [[0.03, -0.001], [-0.02, 0.01]] -> m = 0.01525, codes [[1, 0], [-1, 1]], scale ≈ 0.01525.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bitconv.layouts import Layout
from bitconv.tensors import FieldSpec, Ternary


class TernaryInt8(Layout, name="bitconv-ternary", container="hf"):
    description = "bitconv ternary checkpoint: int8 codes + float32 magnitude scale"

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        self._require_2d(shape, tensor)
        return {"weight": FieldSpec(tuple(shape), "I8"), "weight_scale": FieldSpec((1,), "F32")}

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        self.spec(t.shape)
        return {"weight": np.ascontiguousarray(t.codes, dtype=np.int8),
                "weight_scale": np.array([t.scale], dtype=np.float32)}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> Ternary:
        codes = np.asarray(fields["weight"], dtype=np.int8).reshape(shape)
        return Ternary(codes, np.float32(np.asarray(fields["weight_scale"]).reshape(-1)[0]))
