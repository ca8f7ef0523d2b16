"""GGUF metadata values: the value-type table and the byte encoding of one key/value pair.

| type id | name    | bytes                     | type id | name    | bytes                                  |
|---------|---------|---------------------------|---------|---------|----------------------------------------|
| 0       | UINT8   | 1                         | 7       | BOOL    | 1 (0 or 1)                             |
| 1       | INT8    | 1                         | 8       | STRING  | u64 length + UTF-8 bytes (no NUL)      |
| 2       | UINT16  | 2                         | 9       | ARRAY   | u32 item type + u64 count + items      |
| 3       | INT16   | 2                         | 10      | UINT64  | 8                                      |
| 4       | UINT32  | 4                         | 11      | INT64   | 8                                      |
| 5       | INT32   | 4                         | 12      | FLOAT64 | 8                                      |
| 6       | FLOAT32 | 4                         |         |         |                                        |

A pair is `key (STRING) + u32 value type + value`, all little-endian.
# ref: ggml docs/gguf.md "File Structure"; gguf-py gguf_writer.py _pack_val; spec gguf-upstream.md §1.6
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size scalars: struct format and numpy dtype (little-endian).
SCALARS: dict[ValueType, tuple[str, np.dtype]] = {
    ValueType.UINT8: ("<B", np.dtype("<u1")),
    ValueType.INT8: ("<b", np.dtype("<i1")),
    ValueType.UINT16: ("<H", np.dtype("<u2")),
    ValueType.INT16: ("<h", np.dtype("<i2")),
    ValueType.UINT32: ("<I", np.dtype("<u4")),
    ValueType.INT32: ("<i", np.dtype("<i4")),
    ValueType.FLOAT32: ("<f", np.dtype("<f4")),
    ValueType.BOOL: ("<?", np.dtype("?")),
    ValueType.UINT64: ("<Q", np.dtype("<u8")),
    ValueType.INT64: ("<q", np.dtype("<i8")),
    ValueType.FLOAT64: ("<d", np.dtype("<f8")),
}


@dataclass(frozen=True)
class KV:
    """One metadata pair. `item_type` is set for arrays (the type of every item)."""

    key: str
    type: ValueType
    value: Any
    item_type: ValueType | None = None

    # Constructors for the types converters write.
    @classmethod
    def u32(cls, key: str, v: int) -> KV:
        return cls(key, ValueType.UINT32, int(v))

    @classmethod
    def f32(cls, key: str, v: float) -> KV:
        return cls(key, ValueType.FLOAT32, float(v))

    @classmethod
    def boolean(cls, key: str, v: bool) -> KV:
        return cls(key, ValueType.BOOL, bool(v))

    @classmethod
    def string(cls, key: str, v: str) -> KV:
        return cls(key, ValueType.STRING, v)

    @classmethod
    def array(cls, key: str, item_type: ValueType, items: Any) -> KV:
        return cls(key, ValueType.ARRAY, items, item_type)

    def encode(self) -> bytes:
        return encode_string(self.key) + struct.pack("<I", self.type) + encode_value(self.type, self.value,
                                                                                    self.item_type)

    def python(self) -> Any:
        """The value as plain Python (strings decoded, numbers as int/float, arrays as lists)."""
        if self.type == ValueType.ARRAY and not isinstance(self.value, np.ndarray):
            return [_plain(v) for v in self.value]
        return _plain(self.value)


def _plain(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def encode_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype: ValueType, value: Any, item_type: ValueType | None = None) -> bytes:
    if vtype == ValueType.STRING:
        return encode_string(value)
    if vtype == ValueType.ARRAY:
        if item_type is None:
            raise ValueError("an ARRAY value needs its item type")
        items = list(value) if item_type == ValueType.STRING else np.asarray(value, dtype=SCALARS[item_type][1])
        head = struct.pack("<IQ", item_type, len(items))
        if item_type == ValueType.STRING:  # encode_string inlined: a vocabulary is ~10^5 strings
            raws = [s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s) for s in items]
            return head + b"".join([len(r).to_bytes(8, "little") + r for r in raws])
        if item_type == ValueType.ARRAY:
            raise ValueError("nested arrays are not written by bitconv")
        return head + items.tobytes()
    return struct.pack(SCALARS[vtype][0], value)
