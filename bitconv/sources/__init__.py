"""Lazy tensor sources: a checkpoint as name -> loader, one tensor resident at a time.

`open_source(path)` sniffs what `path` is and returns a `Checkpoint` (`bitconv.sources.checkpoint`):

    bitconv.sources.safetensors   HF-layout folders (bf16 master, bitconv ternary, HF packed)
    bitconv.sources.gguf          .gguf files
    bitconv.sources.nanotron      Nanotron checkpoint folders
    bitconv.sources.hub           a Hub repo id as SRC (downloaded into the HF cache)
    bitconv.sources.validate      config.json vs weights checks, run when a source is opened
"""

from __future__ import annotations

import os
from pathlib import Path

from bitconv.core import safeio
from bitconv.core.errors import SourceError
from bitconv.core.pickled import not_a_checkpoint
from bitconv.sources import hub
from bitconv.sources.checkpoint import KINDS, Checkpoint, ModelTensor, is_nanotron_dir
from bitconv.sources.gguf import open_gguf
from bitconv.sources.nanotron import open_nanotron
from bitconv.sources.safetensors import open_safetensors_dir

__all__ = ["KINDS", "Checkpoint", "ModelTensor", "is_nanotron_dir", "open_source"]


def open_source(path: str | Path) -> Checkpoint:
    """Open SRC: a folder holding an HF-layout checkpoint (bf16 master, bitconv ternary or HF packed), or a .gguf."""
    p = Path(path)
    if not p.exists():
        # not a local path: a Hub repo id (owner/name[@revision]) is downloaded
        if not hub.is_repo_ref(p):
            raise SourceError("no such file or folder", path=p)
        p = hub.resolve(str(p))
    elif p.is_symlink() and not safeio.link_allowed(p):
        p = Path(os.path.realpath(p))  # SRC itself may be a link the user made: read what it names
    if p.is_file() and p.suffix.lower() == ".gguf":
        return open_gguf(p)
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if is_nanotron_dir(p):
        return open_nanotron(p)
    if p.is_dir():
        return open_safetensors_dir(p)
    raise not_a_checkpoint(p)  # a pickle (.bin, .pt, .pkl) is refused, never unpickled
