"""Keep freed tensor memory in the heap (glibc) so that streaming thousands of tensors does not pay a page fault
for every fresh page. Without it, glibc returns large blocks to the OS and the next tensor faults them in again,
which cost about a third of the run time of `pack` on a 2B model. Allocations of MMAP_THRESHOLD and more still get
their own mappings, returned to the OS when freed: at 70B shapes the 235 MB codes of an FFN matrix, kept in the heap,
left holes that the next differently sized tensors could not reuse (unpack peaked at 1.35 GB, 0.75 GB without)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False
_libc: ctypes.CDLL | None = None
TRIM_AFTER_BYTES = 64 << 20  # after a tensor this big, free heap pages go back to the OS (`release_freed_memory`)
MMAP_THRESHOLD = 64 << 20  # every 2B-class tensor's arrays stay below it (a 2B4T FFN matrix: 17.7 MB of codes)


def keep_freed_memory() -> None:
    global _done, _libc
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        _libc = libc
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def release_freed_memory(nbytes: int) -> None:
    """After a tensor of `nbytes` (>= TRIM_AFTER_BYTES: 8B and 70B projections, embeddings), hand the heap's free
    pages back to the OS (`malloc_trim`, which also frees whole pages inside the heap): the kept memory of a big
    tensor's blocks and temporaries would otherwise add up with the next one's (70B unpack: 1.35 GB -> under 1 GB).
    Small tensors keep reusing their pages (the point of `keep_freed_memory`)."""
    if _libc is not None and nbytes >= TRIM_AFTER_BYTES:
        _libc.malloc_trim(0)
