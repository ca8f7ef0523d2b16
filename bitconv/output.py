"""Atomic outputs: everything is written under a temporary name beside OUT and renamed into place when complete.

A crash, SIGKILL or Ctrl-C therefore never leaves a half-written OUT. Temporary names start with
`.bitconv-tmp-` so that leftovers of a killed run are recognisable; they are removed by the next run on that OUT.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bitconv.core.errors import OutputError

TMP_PREFIX = ".bitconv-tmp-"


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


class AtomicOutput:
    """Context manager yielding a temporary path (a folder, or a file when `is_dir=False`) that becomes `out`."""

    def __init__(self, out: str | Path, *, overwrite: bool = False, is_dir: bool = True,
                 inputs: tuple[Path, ...] = ()) -> None:
        self.out = Path(out)
        self.is_dir = is_dir
        for src in inputs:
            if _same_or_inside(self.out, Path(src)) or _same_or_inside(Path(src), self.out):
                raise OutputError("output would overwrite or sit inside the input", path=self.out,
                                  hint="choose another -o path; bitconv never modifies its input")
        if self.out.exists() and not overwrite:
            raise OutputError("already exists", path=self.out, hint="pass --overwrite to replace it")
        if self.out.exists() and self.is_dir != self.out.is_dir():
            raise OutputError("exists and is not a " + ("folder" if is_dir else "file"), path=self.out)
        self.tmp = self.out.parent / f"{TMP_PREFIX}{self.out.name}"

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            _remove(self.tmp)  # a leftover of a killed run on the same OUT
            if self.is_dir:
                self.tmp.mkdir()
        except OSError as e:
            raise OutputError(f"cannot create output: {e.strerror or e}", path=self.out) from None
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            _remove(self.tmp)
            return
        old = self.out.parent / f"{TMP_PREFIX}old-{self.out.name}"
        try:
            if self.out.exists():
                _remove(old)
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
        except OSError as e:
            _remove(self.tmp)
            raise OutputError(f"cannot move the finished output into place: {e.strerror or e}",
                              path=self.out) from None
        _remove(old)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse up front when the output cannot fit (with 1 % + 16 MiB headroom)."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + needed // 100 + (16 << 20) > free:
        raise OutputError(f"not enough disk space: the output needs {needed / 2**20:.1f} MiB, "
                          f"{free / 2**20:.1f} MiB are free", path=folder, hint="free space or choose another -o")
