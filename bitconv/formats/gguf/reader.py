"""A strict GGUF reader: header, metadata and tensor infos, validated against the file before any data is read.

Every length, count and offset is checked against the file size, so a truncated or corrupt file gives a one-line
`SourceError` (wrong magic, unsupported version, truncated file, string or array larger than the file, unknown
value or tensor type, tensor data out of range, misaligned or overlapping) instead of a crash or a huge allocation.

Ids 36-39 and 42 mean different types in upstream ggml and in bitnet.cpp's fork (see types.py). `dialect` picks one:
"bitnet.cpp", "upstream", or "auto" (default): the fork when the architecture is a BitNet one (`bitnet*`) or a
fork-only id (I2_S 36, TL1 38) occurs, else the dialect under which every tensor fits the file (upstream on a tie).
# ref: ggml docs/gguf.md; gguf-py gguf_reader.py; spec gguf-upstream.md §1.7
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitconv.core import safeio
from bitconv.core.errors import FormatError, SourceError, UsageError
from bitconv.formats.gguf.ggml_types import UPSTREAM_MEANING, GGMLType
from bitconv.formats.gguf.kv import KV, SCALARS, ValueType
from bitconv.formats.gguf.types import ALIGNMENT, DIALECTS, by_id, fork_only_ids, forked_ids, pad, tensor_nbytes
from bitconv.formats.gguf.writer import MAGIC
from bitconv.formats.safetensors import pread_exact

VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: `dims` in ggml order (ne0 first), `offset` absolute in the file."""

    name: str
    dims: tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """PyTorch / HF order (ne reversed): a weight's (out_features, in_features)."""
        return tuple(reversed(self.dims))

    @property
    def numel(self) -> int:
        return math.prod(self.dims)


@dataclass
class GGUFFile:
    path: Path
    version: int
    alignment: int
    data_start: int
    size: int
    dialect: str  # the resolved dialect ("bitnet.cpp" or "upstream")
    kvs: dict[str, KV] = field(default_factory=dict)
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        kv = self.kvs.get(key)
        return default if kv is None else kv.python()

    @property
    def arch(self) -> str:
        return str(self.get("general.architecture", ""))

    def read(self, tensor: str | GGUFTensor, out: np.ndarray | None = None) -> np.ndarray:
        """A tensor's raw bytes (uint8, 1-D)."""
        t = tensor if isinstance(tensor, GGUFTensor) else self.tensors[tensor]
        buf = np.empty(t.nbytes, dtype=np.uint8) if out is None else out.reshape(-1).view(np.uint8)[: t.nbytes]
        pread_exact(self.path, t.offset, memoryview(buf), t.name)
        return buf


# Caps on what a header may make bitconv hold: the metadata (KV) area, parsed into Python objects at a few times its
# size, and the tensor count. A real model's KVs (a 256k-token vocabulary and its merges included) take < 20 MiB.
MAX_KV_BYTES = 64 << 20
MAX_TENSORS = 1 << 20


class _Cursor:
    """Bounds-checked little-endian reads from a memory map."""

    def __init__(self, mm: mmap.mmap | bytes, path: Path) -> None:
        self.mm, self.pos, self.size, self.path = mm, 0, len(mm), path
        self.kv_limit = self.size  # set by _parse: where the capped metadata area must end

    def check_kv_cap(self, key: str, extra: int = 0) -> None:
        if self.pos + extra > self.kv_limit:
            raise SourceError(f"GGUF metadata ({key!r} at byte {self.pos}) runs past the {MAX_KV_BYTES >> 20} MiB "
                              "bitconv reads for metadata; real models need a few MiB", path=self.path,
                              hint="not a model file bitconv can read")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(f"truncated GGUF: {what} at byte {self.pos} needs {n} bytes but the file has "
                              f"{self.size}", path=self.path, hint="the file is incomplete; fetch or write it again")

    def scalar(self, vtype: ValueType, what: str) -> Any:
        fmt, dt = SCALARS[vtype]
        self.need(dt.itemsize, what)
        (v,) = struct.unpack_from(fmt, self.mm, self.pos)
        self.pos += dt.itemsize
        return v

    def u32(self, what: str) -> int:
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        if n > self.size - self.pos:
            raise FormatError(f"truncated or corrupt GGUF: {what} at byte {self.pos} declares {n} bytes but only "
                              f"{self.size - self.pos} remain in the file", path=self.path)
        s = bytes(self.mm[self.pos:self.pos + n]).decode("utf-8", "surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: ValueType, key: str) -> tuple[Any, ValueType | None]:
        if vtype == ValueType.STRING:
            return self.string(f"value of {key!r}"), None
        if vtype != ValueType.ARRAY:
            return self.scalar(vtype, f"value of {key!r}"), None
        itype = _vtype(self.u32(f"array type of {key!r}"), key, self.path)
        count = self.u64(f"array length of {key!r}")
        min_item = 8 if itype == ValueType.STRING else SCALARS.get(itype, ("", np.dtype("u1")))[1].itemsize
        if count * min_item > self.size - self.pos:
            raise FormatError(f"truncated or corrupt GGUF: array {key!r} declares {count} items, more than the "
                              f"{self.size - self.pos} bytes left in the file hold", path=self.path)
        self.check_kv_cap(key, count * min_item)
        if itype == ValueType.STRING:
            items = []
            for i in range(count):
                items.append(self.string(f"item of {key!r}"))
                if not i % 65536:
                    self.check_kv_cap(key)
            self.check_kv_cap(key)
            return items, itype
        if itype == ValueType.ARRAY:
            raise FormatError(f"nested arrays in {key!r} are not supported", path=self.path)
        dt = SCALARS[itype][1]
        arr = np.frombuffer(self.mm, dtype=dt, count=count, offset=self.pos).copy()
        self.pos += count * dt.itemsize
        return arr, itype


def _vtype(v: int, key: str, path: Path) -> ValueType:
    try:
        return ValueType(v)
    except ValueError:
        raise FormatError(f"corrupt GGUF: unknown metadata value type {v} for {key!r}", path=path) from None


def read_gguf(path: str | Path, dialect: str = "auto", *, user_named: bool = True) -> GGUFFile:
    """Parse and validate a GGUF file's header. Tensor data is read later with `GGUFFile.read`."""
    if dialect not in DIALECTS:
        raise UsageError(f"GGUF dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    p = Path(path)
    try:
        with safeio.opened(p, user_named=user_named) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                head = f.read(4)
                if head[:4] != MAGIC[: len(head)] or not head:
                    raise FormatError(f"not a GGUF file (starts with {head!r}, expected {MAGIC!r})", path=p)
                raise FormatError(f"truncated GGUF: {size} bytes, shorter than the 24-byte header", path=p)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(_Cursor(mm, p), p, dialect)
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path=p) from None


def _parse(c: _Cursor, path: Path, dialect: str) -> GGUFFile:
    magic = bytes(c.mm[:4])
    if magic != MAGIC:
        raise FormatError(f"not a GGUF file (starts with {magic!r}, expected {MAGIC!r})", path=path)
    c.pos = 4
    version = c.u32("version")
    if version not in VERSIONS:
        hint = "a big-endian GGUF?" if struct.unpack("<I", struct.pack(">I", version))[0] in VERSIONS else None
        raise FormatError(f"GGUF version {version} is not supported (bitconv reads versions 2 and 3)", path=path,
                          hint=hint)
    n_tensors, n_kv = c.u64("tensor count"), c.u64("metadata count")
    if n_tensors > c.size // 24 or n_kv > c.size // 12:
        raise FormatError(f"corrupt GGUF: header declares {n_tensors} tensors and {n_kv} metadata pairs, more "
                          "than the file can hold", path=path)
    if n_tensors > MAX_TENSORS:
        raise SourceError(f"corrupt GGUF: header declares {n_tensors} tensors; bitconv reads at most {MAX_TENSORS}",
                          path=path)
    kvs: dict[str, KV] = {}
    c.kv_limit = c.pos + MAX_KV_BYTES
    for _ in range(n_kv):
        key = c.string("metadata key")
        if not key:
            raise FormatError("corrupt GGUF: a metadata key is empty (ggml's loader refuses it)", path=path)
        if key in kvs:
            raise FormatError(f"corrupt GGUF: metadata key {key!r} appears twice (ggml's loader refuses duplicate "
                              "keys)", path=path, hint="rewrite the file; each key must be written once")
        vtype = _vtype(c.u32(f"type of {key!r}"), key, path)
        value, itype = c.value(vtype, key)
        c.check_kv_cap(key)
        kvs[key] = KV(key, vtype, value, itype)
    raw = [_tensor_info(c, path) for _ in range(n_tensors)]
    align = _alignment(kvs, path)
    data_start = pad(c.pos, align)
    arch = str(kvs["general.architecture"].value) if "general.architecture" in kvs else ""
    resolved = _resolve_dialect(dialect, arch, raw, data_start, c.size, align, path)
    tensors = _place(raw, resolved, data_start, c.size, align, path)
    return GGUFFile(path, version, align, data_start, c.size, resolved, kvs, tensors)


def _alignment(kvs: dict[str, KV], path: Path) -> int:
    """general.alignment as ggml reads it: a UINT32 holding a non-zero power of two (default 32).
    # ref: ggml/src/gguf.cpp gguf_init_from_reader: "must be of type u32", "alignment %zu is not a power of 2"
    """
    kv = kvs.get("general.alignment")
    if kv is None:
        return ALIGNMENT
    if kv.type != ValueType.UINT32:
        raise FormatError(f"corrupt GGUF: general.alignment is stored as {kv.type.name}; ggml's loader requires "
                          "UINT32", path=path)
    if kv.value <= 0 or kv.value & (kv.value - 1):
        raise FormatError(f"corrupt GGUF: general.alignment {kv.value} is not a power of two", path=path)
    return int(kv.value)


GGML_MAX_NAME = 64  # ggml.h: tensor names are at most 63 bytes


def _tensor_info(c: _Cursor, path: Path) -> tuple[str, tuple[int, ...], int, int]:
    name = c.string("tensor name")
    if len(name.encode("utf-8", "surrogateescape")) >= GGML_MAX_NAME:
        raise FormatError(f"corrupt GGUF: tensor name of {len(name)} bytes (ggml allows {GGML_MAX_NAME - 1})",
                          path=path, tensor=name[:80])
    n_dims = c.u32(f"dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        raise FormatError(f"corrupt GGUF: {n_dims} dimensions (ggml allows {MAX_DIMS})", path=path, tensor=name)
    dims = tuple(c.u64(f"dimensions of {name!r}") for _ in range(n_dims))
    return name, dims, c.u32(f"type of {name!r}"), c.u64(f"offset of {name!r}")


def _resolve_dialect(dialect: str, arch: str, raw: list, data_start: int, size: int, align: int, path: Path) -> str:
    if dialect != "auto":
        return dialect
    ids = {r[2] for r in raw}
    if arch.startswith("bitnet") or ids & fork_only_ids():
        return "bitnet.cpp"
    if ids & forked_ids() and not _fits(raw, "upstream", data_start, size, align, path) \
            and _fits(raw, "bitnet.cpp", data_start, size, align, path):
        return "bitnet.cpp"
    return "upstream"


def _fits(raw: list, dialect: str, data_start: int, size: int, align: int, path: Path) -> bool:
    try:
        _place(raw, dialect, data_start, size, align, path)
    except FormatError:
        return False
    return True


def _place(raw: list, dialect: str, data_start: int, size: int, align: int, path: Path) -> dict[str, GGUFTensor]:
    """Resolve types and byte sizes; check the data lies inside the file exactly where ggml's loader expects it:
    in tensor-info order, each tensor padded to the alignment, no gaps or overlaps."""
    out: dict[str, GGUFTensor] = {}
    expected = 0  # ref: ggml/src/gguf.cpp "tensor '%s' has offset %" PRIu64 ", expected %zu"
    for name, dims, type_id, rel in raw:
        t = by_id(type_id, dialect)
        if t is None:
            meaning = f" ({UPSTREAM_MEANING[type_id]} upstream)" if type_id in UPSTREAM_MEANING else ""
            hint = "a bitnet.cpp file? open it with the bitnet.cpp dialect" if dialect == "upstream" and meaning \
                else None
            raise FormatError(f"unknown GGML type id {type_id}{meaning} for the {dialect} dialect", path=path,
                              tensor=name, hint=hint)
        nbytes = tensor_nbytes(t, dims)
        if nbytes is None:
            raise FormatError(f"{t.name} needs ne0 % {t.block_size} == 0, dims are {list(dims)}", path=path,
                              tensor=name)
        if name in out:
            raise FormatError("corrupt GGUF: tensor name appears twice (ggml's loader refuses duplicates)", path=path,
                              tensor=name)
        if rel % align:
            raise FormatError(f"corrupt GGUF: data offset {rel} is not a multiple of the alignment {align}",
                              path=path, tensor=name)
        end = data_start + rel + nbytes
        if end > size:
            raise FormatError(f"tensor data ends at byte {end} but the file has {size}: offset out of range or "
                              "truncated file", path=path, tensor=name, hint="the file is incomplete or corrupt")
        if rel != expected:
            why = ("overlaps the previous tensor's data" if rel < expected else "is out of tensor-info order or "
                   "follows a gap")
            raise FormatError(f"corrupt GGUF: data offset {rel} {why}: ggml's loader expects {expected} (tensor data "
                              f"follows the tensor infos in order, each padded to the alignment {align})", path=path,
                              tensor=name, hint="ggml's loader refuses this file; rewrite it")
        out[name] = GGUFTensor(name, dims, t, data_start + rel, nbytes)
        expected = rel + pad(nbytes, align)
    return out
