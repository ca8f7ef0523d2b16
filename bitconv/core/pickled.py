"""Refusal of pickled weight files.

Pickled weights (`pytorch_model.bin`, `.pt`, `.pth`, `.pkl`, `.ckpt`) are never opened with pickle or torch.load:
unpickling runs code chosen by whoever wrote the file. bitconv reads safetensors and GGUF only.
"""

from __future__ import annotations

import os
from pathlib import Path

from bitconv.core import safeio
from bitconv.core.errors import SourceError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PICKLE_REFUSAL = ("pickled weights are never loaded (unpickling runs code from the file); bitconv reads safetensors "
                  "and GGUF only")
PICKLE_HINT = "convert the checkpoint to safetensors with tools you trust, then run bitconv on that"


def sniff_pickle(head: bytes) -> str | None:
    """What a file's first bytes say it is, when it is a pickle or a torch.save zip; None otherwise."""
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    return None


def refuse_pickle(path: Path, what: str | None = None) -> SourceError:
    """The error for a pickled weight file (returned, for the caller to raise)."""
    return SourceError(f"{what or 'a pickled file'}: {PICKLE_REFUSAL}", path=path, hint=PICKLE_HINT)


def pickled_in(folder: Path) -> list[Path]:
    """Pickled weight files in `folder` (by name), e.g. pytorch_model.bin."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    except OSError:
        return []


def not_a_checkpoint(path: Path) -> SourceError:
    """The error for a SRC that is neither a folder nor a .gguf/.safetensors file (a pickle gets its own)."""
    try:
        fd = safeio.open_input(path, user_named=True)  # a FIFO or device is refused here, never read (no hang)
    except SourceError as e:
        return e
    try:
        what = sniff_pickle(os.read(fd, 8))
    except OSError:
        what = None
    finally:
        os.close(fd)
    if what is not None or path.suffix.lower() in PICKLE_SUFFIXES:
        return refuse_pickle(path, what)
    return SourceError("not a checkpoint: expected a folder with config.json and *.safetensors, or a .gguf file",
                       path=path)
