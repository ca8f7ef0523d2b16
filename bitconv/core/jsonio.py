"""Reading small JSON side files (config.json, tokenizer_config.json, ...): a broken one is one line, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

from bitconv.core import safeio
from bitconv.core.errors import SourceError


def read_json(path: Path, what: str, cap: int = safeio.CAP_CONFIG) -> dict:
    """A JSON object read through `safeio` (a regular file inside SRC, at most `cap` bytes)."""
    text = safeio.read_text(path, cap, what=what)
    try:
        data = json.loads(text)
    except (ValueError, json.JSONDecodeError) as e:
        raise SourceError(f"{what} is not valid JSON ({e})", path=path) from None
    except RecursionError:  # hostile nesting ([[[[...), not a real config
        raise SourceError(f"{what} is not valid JSON (nested too deeply)", path=path) from None
    if not isinstance(data, dict):
        raise SourceError(f"{what} is not a JSON object", path=path)
    return data


def read_optional_json(path: Path) -> dict | None:
    """An optional JSON object beside the weights (None when absent); a broken one is a one-line SourceError."""
    if not safeio.exists_entry(path):
        return None
    cap = safeio.CAP_TOKENIZER if path.name.startswith(("tokenizer", "vocab", "added_tokens", "special_tokens")) \
        else safeio.CAP_CONFIG
    return read_json(path, path.name, cap)
