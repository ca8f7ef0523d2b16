"""The layout registry: one class per packed format, registered by declaring it (`bitconv.layouts` imports every
module of its folder, so a new layout file registers itself).

A layout turns a `Ternary` (codes + magnitude scale) into named stored fields and back. `spec(shape)` is pure and
data-free, so a plan can validate every shape and size every output before any tensor is read.

A layout file declares every fact of its format as class attributes (the table below); every other table in bitconv
(the GGUF container's type rows and sizes, `pack --type` targets, the demo's list, `check`'s deployment layouts,
the HF linear classes) is derived from these with the functions at the end of this module. No module outside
`bitconv/layouts/` (and the GGUF container, which is told the rows) names a layout's GGML type or constants.

| fact                  | meaning                                                                                 |
|-----------------------|-----------------------------------------------------------------------------------------|
| `name`, `container`   | the one spelling (`gguf-i2-s`), used in output and JSON; "hf" or "gguf"                 |
| `description`         | one line for `bitconv layouts`, `inspect` and model cards                               |
| `scale_dtype`         | the precision of the stored scale; `scale_inverted`: stored as 1/scale                  |
| `ggml_type`, `ggml_type_id`, `ggml_dialect`, `ggml_block`, `file_type` | the GGML type row it registers    |
| `ggml_nbytes(dims)`   | the tensor's byte size when not blocks x block bytes (registered with the row)          |
| `gguf_tool`           | whose converter writes this type: "bitnet.cpp" or "upstream" (selects the KV set)       |
| `quantized`, `default_embd` | made like llama-quantize (adds quantization_version); default --embd-type         |
| `runtime`, `arch_by_activation` | the one runtime it is written for (its arch rules), and its arch per activation |
| `needs_kernel_config`, `kernel_kind` | built with a kernel_config.ini of this kind (tiled layouts)              |
| `fallback_layout`     | the layout a shape it cannot hold is written with instead                               |
| `runtime_support`     | per GGML type, the runtimes (`layouts.runtimes` keys) that compute it, or why they fail |
| `linear_class`        | HF packed: transformers' `quantization_config.linear_class`                              |
| `deploy_check`        | `check` tells whether a master's shapes fit it                                          |
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from bitconv.core import dtypes
from bitconv.core.errors import LayoutError
from bitconv.core.tensors import FieldSpec, Ternary
from bitconv.formats.gguf.ggml_types import GGMLType, register_type

_REGISTRY: dict[str, type[Layout]] = {}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Layout(ABC):
    """Base class. Subclass with `class X(Layout, name="...", container="hf")` to register."""

    name: ClassVar[str]
    container: ClassVar[str]
    description: ClassVar[str] = ""
    scale_dtype: ClassVar[str] = "F32"  # how the per-tensor scale is stored (its precision)
    scale_inverted: ClassVar[bool] = False  # True where the format stores 1/scale (HF bitlinear)
    # GGUF: the GGML type row the layout writes (None outside GGUF), registered into the container's type table
    ggml_type: ClassVar[str | None] = None
    ggml_type_id: ClassVar[int | None] = None
    ggml_dialect: ClassVar[str] = "upstream"  # "upstream", "bitnet.cpp" or "ik_llama.cpp"
    ggml_block: ClassVar[tuple[int, int]] = (1, 1)  # (elements, bytes) per block, as ggml declares the type
    file_type: ClassVar[int | None] = None  # general.file_type of a file whose projections have this type
    ggml_aliases: ClassVar[tuple[str, ...]] = ()  # further GGML type names the layout reads (`ggml_rows`)
    gguf_tool: ClassVar[str] = "upstream"  # whose converter writes the type: its KV set ("bitnet.cpp", "upstream")
    quantized: ClassVar[bool] = False  # made like llama-quantize (general.quantization_version appended)
    default_embd: ClassVar[str] = "f16"  # default --embd-type for token_embd / output
    runtime: ClassVar[str | None] = None  # the runtime the type is written for (its arch rules apply)
    arch_by_activation: ClassVar[Mapping[str, str]] = {}  # that runtime's GGUF arch for each FFN activation
    needs_kernel_config: ClassVar[bool] = False  # built with the kernel_config.ini it was packed with (tiled)
    kernel_kind: ClassVar[str | None] = None  # the kernel config kind it is tiled for
    fallback_layout: ClassVar[str | None] = None  # written instead for a shape this layout cannot hold
    vec_dot_type: ClassVar[str | None] = None  # the type upstream llama.cpp converts a matmul's input to, if it runs
    # GGML type -> {runtime key (`layouts.runtimes`): "" where it computes the type correctly, else why it fails}
    runtime_support: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    # HF: transformers' linear class
    linear_class: ClassVar[str | None] = None
    deploy_check: ClassVar[bool] = False  # `check` reports whether a master's shapes fit this layout

    def __init_subclass__(cls, *, name: str | None = None, container: str | None = None, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if name is None:
            return  # abstract intermediate class
        key = _norm(name)
        if key in _REGISTRY:
            raise TypeError(f"layout {key!r} registered twice ({_REGISTRY[key].__name__}, {cls.__name__})")
        cls.name, cls.container = key, container or ""
        for row in cls.ggml_rows():  # the container learns the type (before the name is taken: a clash raises)
            register_type(row)
        _REGISTRY[key] = cls

    @classmethod
    def ggml_nbytes(cls, dims: tuple[int, ...]) -> int | None:
        """Bytes of a tensor of this GGML type with ggml dims `dims` (ne0 first), for the container; None when
        ne0 is not whole blocks. Default: blocks x block bytes."""
        n, b = cls.ggml_block
        if not dims:
            return b
        return None if dims[0] % n else math.prod(dims) // n * b

    @classmethod
    def ggml_rows(cls) -> tuple[GGMLType, ...]:
        """The container's type rows of this layout: its `ggml_type` (first), then any alias it also reads."""
        if cls.ggml_type is None or cls.ggml_type_id is None:
            return ()
        return (GGMLType(cls.ggml_type, cls.ggml_type_id, *cls.ggml_block, cls.ggml_dialect, cls.file_type,
                         cls.ggml_nbytes),)

    @classmethod
    def type_key(cls) -> str:
        """The `--type` spelling of a GGUF layout (its name without the container prefix, `_` for `-`)."""
        return cls.name.removeprefix(f"{cls.container}-").replace("-", "_")

    @classmethod
    def stored_scale(cls, scale: float) -> np.float32:
        """`scale` as this format stores it, decoded back to a float32 magnitude: what `unpack(pack(t)).scale`
        gives, computed on the scale alone (the rule lives here and in `pack`/`unpack`, nowhere else)."""
        return decode_scale(encode_scale(scale, cls.scale_dtype, cls.scale_inverted), cls.scale_inverted)

    @abstractmethod
    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        """Fields this layout stores for a weight of `shape`; raises `LayoutError` for shapes it cannot hold."""

    @abstractmethod
    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        """Stored fields (numpy storage dtypes; BF16 as uint16 bits). Keys and shapes equal `spec(t.shape)`."""

    @abstractmethod
    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], tensor: str | None = None) -> Ternary:
        """The inverse of `pack`: codes and magnitude scale of a weight of logical `shape` (the one decoder of the
        format: sources call it too). `tensor` names the weight in a `LayoutError` for data the format cannot hold."""

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        n = int(np.prod(shape))
        return 8.0 * sum(f.nbytes for f in self.spec(shape).values()) / n

    def gguf_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """GGUF tensor-info dims (ne0 first) of a weight of logical `shape` [out_features, in_features]."""
        return tuple(reversed(shape))

    def _require_2d(self, shape: tuple[int, ...], tensor: str | None) -> None:
        if len(shape) != 2 or min(shape) <= 0:
            raise LayoutError(f"layout {self.name} packs 2-D [out_features, in_features] weights",
                              tensor=tensor, shape=shape)


def get_layout(name: str, **params: object) -> Layout:
    """The layout registered under `name` (case and `_`/`-` insensitive), built with `params`."""
    cls = _REGISTRY.get(_norm(name))
    if cls is None:
        raise LayoutError(f"unknown layout {name!r}; known layouts: {', '.join(list_layouts())}")
    return cls(**params)


def layout_class(name: str) -> type[Layout] | None:
    """The registered class (static facts such as `scale_dtype`) without building an instance; None if unknown."""
    return _REGISTRY.get(_norm(name))


def list_layouts() -> list[str]:
    return sorted(_REGISTRY)


def layout_classes() -> list[type[Layout]]:
    """Every registered layout class, by name (the static facts of each: tables elsewhere are derived from these)."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def gguf_layouts() -> dict[str, type[Layout]]:
    """`--type` spelling -> layout class, for every GGUF layout (the pack targets, the demo's list)."""
    return {cls.type_key(): cls for cls in layout_classes() if cls.container == "gguf" and cls.ggml_type}


def hf_layouts() -> dict[str, str]:
    """transformers linear class -> HF packed layout name."""
    return {cls.linear_class: cls.name for cls in layout_classes() if cls.linear_class}


def deploy_layouts() -> tuple[str, ...]:
    """Layouts `check` measures a master's shapes against (each declares `deploy_check`)."""
    return tuple(cls.name for cls in layout_classes() if cls.deploy_check)


def kernel_kinds() -> dict[str, str]:
    """Layout name -> kernel config kind, for the tiled layouts (built with a kernel_config.ini)."""
    return {cls.name: cls.kernel_kind for cls in layout_classes() if cls.needs_kernel_config and cls.kernel_kind}


def type_id_choices(name: str) -> tuple[int, ...]:
    """The GGML type ids layout `name` can be written under (several for a type with an alias id)."""
    cls = layout_class(name)
    return tuple(r.id for r in cls.ggml_rows()) if cls is not None else ()


# ------------------------------------------------------------------------------------------------ stored scales


def encode_scale(scale: float, dtype: str, inverted: bool = False) -> np.ndarray:
    """The stored per-tensor scale, shape [1]: `scale` (or 1/scale, float32 arithmetic) in `dtype` (F32, F16, or
    BF16 as uint16 bits rounded to nearest even)."""
    s = np.float32(scale)
    v = np.float32(1.0) / s if inverted else s
    if dtype == "BF16":
        return dtypes.bf16_of_f32(np.array([v], dtype=np.float32))
    with np.errstate(over="ignore"):
        return np.array([v], dtype=np.float32).astype({"F16": np.float16, "F32": np.float32}[dtype])


def decode_scale(field: np.ndarray, inverted: bool = False) -> np.float32:
    """The magnitude scale from a stored field: BF16 bits (uint16) or a float array as a reader decoded it, then
    1/value where the format stores the inverse."""
    a = np.asarray(field)
    if a.dtype == np.uint16:
        v = np.float32((a.reshape(-1)[:1].astype(np.uint32) << 16).view(np.float32)[0])
    else:
        v = np.float32(a.reshape(-1)[0])
    with np.errstate(divide="ignore"):
        return np.float32(1.0) / v if inverted else v


def ggml_type_layouts() -> dict[str, str]:
    """GGML type name -> registered layout name, for every type a layout declares (`ggml_type`, `ggml_aliases`):
    the table a GGUF reader decodes projections with, derived rather than written out per type."""
    out: dict[str, str] = {}
    for name in sorted(_REGISTRY):
        cls = _REGISTRY[name]
        for t in (cls.ggml_type, *cls.ggml_aliases):
            if t is not None:
                out.setdefault(t, name)
    return out

