"""Overlap writing with compute: a single background thread performs the sink's writes in order.

`pwrite` and `copy_file_range` release the GIL, so the kernel copies the previous tensor's bytes while torch
ternarizes the next one. The queue is bounded in bytes: the finished tensors waiting to be written hold at most
`max_bytes` (one job bigger than that is still admitted, alone), so memory does not grow with the tensors' sizes.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

MAX_PENDING_BYTES = 128 << 20


class BackgroundWriter:
    def __init__(self, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_bytes = max_bytes
        self._jobs: collections.deque[tuple[Callable[[], Any] | None, int]] = collections.deque()
        self._pending = 0  # bytes held by queued and running jobs
        self.peak_pending = 0
        self._cv = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bitconv-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                job, nbytes = self._jobs.popleft()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e
            with self._cv:
                self._pending -= nbytes
                self._cv.notify_all()

    def submit(self, job: Callable[[], Any], nbytes: int = 0) -> None:
        """Queue `job`, which holds `nbytes` of memory until it has run; blocks while the queue is full."""
        self._raise()
        with self._cv:
            while self._pending and self._pending + nbytes > self.max_bytes and self._error is None:
                self._cv.wait()
            self._pending += nbytes
            self.peak_pending = max(self.peak_pending, self._pending)
            self._jobs.append((job, nbytes))
            self._cv.notify_all()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _stop(self) -> None:
        with self._cv:
            self._jobs.append((None, 0))
            self._cv.notify_all()
        self._thread.join()

    def finish(self) -> None:
        """Wait for every queued write; re-raise the first error."""
        self._stop()
        self._raise()

    def cancel(self) -> None:
        self._error = self._error or RuntimeError("cancelled")
        self._stop()
        self._error = None
