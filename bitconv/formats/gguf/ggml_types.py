"""GGML tensor types and GGUF file types: the container's type table, a table, never branches on bare ids.

The container itself knows only the float types bitconv writes (and, in `gguf.types`, the upstream types it only
sizes). Every ternary type is declared by its layout (`bitconv.layouts`, one file per layout: name, id, dialect,
block geometry, file type and byte-size formula) and registered here with `register_type` when the layout is
imported: the container never imports the layouts (layers point down), it is told.

Dialects: upstream ggml (gguf-py 0.19.0), Microsoft's bitnet.cpp fork (whose ids 36-42 collide with upstream's removed
IQ4_NL_* ids, MXFP4=39 and Q2_0=42) and ik_llama.cpp (ids no other dialect uses: read under either dialect).
# ref: spec gguf-bitnet-cpp.md §1; gguf-upstream.md §1.1; gguf-ik-llama.md §1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SizeFormula = Callable[[tuple[int, ...]], "int | None"]


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block (nominal where `nbytes` gives the size as a formula of the shape)
    dialect: str  # "upstream", "bitnet.cpp" or "ik_llama.cpp" (ids no other dialect uses)
    file_type: int | None = None  # general.file_type (LLAMA_FTYPE_*) of a file whose weights are of this type
    # bytes of a tensor with ggml dims (ne0 first), when not blocks x type_size (None: ne0 is not whole blocks)
    nbytes: SizeFormula | None = field(default=None, compare=False, repr=False)


GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("F32", 0, 1, 4, "upstream", 0),
    GGMLType("F16", 1, 1, 2, "upstream", 1),
    GGMLType("Q8_0", 8, 32, 34, "upstream"),
    GGMLType("BF16", 30, 1, 2, "upstream", 32),
)}

# Ids that mean something else upstream: a reader must be told the dialect to interpret them.
UPSTREAM_MEANING = {36: "IQ4_NL_4_4 (removed)", 37: "IQ4_NL_4_8 (removed)", 38: "IQ4_NL_8_8 (removed)",
                    39: "MXFP4", 42: "Q2_0"}

# general.file_type values (LLAMA_FTYPE_*), keyed by the type that makes up the ternary weights (the layouts' rows
# join it when they register).
FILE_TYPES: dict[str, int] = {t.name: t.file_type for t in GGML_TYPES.values() if t.file_type is not None}

GGUF_QUANTIZATION_VERSION = 2


def register_type(t: GGMLType) -> GGMLType:
    """Add a type a layout declares. Registering the same row again is a no-op; another row under a known name, or
    a known id of the same dialect, is refused (TypeError: a programming error in the layout)."""
    old = GGML_TYPES.get(t.name)
    if old is not None:
        if old != t:
            raise TypeError(f"GGML type {t.name} registered twice with different facts ({old}, {t})")
        return old
    clash = [o.name for o in GGML_TYPES.values() if o.id == t.id and o.dialect == t.dialect]
    if clash:
        raise TypeError(f"GGML type id {t.id} ({t.dialect}) is already {clash[0]}; {t.name} cannot take it")
    GGML_TYPES[t.name] = t
    if t.file_type is not None:
        FILE_TYPES[t.name] = t.file_type
    return t

