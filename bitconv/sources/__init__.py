"""Lazy tensor sources: a checkpoint as name -> loader, one tensor resident at a time.

`open_source(path)` sniffs what `path` is and returns a `Checkpoint`. Every kind exposes the same logical view:
HF tensor names with logical shapes; ternary projections give a `Ternary` (quantized on the fly from a master,
decoded from packed/ternary storage), everything else is passed through byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bitconv import safeio
from bitconv.errors import SourceError
from bitconv.safetensors_io import TensorInfo
from bitconv.tensors import Ternary

# What a checkpoint is; `inspect` prints these ids.
KINDS = {
    "bf16-master": "bf16 master weights (HF layout)",
    "bitconv-ternary": "bitconv ternary checkpoint (int8 codes + float32 scales)",
    "hf-packed": "transformers packed BitNet checkpoint (uint8, 4 codes per byte)",
    "gguf": "GGUF file (bitnet.cpp I2_S/TL1/TL2, llama.cpp TQ1_0/TQ2_0, ik_llama.cpp IQ1_BN/IQ2_BN, or float)",
    "nanotron": "Nanotron checkpoint folder (TP/PP shards of bf16 latent weights)",
}


@dataclass
class ModelTensor:
    """One logical tensor of a model. Exactly one of `ternary_loader` / `stored` describes its data.

    A passthrough tensor that is not a plain stored tensor (e.g. GGUF Q8_0) has a `loader` giving it as a fresh
    torch tensor of `dtype`; `stored` then only accounts for its bytes.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # stored dtype (passthrough) or storage dtype of the ternary data ("BF16" master, "U8", "I8")
    stored: list[TensorInfo] = field(default_factory=list)  # the stored tensors behind it
    ternary_loader: Callable[[str], Ternary] | None = None
    loader: Callable[[], torch.Tensor] | None = None

    @property
    def is_ternary(self) -> bool:
        return self.ternary_loader is not None

    def ternary(self, compute: str = "float32") -> Ternary:
        assert self.ternary_loader is not None, self.name
        return self.ternary_loader(compute)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def stored_bytes(self) -> int:
        return sum(t.nbytes for t in self.stored)


@dataclass
class Checkpoint:
    """An opened checkpoint: config, logical tensors, and the side files (tokenizer, ...) that travel with it."""

    path: Path
    kind: str
    config: dict
    tensors: dict[str, ModelTensor]
    aux_files: list[Path]
    files: list[Path]  # weight files
    layout: str | None = None  # the packed layout of ternary tensors, e.g. "hf-autobitlinear"
    compute: str | None = None  # how stored codes were made, when known

    def ternary_tensors(self) -> list[ModelTensor]:
        return [t for t in self.tensors.values() if t.is_ternary]

    def load_passthrough(self, name: str) -> torch.Tensor:
        from bitconv.sources.safetensors import load_torch

        t = self.tensors[name]
        return t.loader() if t.loader is not None else load_torch(t.stored[0])


def is_nanotron_dir(p: Path) -> bool:
    """A Nanotron checkpoint: a model/ tree of TP/PP shards beside its metadata."""
    metadata = ("checkpoint_metadata.json", "model_config.json")
    return (p / "model").is_dir() and any((p / m).is_file() for m in metadata)


def near_names(p: Path) -> str | None:
    """'did you mean ...' for a missing path: the closest names in its parent folder (difflib), or None."""
    import difflib

    parent = p.expanduser().parent
    try:
        names = [c.name for c in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return None
    close = difflib.get_close_matches(p.name, names, n=3, cutoff=0.6)
    return "did you mean " + " or ".join(repr(str(parent / c) if str(parent) != "." else c) for c in close) + "?" \
        if close else None


def open_source(path: str | Path) -> Checkpoint:
    """Open SRC: a folder holding an HF-layout checkpoint (bf16 master, bitconv ternary or HF packed), or a .gguf."""
    p = Path(path).expanduser()
    if not p.exists():
        from bitconv import hub  # not a local path: a Hub repo id (owner/name[@revision]) is downloaded

        if not hub.is_repo_ref(path):
            raise SourceError("no such file or folder", path=p, hint=near_names(p))
        p = hub.resolve(str(path))
    elif p.is_symlink() and not safeio.link_allowed(p):
        p = Path(os.path.realpath(p))  # SRC itself may be a link the user made: read what it names
    if p.is_file() and p.suffix.lower() == ".gguf":
        from bitconv.sources.gguf import open_gguf

        return open_gguf(p)
    from bitconv.sources.safetensors import open_safetensors_dir

    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if is_nanotron_dir(p):
        from bitconv.sources.nanotron import open_nanotron

        return open_nanotron(p)
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1 and not ggufs[0].is_symlink():  # one GGUF in the folder: that file, as on the Hub
            from bitconv.sources.gguf import open_gguf

            return open_gguf(ggufs[0])
    if p.is_dir():
        return open_safetensors_dir(p)
    from bitconv.validate import not_a_checkpoint  # a pickle (.bin, .pt, .pkl) is refused, never unpickled

    raise not_a_checkpoint(p)
