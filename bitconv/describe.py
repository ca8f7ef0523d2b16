"""`bitconv inspect`: what a checkpoint is, its layout, shapes, bits per weight and scale statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bitconv.core import naming
from bitconv.core.errors import BitconvError
from bitconv.formats.gguf.metadata import WARNING_KEY, hf_name, read_arch
from bitconv.layouts import kernel_kinds
from bitconv.layouts.kernel_config import KernelConfig
from bitconv.layouts.runtimes import summary, where_it_runs
from bitconv.sources import KINDS, Checkpoint, open_source
from bitconv.sources.gguf import PACKED, file_activation, gguf_header, kernel_config_path


@dataclass
class TensorRow:
    name: str
    shape: list[int]
    dtype: str  # stored dtype
    layout: str  # "passthrough" or the ternary layout
    bytes: int
    scale: float | None = None
    zero_fraction: float | None = None


@dataclass
class Description:
    path: str
    kind: str
    kind_description: str
    layout: str | None
    family: str
    architecture: str
    config: dict
    parameters: int
    ternary_parameters: int
    files: list[dict]
    total_bytes: int
    bits_per_weight: float  # all stored bytes * 8 / all parameters
    ternary_bits_per_weight: float | None  # stored bits (codes + scale) per ternary weight
    scale_stats: dict | None
    zero_fraction: float | None
    compute: str | None
    quantization_config: dict | None
    tensors: list[TensorRow] = field(default_factory=list)
    runtimes: dict | None = None  # GGUF only: where the file runs correctly (gguf_runtimes)

    def to_dict(self) -> dict:
        return asdict(self)


_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "hidden_act", "tie_word_embeddings", "rope_theta")


def describe(src: str | Path | Checkpoint, *, stats: bool = True) -> Description:
    """Describe SRC. With `stats`, every ternary tensor is decoded (or quantized, for a master) to report its
    scale and the fraction of zero codes; without, only headers are read."""
    ck = src if isinstance(src, Checkpoint) else open_source(src)
    fam, _ = naming.family(ck.config)
    rows, scales, zeros, n_tern = [], [], 0, 0
    tern_bytes = 0
    for t in ck.tensors.values():
        row = TensorRow(t.name, list(t.shape), t.dtype, "passthrough", t.stored_bytes)
        if t.is_ternary:
            row.layout = ck.layout or "bf16 master (ternarized on the fly)"
            n_tern += t.numel
            tern_bytes += t.stored_bytes
            if stats:
                tern = t.ternary(ck.compute if ck.compute in ("float32", "bfloat16") else "float32")
                z = int(np.count_nonzero(tern.codes == 0))
                row.scale, row.zero_fraction = float(tern.scale), z / t.numel
                scales.append(float(tern.scale))
                zeros += z
        rows.append(row)
    files = [{"name": _rel(f, ck.path), "bytes": f.stat().st_size} for f in ck.files]
    total = sum(f["bytes"] for f in files)
    n_params = sum(t.numel for t in ck.tensors.values())
    qc = ck.config.get("quantization_config")
    return Description(
        path=str(ck.path), kind=ck.kind, kind_description=KINDS[ck.kind], layout=ck.layout, family=fam,
        architecture=(ck.config.get("architectures") or ["?"])[0],
        config={k: ck.config[k] for k in _CONFIG_KEYS if k in ck.config},
        parameters=n_params, ternary_parameters=n_tern, files=files, total_bytes=total,
        bits_per_weight=8 * total / max(n_params, 1),
        ternary_bits_per_weight=(8 * tern_bytes / n_tern) if n_tern else None,
        scale_stats=_stats(scales) if scales else None,
        zero_fraction=(zeros / n_tern) if (stats and n_tern) else None,
        compute=ck.compute, quantization_config=qc if isinstance(qc, dict) else None, tensors=rows,
        runtimes=gguf_runtimes(ck.path) if ck.kind == "gguf" else None)


def gguf_runtimes(path: str | Path) -> dict:
    """Where a GGUF file runs correctly, from the compatibility table (`bitconv.layouts.runtimes`).

    Judged on what the file says: its arch, the activation it declares (`<arch>.hidden_activation`, else the arch's
    default), its projections' type and shapes, and for a tiled layout the kernel_config.ini next to it (without one
    the LUT-buffer check is reported as unverified). Returns runs_on / does_not_run_on lines, one verdict per
    runtime (with its run command), the codegen steps for TL files, and a --force warning stored in the file.
    """

    p = Path(path)
    g = gguf_header(p)
    act = file_activation(g)
    arch = read_arch(g.arch, act)
    proj = [t for t in g.tensors.values() if (n := hf_name(t.name, arch)) and naming.is_ternary(n, len(t.shape))]
    counts: dict[str, int] = {}
    for t in proj:
        counts[t.type.name] = counts.get(t.type.name, 0) + t.numel
    type_name = max(counts, key=lambda k: counts[k]) if counts else "?"
    shapes = {t.name: (int(t.shape[0]), int(t.shape[1])) for t in proj if len(t.shape) == 2}
    tiling, steps, notes = {}, [], []
    kind = kernel_kinds().get(PACKED.get(type_name, ""))
    if kind is not None:
        kc = _kernel_config_near(p, kind)
        if kc is None:
            notes.append("no kernel_config.ini next to the file: the LUT-buffer check is unverified")
        else:
            tiling = {e.shape: (e.BM, e.BK, e.bm) for e in kc.entries}
            steps = kc.codegen_params().instructions()
    verdicts = where_it_runs(g.arch, type_name, act, shapes, tiling, p.name)
    runs_on, not_on = summary(verdicts)
    return {"arch": g.arch, "activation": act, "type": type_name, "runs_on": runs_on, "does_not_run_on": not_on,
            "runtimes": [v.to_dict() for v in verdicts], "codegen_steps": steps, "notes": notes,
            "warning": g.get(WARNING_KEY)}


def _kernel_config_near(path: Path, kind: str) -> object | None:

    try:
        return KernelConfig.from_ini(kernel_config_path(path)).with_kind(kind)
    except BitconvError:
        return None


def _rel(f: Path, root: Path) -> str:
    try:
        return str(f.relative_to(root)) if root.is_dir() else f.name
    except ValueError:
        return f.name


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"count": int(a.size), "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
            "median": float(np.median(a))}
