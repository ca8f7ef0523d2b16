"""Overlap writing with compute: a single background thread performs the sink's writes in order.

`pwrite` and `copy_file_range` release the GIL, so the kernel copies the previous tensor's bytes while torch
ternarizes the next one. The queue is bounded, so at most `depth` finished tensors wait in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    def __init__(self, depth: int = 4) -> None:
        self._q: queue.Queue[Callable[[], Any] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bitconv-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def submit(self, job: Callable[[], Any]) -> None:
        self._raise()
        self._q.put(job)

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def finish(self) -> None:
        """Wait for every queued write; re-raise the first error."""
        self._q.put(None)
        self._thread.join()
        self._raise()

    def cancel(self) -> None:
        self._error = self._error or RuntimeError("cancelled")
        self._q.put(None)
        self._thread.join()
        self._error = None
