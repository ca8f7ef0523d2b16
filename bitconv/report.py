"""The one report every command returns: `Report.to_dict` is the JSON document every `--json` prints (docs/json.md,
docs/bitconv-report.schema.json). Kept apart from `pipeline` so that commands that write nothing (`layouts`,
`inspect`, ...) render it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bitconv.layouts import list_layouts

SCHEMA_VERSION = 1  # of the JSON document every `--json` prints (docs/json.md, docs/bitconv-report.schema.json)


def layout_name(target: str | None) -> str | None:
    """The registry's spelling of a target ("gguf-i2_s" -> "gguf-i2-s"), or None when it is not a layout."""
    if not target:
        return None
    key = target.strip().lower().replace("_", "-")
    return key if key in list_layouts() else None


@dataclass
class Report:
    """What a command did; `to_dict` is the JSON document every `--json` prints (docs/json.md).

    A written artifact has every field; other commands (inspect, verify, layouts, demo, upload) leave
    `source_kind` / `n_ternary` / `n_passthrough` None and give their layout verbatim in `layout`."""

    out: Path | None = None
    target: str | None = None  # what was written: a layout name or a container target ("gguf-i2_s", "hf-bf16")
    source_kind: str | None = None
    files: list = field(default_factory=list)
    n_ternary: int | None = None
    n_passthrough: int | None = None
    bytes_written: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # "warnings", then the command's own fields, in order
    ok: bool = True
    layout: str | None = None  # the registry name; None: derived from `target`

    @property
    def warnings(self) -> list[str]:
        return list(self.extra.get("warnings", []))

    def to_dict(self, command: str, **more: object) -> dict:
        d = {"command": command, "ok": bool(self.ok), "out": None if self.out is None else str(self.out),
             "layout": self.layout if self.layout is not None else layout_name(self.target),
             "files": [str(f) for f in self.files], "bytes": int(self.bytes_written),
             "seconds": round(float(self.seconds), 3), "warnings": [str(w) for w in self.warnings],
             "schema_version": SCHEMA_VERSION}
        details = {k: v for k, v in self.extra.items() if k != "warnings"}
        if self.n_ternary is not None:
            d.update(source_kind=self.source_kind, ternary_tensors=self.n_ternary,
                     passthrough_tensors=self.n_passthrough)
            if str(self.target).startswith("gguf"):
                details = {"gguf": details}
        d.update(details)
        d.update(more)
        return d
