"""GGML tensor types and GGUF file types bitconv writes, per dialect: a table, never branches on bare ids.

Upstream ggml (gguf-py 0.19.0) and Microsoft's bitnet.cpp fork disagree on ids 36-42: the fork's I2_S=36, TL1=38 and
TL2=39 (42 in the current fork) collide with upstream's removed IQ4_NL_* ids, MXFP4=39 and Q2_0=42.
ik_llama.cpp's BitNet types IQ1_BN=134, IQ2_BN=135 and IQ2_BN_R4=335 collide with nothing (dialect "ik_llama.cpp":
read under either dialect); their byte size is a row formula (a per-row scale before the blocks, see gguf.types).
# ref: spec gguf-bitnet-cpp.md §1; gguf-upstream.md §1.1; gguf-ik-llama.md §1
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block (nominal for the fork types; their byte size is a formula of the shape)
    dialect: str  # "upstream", "bitnet.cpp" or "ik_llama.cpp" (ids no other dialect uses)


GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("F32", 0, 1, 4, "upstream"),
    GGMLType("F16", 1, 1, 2, "upstream"),
    GGMLType("Q8_0", 8, 32, 34, "upstream"),
    GGMLType("BF16", 30, 1, 2, "upstream"),
    GGMLType("TQ1_0", 34, 256, 54, "upstream"),
    GGMLType("TQ2_0", 35, 256, 66, "upstream"),
    GGMLType("I2_S", 36, 1, 1, "bitnet.cpp"),
    GGMLType("TL1", 38, 1, 1, "bitnet.cpp"),
    GGMLType("TL2", 39, 1, 1, "bitnet.cpp"),  # bitnet.cpp before mid-2026 (upstream: MXFP4)
    GGMLType("TL2_42", 42, 1, 1, "bitnet.cpp"),  # current bitnet.cpp fork (upstream: Q2_0)
    GGMLType("IQ1_BN", 134, 64, 13, "ik_llama.cpp"),  # + 2-byte fp16 scale per row
    GGMLType("IQ2_BN", 135, 64, 16, "ik_llama.cpp"),  # + 4-byte float32 scale per row
    GGMLType("IQ2_BN_R4", 335, 64, 16, "ik_llama.cpp"),  # + 4-byte float32 scale per row, rows in groups of 4
)}

# Ids that mean something else upstream: a reader must be told the dialect to interpret them.
UPSTREAM_MEANING = {36: "IQ4_NL_4_4 (removed)", 37: "IQ4_NL_4_8 (removed)", 38: "IQ4_NL_8_8 (removed)",
                    39: "MXFP4", 42: "Q2_0"}

# general.file_type values (LLAMA_FTYPE_*), keyed by the type that makes up the ternary weights.
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37, "TL1": 38, "TL2": 39, "TL2_42": 39,
              "I2_S": 40, "IQ1_BN": 136, "IQ2_BN": 137, "IQ2_BN_R4": 337}

GGUF_QUANTIZATION_VERSION = 2

