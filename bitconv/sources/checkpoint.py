"""What every source returns: a `Checkpoint` of logical `ModelTensor`s (name -> loader, one tensor resident at a time).

Every kind exposes the same logical view: HF tensor names with logical shapes; ternary projections give a `Ternary`
(quantized on the fly from a master, decoded from packed/ternary storage), everything else is passed through byte for
byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitconv.core import dtypes
from bitconv.core.lazytorch import torch
from bitconv.core.tensors import Ternary
from bitconv.formats.safetensors import TensorInfo, pread_exact, read_array
from bitconv.layouts import gguf_layouts


def _gguf_types_text() -> str:
    """The GGUF ternary types by runtime family, from the layout registry ("bitnet.cpp A/B, llama.cpp C/D")."""
    fam: dict[str, list[str]] = {}
    for cls in gguf_layouts().values():
        fam.setdefault({"upstream": "llama.cpp"}.get(cls.ggml_dialect, cls.ggml_dialect), []).append(cls.ggml_type)
    return ", ".join(f"{f} {'/'.join(ts)}" for f, ts in fam.items())


# What a checkpoint is; `inspect` prints these ids.
KINDS = {
    "bf16-master": "bf16 master weights (HF layout)",
    "bitconv-ternary": "bitconv ternary checkpoint (int8 codes + float32 scales)",
    "hf-packed": "transformers packed BitNet checkpoint (uint8, 4 codes per byte)",
    "gguf": f"GGUF file ({_gguf_types_text()}, or float)",
    "nanotron": "Nanotron checkpoint folder (TP/PP shards of bf16 latent weights)",
}


@dataclass
class ModelTensor:
    """One logical tensor of a model. Exactly one of `ternary_loader` / `stored` describes its data.

    A ternary tensor either stores its codes (`ternary_loader()` decodes them; `compute` is None) or is a float
    weight ternarized when it is loaded (`ternary_loader(compute)`), in the arithmetic chosen once, when the source
    was opened (`open_source(src, compute=...)`, stored in `compute`).

    A passthrough tensor that is not a plain stored tensor (e.g. GGUF Q8_0) has a `loader` giving it as a fresh
    torch tensor of `dtype`; `stored` then only accounts for its bytes.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # stored dtype (passthrough) or storage dtype of the ternary data ("BF16" master, "U8", "I8")
    stored: list[TensorInfo] = field(default_factory=list)  # the stored tensors behind it
    ternary_loader: Callable[..., Ternary] | None = None  # () -> stored codes; (compute) -> a float weight's
    loader: Callable[[], torch.Tensor] | None = None
    compute: str | None = None  # a float weight's ternarization arithmetic (`quant.COMPUTE_MODES`); None: stored codes
    row_loader: Callable[[int, int], torch.Tensor] | None = None  # (r0, r1) -> rows [r0, r1) of what `loader` gives

    @property
    def is_ternary(self) -> bool:
        return self.ternary_loader is not None

    def ternary(self, compute: str | None = None) -> Ternary:
        """Codes and magnitude scale: decoded (stored codes; `compute` does not apply), or ternarized in the
        source's arithmetic (`compute` overrides it: `verify` tries each mode on a master)."""
        assert self.ternary_loader is not None, self.name
        if self.compute is None:
            return self.ternary_loader()
        return self.ternary_loader(compute or self.compute)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def plain(self) -> TensorInfo | None:
        """The one stored tensor this tensor is byte for byte (no loader, the same shape), or None: what readers may
        take straight from the file."""
        if self.loader is None and len(self.stored) == 1 and tuple(self.stored[0].shape) == tuple(self.shape):
            return self.stored[0]
        return None

    @property
    def streams_rows(self) -> bool:
        """Whether `read_rows` reads only the rows asked for (else it loads the whole tensor and slices it)."""
        return self.row_loader is not None or self.plain is not None

    def read_rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) of a passthrough or float-master tensor, as a fresh torch tensor of its stored dtype: read
        from the file (or the `row_loader`) alone where `streams_rows`, else sliced from the whole tensor."""
        if self.row_loader is not None:
            return self.row_loader(r0, r1)
        if self.streams_rows:
            return read_rows(self.stored[0], r0, r1)
        whole = self.loader() if self.loader is not None else load_torch(self.stored[0])
        return whole[r0:r1].clone()

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
    quant_compute: str = "float32"  # how float weights are ternarized: chosen by `open_source(src, compute=...)`

    def ternary_tensors(self) -> list[ModelTensor]:
        return [t for t in self.tensors.values() if t.is_ternary]

    def load_passthrough(self, name: str) -> torch.Tensor:
        t = self.tensors[name]
        return t.loader() if t.loader is not None else load_torch(t.stored[0])


def is_nanotron_dir(p: Path) -> bool:
    """A Nanotron checkpoint: a model/ tree of TP/PP shards beside its metadata."""
    metadata = ("checkpoint_metadata.json", "model_config.json")
    return (p / "model").is_dir() and any((p / m).is_file() for m in metadata)


def read_rows(info: TensorInfo, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of one stored tensor (first dimension), read alone, as a fresh torch tensor."""
    d = dtypes.DTYPES[info.dtype]
    row = int(np.prod(info.shape[1:])) if len(info.shape) > 1 else 1
    buf = np.empty((r1 - r0) * row, dtype=d.np_storage)
    pread_exact(info.path, info.offset + r0 * row * d.itemsize, memoryview(buf.view(np.uint8)), info.name)
    return dtypes.from_numpy_storage(buf, info.dtype).reshape((r1 - r0, *info.shape[1:]))


def load_torch(info: TensorInfo) -> torch.Tensor:
    """A fresh torch tensor holding one stored tensor."""
    return dtypes.from_numpy_storage(read_array(info), info.dtype).reshape(info.shape)
