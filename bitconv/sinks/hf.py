"""The sink of an HF-layout checkpoint folder (`pipeline.Sink`): safetensors (sharded with an index above a size
limit), config, side files.

Shards are filled in name order up to `max_shard_bytes` (a tensor never straddles two files), named like
transformers' `model-00001-of-00003.safetensors`, with `model.safetensors.index.json` holding `total_size` (bytes of
tensor data) and the `weight_map`, as `save_pretrained` writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bitconv.core import dtypes, safeio
from bitconv.core.errors import OutputError
from bitconv.core.naming import module_of
from bitconv.core.tensors import Ternary, row_ranges
from bitconv.formats.safetensors import OutEntry, SafetensorsWriter, TensorInfo
from bitconv.output import AtomicOutput
from bitconv.quant import dequantized_bits
from bitconv.sinks.background import BackgroundWriter
from bitconv.sources.checkpoint import ModelTensor

Step = Any  # a `pipeline.Step` (the pipeline imports this module for its default sink, so not the other way)

DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # transformers' default "5GB"
METADATA = {"format": "pt"}


def assign_shards(entries: Iterable[OutEntry], max_shard_bytes: int | None) -> list[list[OutEntry]]:
    shards: list[list[OutEntry]] = [[]]
    size = 0
    for e in sorted(entries, key=lambda e: e.name):
        if max_shard_bytes and shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


DEQUANT_BLOCK_ELEMS = 1 << 22  # a dequantized tensor is written this many elements (whole rows) at a time
SIDE_BYTES = 64 << 10  # config.json, the shard index and the shards' headers, for the free-space check


def dequantized_blocks(t: Ternary) -> Iterator[np.ndarray]:
    """bf16(codes * scale) as uint16 bits, a block of rows at a time (the same values as `dequantize(t)`)."""
    codes = t.codes.reshape(t.codes.shape[0], -1)
    step = max(1, DEQUANT_BLOCK_ELEMS // max(1, codes.shape[1]))
    for a in range(0, codes.shape[0], step):
        yield dequantized_bits(codes[a:a + step], float(t.scale))  # no float32 temporaries


ROW_BLOCK_BYTES = 16 << 20  # loaded tensors that read rows alone are written a block of rows at a time


def _row_blocks(t: ModelTensor) -> Iterator[np.ndarray]:
    row = int(np.prod(t.shape[1:])) * dtypes.DTYPES[t.dtype].itemsize
    for r0, r1 in row_ranges(t.shape[0], row, ROW_BLOCK_BYTES):
        yield np.ascontiguousarray(dtypes.to_numpy_storage(t.row_loader(r0, r1))).reshape(-1)


class HFSink:
    """The `pipeline.Sink` of an HF-layout folder: every output entry is known when it is made (from the plan); then
    each step is written once, in plan order; `close` writes the index, config.json and the side files."""

    is_dir = True

    def __init__(self, entries: list[OutEntry], max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
                 metadata: dict[str, str] | None = None, config: dict | None = None, aux_files: Iterable[Path] = (),
                 background: bool = True, files: dict[str, bytes] | None = None) -> None:
        self.entries, self.max_shard_bytes, self.metadata = list(entries), max_shard_bytes, metadata
        self.config, self.aux_files, self.background = config or {}, list(aux_files), background
        self.side_files = dict(files or {})  # name -> bytes written beside the config (a GGUF's rebuilt tokenizer)
        self.extra: dict = {}
        self.folder: Path | None = None
        self._bg: BackgroundWriter | None = None
        self._writers: list[SafetensorsWriter] = []
        self._route: dict[str, SafetensorsWriter] = {}
        self.weight_map: dict[str, str] = {}
        self.total_size = sum(e.nbytes for e in self.entries)
        self._out: Path | None = None

    def prepare(self, guard: AtomicOutput) -> int:
        self._out = guard.out
        return SIDE_BYTES + sum(f.stat().st_size for f in self.aux_files) + sum(map(len, self.side_files.values()))

    def open(self, folder: Path) -> None:
        self.folder = folder
        # writes run on a background thread (in order) so the next tensor is computed meanwhile; arrays handed
        # to `write` must not be modified afterwards
        self._bg = BackgroundWriter() if self.background else None
        shards = assign_shards(self.entries, self.max_shard_bytes)
        for fname, group in zip(shard_names(len(shards)), shards):
            w = SafetensorsWriter(folder / fname, group, self.metadata or METADATA)
            self._writers.append(w)
            for e in group:
                self._route[e.name] = w
                self.weight_map[e.name] = fname

    @property
    def files(self) -> list[Path]:
        return [w.path for w in self._writers]

    def _do(self, job: Callable[[], object], nbytes: int = 0) -> None:
        if self._bg is None:
            job()
        else:
            self._bg.submit(job, nbytes)

    # --- steps ----------------------------------------------------------------------------------------------------
    def write(self, step: Step, result: Ternary | dict[str, np.ndarray]) -> None:
        """A "dequant" step (bf16 row blocks of its codes * scale) or a "pack" step (the layout's fields)."""
        if step.action == "dequant":
            (name,) = step.outputs
            self.write_blocks(name, step.outputs[name].nbytes, dequantized_blocks(result))
            return
        prefix = module_of(step.tensor.name)
        for k, arr in result.items():
            spec = step.outputs[f"{prefix}.{k}"]
            self.write_tensor(f"{prefix}.{k}", np.asarray(arr).reshape(spec.shape))

    def copy(self, step: Step) -> None:
        """A pass-through tensor: its stored bytes by a kernel copy, or what its loader gives (e.g. GGUF Q8_0)."""
        t = step.tensor
        (name,) = step.outputs
        nbytes = t.numel * dtypes.DTYPES[t.dtype].itemsize
        if t.row_loader is not None and len(t.shape) >= 1 and nbytes > ROW_BLOCK_BYTES:
            self.write_blocks(name, nbytes, _row_blocks(t))
        elif t.loader is not None:
            self.write_tensor(name, dtypes.to_numpy_storage(t.loader()))
        else:
            self.copy_tensor(name, t.stored[0])

    # --- tensors --------------------------------------------------------------------------------------------------
    def write_tensor(self, name: str, data: np.ndarray) -> None:
        w = self._route[name]
        self._do(lambda: w.write(name, data), data.nbytes)

    def write_blocks(self, name: str, nbytes: int, blocks: Iterable[np.ndarray]) -> None:
        """Write `name` as consecutive blocks (each queued on its own, so a huge tensor is never held whole)."""
        w = self._route[name]
        base = w.reserve(name, nbytes)
        pos = 0
        for blk in blocks:
            self._do(lambda off=base + pos, blk=blk: w.write_at(off, blk, name), blk.nbytes)
            pos += blk.nbytes
        if pos != nbytes:
            raise RuntimeError(f"writer state: {name!r} expects {nbytes} bytes, got {pos}")

    def copy_tensor(self, name: str, src: TensorInfo) -> None:
        w = self._route[name]
        self._do(lambda: w.copy_from(name, src))

    def close(self, fsync: bool = False) -> list[Path]:
        if self._bg is not None:
            bg, self._bg = self._bg, None
            bg.finish()
        for w in self._writers:
            w.close(fsync)
        try:
            if len(self._writers) > 1:
                index = {"metadata": {"total_size": self.total_size},
                         "weight_map": dict(sorted(self.weight_map.items()))}
                write_json(self.folder / "model.safetensors.index.json", index)
            write_json(self.folder / "config.json", self.config)
            for f in self.aux_files:
                safeio.copy_input(f, self.folder / f.name)  # read through safeio: never a link out of SRC
            for name, data in self.side_files.items():
                (self.folder / name).write_bytes(data)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.folder) from None
        out = self._out or self.folder
        return [out / f.name for f in self.files]

    def abort(self) -> None:
        if self._bg is not None:
            bg, self._bg = self._bg, None
            bg.cancel()
        for w in self._writers:
            w.abort()
