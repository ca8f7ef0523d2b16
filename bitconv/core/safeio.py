"""The one way bitconv opens a file it reads: regular files only, links only where they stay inside SRC, sizes capped.

Every input file (weights, config.json, the index, tokenizer and other side files, kernel_config.ini, GGUF) is
opened through `open_input`. The rules:

* A symbolic link is followed only when its target resolves inside the folder that holds the link (SRC, for the
  files at its top), or when it is the Hugging Face cache's own link from `models--owner--name/snapshots/<rev>/` into
  `models--owner--name/blobs/`. A checkout of a hostile git repo can link `LICENSE` to `/proc/self/environ` or
  `~/.ssh/id_rsa`; such a link is refused, never read (and so never copied into OUT or uploaded).
* Only regular files are read: a FIFO, a device (`/dev/zero`), a socket or a folder is refused before one byte is
  read (FIFOs are opened non-blocking, so opening one never hangs).
* Metadata reads (config, index, tokenizer, ini, yaml, headers) are capped: a file above the cap is refused with the
  cap in the message, and a file that is larger than it claims (procfs) is never read past the cap.

Paths named directly by the user (SRC itself, `--kernel-config`) may be links; the target must still be a regular
file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bitconv.core.errors import SourceError

MIB = 1 << 20
# Caps on metadata reads (bytes). Real files are far smaller: a 128k-token tokenizer.json is ~9 MiB, a config.json
# a few KiB, an index ~100 KiB even for 70B models.
CAP_CONFIG = 16 * MIB  # config.json, model_config.json, checkpoint_metadata.json, generation_config.json
CAP_INDEX = 64 * MIB  # model.safetensors.index.json
CAP_TOKENIZER = 128 * MIB  # tokenizer.json, tokenizer.model, vocab.json, merges.txt, ...
CAP_SMALL = 1 * MIB  # kernel_config.ini
CAP_YAML = 16 * MIB  # nanotron config.yaml
CAP_SIDE_FILE = 512 * MIB  # side files copied into OUT (LICENSE, tokenizer files, chat templates)

_KIND = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


def _kind(mode: int) -> str:
    return _KIND.get(stat.S_IFMT(mode), "not a regular file")


def _inside(target: Path, folder: Path) -> bool:
    return target == folder or folder in target.parents


def _hf_cache_blobs(link: Path) -> Path | None:
    """For a link inside `models--x--y/snapshots/<rev>/...`, the repo's `blobs` folder; else None."""
    parts = link.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].split("--", 1)[0] in ("models", "datasets", "spaces") \
                and "--" in parts[i - 1]:
            return Path(*parts[:i]) / "blobs"
    return None


def link_allowed(path: Path, root: Path | None = None) -> bool:
    """Whether the link `path` may be followed: its target lies inside `root` (default: the link's folder), or it
    is a Hugging Face cache link into its own repo's blobs."""
    path = Path(os.path.abspath(path))
    target = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root if root is not None else path.parent))
    if _inside(target, base) and target != base:
        return True
    blobs = _hf_cache_blobs(path)
    return blobs is not None and _inside(target, Path(os.path.realpath(blobs)))


def open_input(path: str | Path, *, cap: int | None = None, what: str | None = None, root: Path | None = None,
               user_named: bool = False) -> int:
    """A read-only fd on `path` after the rules above; SourceError (naming `path`) otherwise. The caller closes it.

    `cap`: refuse a file larger than this many bytes. `user_named`: the user typed this path (SRC, --kernel-config):
    a link may point anywhere, but the target must still be a regular file.
    """
    p = Path(path)
    label = what or p.name
    try:
        lst = os.lstat(p)
    except FileNotFoundError:
        raise SourceError(f"{label} is missing", path=p) from None
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path=p) from None
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if stat.S_ISLNK(lst.st_mode):
        if not user_named and not link_allowed(p, root):
            raise SourceError(f"is a symbolic link to {os.path.realpath(p)!r}, outside the checkpoint folder; "
                              "bitconv reads only files inside SRC", path=p,
                              hint="copy the file into SRC if you trust it, or remove the link")
        target = os.path.realpath(p)
    else:
        target = str(p)
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags)
    except FileNotFoundError:
        raise SourceError(f"{label} is missing (a dangling link?)", path=p) from None
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path=p) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"is {_kind(st.st_mode)}, not a regular file; bitconv reads regular files only",
                              path=p)
        if cap is not None and st.st_size > cap:
            raise SourceError(f"{label} is {st.st_size} bytes, more than the {_human(cap)} bitconv reads for it",
                              path=p, hint="not a real metadata file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _human(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n} bytes"


@contextmanager
def opened(path: str | Path, mode: str = "rb", **kw: object) -> Iterator[object]:
    """`open_input` as a file object (binary)."""
    fd = open_input(path, **kw)  # type: ignore[arg-type]
    with os.fdopen(fd, mode) as f:
        yield f


def read_bytes(path: str | Path, cap: int, *, what: str | None = None, root: Path | None = None,
               user_named: bool = False) -> bytes:
    """The whole file, at most `cap` bytes (a file that grows past the cap, or lies about its size, is refused)."""
    p = Path(path)
    fd = open_input(p, cap=cap, what=what, root=root, user_named=user_named)
    try:
        chunks, total = [], 0
        while True:
            b = os.read(fd, min(cap + 1 - total, 16 * MIB))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > cap:
                raise SourceError(f"{what or p.name} is more than the {_human(cap)} bitconv reads for it", path=p)
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path=p) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: str | Path, cap: int, *, what: str | None = None, root: Path | None = None,
              user_named: bool = False) -> str:
    """The file as UTF-8 text (capped); SourceError when it is not UTF-8."""
    raw = read_bytes(path, cap, what=what, root=root, user_named=user_named)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{what or Path(path).name} is not UTF-8 text (byte {e.start})", path=path) from None


def check_input(path: str | Path, *, cap: int | None = None, what: str | None = None, root: Path | None = None,
                user_named: bool = False) -> None:
    """Refuse `path` now (before any work) if `open_input` would."""
    os.close(open_input(path, cap=cap, what=what, root=root, user_named=user_named))


def copy_input(src: Path, dst: Path, cap: int = CAP_SIDE_FILE, root: Path | None = None) -> None:
    """Copy a side file read through `open_input` (never `shutil.copyfile` on a link) into the new file `dst`.

    OSError on the write side is left to the caller (an OutputError there)."""
    fd = open_input(src, cap=cap, root=root)
    try:
        with open(dst, "xb") as out:
            total = 0
            while True:
                try:
                    b = os.read(fd, 8 * MIB)
                except OSError as e:
                    raise SourceError(f"cannot read: {e.strerror or e}", path=src) from None
                if not b:
                    break
                total += len(b)
                if total > cap:
                    raise SourceError(f"is more than the {_human(cap)} bitconv copies for a side file", path=src)
                out.write(b)
    finally:
        os.close(fd)


def identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names (links followed), or None when it does not exist: the one way bitconv
    tells whether two paths are the same file or folder (bind mounts, hard links, symlinks included)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def sha256_file(path: str | Path, chunk: int = MIB, stop: threading.Event | None = None) -> str | None:
    """The hex sha256 of a file's bytes, read in chunks into one reused buffer (never the whole file in memory, no
    fresh pages per chunk): the identity a verify report records for the file it verified, and `upload` compares
    before it quotes that report. None when `stop` is set before the end (a hash on a thread, abandoned)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL for large updates
            if stop is not None and stop.is_set():
                return None
    return h.hexdigest()


def exists_entry(path: Path) -> bool:
    """True when `path` names anything (a dangling link included)."""
    return os.path.lexists(path)
