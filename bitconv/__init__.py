"""bitconv: BitNet b1.58 checkpoints into every deployable ternary layout, with proof that each is right.

The Python API mirrors the CLI, one function per command (see `bitconv.api` and docs/python.md):

    >>> import bitconv
    >>> bitconv.pack("bitnet-bf16", "models/", to="gguf", type="i2_s")
    >>> bitconv.verify("models/bitnet-bf16-i2_s.gguf", ref="bitnet-bf16").ok
    >>> bitconv.inspect("bitnet-packed").layout

The functions are loaded on first use, so `import bitconv` does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
REPO_URL = "https://github.com/bitconv/bitconv"  # the one repository URL (pyproject, action, README, docs, cards)

API = ("quantize", "pack", "unpack", "inspect", "verify", "check", "convert", "upload", "layouts", "demo")


def __getattr__(name: str) -> object:
    if name == "verify":  # the subpackage bitconv.verify is callable: bitconv.verify(out, ref=...) is api.verify
        import importlib

        return importlib.import_module("bitconv.verify")
    if name in API:
        from bitconv import api

        return getattr(api, name)
    raise AttributeError(f"module 'bitconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


__all__ = ["__version__", *API]
