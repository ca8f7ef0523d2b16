"""bitconv: BitNet b1.58 checkpoints into every deployable ternary layout, with proof that each is right."""

from __future__ import annotations

__version__ = "0.1.0"
