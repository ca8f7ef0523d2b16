"""Lazy tensor sources: a checkpoint as name -> loader, one tensor resident at a time.

`open_source(path)` sniffs what `path` is and returns a `Checkpoint` (`bitconv.sources.checkpoint`):

    bitconv.sources.safetensors   HF-layout folders (bf16 master, bitconv ternary, HF packed)
    bitconv.sources.gguf          .gguf files
    bitconv.sources.nanotron      Nanotron checkpoint folders
    bitconv.sources.hub           a Hub repo id as SRC (downloaded into the HF cache)
    bitconv.sources.validate      config.json vs weights checks, run when a source is opened
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from bitconv.core import safeio
from bitconv.core.errors import SourceError
from bitconv.core.pickled import not_a_checkpoint
from bitconv.quant import compute_mode
from bitconv.sources import hub
from bitconv.sources.checkpoint import KINDS, Checkpoint, ModelTensor, is_nanotron_dir
from bitconv.sources.gguf import open_gguf
from bitconv.sources.nanotron import open_nanotron
from bitconv.sources.safetensors import open_safetensors_dir

__all__ = ["KINDS", "Checkpoint", "ModelTensor", "is_nanotron_dir", "open_source"]


def near_names(p: Path) -> str | None:
    """'did you mean ...' for a missing path: the closest names in its parent folder (difflib), or None."""
    parent = p.expanduser().parent
    try:
        names = [c.name for c in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return None
    close = difflib.get_close_matches(p.name, names, n=3, cutoff=0.6)
    return "did you mean " + " or ".join(repr(str(parent / c) if str(parent) != "." else c) for c in close) + "?" \
        if close else None


def open_source(path: str | Path, compute: str = "float32") -> Checkpoint:
    """Open SRC: a folder holding an HF-layout checkpoint (bf16 master, bitconv ternary or HF packed), a .gguf, or a
    Nanotron checkpoint. `compute` is the arithmetic its float weights are ternarized in ("float32", canonical, or
    "bfloat16", onebitllms'), chosen here once for every command and checked by `quant.compute_mode`."""
    compute = compute_mode(compute)
    p = Path(path).expanduser()
    if not p.exists():
        # not a local path: a Hub repo id (owner/name[@revision]) is downloaded
        if not hub.is_repo_ref(path):
            raise SourceError("no such file or folder", path=p, hint=near_names(p))
        p = hub.resolve(str(path))
    elif p.is_symlink() and not safeio.link_allowed(p):
        p = Path(os.path.realpath(p))  # SRC itself may be a link the user made: read what it names
    if p.is_file() and p.suffix.lower() == ".gguf":
        return open_gguf(p, compute=compute)
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if is_nanotron_dir(p):
        return open_nanotron(p, compute=compute)
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1 and not ggufs[0].is_symlink():  # one GGUF in the folder: that file, as on the Hub
            return open_gguf(ggufs[0], compute=compute)
    if p.is_dir():
        return open_safetensors_dir(p, compute)
    raise not_a_checkpoint(p)  # a pickle (.bin, .pt, .pkl) is refused, never unpickled
