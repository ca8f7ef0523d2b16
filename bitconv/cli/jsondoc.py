"""The one JSON document every `--json` prints (docs/json.md, docs/bitconv-report.schema.json).

Common keys, in every document: command, ok, out, layout, files, bytes, seconds, warnings. Layout names are the
layout registry's (`bitconv layouts`); numbers are numbers; paths are strings.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


def layout_name(target: str | None) -> str | None:
    """The registry's spelling of a target ("gguf-i2_s" -> "gguf-i2-s"), or None when it is not a layout."""
    if not target:
        return None
    from bitconv.layouts import list_layouts

    key = target.strip().lower().replace("_", "-")
    return key if key in list_layouts() else None


def doc(command: str, *, ok: bool = True, out: object = None, layout: str | None = None,
        files: list | tuple = (), bytes: int = 0, seconds: float = 0.0, warnings: list | tuple = (),
        **extra: Any) -> dict:
    d = {"command": command, "ok": bool(ok), "out": None if out is None else str(out), "layout": layout,
         "files": [str(f) for f in files], "bytes": int(bytes), "seconds": round(float(seconds), 3),
         "warnings": [str(w) for w in warnings], "schema_version": SCHEMA_VERSION}
    d.update(extra)
    return d


def from_report(command: str, rep: Any, **extra: Any) -> dict:
    """A written artifact (`pipeline.Report`)."""
    more = {k: v for k, v in rep.extra.items() if k != "warnings"}
    if str(rep.target).startswith("gguf"):
        more = {"gguf": more}
    return doc(command, out=rep.out, layout=layout_name(rep.target), files=rep.files, bytes=rep.bytes_written,
               seconds=rep.seconds, warnings=rep.extra.get("warnings", []), source_kind=rep.source_kind,
               ternary_tensors=rep.n_ternary, passthrough_tensors=rep.n_passthrough, **more, **extra)
