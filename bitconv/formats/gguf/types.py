"""Every GGML tensor type a GGUF file may hold: id -> name, block geometry, and the byte size of a tensor.

`bitconv.formats.gguf.ggml_types` lists the types bitconv writes; this module adds the upstream types it only has to
*size* (so any upstream GGUF can be parsed and bounds-checked), and resolves the ids on which upstream ggml and
bitnet.cpp's fork disagree (36-39, 42) by a dialect:

| id | "bitnet.cpp" (fork)      | "upstream"             |
|----|--------------------------|------------------------|
| 36 | I2_S                     | IQ4_NL_4_4 (removed)   |
| 38 | TL1                      | IQ4_NL_8_8 (removed)   |
| 39 | TL2 (fork before 2026-07)| MXFP4                  |
| 42 | TL2 (current fork)       | Q2_0                   |

ik_llama.cpp's IQ1_BN (134), IQ2_BN (135) and IQ2_BN_R4 (335) mean the same in every dialect (no collision), so
auto-detection ignores them. Their rows carry a scale before the blocks: bytes = rows * (meta + ne0/64 * block),
meta 2 (fp16) for IQ1_BN, 4 (float32) for the other two (gguf-py's size tables omit it).

# ref: gguf-py 0.19.0 constants.py GGML_QUANT_SIZES; fork ggml/src/ggml.c ggml_nbytes (merge-dev l.3472-3494);
#      spec gguf-bitnet-cpp.md §1, gguf-upstream.md §1.1, gguf-ik-llama.md §2, §9
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
ALL_TYPES: dict[str, GGMLType] = {
    **GGML_TYPES,
    **{n: GGMLType(n, i, b, s, "upstream") for i, (n, b, s) in _UPSTREAM_SIZED.items() if n not in GGML_TYPES},
}
FORK_ONLY_IDS = frozenset({36, 38})  # ids no current upstream file can hold


def pad(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment


def _fork_2bit(dims: tuple[int, ...]) -> int:
    return math.prod(dims) // 4 + 32  # ref: ggml_nbytes I2_S / TL1 case: n/4 + 32 (codes + scale slot)


def _fork_tl2(dims: tuple[int, ...]) -> int:
    k, m = dims[0], math.prod(dims[1:])
    return pad(tl2_payload_nbytes(m, k)) + 32  # ref: ggml_nbytes TL2 case, then the hidden scale slot


def _row_scaled(blocks: str, meta: int) -> Callable[[tuple[int, ...]], int | None]:
    """Rows of a `meta`-byte scale plus whole blocks of type `blocks` (ik's IQ*_BN)."""
    def size(dims: tuple[int, ...]) -> int | None:  # ref: ik ggml_row_size = row_meta_size + type_size * ne0/64
        if not dims or dims[0] % 64:
            return None
        t = ALL_TYPES[blocks]
        return (meta + dims[0] // t.block_size * t.type_size) * math.prod(dims[1:])

    return size


# Types whose byte size is a formula of the shape rather than blocks x type size.
_SIZE_FORMULAS: dict[str, Callable[[tuple[int, ...]], int | None]] = {
    "I2_S": _fork_2bit, "TL1": _fork_2bit, "TL2": _fork_tl2, "TL2_42": _fork_tl2,
    "IQ1_BN": _row_scaled("IQ1_BN", 2), "IQ2_BN": _row_scaled("IQ2_BN", 4), "IQ2_BN_R4": _row_scaled("IQ2_BN", 4),
}
_EVERY_DIALECT = ("upstream", "ik_llama.cpp")  # type dialects readable under any dialect unless the fork forks the id


def by_id(type_id: int, dialect: str) -> GGMLType | None:
    """The type `type_id` means in `dialect` ("bitnet.cpp" or "upstream"); None for an unknown id."""
    for t in ALL_TYPES.values():
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
    if t.name in _SIZE_FORMULAS:
        return _SIZE_FORMULAS[t.name](dims)
    if not dims:
        return t.type_size
    if dims[0] % t.block_size:
        return None
    return math.prod(dims) // t.block_size * t.type_size


def tl2_payload_nbytes(M: int, K: int) -> int:
    """TL2 packed size NB of ggml_nbytes, before the 32-byte rounding (C integer arithmetic, left to right)."""
    # ref: fork ggml/src/ggml.c ggml_nbytes (merge-dev l.3472-3494); spec gguf-bitnet-cpp.md §1.1
    return _cdiv(_cdiv((K - 256) * M, 3) * 5, 8) + 256 * M // 2 * 4 // 8


def _cdiv(a: int, b: int) -> int:
    """C division (truncates toward zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q
