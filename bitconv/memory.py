"""Planned peak memory of a conversion, from its plan alone (what `--dry-run` prints and the benchmark checks).

The streaming pipeline holds, at any moment: the interpreter with torch and numpy loaded (BASE_BYTES), the working set
of the one tensor being converted (below), and the finished outputs waiting in the writer's queue (bounded in bytes:
`sinks.background.MAX_PENDING_BYTES`, or one larger output alone).

Working set of one tensor of n elements (e = item size of its stored float dtype):
| action                         | bytes                                                                  |
|--------------------------------|------------------------------------------------------------------------|
| ternarize, n > STREAM_MIN      | n (int8 codes) + BLOCK * (e + 4 + 4 + 2) (raw, |w|, w*s, signs)        |
| ternarize, whole               | n * (e + 4 + 2 + 1) (mapped weight, |w| in float32, signs, codes); f32/f16: + 4n |
| decode stored codes            | n (codes) + the packed bytes                                           |
| pack into a layout             | + the packed output (+ a few MB of block temporaries)                  |
| dequantize (unpack, GGUF float)| + n * 4 (GGUF float types; unpack writes row blocks)                   |
| copy / passthrough             | 0 (kernel copy) or 2 blocks of 64 MB (GGUF conversion), or the tensor  |
"""

from __future__ import annotations

from bitconv import quant
from bitconv.core import dtypes
from bitconv.sinks.background import MAX_PENDING_BYTES

BASE_BYTES = 330 << 20  # python + torch + numpy + bitconv imported (measured: 300-340 MiB on Linux x86-64)
BLOCK_TEMP_BYTES = 32 << 20  # layout packers' and readers' per-block temporaries
GGUF_CHUNK_BYTES = 64 << 20


def ternary_bytes(numel: int, stored_dtype: str, stored_bytes: int, compute: str = "float32") -> int:
    """Working set of producing one tensor's codes."""
    if stored_dtype in ("U8", "I8"):  # decoded from stored codes
        return numel + stored_bytes
    e = dtypes.DTYPES[stored_dtype].itemsize if stored_dtype in dtypes.DTYPES else 2
    if compute == "float32" and numel > quant.STREAM_MIN_ELEMS:
        return numel + quant.BLOCK_ELEMS * (e + 10)
    whole = numel * (e + 4 + 2 + 1)
    return whole + (4 * numel if stored_dtype != "BF16" or compute != "float32" else 0)


def step_bytes(tensor, action: str, out_bytes: int, compute: str = "float32") -> int:  # noqa: ANN001
    """Working set of one plan step (HF `Step` or GGUF `GGUFStep` fields)."""
    if action == "copy":
        return 0 if tensor.loader is None else 2 * out_bytes
    if action == "convert":
        return 2 * GGUF_CHUNK_BYTES if out_bytes > GGUF_CHUNK_BYTES else tensor.stored_bytes + 2 * out_bytes
    work = ternary_bytes(tensor.numel, tensor.dtype, tensor.stored_bytes, compute)
    if action == "dequant":
        return work + (BLOCK_TEMP_BYTES if out_bytes <= 2 * tensor.numel else 4 * tensor.numel + out_bytes)
    return work + out_bytes + BLOCK_TEMP_BYTES


def peak_estimate(rows: list[tuple[object, str, int]], compute: str = "float32") -> int:
    """Peak RSS in bytes for steps given as (tensor, action, output bytes)."""
    if not rows:
        return BASE_BYTES
    work = max(step_bytes(t, a, n, compute) for t, a, n in rows)
    queued = min(MAX_PENDING_BYTES, sum(n for t, a, n in rows if a != "copy" and a != "convert"))
    biggest = max((n for t, a, n in rows if a not in ("copy", "convert")), default=0)
    return BASE_BYTES + work + max(queued, min(biggest, work))
