"""Reading small JSON side files (config.json, tokenizer_config.json, ...): a broken one is one line, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

from bitconv.core.errors import SourceError


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{what} is missing", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{what} is not valid JSON ({e})", path=path) from None
    except RecursionError:  # hostile nesting ([[[[...), not a real config
        raise SourceError(f"{what} is not valid JSON (nested too deeply)", path=path) from None
    if not isinstance(data, dict):
        raise SourceError(f"{what} is not a JSON object", path=path)
    return data


def read_optional_json(path: Path) -> dict | None:
    """An optional JSON object beside the weights (None when absent); a broken one is a one-line SourceError."""
    return read_json(path, path.name) if path.is_file() else None
