"""torch, imported where it is first used rather than where it is named.

`from bitconv.core.lazytorch import torch` gives a stand-in whose attributes are torch's; the first attribute read
imports torch. Modules on the path of `pack` and `quantize` name torch this way: packing a bf16 master into the usual
layouts needs no torch at all (the C kernels ternarize and pack, numpy converts the float tensors, and
`bitconv.torchsum` caches torch's reduction order), and torch's import is 2-3 s of CPU, a third of a 2B4T GGUF pack.
Where a route does need it (a Nanotron source, the bfloat16 recipe, a machine without the kernels), it is imported
there, once.

Each attribute is fetched from torch once and kept on the stand-in, so a hot loop pays one dictionary lookup, as
with the module itself. Annotations name `torch.Tensor` freely (every module has `from __future__ import
annotations`); code run at import time must not read an attribute, or the import happens then.
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any


class _LazyTorch:
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and inspect probing the stand-in itself
            raise AttributeError(name)
        value = getattr(_import(), name)
        self.__dict__[name] = value
        return value

    def __repr__(self) -> str:
        return "<torch, imported on first use>" if "torch" not in sys.modules else repr(sys.modules["torch"])


torch: Any = _LazyTorch()


def _import() -> Any:
    """torch; its first import runs with the cyclic collector paused, then freezes what it made (a few hundred
    thousand objects that live as long as the process: collecting while they pile up costs 0.3-0.45 s)."""
    if loaded():
        return sys.modules["torch"]
    # not imported, or being imported by another thread: import_module waits on the import lock for that one
    paused = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module("torch")
    finally:
        if paused:
            gc.freeze()
            gc.enable()


def is_tensor(x: object) -> bool:
    """`isinstance(x, torch.Tensor)` without importing torch. No tensor exists before torch is imported, and none
    reaches a thread while another one is still importing it (the module is then in `sys.modules` half made)."""
    return loaded() and isinstance(x, sys.modules["torch"].Tensor)


def loaded() -> bool:
    """Whether torch has been imported (fully) in this process."""
    mod = sys.modules.get("torch")
    return mod is not None and not getattr(getattr(mod, "__spec__", None), "_initializing", False)
