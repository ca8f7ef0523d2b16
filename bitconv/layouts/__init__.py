"""The layout registry: one class per packed format, registered by declaring it.

A layout turns a `Ternary` (codes + magnitude scale) into named stored fields and back. `spec(shape)` is pure and
data-free, so a plan can validate every shape and size every output before any tensor is read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from bitconv.errors import LayoutError
from bitconv.tensors import FieldSpec, Ternary

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

    def __init_subclass__(cls, *, name: str | None = None, container: str | None = None, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if name is None:
            return  # abstract intermediate class
        key = _norm(name)
        if key in _REGISTRY:
            raise TypeError(f"layout {key!r} registered twice ({_REGISTRY[key].__name__}, {cls.__name__})")
        cls.name, cls.container = key, container or ""
        _REGISTRY[key] = cls

    @abstractmethod
    def spec(self, shape: tuple[int, ...], tensor: str | None = None) -> dict[str, FieldSpec]:
        """Fields this layout stores for a weight of `shape`; raises `LayoutError` for shapes it cannot hold."""

    @abstractmethod
    def pack(self, t: Ternary) -> dict[str, np.ndarray]:
        """Stored fields (numpy storage dtypes; BF16 as uint16 bits). Keys and shapes equal `spec(t.shape)`."""

    @abstractmethod
    def unpack(self, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> Ternary:
        """The inverse of `pack`: codes and magnitude scale of a weight of logical `shape`."""

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        n = int(np.prod(shape))
        return 8.0 * sum(f.nbytes for f in self.spec(shape).values()) / n

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


# Import the layout modules so that declaring their classes registers them.
from bitconv.layouts import (  # noqa: E402, F401
    gguf_i2s,
    gguf_iq1bn,
    gguf_iq2bn,
    gguf_iq2bn_r4,
    gguf_tl,
    gguf_tq,
    hf_packed,
    ternary,
)
