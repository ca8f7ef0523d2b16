"""Every GGML tensor type a GGUF file may hold: id -> name, block geometry, and the byte size of a tensor.

`bitconv.formats.gguf.ggml_types` holds the types bitconv writes (the float types, plus every ternary type its layout
registers there); this module adds the upstream types bitconv only has to *size* (so any upstream GGUF can be parsed
and bounds-checked), and resolves the ids on which upstream ggml and bitnet.cpp's fork disagree by a dialect: a type
of dialect "bitnet.cpp" whose id upstream also uses (`UPSTREAM_MEANING`) is read only under that dialect, and one
whose upstream meaning was removed marks a file as the fork's when auto-detecting. Types of dialect "ik_llama.cpp"
collide with nothing and are read under either dialect.

A type's byte size is blocks x type size, or the formula its layout declares (`GGMLType.nbytes`: the fork's hidden
scale slot, ik's per-row scales; gguf-py's size tables omit both).

# ref: gguf-py 0.19.0 constants.py GGML_QUANT_SIZES; fork ggml/src/ggml.c ggml_nbytes (merge-dev l.3472-3494);
#      spec gguf-bitnet-cpp.md §1, gguf-upstream.md §1.1, gguf-ik-llama.md §2, §9
"""

from __future__ import annotations

import math

from bitconv.formats.gguf.ggml_types import GGML_TYPES, GGMLType

DIALECTS = ("auto", "bitnet.cpp", "upstream")
ALIGNMENT = 32  # GGUF default (general.alignment)

# Upstream types bitconv reads only far enough to size them: id -> (name, block size, type size).
_UPSTREAM_SIZED: dict[int, tuple[str, int, int]] = {
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
    27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}
_UPSTREAM_ROWS = {n: GGMLType(n, i, b, s, "upstream") for i, (n, b, s) in _UPSTREAM_SIZED.items()}


def all_types() -> dict[str, GGMLType]:
    """Every type this container can size: the written and registered ones, then the upstream ones."""
    return {**GGML_TYPES, **{n: t for n, t in _UPSTREAM_ROWS.items() if n not in GGML_TYPES}}


def fork_only_ids() -> frozenset[int]:
    """Ids of the fork's types that no current upstream file can hold (upstream removed what they meant)."""
    upstream = {t.id for t in _UPSTREAM_ROWS.values()} | {t.id for t in GGML_TYPES.values() if t.dialect == "upstream"}
    return frozenset(t.id for t in GGML_TYPES.values() if t.dialect == "bitnet.cpp" and t.id not in upstream)


def forked_ids() -> frozenset[int]:
    """Ids of the fork's types that upstream uses for another type (the files that need a dialect to be read)."""
    upstream = {t.id for t in _UPSTREAM_ROWS.values()}
    return frozenset(t.id for t in GGML_TYPES.values() if t.dialect == "bitnet.cpp" and t.id in upstream)


def pad(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment


_EVERY_DIALECT = ("upstream", "ik_llama.cpp")  # type dialects readable under any dialect unless the fork forks the id


def by_id(type_id: int, dialect: str) -> GGMLType | None:
    """The type `type_id` means in `dialect` ("bitnet.cpp" or "upstream"); None for an unknown id."""
    for t in all_types().values():
        if t.id == type_id and (t.dialect == dialect or (t.dialect in _EVERY_DIALECT and
                                                          t.id not in _forked(dialect))):
            return t
    return None


def _forked(dialect: str) -> frozenset[int]:
    """Ids whose upstream meaning the dialect replaces."""
    if dialect != "bitnet.cpp":
        return frozenset()
    return frozenset(t.id for t in GGML_TYPES.values() if t.dialect == "bitnet.cpp")


def tensor_nbytes(t: GGMLType, dims: tuple[int, ...]) -> int | None:
    """Bytes of a tensor with ggml dims `dims` (ne0 first); None when ne0 is not a whole number of blocks."""
    if t.nbytes is not None:
        return t.nbytes(dims)
    if not dims:
        return t.type_size
    if dims[0] % t.block_size:
        return None
    return math.prod(dims) // t.block_size * t.type_size
