"""Use both cores: compute the next tensors on worker threads while the current one is handed to the sink.

`ordered(fn, items)` yields `fn(item)` for every item, in the items' order, computing up to `workers` items at once on
worker threads (numpy and torch release the GIL in their kernels, so two tensors really are computed in parallel).
Workers start items in order and may run ahead of the consumer (which meanwhile converts or copies a pass-through
tensor, say), within two byte budgets that keep memory bounded:

* the working sets (`cost`, planned bytes) of the items being computed sum to at most `max_cost` (alone, an item
  always runs);
* the results computed but not yet taken by the consumer (`size`, bytes) sum to at most `max_held`, and at most
  MAX_AHEAD items are started ahead of the consumer (the next one in order is always allowed);
* the result the consumer is working on counts against `max_cost` too: while it holds a big one (the 235 MB codes
  of a 70B FFN matrix, say), the next big item waits for it instead of doubling the peak.

Results are identical to the sequential `map(fn, items)`: every item is computed by the same function on its own
data; only when it runs changes. `fn` must not return buffers it reuses for a later item (worker threads have their
own scratch buffers: `bitconv.quant.Workspace` is per thread).

An exception from `fn` is raised when its item's turn comes (earlier items are still yielded first); closing the
generator early stops the workers (the items they are computing finish first).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_INFLIGHT_BYTES = 448 << 20  # planned working sets of the items computed at once (see bitconv.memory)
MAX_HELD_BYTES = 64 << 20  # finished results waiting for the consumer
MAX_AHEAD = 32  # items started and not yet taken


def default_workers() -> int:
    """Worker threads: BITCONV_THREADS if set, else the usable cores, capped at 2 (more gains nothing: the work is
    memory-bound and the writer needs a core too)."""
    env = os.environ.get("BITCONV_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


class _Ahead:
    """Shared state of the workers and the consumer (all fields guarded by `cv`)."""

    def __init__(self, n: int, cost: list[int], size: list[int], max_cost: int, max_held: int) -> None:
        self.n, self.cost, self.size, self.max_cost, self.max_held = n, cost, size, max_cost, max_held
        self.cv = threading.Condition()
        self.next = 0  # next item to start
        self.taken = 0  # items handed to the consumer
        self.running = 0  # summed cost of the items being computed
        self.held = 0  # summed size of the items started and not yet taken
        self.consuming = 0  # size of the result the consumer holds now
        self.done: dict[int, tuple[bool, object]] = {}
        self.closed = False

    def may_start(self) -> bool:
        j = self.next
        if j >= self.n:
            return False
        busy = self.running + self.consuming
        if busy and busy + self.cost[j] > self.max_cost:
            return False
        return j == self.taken or (j - self.taken < MAX_AHEAD and self.held + self.size[j] <= self.max_held)


def ordered(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None,
            cost: Callable[[T], int] | None = None, size: Callable[[T], int] | None = None,
            max_cost: int | None = None, max_held: int | None = None) -> Iterator[R]:
    """`fn(item)` for each item, in order, up to `workers` computed at once (1: in the calling thread)."""
    items = list(items)
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        for it in items:
            yield fn(it)
        return
    st = _Ahead(len(items), [cost(x) if cost else 0 for x in items], [size(x) if size else 0 for x in items],
                MAX_INFLIGHT_BYTES if max_cost is None else max_cost, MAX_HELD_BYTES if max_held is None else max_held)

    def work() -> None:
        while True:
            with st.cv:
                while not st.closed and not st.may_start() and st.next < st.n:
                    st.cv.wait()
                if st.closed or st.next >= st.n:
                    return
                j = st.next
                st.next += 1
                st.running += st.cost[j]
                st.held += st.size[j]
            try:
                out = (True, fn(items[j]))
            except BaseException as e:  # handed to the consumer in this item's turn
                out = (False, e)
            with st.cv:
                st.done[j] = out
                st.running -= st.cost[j]
                st.cv.notify_all()
            if not out[0]:
                return
            del out  # else this thread keeps its last result alive while it waits to start the next item

    threads = [threading.Thread(target=work, name=f"bitconv-compute-{k}", daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    try:
        for i in range(len(items)):
            with st.cv:
                while i not in st.done:
                    st.cv.wait()
                ok, value = st.done.pop(i)
                st.taken = i + 1
                st.held -= st.size[i]
                st.consuming = st.size[i]
                st.cv.notify_all()
            if not ok:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
            del value  # the caller has handed it on; do not keep it alive while waiting for the next one
            with st.cv:
                st.consuming = 0
                st.cv.notify_all()
    finally:
        with st.cv:
            st.closed = True
            st.cv.notify_all()
        for t in threads:
            t.join()
