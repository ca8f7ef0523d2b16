"""The packed layouts: one file per layout, each registered by declaring its class (`bitconv.layouts.registry`).

Every module of this folder is imported here (pkgutil), so a new layout file registers itself: its class declares
all its facts, and every table elsewhere (GGUF type rows and sizes, pack targets, the demo's list, `check`'s
layouts) is derived from the registry. `bitconv.layouts.kernel_config` holds the tiling the tiled layouts are packed
for; `bitconv.layouts.runtimes` where each GGUF type runs.
"""

from __future__ import annotations

import importlib
import pkgutil

from bitconv.layouts.hf_packed import bitnet_quant_config
from bitconv.layouts.registry import (
    Layout,
    decode_scale,
    deploy_layouts,
    encode_scale,
    get_layout,
    ggml_type_layouts,
    gguf_layouts,
    hf_layouts,
    kernel_kinds,
    layout_class,
    layout_classes,
    list_layouts,
    type_id_choices,
)

for _m in pkgutil.iter_modules(__path__):  # every layout file registers itself by being imported
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Layout", "bitnet_quant_config", "decode_scale", "deploy_layouts", "encode_scale", "get_layout",
           "ggml_type_layouts", "gguf_layouts", "hf_layouts", "kernel_kinds", "layout_class", "layout_classes",
           "list_layouts", "type_id_choices"]
