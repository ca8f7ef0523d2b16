"""The packed layouts: one file per layout, each registered by declaring its class (`bitconv.layouts.registry`).

`bitconv.layouts.kernel_config` holds the TL1/TL2 kernel tiling the bitnet.cpp layouts are packed for.
"""

from __future__ import annotations

# Import the layout modules so that declaring their classes registers them.
from bitconv.layouts import (  # noqa: F401
    gguf_i2s,
    gguf_iq1bn,
    gguf_iq2bn,
    gguf_iq2bn_r4,
    gguf_tl,
    gguf_tq,
    hf_packed,
    ternary,
)
from bitconv.layouts.registry import (
    Layout,
    get_layout,
    ggml_type_layouts,
    layout_class,
    layout_classes,
    list_layouts,
)

__all__ = ["Layout", "get_layout", "ggml_type_layouts", "layout_class", "layout_classes", "list_layouts"]
