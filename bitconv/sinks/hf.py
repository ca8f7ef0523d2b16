"""Writes an HF-layout checkpoint folder: safetensors (sharded with an index above a size limit), config, side files.

Shards are filled in name order up to `max_shard_bytes` (a tensor never straddles two files), named like
transformers' `model-00001-of-00003.safetensors`, with `model.safetensors.index.json` holding `total_size` (bytes of
tensor data) and the `weight_map`, as `save_pretrained` writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from bitconv import safeio
from bitconv.errors import OutputError
from bitconv.safetensors_io import OutEntry, SafetensorsWriter, TensorInfo
from bitconv.sinks.background import BackgroundWriter

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


class HFSink:
    """Open with every output entry known (from the plan); then `write`/`copy` each tensor once; then `close`."""

    def __init__(self, folder: Path, entries: list[OutEntry], max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
                 metadata: dict[str, str] | None = None, background: bool = True) -> None:
        self.folder = folder
        # writes run on a background thread (in order) so the next tensor is computed meanwhile; arrays handed
        # to `write` must not be modified afterwards
        self._bg = BackgroundWriter() if background else None
        shards = assign_shards(entries, max_shard_bytes)
        names = shard_names(len(shards))
        self._writers: list[SafetensorsWriter] = []
        self._route: dict[str, SafetensorsWriter] = {}
        self.weight_map: dict[str, str] = {}
        for fname, group in zip(names, shards):
            w = SafetensorsWriter(folder / fname, group, metadata or METADATA)
            self._writers.append(w)
            for e in group:
                self._route[e.name] = w
                self.weight_map[e.name] = fname
        self.total_size = sum(e.nbytes for e in entries)

    @property
    def files(self) -> list[Path]:
        return [w.path for w in self._writers]

    def _do(self, job: Callable[[], object], nbytes: int = 0) -> None:
        if self._bg is None:
            job()
        else:
            self._bg.submit(job, nbytes)

    def write(self, name: str, data: np.ndarray) -> None:
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

    def copy(self, name: str, src: TensorInfo) -> None:
        w = self._route[name]
        self._do(lambda: w.copy_from(name, src))

    def close(self, config: dict, aux_files: Iterable[Path] = (), fsync: bool = False) -> None:
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
            write_json(self.folder / "config.json", config)
            for f in aux_files:
                safeio.copy_input(f, self.folder / f.name)  # read through safeio: never a link out of SRC
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path=self.folder) from None

    def abort(self) -> None:
        if self._bg is not None:
            bg, self._bg = self._bg, None
            bg.cancel()
        for w in self._writers:
            w.abort()
