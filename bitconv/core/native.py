"""The optional C kernels (`bitconv/_ckernels.c`, compiled by setup.py where a C compiler is found).

`kernels()` is the module, or None when it is not built or switched off with BITCONV_PURE_PYTHON=1; every caller
then runs the numpy code that writes the same bytes (tests compare the two paths on every layout).
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

try:
    from bitconv import _ckernels as _MODULE
except ImportError:  # pragma: no cover - depends on the install
    _MODULE = None


def kernels() -> ModuleType | None:
    if _MODULE is None or os.environ.get("BITCONV_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes"):
        return None
    return _MODULE


def same_bytes(a: np.ndarray, b: np.ndarray, block: int = 1 << 24) -> bool:
    """Equal length and bytes of two C-contiguous arrays: a memcmp without the GIL where the kernels are built, else
    numpy a slice at a time (never a full-size boolean temporary: 235 MB for a 70B FFN matrix's codes)."""
    x, y = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    if x.size != y.size:
        return False
    ck = kernels()
    if ck is not None:
        return bool(ck.same_bytes(x, y))
    return all(np.array_equal(x[i:i + block], y[i:i + block]) for i in range(0, x.size, block))
