"""The block-YAML subset of nanotron's `config.yaml` (written by `yaml.dump(serialize(config))`), without PyYAML.

`dump` writes what `yaml.dump(data)` writes for nested dicts, lists and scalars (keys sorted, block style, lists
at their parent's indentation), except that long strings are never folded. `load` reads that subset back: block
mappings and lists, `{}` / `[]`, plain, single- and double-quoted scalars, comments, folded plain continuation lines.
Anything else (anchors, tags, literal blocks, non-empty flow collections) raises `YamlError`.
"""

from __future__ import annotations

import json
import math
import re


class YamlError(ValueError):
    """The text uses YAML outside the subset this module reads."""


# ------------------------------------------------------------------------------------------------------------ dump

_PLAIN = re.compile(r"[A-Za-z_/][\w./-]*")
_RESERVED = {"null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"}


def _scalar(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v).lower()
        return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
    if isinstance(v, str):
        if _PLAIN.fullmatch(v) and v.lower() not in _RESERVED:
            return v
        if v.isprintable():
            return "'" + v.replace("'", "''") + "'"
        return json.dumps(v)
    raise TypeError(f"cannot write {type(v).__name__} to config.yaml")


def _lines(data: object, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(data, dict):
        for k in sorted(data):
            v = data[k]
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out.extend(_lines(v, indent + 2 if isinstance(v, dict) else indent))
            else:
                out.append(f"{pad}{k}: {_empty(v) if isinstance(v, (dict, list)) else _scalar(v)}")
    elif isinstance(data, list):
        for v in data:
            if isinstance(v, (dict, list)) and v:
                sub = _lines(v, indent + 2)
                out.append(f"{pad}- {sub[0].lstrip()}")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_empty(v) if isinstance(v, (dict, list)) else _scalar(v)}")
    return out


def _empty(v: dict | list) -> str:
    return "{}" if isinstance(v, dict) else "[]"


def dump(data: dict) -> str:
    """YAML text for a nested dict, as `yaml.dump(data)` writes it (sorted keys, block style)."""
    return "\n".join(_lines(data, 0)) + "\n"


# ------------------------------------------------------------------------------------------------------------ load

_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
_SPECIAL = {".nan": math.nan, ".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf}
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _parse_scalar(text: str) -> object:
    t = text.strip()
    if t in ("", "~") or t.lower() == "null":
        return None
    if t == "{}":
        return {}
    if t == "[]":
        return []
    if t[0] == "'":
        if len(t) < 2 or t[-1] != "'":
            raise YamlError(f"unterminated quoted string {t!r}")
        return t[1:-1].replace("''", "'")
    if t[0] == '"':
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            raise YamlError(f"unsupported double-quoted string {t!r}") from None
    if t[0] in "&*!|>[{%@`":
        raise YamlError(f"unsupported YAML syntax {t!r}")
    if t.lower() in _BOOLS:
        return _BOOLS[t.lower()]
    if _INT.fullmatch(t):
        return int(t)
    if t.lower() in _SPECIAL:
        return _SPECIAL[t.lower()]
    if _FLOAT.fullmatch(t):
        return float(t)
    return t


def _strip_comment(line: str) -> str:
    if line.lstrip().startswith("#"):
        return ""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and i > 0 and line[i - 1] in " \t":
            return line[:i].rstrip()
    return line.rstrip()


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = []
        for raw in text.splitlines():
            line = _strip_comment(raw)
            if line.strip() and line.strip() not in ("---", "..."):
                if "\t" in line[: len(line) - len(line.lstrip())]:
                    raise YamlError("tab indentation")
                self.lines.append((len(line) - len(line.lstrip()), line.strip()))
        self.i = 0

    def block(self, indent: int) -> object:
        if self.i >= len(self.lines):
            return None
        ind, text = self.lines[self.i]
        if ind < indent:
            return None
        if text == "-" or text.startswith("- "):
            return self.seq(ind)
        return self.mapping(ind)

    def seq(self, indent: int) -> list:
        out = []
        while self.i < len(self.lines):
            ind, text = self.lines[self.i]
            if ind != indent or not (text == "-" or text.startswith("- ")):
                break
            rest = text[1:].lstrip()
            if not rest:
                self.i += 1
                out.append(self.block(indent + 1))
            elif _key_value(rest) is not None:  # "- key: value" opens a mapping indented past the dash
                self.lines[self.i] = (indent + 2, rest)
                out.append(self.mapping(indent + 2))
            else:
                self.i += 1
                out.append(self.value(rest, indent))
        return out

    def mapping(self, indent: int) -> dict:
        out: dict = {}
        while self.i < len(self.lines):
            ind, text = self.lines[self.i]
            if ind < indent:
                break
            if ind > indent:
                raise YamlError(f"unexpected indentation at {text!r}")
            kv = _key_value(text)
            if kv is None:
                break
            key, rest = kv
            self.i += 1
            if rest:
                out[key] = self.value(rest, indent)
            else:
                nxt = self.lines[self.i] if self.i < len(self.lines) else None
                nested_seq = nxt is not None and nxt[0] == indent and nxt[1].startswith("-")
                out[key] = self.block(indent if nested_seq else indent + 1)
        return out

    def value(self, text: str, indent: int) -> object:
        # folded plain scalars continue on deeper-indented lines that are not keys
        while self.i < len(self.lines):
            ind, more = self.lines[self.i]
            if ind <= indent or _key_value(more) is not None or more.startswith("- "):
                break
            text = f"{text} {more}"
            self.i += 1
        return _parse_scalar(text)


_KEY = re.compile(r"([A-Za-z_][\w.-]*|'[^']*'|\"[^\"]*\"):(?:\s+(.*))?$")


def _key_value(text: str) -> tuple[str, str] | None:
    m = _KEY.match(text)
    if not m:
        return None
    key = m.group(1)
    if key[0] in "'\"":
        key = key[1:-1]
    return key, (m.group(2) or "").strip()


def load(text: str) -> object:
    """Parse the YAML subset described in the module docstring."""
    p = _Parser(text)
    data = p.block(0)
    if p.i != len(p.lines):
        raise YamlError(f"cannot parse line {p.lines[p.i][1]!r}")
    return data
