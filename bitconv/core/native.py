"""The optional C kernels (`bitconv/_ckernels.c`, compiled by setup.py where a C compiler is found).

`kernels()` is the module, or None when it is not built or switched off with BITCONV_PURE_PYTHON=1; every caller
then runs the numpy code that writes the same bytes (tests compare the two paths on every layout).
"""

from __future__ import annotations

import os
from types import ModuleType

try:
    from bitconv import _ckernels as _MODULE
except ImportError:  # pragma: no cover - depends on the install
    _MODULE = None


def kernels() -> ModuleType | None:
    if _MODULE is None or os.environ.get("BITCONV_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes"):
        return None
    return _MODULE
