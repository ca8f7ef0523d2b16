"""Shared by ik_llama.cpp's BitNet layouts (gguf_iq1bn.py, gguf_iq2bn.py, gguf_iq2bn_r4.py): the row rule, the row
scale, and the runtime facts of ik_llama.cpp as data.

A row (one output channel, ne0 = in_features weights) is `[row scale][block 0][block 1]...` with 64-weight blocks
that never straddle rows. The row scale is what ik's quantizer computes on the float row it is handed, d =
max|x|; for a ternary weight W = m * T that is m on every row holding a non-zero code, and **0 on an all-zero row,
whose codes are then all +1** (threshold 0.5*d = 0, `|x| < 0` is false, `x < 0` is false). bitconv writes exactly
that, so its bytes equal llama-quantize's; reading back, a row with d = 0 decodes to zeros (what the runtime
computes) and the tensor scale is the d of any other row. Rows carrying different non-zero scales (a file quantized
from non-ternary weights) are refused: bitconv's ternary tensors have one scale.

Runtime facts (ik_llama.cpp 8337e4cd, spec gguf-ik-llama.md §1, §7, §8; measured there unless marked [code]):

| ggml type | runs in ik_llama.cpp | CPU limit          | note                                                   |
|-----------|----------------------|--------------------|--------------------------------------------------------|
| IQ1_BN    | yes                  | in_features >= 512 | below, the first matmul aborts; `-rtr` cannot help     |
| IQ2_BN    | yes                  | in_features >= 512 | `-rtr` repacks to IQ2_BN_R4 at load (no limit, faster) |
| IQ2_BN_R4 | yes                  | none               | rows in groups of 4                                    |
| I2_S      | loads, wrong logits  | -                  | only a llama-quantize input                            |
| TQ1_0/2_0 | no                   | -                  | ids 34/35 unknown: llama-quantize and the loader crash |

Archs: ik builds `bitnet` with the SiLU FFN (1bitLLM) and `bitnet-25` / `bitnet-b1.58` with relu² (2B4T); a model
written under the other family's arch loads and runs the wrong graph.
# ref: ikawrakow/ik_llama.cpp 8337e4cd ggml/src/ggml.c l.1262-1299 (type traits), ggml/src/iqk/iqk_quantize.cpp
#      l.176-241 (quantizers), l.586-588 (k >= 512 assert), src/llama-arch.cpp l.60-62; spec gguf-ik-llama.md §2, §5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bitconv.core import native
from bitconv.core.errors import FormatError, LayoutError
from bitconv.core.tensors import EPS, FieldSpec, Ternary
from bitconv.layouts.registry import Layout

QK = 64  # weights per block (QK_IQ1BN)
PACK_ROW_CODES = 1 << 18  # codes per row chunk when packing (whole rows): temporaries stay cache-sized
RUNTIME = "ik_llama.cpp"
RUNTIME_COMMIT = "8337e4cd"


@dataclass(frozen=True)
class RuntimeFact:
    """What ik_llama.cpp does with one ggml type."""

    runs: bool  # gives correct results
    min_in_features: int | None  # the CPU matmul aborts below this in_features (None: no limit)
    note: str


IK_RUNTIME: dict[str, RuntimeFact] = {
    "IQ1_BN": RuntimeFact(True, 512, "ik_llama.cpp's CPU matmul aborts (GGML_ASSERT k >= 512 in "
                          "quantize_row_q8_K64) on IQ1_BN weights with in_features < 512, and -rtr cannot rescue "
                          "IQ1_BN; use --type iq2_bn_r4"),
    "IQ2_BN": RuntimeFact(True, 512, "ik_llama.cpp's CPU matmul aborts (GGML_ASSERT k >= 512 in "
                          "quantize_row_q8_K64) on IQ2_BN weights with in_features < 512; load with -rtr or use "
                          "--type iq2_bn_r4"),
    "IQ2_BN_R4": RuntimeFact(True, None, "no in_features limit"),
    "I2_S": RuntimeFact(False, None, "ik_llama.cpp loads I2_S but computes wrong logits (max |dlogit| 72.7 at "
                        "8337e4cd); use --type iq2_bn or iq1_bn for ik_llama.cpp"),
    "TQ1_0": RuntimeFact(False, None, "ik_llama.cpp has no type id 34 (TQ1_0): its loader crashes on the file; use "
                         "--type iq2_bn or iq1_bn for ik_llama.cpp"),
    "TQ2_0": RuntimeFact(False, None, "ik_llama.cpp has no type id 35 (TQ2_0): its loader crashes on the file; use "
                         "--type iq2_bn or iq1_bn for ik_llama.cpp"),
}
# GGUF arch -> the FFN activation of the graph ik_llama.cpp builds for it (build_bitnet / build_bitnet_158)
IK_ARCH_ACT: dict[str, str] = {"bitnet": "silu", "bitnet-25": "relu2", "bitnet-b1.58": "relu2", "llama": "silu"}
IK_DEFAULT_ARCH: dict[str, str] = {"relu2": "bitnet-25", "silu": "bitnet"}  # what to pass as --arch, by activation


def check_in_features(layout: Layout, shape: tuple[int, ...], tensor: str | None) -> tuple[int, int]:
    """(out_features, in_features) of a 2-D weight whose rows hold whole 64-weight blocks, else LayoutError."""
    layout._require_2d(shape, tensor)
    m, k = shape
    if k % QK:
        raise LayoutError(f"{layout.ggml_type} needs in_features % 64 == 0 (got {k}); each row is a row scale plus "
                          "whole 64-weight blocks", tensor=tensor, shape=shape,
                          hint="leave this tensor unconverted or pick another --type")
    return m, k


def stored_scale(scale: float, dtype: np.dtype, ggml_type: str, tensor: str | None) -> np.ndarray:
    """The row scale as stored (float32 or fp16, 1 element); LayoutError when it has no positive finite value."""
    s = np.float32(scale)
    with np.errstate(over="ignore"):
        d = np.array([s], dtype=np.float32).astype(dtype)
    if not (np.isfinite(s) and s > 0 and np.isfinite(d[0]) and d[0] > 0):
        kind = "fp16" if np.dtype(dtype).itemsize == 2 else "float32"
        raise LayoutError(f"{ggml_type} stores the row scale as {kind}; scale {float(s)!r} has no positive finite "
                          f"{kind} value", tensor=tensor, hint="the scale must lie in (6e-8, 65504]"
                          if kind == "fp16" else None)
    return d


def row_trits(t: Ternary, dtype: np.dtype, ggml_type: str, tensor: str | None = None) \
        -> tuple[np.ndarray, np.ndarray]:
    """(trits uint8 [M, K] = code + 1, row scales [M] of `dtype`), all-zero rows as ik writes them (d 0, trits 2)."""
    codes = np.asarray(t.codes, dtype=np.int8)
    trits = (codes + 1).view(np.uint8)
    live = codes.any(axis=1)
    d = np.zeros(codes.shape[0], dtype=dtype)
    if live.any():
        d[live] = stored_scale(t.scale, dtype, ggml_type, tensor)[0]
    if not live.all():
        trits[~live] = 2
    return trits, d


def ternary_from_rows(trits: np.ndarray, d: np.ndarray, shape: tuple[int, ...], ggml_type: str) -> Ternary:
    """Codes and the one tensor scale from trits [M, K] and row scales [M]; rows with d = 0 decode to 0."""
    d = d.astype(np.float32)
    if not bool(np.isfinite(d).all()) or bool((d < 0).any()):
        raise FormatError(f"{ggml_type} row scales hold a negative or non-finite value; the file is corrupt",
                          shape=tuple(shape))
    live = d != 0
    ds = np.unique(d[live])
    if ds.size > 1:
        raise FormatError(f"{ggml_type} rows carry {ds.size} different scales (e.g. {float(ds[0])!r}, "
                          f"{float(ds[-1])!r}); this is not a ternary tensor with one scale", shape=tuple(shape),
                          hint="it was quantized from non-ternary weights (or by ik's converter with .scale tensors)")
    codes = trits.view(np.int8) - np.int8(1)
    if not live.all():
        codes[~live] = 0
    return Ternary(codes.reshape(shape), np.float32(ds[0]) if ds.size else np.float32(EPS))


class IKBNLayout(Layout):
    """Rows of `[row scale (row_meta bytes)][blocks of 64 weights (block_bytes each)]`; subclasses give the block."""

    ggml_type: ClassVar[str]
    ggml_dialect = "ik_llama.cpp"
    runtime: ClassVar[str] = RUNTIME
    arch_by_activation = IK_DEFAULT_ARCH
    # made like ik's llama-quantize from bitconv's (or bitnet.cpp's) I2_S: the same KVs, file_type in place,
    # quantization_version last; token_embd / output in q8_0 (ik's own Q6_K default cannot be reproduced outside it)
    gguf_tool = "bitnet.cpp"
    quantized = True
    default_embd = "q8_0"
    row_dtype: ClassVar[np.dtype]
    block_bytes: ClassVar[int]
    nominal_bpw: ClassVar[float]  # bits per weight of the blocks (the row scale adds 8*row_meta/in_features)

    @property
    def row_meta(self) -> int:
        """Bytes of the row scale (the size of `row_dtype`)."""
        return self.row_dtype.itemsize

    @classmethod
    def runtime_fact(cls) -> RuntimeFact:
        return IK_RUNTIME[cls.ggml_type]

    def row_bytes(self, k: int) -> int:
        return self.row_meta + k // QK * self.block_bytes

    @classmethod
    def ggml_nbytes(cls, dims: tuple[int, ...]) -> int | None:
        """Rows of the row scale plus whole blocks (gguf-py's size tables omit the row scale)."""
        if not dims or dims[0] % QK:  # ref: ik ggml_row_size = row_meta_size + type_size * ne0/64
            return None
        return (cls.row_dtype.itemsize + dims[0] // QK * cls.block_bytes) * math.prod(dims[1:])

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        m, k = check_in_features(self, shape, tensor)
        return {"data": FieldSpec((m * self.row_bytes(k),), "U8")}

    def _encode(self, trits: np.ndarray) -> np.ndarray:
        """trits uint8 [n, 64] -> block bytes uint8 [n, block_bytes]."""
        raise NotImplementedError

    def _decode(self, blocks: np.ndarray) -> np.ndarray:
        """block bytes uint8 [n, block_bytes] -> trits uint8 [n, 64]."""
        raise NotImplementedError

    def _encode_native(self, ck: object, codes: np.ndarray, out: np.ndarray, nb: int, row_bytes: int) -> bool:
        """Encode every row's blocks with the C kernels into `out` (rows of `row_bytes`, blocks after the row
        scale); False where this layout has no kernel (numpy `_encode` then runs)."""
        return False

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        """The blocks by the C kernel (`_encode_native`) or numpy (`_encode_rows`, about PACK_ROW_CODES codes at a
        time: the temporaries stay cache-sized), then the row scales; all-zero rows are then rewritten as ik writes
        them (d = 0, every trit 2)."""
        m, k = check_in_features(self, t.shape, None)
        codes = np.ascontiguousarray(t.codes, dtype=np.int8).reshape(m, k)
        meta, nb = self.row_meta, k // QK
        out = np.empty((m, self.row_bytes(k)), dtype=np.uint8)
        live = np.empty(m, dtype=bool)
        step = max(1, PACK_ROW_CODES // k)
        ck = native.kernels()
        if ck is not None and self._encode_native(ck, codes.reshape(-1), out.reshape(-1), nb, self.row_bytes(k)):
            # the same block bytes in one C pass (bitconv/_ckernels.c); a row is live when a code is non-zero
            for r0 in range(0, m, step):
                np.any(codes[r0:r0 + step].view(np.uint64) != 0, axis=1, out=live[r0:r0 + step])
        else:
            self._encode_rows(codes, out, live, step)
        d = np.zeros(m, dtype=self.row_dtype)
        if live.any():
            d[live] = stored_scale(t.scale, self.row_dtype, self.ggml_type, None)[0]
        out[:, :meta] = d.view(np.uint8).reshape(m, meta)
        if not live.all():
            dead = np.full((1, QK), 2, dtype=np.uint8)  # ik's bytes for an all-zero row: every trit 2
            out[~live, meta:] = np.tile(self._encode(dead).reshape(-1), nb)
        return {"data": out.reshape(-1)}

    def _encode_rows(self, codes: np.ndarray, out: np.ndarray, live: np.ndarray, step: int) -> None:
        """numpy: `step` rows at a time, trits t = code + 1 (a uint8 add on the codes' bytes) encoded by `_encode`
        into the rows after their scale; `live[r]` = row r holds a non-zero code (a trit other than 1)."""
        m, k = codes.shape
        meta, nb = self.row_meta, k // QK
        buf = np.empty(min(m, step) * k, dtype=np.uint8)
        for r0 in range(0, m, step):
            r1 = min(m, r0 + step)
            trits = buf[:(r1 - r0) * k]
            np.add(codes[r0:r1].view(np.uint8).reshape(-1), 1, out=trits)  # bytewise: -1 (0xFF) -> 0, 0 -> 1, 1 -> 2
            words = trits.view(np.uint64).reshape(r1 - r0, k // 8)
            np.any(words != np.uint64(0x0101010101010101), axis=1, out=live[r0:r1])
            out[r0:r1, meta:] = self._encode(trits.reshape(-1, QK)).reshape(r1 - r0, nb * self.block_bytes)

    def _rows(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        (nbytes,) = self.spec(shape)["data"].shape
        data = np.asarray(fields["data"], dtype=np.uint8).reshape(-1)
        if data.size != nbytes:
            raise LayoutError(f"{self.ggml_type} data is {data.size} bytes, expected {nbytes}", shape=tuple(shape))
        return data.reshape(shape[0], -1)

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        rows = self._rows(fields, shape)
        d = np.ascontiguousarray(rows[:, :self.row_meta]).view(self.row_dtype).reshape(-1)
        trits = self._decode(rows[:, self.row_meta:].reshape(-1, self.block_bytes))
        return ternary_from_rows(trits.reshape(shape), d, shape, self.ggml_type)
