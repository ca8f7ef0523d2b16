"""The one JSON document every `--json` prints (docs/json.md, docs/bitconv-report.schema.json): a `report.Report`'s
`to_dict`.

Common keys, in every document: command, ok, out, layout, files, bytes, seconds, warnings. Layout names are the
layout registry's (`bitconv layouts`); numbers are numbers; paths are strings.
"""

from __future__ import annotations

from typing import Any

from bitconv.report import SCHEMA_VERSION, Report, layout_name

__all__ = ["SCHEMA_VERSION", "doc", "from_report", "layout_name"]


def doc(command: str, *, ok: bool = True, out: object = None, layout: str | None = None,
        files: list | tuple = (), bytes: int = 0, seconds: float = 0.0, warnings: list | tuple = (),
        **extra: Any) -> dict:
    """The document of a command that writes no artifact (inspect, verify, check, layouts, demo, upload)."""
    return Report(out=out, files=list(files), bytes_written=bytes, seconds=seconds, ok=ok, layout=layout,
                  extra={"warnings": list(warnings), **extra}).to_dict(command)


def from_report(command: str, rep: Report, **extra: Any) -> dict:
    """A written artifact."""
    return rep.to_dict(command, **extra)
