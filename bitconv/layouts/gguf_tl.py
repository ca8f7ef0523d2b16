"""bitnet.cpp's TL1 (ARM) and TL2 (x86) GGUF tensor data: LUT-kernel tile order + a hidden float32 scale slot.

Both layouts store the ternary weight t [M, K] (M = out_features = ne1, K = in_features = ne0) in the order the
kernel compiled for (M, K) reads it, tiled by (BM, BK, bm) from a `KernelConfig` (`bitconv.layouts.kernel_config`).

| field  | shape                | dtype | meaning                                                                  |
|--------|----------------------|-------|--------------------------------------------------------------------------|
| `data` | [pad32(P) + 32]      | U8    | GGUF tensor bytes as the fork's writer leaves them:                      |
|        |   [0, P)             |       |   packed tiles (below); TL2: content zero-padded to P = NB               |
|        |   [P, pad32(P))      |       |   zeros                                                                  |
|        |   [pad32(P), +4)     |       |   float32 LE magnitude scale (the converter's hidden `<name>_scale`)     |
|        |   [pad32(P)+4, +32)  |       |   28 zero bytes                                                          |

TL1: P = M*K/4. Pair index idx(m, p) = 3*t[m, 2p] + t[m, 2p+1] + 4 (0..8), two per byte (first one in the high
nibble). Bytes follow the loop nest tm < M/BM, tk < K/BK, sm < BM/bm, sk < BK/by, g < bm/16, q < by/4, i < 16
(by = 256/bm) with m = tm*BM + sm*bm + 16g + i and first pair p0 = tk*BK/2 + sk*by/2 + 2q.

TL2 (bm = 32, K3 = K - K%BK, K2 = K%BK), P = NB = (K-256)*M/3*5/8 + 256*M/2*4/8 in C integer arithmetic:
  1. magnitudes a = |9t0 + 3t1 + t2| (0..13) of column triplets in [0, K3), two per byte (high nibble first), for
     tm, tk < K3/BK, sm < BM/32, sk < BK/6, p < 32: m = tm*BM + 32sm + 8*SIG[p//8] + p%8, s0 = tk*BK/3 + 2sk,
     SIG = (0, 2, 1, 3);
  2. then the signs (v < 0) as uint16 LE words, for tm, tk, sm, c < BK/24, j < 16: bit 15-i (i < 16) is the sign of
     row tm*BM + 32sm + 16*(i%2) + j, triplet tk*BK/3 + 8c + i//2;
  3. then, if K2 > 0, the columns [K3, K) as TL1-style pair indices with tiles of 32 columns and rows in SIG order:
     tm, tk < K2/32, sm, sk < 8, p < 32: m as in 1., p0 = 16tk + 2sk.
  The content (M*K3*5/24 + M*K2/4 bytes) is zero-padded to NB.

GGUF tensor info: dims (K, M); type TL1 = 38; TL2 = 39 (bitnet.cpp before mid-2026) or 42 (current fork; option
`type_id=42`). The `<name>_scale` tensor gets no tensor-info entry: its 32 bytes are part of `data` here.

Worked example (TL1, one 32x16 tile, BM = bm = 32, BK = 16): byte 0 = pairs (row 0, cols 0-1) and (row 0, cols 2-3);
row 0 = (+1, -1, 0, 0, ...) gives idx 3*1 - 1 + 4 = 6 and 3*0 + 0 + 4 = 4, so byte 0 = 0x64; byte 1 is row 1.
# ref: microsoft/BitNet utils/convert-hf-to-gguf-bitnet.py transform_to_tl1 / transform_to_tl2 and the patched
#      gguf_writer (fork merge-dev l.225-268); utils/codegen_tl{1,2}.py gen_transform_code; spec gguf-bitnet-cpp.md
#      §3.4-3.7
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from bitconv.core import native
from bitconv.core.errors import LayoutError, UsageError
from bitconv.core.tensors import FieldSpec, Ternary, checked_scale
from bitconv.formats.gguf.ggml_types import GGMLType
from bitconv.layouts.gguf_i2s import SCALE_SLOT, fork_2bit_nbytes, read_scale, scale_slot
from bitconv.layouts.kernel_config import KernelConfig, KernelEntry, derive_entry
from bitconv.layouts.registry import Layout
from bitconv.layouts.runtimes import BITNET_2024, BITNET_2026_01, BITNET_2026_07, IK_LLAMA, LLAMA_CPP

SIG = np.array([0, 2, 1, 3])  # row-group swizzle inside each 32-row TL2 group (its own inverse)
_TL1_PERM = (0, 4, 1, 5, 2, 6, 3, 7)
_SIG_PERM = (0, 4, 1, 5, 2, 3, 6)
_SIGN_PERM = (0, 4, 1, 5, 3, 6, 2)


def _pad32(n: int) -> int:
    return (n + 31) // 32 * 32


def tl2_payload_nbytes(M: int, K: int) -> int:
    """TL2 packed size NB of ggml_nbytes, before the 32-byte rounding (C integer arithmetic, left to right)."""
    # ref: fork ggml/src/ggml.c ggml_nbytes (merge-dev l.3472-3494); spec gguf-bitnet-cpp.md §1.1
    return _cdiv(_cdiv((K - 256) * M, 3) * 5, 8) + 256 * M // 2 * 4 // 8


def _cdiv(a: int, b: int) -> int:
    """C division (truncates toward zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _nibbles(pairs: np.ndarray) -> np.ndarray:
    """[..., 2] values 0..15 -> flat bytes, first value in the high nibble."""
    return ((pairs[..., 0] << 4) | pairs[..., 1]).reshape(-1)


def _split_nibbles(b: np.ndarray) -> np.ndarray:
    return np.stack([b >> 4, b & 15], axis=-1)


def _pair_index(t: np.ndarray) -> np.ndarray:
    """codes [M, 2P] -> idx = 3*t[:, 2p] + t[:, 2p+1] + 4, uint8 [M, P] (computed mod 256 on the codes' bytes:
    exact, the true value lies in 0..8)."""
    u = np.ascontiguousarray(t, dtype=np.int8).view(np.uint8)
    idx = np.multiply(u[:, 0::2], 3)
    np.add(idx, u[:, 1::2], out=idx)
    np.add(idx, 4, out=idx)
    return idx


_TL1_MUL = np.uint32(1 + (3 << 8) + (16 << 16) + (48 << 24))


def _tl1_bytes(codes: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """codes [R, K] -> the TL1 byte of every 4 consecutive codes, [R, K/4] (a strided view into `buf`).

    byte = (idx(c0, c1) << 4) | idx(c2, c3) with idx = 3a + b + 4 = 3(a+1) + (b+1), so with trits t = c + 1 it is
    48 t0 + 16 t1 + 3 t2 + t3: byte 3 of the little-endian word (t0, t1, t2, t3) times _TL1_MUL. Every partial sum
    in bytes 0..3 stays <= 136 (t <= 2), so no byte carries into the next: two vectorised passes."""
    np.add(codes.reshape(-1).view(np.uint8), 1, out=buf)
    w = buf.view(np.uint32)
    np.multiply(w, _TL1_MUL, out=w)
    return buf.reshape(codes.shape[0], -1)[:, 3::4]


PACK_ROW_CODES = 1 << 21  # codes per row chunk when packing (tile rows come whole): temporaries stay a few MB


def _chunk_rows(K: int, BM: int) -> int:
    """Rows per packing chunk: whole BM-row tiles (the tile loops run tm outermost, so each chunk's bytes are one
    contiguous range of every part), about PACK_ROW_CODES codes."""
    return BM * max(1, PACK_ROW_CODES // max(1, BM * K))


def _pair_codes(idx: np.ndarray, tensor: str | None) -> np.ndarray:
    """uint8 idx [M, P] (0..8) -> codes [M, 2P]."""
    if bool((idx > 8).any()):
        raise LayoutError("TL data holds a pair index > 8, which no ternary pair makes", tensor=tensor,
                          hint="the file is corrupt, or the kernel config does not match the one it was packed with")
    out = np.empty((idx.shape[0], 2 * idx.shape[1]), dtype=np.int8)
    out[:, 0::2] = idx // 3
    out[:, 1::2] = idx % 3
    out -= 1
    return out


# byte -> its 8 bits spread to the even bit positions of a uint16 (bit k -> bit 2k)
_SPREAD = np.zeros(256, dtype=np.uint16)
for _k in range(8):
    _SPREAD |= ((np.arange(256, dtype=np.uint16) >> _k) & 1) << (2 * _k)


def _sign_words(neg: np.ndarray, BM: int, BK: int) -> np.ndarray:
    """Sign bits [R, K3/3] (R % BM == 0) -> TL2's uint16 LE sign words in tile order (tm, tk, sm, c, j); bit 15-i
    of a word is the sign of row 32sm + 16*(i%2) + j, triplet 8c + i//2 of the tile.

    The 8 triplets of each (row, c) are contiguous, so they are packed into one byte first (flat packbits, MSB =
    triplet 0); a word interleaves the bytes of its two row halves (bits of half 0 at the odd positions 15, 13, ..).
    """
    R, t = neg.shape
    b = np.packbits(np.ascontiguousarray(neg).reshape(-1), bitorder="big")
    b = b.reshape(R // BM, BM // 32, 2, 16, t // (BK // 3), BK // 24)  # tm, sm, half, j, tk, c
    w = _SPREAD[b[:, :, 0]] << 1
    w |= _SPREAD[b[:, :, 1]]  # tm, sm, j, tk, c
    return np.ascontiguousarray(w.transpose(0, 3, 1, 4, 2)).astype("<u2", copy=False).reshape(-1)


def _sig_tiles(vals: np.ndarray, BM: int, per_tile: int) -> np.ndarray:
    """[M, P] nibble values -> bytes in TL2 tile order (rows in SIG order, `per_tile` values per column tile)."""
    M, P = vals.shape
    a = vals.reshape(M // BM, BM // 32, 4, 8, P // per_tile, per_tile // 2, 2)[:, :, SIG]
    return _nibbles(a.transpose(_SIG_PERM))


def _sig_untiles(b: np.ndarray, M: int, P: int, BM: int, per_tile: int) -> np.ndarray:
    a = _split_nibbles(b).reshape(M // BM, P // per_tile, BM // 32, per_tile // 2, 4, 8, 2)
    return a.transpose(_inverse(_SIG_PERM))[:, :, SIG].reshape(M, P)


class _GGUFTL(Layout):
    """Shared by TL1/TL2: the kernel config, its lookup, and the scale slot."""

    kind: ClassVar[str]
    needs_kernel_config = True
    ggml_type: ClassVar[str]
    ggml_dialect = "bitnet.cpp"
    gguf_tool = "bitnet.cpp"

    def __init__(self, kernel_config: KernelConfig | str | Path | None = None) -> None:
        if isinstance(kernel_config, (str, Path)):
            kernel_config = KernelConfig.from_ini(kernel_config)
        self.kernel_config = None if kernel_config is None else kernel_config.with_kind(self.kind)

    def entry(self, shape: tuple[int, ...], tensor: str | None = None) -> KernelEntry:
        """The tiling used for a weight of `shape` (the given config's entry, or derived when there is none)."""
        self._require_2d(shape, tensor)
        if self.kernel_config is not None:
            return self.kernel_config.lookup(shape, tensor)
        return derive_entry(self.kind, shape[0], shape[1], tensor)

    def payload_nbytes(self, e: KernelEntry) -> int:
        raise NotImplementedError

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        e = self.entry(shape, tensor)
        return {"data": FieldSpec((_pad32(self.payload_nbytes(e)) + SCALE_SLOT,), "U8")}

    def _output(self, e: KernelEntry, scale: float) -> np.ndarray:
        """The field's bytes, zeroed, with the scale slot in place; the packers fill the content a chunk at a time."""
        pos = _pad32(self.payload_nbytes(e))
        out = np.zeros(pos + SCALE_SLOT, dtype=np.uint8)
        out[pos:] = scale_slot(scale)
        return out

    def _data(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, KernelEntry]:
        e = self.entry(shape)
        data = np.asarray(fields["data"], dtype=np.uint8).reshape(-1)
        want = _pad32(self.payload_nbytes(e)) + SCALE_SLOT
        if data.size != want:
            raise LayoutError(f"{self.ggml_type} data is {data.size} bytes, expected {want}", shape=tuple(shape))
        return data, e


class GGUFTL1(_GGUFTL, name="gguf-tl1", container="gguf"):
    description = "bitnet.cpp TL1 (ggml type 38, ARM LUT kernels): 4-bit pair indices in kernel tile order"
    kind = kernel_kind = "tl1"
    ggml_type: ClassVar[str] = "TL1"
    ggml_type_id: ClassVar[int] = 38
    file_type: ClassVar[int] = 38
    runtime_support = {"TL1": {
        LLAMA_CPP: "type id 38 is a removed type upstream: the file does not load",
        BITNET_2024: "", BITNET_2026_01: "", BITNET_2026_07: "", IK_LLAMA: "type id 38 is unknown to ik_llama.cpp"}}

    @classmethod
    def ggml_nbytes(cls, dims: tuple[int, ...]) -> int:
        return fork_2bit_nbytes(dims)

    def payload_nbytes(self, e: KernelEntry) -> int:
        return e.M * e.K // 4

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        e = self.entry(t.shape)
        (M, K), BM, BK, bm = t.shape, e.BM, e.BK, e.bm
        by = 256 // bm
        codes = np.ascontiguousarray(t.codes, dtype=np.int8)
        out = self._output(e, t.scale)
        step = _chunk_rows(K, BM)
        buf = np.empty(min(M, step) * K, dtype=np.uint8)
        for r0 in range(0, M, step):
            r1 = min(M, r0 + step)
            b = _tl1_bytes(codes[r0:r1], buf[:(r1 - r0) * K])
            a = b.reshape((r1 - r0) // BM, BM // bm, bm // 16, 16, K // BK, BK // by, by // 4)
            dst = out[r0 * K // 4:r1 * K // 4].reshape((r1 - r0) // BM, K // BK, BM // bm, BK // by, bm // 16,
                                                      by // 4, 16)
            np.copyto(dst, a.transpose(_TL1_PERM[:7]))
        return {"data": out}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        data, e = self._data(fields, shape)
        (M, K), BM, BK, bm = shape, e.BM, e.BK, e.bm
        by = 256 // bm
        n = self.payload_nbytes(e)
        a = _split_nibbles(data[:n]).reshape(M // BM, K // BK, BM // bm, BK // by, bm // 16, by // 4, 16, 2)
        idx = a.transpose(_inverse(_TL1_PERM)).reshape(M, K // 2)
        codes = _pair_codes(idx, None)
        return Ternary(codes, checked_scale(read_scale(data, _pad32(n)), codes, stored="TL1 scale"))


class GGUFTL2(_GGUFTL, name="gguf-tl2", container="gguf"):
    description = "bitnet.cpp TL2 (ggml type 39, or 42 in the current fork; x86 LUT kernels): triplets + signs"
    kind = kernel_kind = "tl2"
    ggml_type: ClassVar[str] = "TL2"
    ggml_type_id: ClassVar[int] = 39  # bitnet.cpp before mid-2026 (upstream: MXFP4)
    file_type: ClassVar[int] = 39
    ggml_aliases: ClassVar[tuple[str, ...]] = ("TL2_42",)  # the current fork's id 42 (upstream: Q2_0), same bytes
    ALIAS_IDS: ClassVar[dict[str, int]] = {"TL2_42": 42}
    runtime_support = {
        "TL2": {LLAMA_CPP: "type id 39 is MXFP4 upstream: TL2 bytes would be misread", BITNET_2024: "",
                BITNET_2026_01: "",
                BITNET_2026_07: "type id 39 is MXFP4 in this fork (its TL2 is 42): TL2 bytes would be misread",
                IK_LLAMA: "type id 39 is MXFP4 in ik_llama.cpp"},
        "TL2_42": {LLAMA_CPP: "type id 42 is Q2_0 upstream: TL2 bytes would be misread",
                   BITNET_2024: "type id 42 is unknown to this fork (its TL2 is 39)",
                   BITNET_2026_01: "type id 42 is unknown to this fork (its TL2 is 39)", BITNET_2026_07: "",
                   IK_LLAMA: "type id 42 is unknown to ik_llama.cpp"}}

    @classmethod
    def ggml_nbytes(cls, dims: tuple[int, ...]) -> int:
        k, m = dims[0], math.prod(dims[1:])
        return _pad32(tl2_payload_nbytes(m, k)) + SCALE_SLOT  # ref: ggml_nbytes TL2 case, then the scale slot

    @classmethod
    def ggml_rows(cls) -> tuple[GGMLType, ...]:
        (main,) = super().ggml_rows()
        return (main, *(dataclasses.replace(main, name=n, id=i) for n, i in cls.ALIAS_IDS.items()))

    def __init__(self, kernel_config: KernelConfig | str | Path | None = None, type_id: int = 39) -> None:
        super().__init__(kernel_config)
        names = {r.id: r.name for r in self.ggml_rows()}
        if type_id not in names:
            raise UsageError(f"TL2 type id must be 39 (bitnet.cpp before mid-2026) or 42 (current fork), "
                             f"got {type_id}")
        self.type_id = type_id
        self.ggml_type = names[type_id]  # instance value shadows the class default

    def payload_nbytes(self, e: KernelEntry) -> int:
        return tl2_payload_nbytes(e.M, e.K)

    @staticmethod
    def _split(e: KernelEntry) -> tuple[int, int]:
        k2 = e.K % e.BK
        return e.K - k2, k2

    def _content_nbytes(self, e: KernelEntry, tensor: str | None) -> tuple[int, int, int]:
        k3, k2 = self._split(e)
        sizes = (e.M * k3 // 6, e.M * k3 // 24, e.M * k2 // 4)
        if sum(sizes) > self.payload_nbytes(e):
            raise LayoutError(f"TL2 content ({sum(sizes)} bytes) exceeds ggml_nbytes' {self.payload_nbytes(e)} "
                              f"for K % BK = {k2}", tensor=tensor, shape=e.shape,
                              hint="choose a BK with K % BK <= 224")
        return sizes

    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        out = super().spec(shape, tensor)
        self._content_nbytes(self.entry(shape, tensor), tensor)
        return out

    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        self.spec(t.shape)
        e = self.entry(t.shape)
        M, BM, BK = e.M, e.BM, e.BK
        k3, k2 = self._split(e)
        codes = np.asarray(t.codes, dtype=np.int8)
        n1, n2, _ = self._content_nbytes(e, None)
        out = self._output(e, t.scale)
        ck = native.kernels()
        if ck is not None:  # the same bytes in one C pass (bitconv/_ckernels.c pack_tl2)
            ck.pack_tl2(np.ascontiguousarray(codes).reshape(-1), out, M, e.K, k3, BM, BK)
            return {"data": out}
        step = _chunk_rows(e.K, BM)
        for r0 in range(0, M, step):  # each part's bytes for rows [r0, r1) are one contiguous range
            r1 = min(M, r0 + step)
            R = r1 - r0
            c = codes[r0:r1]
            trip = c[:, :k3].reshape(R, k3 // 3, 3)
            v = 9 * trip[..., 0] + 3 * trip[..., 1] + trip[..., 2]
            out[r0 * k3 // 6:r1 * k3 // 6] = _sig_tiles(np.abs(v).astype(np.uint8), BM, BK // 3)
            out[n1 + r0 * k3 // 24:n1 + r1 * k3 // 24] = _sign_words(v < 0, BM, BK).view(np.uint8)
            if k2:
                out[n1 + n2 + r0 * k2 // 4:n1 + n2 + r1 * k2 // 4] = _sig_tiles(_pair_index(c[:, k3:]), BM, 16)
        return {"data": out}

    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        data, e = self._data(fields, shape)
        M, BM, BK = e.M, e.BM, e.BK
        k3, k2 = self._split(e)
        n1, n2, n3 = self._content_nbytes(e, None)
        mag = _sig_untiles(data[:n1], M, k3 // 3, BM, BK // 3)
        if bool((mag > 13).any()):
            raise LayoutError("TL2 data holds a triplet magnitude > 13, which no ternary triplet makes",
                              shape=tuple(shape), hint="the file is corrupt or was packed with another kernel config")
        words = data[n1:n1 + n2].reshape(-1, 2)[:, ::-1]
        bits = np.unpackbits(np.ascontiguousarray(words), axis=-1, bitorder="big")
        sign = bits.reshape(M // BM, k3 // BK, BM // 32, BK // 24, 16, 8, 2).transpose(_inverse(_SIGN_PERM))
        v = np.where(sign.reshape(M, k3 // 3).astype(bool), -mag.astype(np.int8), mag.astype(np.int8)) + 13
        codes = np.empty((M, e.K), dtype=np.int8)
        codes[:, :k3] = (np.stack([v // 9, v // 3 % 3, v % 3], axis=-1) - 1).reshape(M, k3)
        if k2:
            idx = _sig_untiles(data[n1 + n2:n1 + n2 + n3], M, k2 // 2, BM, 16)
            codes[:, k3:] = _pair_codes(idx, None)
        return Ternary(codes, checked_scale(read_scale(data, _pad32(self.payload_nbytes(e))), codes,
                                            stored="TL2 scale"))
