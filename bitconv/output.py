"""Atomic outputs: everything is written under a temporary name beside OUT and renamed into place when complete.

* The temporary name is unique per run: `.bitconv-tmp-<OUT>-<pid>-<random>`. A crash, SIGKILL or Ctrl-C therefore
  never leaves a half-written OUT, and two runs never share a temporary.
* A run holds an advisory lock (`fcntl.flock` on `.bitconv-lock-<OUT>` beside OUT) from its checks to its rename: a
  second run writing the same OUT at the same time is refused in one line. The lock file is removed on exit.
* Leftover temporaries of a killed run are removed by the next run on that OUT, but only when their owner (the pid in
  the name) is gone and the lock is free.
* OUT must not be SRC, inside SRC, or contain SRC, by any path: the check compares (device, inode) pairs of OUT's
  nearest existing folder and its parents with SRC's, so bind mounts, symlinked folders and hard links cannot
  alias an input. A single-file OUT may not be an input file (hard links included).
* `--overwrite` moves the old OUT aside (`.bitconv-old-...`), renames the new one in, then deletes the old one: a
  kill between the two renames leaves the old OUT (or its aside copy) or the new one, never neither.
* OUT's parent is checked (writable folder, not a dangling link) before anything is read.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from bitconv.core.errors import OutputError
from bitconv.core.safeio import identity

TMP_PREFIX = ".bitconv-tmp-"
OLD_PREFIX = ".bitconv-old-"
LOCK_PREFIX = ".bitconv-lock-"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def _chain(p: Path) -> list[tuple[int, int]]:
    """(dev, ino) of `p` (or its nearest existing ancestor) and of every folder above it, following links."""
    p = Path(os.path.abspath(p))
    out = []
    probe = p
    while True:
        ident = identity(probe)
        if ident is not None:
            out.append(ident)
        if probe.parent == probe:
            break
        probe = probe.parent
    # also the resolved path's parents (a link anywhere in `p` resolves elsewhere)
    real = Path(os.path.realpath(p))
    for q in (real, *real.parents):
        ident = identity(q)
        if ident is not None and ident not in out:
            out.append(ident)
    return out


def _input_files(src: Path) -> list[Path]:
    if src.is_dir():
        try:
            return [f for f in src.rglob("*") if f.is_file()]
        except OSError:
            return []
    return [src]


def check_not_input(out: Path, inputs: tuple[Path, ...] | list[Path], what: str = "output") -> None:
    """OutputError when `out` is, holds, or sits inside an input, compared by (device, inode)."""
    out_id = identity(out)
    out_chain = _chain(out)  # out (or its nearest existing ancestor) and everything above it
    for src in inputs:
        src = Path(src)
        src_id = identity(src)
        if src_id is None:
            continue
        if src_id in out_chain:  # OUT is SRC or sits inside it
            raise OutputError(f"{what} would overwrite or sit inside the input {str(src)!r}", path=out,
                              hint="choose another path; bitconv never modifies its input")
        if out_id is not None and out_id in _chain(src):  # SRC sits inside OUT
            raise OutputError(f"{what} holds the input {str(src)!r}; replacing it would destroy the input",
                              path=out, hint="choose another path; bitconv never modifies its input")
        if out_id is not None and os.path.isfile(out):
            if any(identity(f) == out_id for f in _input_files(src)):
                raise OutputError(f"{what} is the same file as an input file of {str(src)!r} (a hard link?)",
                                  path=out, hint="choose another path; bitconv never modifies its input")


def check_parent(out: Path) -> None:
    """Refuse early an OUT that cannot be created: a dangling link, a parent that is a file, a read-only folder."""
    if out.is_symlink() and not out.exists():
        raise OutputError("is a dangling symbolic link", path=out, hint="remove it or choose another -o")
    probe = out.parent
    while not probe.exists():
        if probe.is_symlink():
            raise OutputError(f"{str(probe)!r} is a dangling symbolic link", path=out)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{str(probe)!r} is not a folder", path=out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output: folder {str(probe)!r} is not writable", path=out,
                          hint="choose another -o")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class AtomicOutput:
    """Context manager yielding a temporary path (a folder, or a file when `is_dir=False`) that becomes `out`.

    `side`: names of files beside OUT that belong to it (a TL GGUF's kernel_config.ini): the caller writes them into
    `self.side_tmp[name]` and they are moved into place together with OUT.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, is_dir: bool = True,
                 inputs: tuple[Path, ...] = ()) -> None:
        self.out = Path(out)
        self.is_dir = is_dir
        self.overwrite = overwrite
        self.inputs = tuple(Path(i) for i in inputs)
        check_parent(self.out)
        check_not_input(self.out, self.inputs)
        if os.path.lexists(self.out) and not overwrite:
            raise OutputError("already exists", path=self.out, hint="pass --overwrite to replace it")
        if self.out.exists() and (self.is_dir != self.out.is_dir() or self.out.is_symlink()):
            raise OutputError("exists and is not a " + ("folder" if is_dir else "file")
                              + (" (a symbolic link)" if self.out.is_symlink() else ""), path=self.out)
        self.tmp = self.out.parent / f"{TMP_PREFIX}{self.out.name}-{os.getpid()}-{secrets.token_hex(4)}"
        self.lock_path = self.out.parent / f"{LOCK_PREFIX}{self.out.name}"
        self._lock_fd: int | None = None
        self.side: dict[str, Path] = {}  # final path -> temp path of extra files moved in with OUT

    def side_file(self, final: Path) -> Path:
        """A temporary path for a file that is moved to `final` together with OUT."""
        tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
        self.side[str(final)] = tmp
        return tmp

    # --- lock ---------------------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC,
                         0o644)
        except OSError as e:
            raise OutputError(f"cannot create output: {e.strerror or e}", path=self.out) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError("another bitconv run is writing this output right now", path=self.out,
                                      hint="wait for it to finish, or choose another -o") from None
                raise OutputError(f"cannot lock the output: {e.strerror or e}", path=self.out) from None
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        try:
            os.unlink(self.lock_path)  # while still held: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    def _clean_stale(self) -> None:
        """Remove temporaries of dead runs on this OUT (we hold the lock, so no live run is writing it)."""
        for prefix in (OLD_PREFIX, TMP_PREFIX):
            stem = f"{prefix}{self.out.name}-"
            try:
                names = os.listdir(self.out.parent)
            except OSError:
                return
            for name in names:
                if not name.startswith(stem):
                    continue
                rest = name[len(stem):].split("-")
                if len(rest) < 2 or not rest[-2].isdigit():
                    continue
                if not _pid_alive(int(rest[-2])) or int(rest[-2]) == os.getpid():
                    if prefix == OLD_PREFIX and not os.path.lexists(self.out):
                        # killed between its two renames: the old OUT was aside and the new one not yet in
                        try:
                            os.rename(self.out.parent / name, self.out)
                            continue
                        except OSError:
                            pass
                    _remove(self.out.parent / name)
            legacy = self.out.parent / f"{prefix}{self.out.name}"  # older bitconv's fixed name
            if os.path.lexists(legacy):
                _remove(legacy)

    def __enter__(self) -> Path:
        self._acquire()
        try:
            self._clean_stale()
            # recheck under the lock: another run may have finished OUT meanwhile
            if os.path.lexists(self.out) and not self.overwrite:
                raise OutputError("already exists", path=self.out, hint="pass --overwrite to replace it")
            if self.is_dir:
                self.tmp.mkdir()
        except OSError as e:
            self._release()
            raise OutputError(f"cannot create output: {e.strerror or e}", path=self.out) from None
        except BaseException:
            self._release()
            raise
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None:
                _remove(self.tmp)
                for t in self.side.values():
                    _remove(t)
                return
            self._commit()
        finally:
            self._release()

    def _commit(self) -> None:
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        moves = [(self.tmp, self.out)] + [(t, Path(f)) for f, t in self.side.items()]
        asides: list[tuple[Path, Path]] = []
        try:
            check_not_input(self.out, self.inputs)  # again, right before anything is replaced
            for _, final in moves:
                if os.path.lexists(final):
                    old = final.parent / f"{OLD_PREFIX}{final.name}-{token}"
                    os.rename(final, old)
                    asides.append((old, final))
            for tmp, final in moves:
                os.rename(tmp, final)
        except (OSError, OutputError) as e:
            for tmp, _ in moves:
                _remove(tmp)
            for old, final in asides:  # put the old output back
                if not os.path.lexists(final):
                    try:
                        os.rename(old, final)
                    except OSError:
                        pass
            if isinstance(e, OutputError):
                raise
            raise OutputError(f"cannot move the finished output into place: {e.strerror or e}",
                              path=self.out) from None
        for old, _ in asides:
            _remove(old)


def _remove(p: Path) -> None:
    try:
        st = os.lstat(p)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            os.unlink(p)
        except OSError:
            pass


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse up front when the output cannot fit: it needs `needed` bytes plus a headroom (1 % of the output, plus
    4 MiB or 1 % of the filesystem, whichever is smaller, for the filesystem's own blocks); the message states the
    output, the headroom and what is free, so a small filesystem is never refused with an unexplained gap."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free = usage.free
    headroom = needed // 100 + min(4 << 20, usage.total // 100)
    if needed + headroom > free:
        raise OutputError(f"not enough disk space: the output needs {_mib(needed)} (+ {_mib(headroom)} headroom), "
                          f"{_mib(free)} are free", path=folder, hint="free space or choose another -o")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 / 10 else f"{n / 1024:.1f} KiB"


def precheck(out: str | Path, overwrite: bool = False) -> None:
    """The checks on OUT that need no input, run before anything is read: its parent can hold it, and it does not
    exist unless `overwrite`."""
    out = Path(out)
    check_parent(out)
    if os.path.lexists(out) and not overwrite:
        raise OutputError("already exists", path=out, hint="pass --overwrite to replace it")


def check_report_path(path: Path, inputs: tuple[Path, ...] | list[Path]) -> None:
    """A report file may not be an input: not an input file (by device and inode: links and hard links included),
    not an input folder, not a file inside an input GGUF's place. Refused before anything is written."""
    ident = identity(path)
    if ident is None:
        return  # a new file aliases nothing
    for src in inputs:
        src = Path(src)
        if identity(src) == ident or (src.is_dir() and any(identity(f) == ident for f in _input_files(src))):
            raise OutputError(f"report path is an input file of {str(src)!r}; writing the report would destroy it",
                              path=path, hint="choose another report path")
    if os.path.isdir(path):
        raise OutputError("report path is a folder", path=path)


def write_report(path: Path, text: str, inputs: tuple[Path, ...] | list[Path] = ()) -> None:
    """Write a report atomically: a unique temporary beside `path`, renamed over it when complete."""
    check_report_path(path, inputs)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
