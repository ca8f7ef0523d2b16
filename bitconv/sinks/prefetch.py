"""Use both cores: compute the next tensors on worker threads while the current one is handed to the sink.

`ordered(fn, items)` yields `fn(item)` for every item, in the items' order, computing up to `workers` items at once on
a small thread pool (numpy and torch release the GIL in their kernels, so two tensors really are computed in
parallel). Memory stays bounded: at most `workers` items are being computed while the caller holds the one yielded
last, and a next item is admitted beside running ones only while their summed `cost` (planned bytes) stays within
`max_cost` (alone, an item always runs). Results are identical to the sequential `map(fn, items)`: every item is
computed by the same function on its own data; only when it runs changes. `fn` must not return buffers it reuses
for a later item (worker threads have their own scratch buffers: `bitconv.quant.Workspace` is per thread).

An exception from `fn` is raised when its item's turn comes (earlier items are still yielded first); closing the
generator early cancels the items not started and waits for the running ones.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_INFLIGHT_BYTES = 448 << 20  # planned working sets of the items computed at once (see bitconv.memory)


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


def ordered(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None,
            cost: Callable[[T], int] | None = None, max_cost: int | None = None) -> Iterator[R]:
    """`fn(item)` for each item, in order, up to `workers` computed at once (1: in the calling thread)."""
    items = list(items)
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        for it in items:
            yield fn(it)
        return
    cost = cost or (lambda _: 0)
    max_cost = MAX_INFLIGHT_BYTES if max_cost is None else max_cost
    pool = ThreadPoolExecutor(workers, thread_name_prefix="bitconv-compute")
    pending: collections.deque[tuple[Future, int]] = collections.deque()
    nxt, inflight = 0, 0
    try:
        for _ in range(len(items)):
            while nxt < len(items) and len(pending) < workers:
                c = cost(items[nxt])
                if pending and inflight + c > max_cost:
                    break
                pending.append((pool.submit(fn, items[nxt]), c))
                inflight += c
                nxt += 1
            fut, c = pending.popleft()
            try:
                result = fut.result()
            finally:
                inflight -= c
            yield result
            del result  # the caller has handed it on; do not keep it alive while waiting for the next one
    finally:
        for fut, _ in pending:
            fut.cancel()
        pool.shutdown(wait=True)
