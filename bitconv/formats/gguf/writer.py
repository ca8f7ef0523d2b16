"""A streaming GGUF v3 writer: the whole header is known up front, then tensor data arrives one tensor at a time.

File layout (little-endian), byte-compatible with gguf-py's `GGUFWriter` and the bitnet.cpp fork's writer:

    "GGUF" | u32 version = 3 | u64 tensor count | u64 KV count
    KV pairs (see kv.py), in the given order
    tensor infos: name (STRING) | u32 n_dims | u64 ne[n_dims] (ne0 = fastest = in_features) | u32 type | u64 offset
    zero padding to the alignment
    tensor data, each at `offset` (relative to the data start, a multiple of the alignment), zero-padded after

Unlike gguf-py's writer, any type id can be written (the fork's I2_S=36, TL1=38, TL2=39/42 included): the caller
gives each tensor's byte size, so nothing depends on a block-size table.
# ref: ggml docs/gguf.md; gguf-py gguf_writer.py write_header_to_file / write_ti_data_to_file / write_padding
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitconv.core.errors import OutputError
from bitconv.formats.gguf.kv import KV, encode_string
from bitconv.formats.gguf.types import ALIGNMENT, pad

MAGIC = b"GGUF"
VERSION = 3


@dataclass(frozen=True)
class TensorEntry:
    """One tensor-info entry: GGUF name, ggml dims (ne0 first), type id and the data's byte size."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    nbytes: int


def build_header(kvs: Iterable[KV], tensors: list[TensorEntry], alignment: int = ALIGNMENT) -> tuple[bytes, list[int]]:
    """Header + KVs + tensor infos + padding, and each tensor's offset relative to the data start."""
    kvs = list(kvs)
    offsets, off = [], 0
    for t in tensors:
        offsets.append(off)
        off += pad(t.nbytes, alignment)
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(kvs))]
    parts += [kv.encode() for kv in kvs]
    for t, o in zip(tensors, offsets):
        parts.append(encode_string(t.name) + struct.pack(f"<I{len(t.dims)}QIQ", len(t.dims), *t.dims, t.type_id, o))
    head = b"".join(parts)
    return head + bytes(pad(len(head), alignment) - len(head)), offsets


class GGUFWriter:
    """Open with every KV and tensor entry known (from a plan); `write` each tensor once, in order; `close`.

    Out-of-order or mis-sized writes raise `RuntimeError` naming the expected and the actual tensor (a bug in the
    caller, not a user error). `close` refuses to finish a file in which a tensor was not written.
    """

    def __init__(self, path: str | Path, kvs: Iterable[KV], tensors: Iterable[TensorEntry],
                 alignment: int = ALIGNMENT, header: tuple[bytes, list[int]] | None = None) -> None:
        self.path = Path(path)
        self.tensors = list(tensors)
        self.alignment = alignment
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in a GGUF plan")
        header, offsets = build_header(kvs, self.tensors, alignment) if header is None else header
        self.data_start = len(header)
        self.offsets = [self.data_start + o for o in offsets]
        self.size = self.data_start + (offsets[-1] + pad(self.tensors[-1].nbytes, alignment) if self.tensors else 0)
        self._next = 0
        self._done = 0
        try:
            self._f = open(self.path, "wb")  # noqa: SIM115 (closed by close/abort)
            self._f.write(header)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path) from None

    def write(self, name: str, data: np.ndarray | bytes | Iterator[np.ndarray]) -> None:
        """Write the next tensor's bytes (exactly its planned size; an iterator of parts is concatenated), then its
        alignment padding."""
        parts = [data] if isinstance(data, (np.ndarray, bytes, bytearray, memoryview)) else data
        self.begin(name)
        for part in parts:
            self.write_part(part)
        self.end()

    def begin(self, name: str) -> None:
        """Start the next tensor (`write_part` its bytes in order, then `end`)."""
        if self._next >= len(self.tensors):
            raise RuntimeError(f"writer state: {name!r} written after the last tensor ({self.path})")
        t = self.tensors[self._next]
        if name != t.name:
            raise RuntimeError(f"writer state: expected {t.name!r}, got {name!r}")
        self._done = 0

    def write_part(self, part: np.ndarray | bytes | bytearray | memoryview) -> None:
        t = self.tensors[self._next]
        buf = memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8)) \
            if isinstance(part, np.ndarray) else memoryview(part)
        self._done += buf.nbytes
        if self._done > t.nbytes:
            raise RuntimeError(f"writer state: {t.name!r} expects {t.nbytes} bytes, got more")
        try:
            self._f.write(buf)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path, tensor=t.name) from None

    def end(self) -> None:
        t = self.tensors[self._next]
        if self._done != t.nbytes:
            raise RuntimeError(f"writer state: {t.name!r} expects {t.nbytes} bytes, got {self._done}")
        try:
            self._f.write(bytes(pad(t.nbytes, self.alignment) - t.nbytes))
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path, tensor=t.name) from None
        self._next += 1

    def close(self, fsync: bool = False) -> None:
        if self._f.closed:
            return
        if self._next != len(self.tensors):
            self.abort()
            raise RuntimeError(f"writer state: closed before {self.tensors[self._next].name!r} was written")
        try:
            self._f.flush()
            if fsync:
                os.fsync(self._f.fileno())
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path) from None
        finally:
            self._f.close()

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()


def write_gguf(path: str | Path, kvs: Iterable[KV], tensors: Iterable[tuple[TensorEntry, np.ndarray | bytes]],
               alignment: int = ALIGNMENT) -> None:
    """Write a whole small GGUF at once (tests, tools): `tensors` pairs each entry with its bytes."""
    pairs = list(tensors)
    w = GGUFWriter(path, kvs, [e for e, _ in pairs], alignment)
    try:
        for e, data in pairs:
            w.write(e.name, data)
    except BaseException:
        w.abort()
        raise
    w.close()
