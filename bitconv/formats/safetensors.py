"""A strict safetensors header reader and a streaming writer, both byte-compatible with the `safetensors` package.

Reading never loads a whole file: the header is validated against the file size (offsets inside the data region,
no overlaps, byte size == shape x item size), and each tensor, or a block of it, is read with `os.pread` into a
caller buffer or mapped privately (`map_range`) for the time it is used.

Writing lays tensors out the way `safetensors.torch.save_file` (0.8) does, so files are byte-identical to it:
# ref: safetensors/src/tensor.rs `prepare`: sort by (dtype alignment descending, name), header JSON without spaces,
# `__metadata__` first, header padded with spaces to a multiple of 8.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitconv.core import dtypes, safeio
from bitconv.core.errors import FormatError, OutputError, SourceError
from bitconv.core.pickled import refuse_pickle, sniff_pickle

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors package enforces
MAX_TENSORS = 1 << 18  # tensors per file (real checkpoints hold a few thousand at most)
_COPY_CHUNK = 64 * 1024 * 1024
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives: absolute byte offset and size inside `path`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header. Returns (tensors by name, `__metadata__`)."""
    path = Path(path)
    fd = safeio.open_input(path)
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"truncated safetensors file ({size} bytes, the 8-byte header length is missing)",
                                  path=path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                pickled = sniff_pickle(head)
                if pickled is not None:  # never unpickled: said so instead of "corrupt header"
                    raise refuse_pickle(path, pickled)
                raise FormatError(f"corrupt safetensors header: declares {n} header bytes but the file has {size}",
                                  path=path, hint="the file is truncated or not safetensors; download it again")
            raw = f.read(n)
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path=path) from None
    entries = raw.count(b'"data_offsets"')
    if entries > MAX_TENSORS:  # counted before parsing: each entry costs ~1 KiB of Python objects once parsed
        raise SourceError(f"corrupt safetensors header: {entries} tensor entries; bitconv reads at most "
                          f"{MAX_TENSORS} per file", path=path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"corrupt safetensors header: not valid JSON ({e})", path=path) from None
    except RecursionError:  # [[[[... nested deeper than the interpreter's stack
        raise FormatError("corrupt safetensors header: JSON nested too deeply", path=path) from None
    if not isinstance(header, dict):
        raise FormatError("corrupt safetensors header: not a JSON object", path=path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise FormatError("corrupt safetensors header: __metadata__ is not an object", path=path)
    data_start = 8 + n
    infos = {name: _entry(path, name, e, data_start, size) for name, e in header.items()}
    _check_contiguous(path, infos.values(), data_start, size)
    return infos, {str(k): str(v) for k, v in meta.items()}


def _entry(path: Path, name: str, e: object, data_start: int, size: int) -> TensorInfo:
    if not isinstance(e, dict):
        raise FormatError("corrupt safetensors header: entry is not an object", path=path, tensor=name)
    dt, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if not isinstance(dt, str) or dt not in dtypes.DTYPES:  # a list or object is unhashable: not a dtype
        raise FormatError(f"unknown dtype {dt!r}; bitconv reads {', '.join(dtypes.DTYPES)}", path=path, tensor=name)
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise FormatError(f"corrupt safetensors header: bad shape {shape!r}", path=path, tensor=name)
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)
            and 0 <= offs[0] <= offs[1]):
        raise FormatError(f"corrupt safetensors header: bad data_offsets {offs!r}", path=path, tensor=name)
    nbytes = math.prod(shape) * dtypes.DTYPES[dt].itemsize
    if offs[1] - offs[0] != nbytes:
        raise FormatError(f"data_offsets span {offs[1] - offs[0]} bytes but {dt} {shape} needs {nbytes}",
                          path=path, tensor=name)
    if data_start + offs[1] > size:
        raise FormatError(f"data ends at byte {data_start + offs[1]} but the file has {size}: truncated file",
                          path=path, tensor=name, hint="download it again")
    return TensorInfo(name, dt, tuple(shape), path, data_start + offs[0], nbytes)


def _check_contiguous(path: Path, infos: Iterable[TensorInfo], data_start: int, size: int) -> None:
    """The safetensors library's rule: sorted by offset, the tensors tile the data region exactly, from its first
    byte to the end of the file: no overlap, no gap, no trailing bytes.
    # ref: safetensors/src/tensor.rs `Metadata::validate` (InvalidOffset; MetadataIncompleteBuffer)
    """
    end, prev = data_start, None
    for t in sorted(infos, key=lambda t: (t.offset, t.nbytes)):
        if t.offset < end:
            raise FormatError(f"corrupt safetensors header: data of {t.name!r} overlaps {prev!r}", path=path)
        if t.offset > end:
            raise FormatError(f"{t.offset - end} unused bytes before the data of {t.name!r} (at byte {end}): the "
                              "safetensors library refuses files with gaps between tensors", path=path,
                              hint="rewrite the file with safetensors.save_file")
        end, prev = t.offset + t.nbytes, t.name
    if end != size:
        raise FormatError(f"{size - end} trailing bytes after the last tensor's data (data ends at byte {end}, the "
                          f"file has {size}): the safetensors library refuses such files", path=path,
                          hint="the file was appended to or written by a broken tool; rewrite it")


def pread_exact(path: Path, offset: int, buf: memoryview, tensor: str | None = None) -> None:
    """Fill `buf` with the file's bytes from `offset`; a short file or an OS error is a one-line SourceError."""
    fd = safeio.open_input(path)
    try:
        got = 0
        while got < len(buf):
            n = os.preadv(fd, [buf[got:]], offset + got)
            if n <= 0:
                raise SourceError("file ended while reading tensor data: truncated file", path=path, tensor=tensor)
            got += n
    except OSError as e:
        raise SourceError(f"cannot read tensor data: {e.strerror or e}", path=path, tensor=tensor) from None
    finally:
        os.close(fd)


def map_range(path: Path, offset: int, nbytes: int, tensor: str | None = None) -> np.ndarray | None:
    """The file's bytes [offset, offset + nbytes) as a uint8 array over a private copy-on-write map (the file is
    never modified; writable for torch), unmapped when the array is dropped; None where the file cannot be mapped
    (the caller then reads with `pread_exact`). Mapping reads the page cache in place: a `pread` copy of 5 GB costs
    about 3 s of kernel time on a small VM, mapped reads about 1 s. A file shorter than the range is refused here
    (touching pages past its end would be a SIGBUS)."""
    if nbytes <= 0:
        return None
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        fd = safeio.open_input(path)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < offset + nbytes:  # shrunk since its header was read
            raise SourceError("file ended while reading tensor data: truncated file", path=path, tensor=tensor)
        mm = mmap.mmap(fd, offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset - start)


def read_range(path: Path, offset: int, nbytes: int, scratch: Callable[[int], np.ndarray],
               tensor: str | None = None) -> np.ndarray:
    """The file's bytes [offset, offset + nbytes) as uint8: mapped in place (`map_range`), or, where the file
    cannot be mapped, read into `scratch(nbytes)` (a caller's reused buffer, valid until it is reused)."""
    buf = map_range(path, offset, nbytes, tensor)
    if buf is None:
        buf = scratch(nbytes)
        pread_exact(path, offset, memoryview(buf), tensor)
    return buf


def read_array(info: TensorInfo, out: np.ndarray | None = None) -> np.ndarray:
    """Read one tensor's bytes into `out` (or a new array) as its numpy storage dtype, shaped like the tensor."""
    d = dtypes.DTYPES[info.dtype]
    if out is None:
        out = np.empty(info.numel, dtype=d.np_storage)
    raw = out.reshape(-1).view(np.uint8)[: info.nbytes]
    pread_exact(info.path, info.offset, memoryview(raw), info.name)
    return raw.view(d.np_storage).reshape(info.shape)


# ----------------------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtypes.DTYPES[self.dtype].itemsize


def safetensors_order(entries: Iterable[OutEntry]) -> list[OutEntry]:
    """The order `safetensors.save_file` stores tensors in: larger dtype alignment first, then by name."""
    return sorted(entries, key=lambda e: (-dtypes.DTYPES[e.dtype].itemsize, e.name))


def build_header(entries: list[OutEntry], metadata: Mapping[str, str] | None) -> bytes:
    head: dict[str, object] = {}
    if metadata:
        head["__metadata__"] = dict(metadata)
    off = 0
    for e in entries:
        head[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [off, off + e.nbytes]}
        off += e.nbytes
    raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsWriter:
    """Writes one safetensors file whose entries are all known up front; tensors may arrive in any order.

    The header is written at once, so every tensor's offset is fixed; `write`/`copy_from` put each tensor at its
    place. `close` refuses to finish a file in which any entry was not written exactly once.
    """

    def __init__(self, path: Path, entries: Iterable[OutEntry], metadata: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.entries = safetensors_order(entries)
        header = build_header(self.entries, metadata)
        self._where: dict[str, tuple[int, int]] = {}
        off = len(header)
        for e in self.entries:
            self._where[e.name] = (off, e.nbytes)
            off += e.nbytes
        self.size = off
        self._pending = set(self._where)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _pwrite_all(self._fd, memoryview(header), 0)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path) from None

    def _take(self, name: str, nbytes: int) -> int:
        if name not in self._pending:
            state = "already written" if name in self._where else "not part of this file"
            raise RuntimeError(f"writer state: {name!r} is {state} ({self.path})")
        off, size = self._where[name]
        if size != nbytes:
            raise RuntimeError(f"writer state: {name!r} expects {size} bytes, got {nbytes}")
        self._pending.discard(name)
        return off

    def write(self, name: str, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        off = self._take(name, data.nbytes)
        try:
            _pwrite_all(self._fd, memoryview(data.reshape(-1).view(np.uint8)), off)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path, tensor=name) from None

    def reserve(self, name: str, nbytes: int) -> int:
        """Claim `name` (to be written in parts with `write_at`); returns its byte offset in the file."""
        return self._take(name, nbytes)

    def write_at(self, offset: int, data: np.ndarray, name: str | None = None) -> None:
        try:
            _pwrite_all(self._fd, memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)), offset)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path, tensor=name) from None

    def copy_from(self, name: str, src: TensorInfo) -> None:
        """Copy a stored tensor's bytes verbatim from its source file (kernel-side where the OS allows)."""
        off = self._take(name, src.nbytes)
        try:
            fd_in = safeio.open_input(src.path)
            try:
                _copy_range(fd_in, self._fd, src.offset, off, src.nbytes)
            finally:
                os.close(fd_in)
        except OSError as e:
            raise OutputError(f"cannot copy tensor data: {e.strerror or e}", path=self.path, tensor=name) from None

    def close(self, fsync: bool = False) -> None:
        """Finish the file. `fsync` forces it to disk (durable across power loss, slower: the disk's write speed)."""
        if self._fd < 0:
            return
        if self._pending:
            self.abort()
            raise RuntimeError(f"writer state: closed before {sorted(self._pending)[0]!r} was written")
        try:
            if fsync:
                os.fsync(self._fd)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.path) from None
        finally:
            os.close(self._fd)
            self._fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _copy_range(fd_in: int, fd_out: int, src_off: int, dst_off: int, count: int) -> None:
    done = 0
    copy_range = getattr(os, "copy_file_range", None)
    while done < count and copy_range is not None:
        try:
            n = copy_range(fd_in, fd_out, min(count - done, _COPY_CHUNK), src_off + done, dst_off + done)
        except OSError as e:
            if e.errno not in _NO_COPY_RANGE:
                raise
            break  # cross-filesystem or unsupported: fall back to read/write
        if n <= 0:
            break
        done += n
    while done < count:
        chunk = os.pread(fd_in, min(count - done, _COPY_CHUNK), src_off + done)
        if not chunk:
            raise OSError("source file ended early (truncated)")
        _pwrite_all(fd_out, memoryview(chunk), dst_off + done)
        done += len(chunk)
