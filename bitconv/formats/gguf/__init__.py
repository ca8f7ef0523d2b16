"""GGUF container: an own streaming writer (any type id, the bitnet.cpp fork's included) and a strict reader."""

from __future__ import annotations

from bitconv.formats.gguf.kv import KV, ValueType
from bitconv.formats.gguf.reader import GGUFFile, GGUFTensor, read_gguf
from bitconv.formats.gguf.writer import GGUFWriter, TensorEntry, build_header, write_gguf

__all__ = ["KV", "ValueType", "GGUFFile", "GGUFTensor", "read_gguf", "GGUFWriter", "TensorEntry", "build_header",
           "write_gguf"]
