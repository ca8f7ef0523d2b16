"""Planned peak memory of a conversion, from its plan alone (what `--dry-run` prints and the benchmark checks).

The streaming pipeline holds, at any moment: the interpreter with torch and numpy loaded (BASE_BYTES), the working sets
of the tensors being converted (below; up to two at once on worker threads, `sinks.prefetch`, while their sum stays
within `prefetch.MAX_INFLIGHT_BYTES`), results computed ahead (`prefetch.MAX_HELD_BYTES`), a pass-through tensor's
blocks on the writing thread, and the finished outputs waiting in the writer's queue (bounded in bytes:
`sinks.background.MAX_PENDING_BYTES`, or one larger output alone).

Working set of one tensor of n elements (e = item size of its stored float dtype):
| action                         | bytes                                                                  |
|--------------------------------|------------------------------------------------------------------------|
| ternarize, n > STREAM_MIN      | n (int8 codes) + BLOCK * (e + 4 + 4 + 2) (raw, |w|, w*s, signs)        |
| ternarize, whole               | n * (e + 4 + 2 + 1) (mapped weight, |w| in float32, signs, codes); f32/f16: + 4n |
| decode stored codes            | n (codes) + the packed bytes                                           |
| pack into a layout             | + the packed output (+ a few MB of block temporaries)                  |
| dequantize (unpack, GGUF float)| + n * 4 (GGUF float types; unpack writes row blocks)                   |
| copy / passthrough             | 0 (kernel copy) or 2 blocks of 8 MB (GGUF conversion), 2 row blocks of |
|                                | 16 MB (a source that reads rows alone: Nanotron shards), or the tensor |
"""

from __future__ import annotations

from bitconv import quant
from bitconv.core import dtypes
from bitconv.sinks import prefetch
from bitconv.sinks.background import MAX_PENDING_BYTES
from bitconv.sinks.hf import ROW_BLOCK_BYTES

BASE_BYTES = 330 << 20  # python + torch + numpy + bitconv imported (measured: 300-340 MiB on Linux x86-64)
BLOCK_TEMP_BYTES = 32 << 20  # layout packers' and readers' per-block temporaries
GGUF_CHUNK_BYTES = 8 << 20


def ternary_bytes(numel: int, stored_dtype: str, stored_bytes: int, compute: str = "float32") -> int:
    """Working set of producing one tensor's codes."""
    if stored_dtype in ("U8", "I8"):  # decoded from stored codes
        return numel + stored_bytes
    e = dtypes.DTYPES[stored_dtype].itemsize if stored_dtype in dtypes.DTYPES else 2
    if numel > quant.STREAM_MIN_ELEMS:  # two block passes (either compute mode)
        return numel + quant.BLOCK_ELEMS * (e + 10)
    whole = numel * (e + 4 + 2 + 1)
    return whole + (4 * numel if stored_dtype != "BF16" or compute != "float32" else 0)


def step_bytes(tensor, action: str, out_bytes: int, compute: str = "float32",  # noqa: ANN001
               convert: bool = False) -> int:
    """Working set of one plan step (`pipeline.Step` fields; `convert`: a copy converted in blocks, GGUF)."""
    if action == "copy" and convert:
        return 2 * GGUF_CHUNK_BYTES if out_bytes > GGUF_CHUNK_BYTES else tensor.stored_bytes + 2 * out_bytes
    if action == "copy":  # a loaded tensor: whole, or in row blocks where its source reads rows alone
        if tensor.loader is None:
            return 0
        if getattr(tensor, "row_loader", None) is None:
            return 2 * out_bytes
        # a ternary projection written as floats (Nanotron -> HF) holds its codes while its rows are made
        codes = ternary_bytes(tensor.numel, tensor.dtype, tensor.stored_bytes, compute) if tensor.is_ternary else 0
        return codes + 2 * ROW_BLOCK_BYTES
    work = ternary_bytes(tensor.numel, tensor.dtype, tensor.stored_bytes, compute)
    if action == "dequant":
        return work + (BLOCK_TEMP_BYTES if out_bytes <= 2 * tensor.numel else 4 * tensor.numel + out_bytes)
    return work + out_bytes + BLOCK_TEMP_BYTES


def peak_estimate(rows: list[tuple[object, str, int, bool]], compute: str = "float32") -> int:
    """Peak RSS in bytes for steps given as (tensor, action, output bytes, convert), in plan order.

    Worker threads compute up to `prefetch.default_workers()` consecutive ternary steps at once while their planned
    working sets sum to at most `prefetch.MAX_INFLIGHT_BYTES` (one alone otherwise); pass-through steps run on the
    writing thread meanwhile; finished outputs wait in the writer's byte-bounded queue."""

    if not rows:
        return BASE_BYTES
    costs = [step_bytes(t, a, n, compute, c) for t, a, n, c in rows]
    tern = [c for c, (t, a, n, _) in zip(costs, rows) if a != "copy"]
    workers = prefetch.default_workers()
    work = max(tern, default=0)
    for i in range(len(tern)):  # the consecutive groups the prefetcher admits together
        group = tern[i:i + workers]
        if len(group) > 1 and sum(group) <= prefetch.MAX_INFLIGHT_BYTES:
            work = max(work, sum(group))
    main = max((c for c, (t, a, n, _) in zip(costs, rows) if a == "copy"), default=0)
    queued = min(MAX_PENDING_BYTES, sum(n for t, a, n, _ in rows if a != "copy"))
    biggest = max((n for t, a, n, _ in rows if a != "copy"), default=0)
    # scratch buffers are kept per worker thread: after a whole-tensor ternarization (|w| f32, two sign masks) they
    # stay while the thread streams the big ones
    whole = [t.numel for t, a, n, _ in rows if a != "copy" and t.numel <= quant.STREAM_MIN_ELEMS]
    if any(t.numel > quant.STREAM_MIN_ELEMS for t, a, n, _ in rows if a != "copy"):
        work += min(workers, 2) * 6 * max(whole, default=0)
    held = min(prefetch.MAX_HELD_BYTES, sum(n for t, a, n, _ in rows if a != "copy")) \
        if workers > 1 else 0  # results computed ahead, waiting for the writing thread
    return BASE_BYTES + work + main + held + max(queued, min(biggest, work))
