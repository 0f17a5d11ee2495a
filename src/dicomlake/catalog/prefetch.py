"""Read-ahead of local files, so opens and reads overlap the parsing on slow storage."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence

from dicomlake.catalog.refs import FileRef, local_file

_PREFETCH_BYTES = 64 * 1024


class Prefetcher:
    """Read-ahead of local files on a few daemon threads, for cold or network storage.

    For each file it is given, a thread opens it and asks the kernel to read its first
    64 KiB into the page cache (``posix_fadvise(WILLNEED)``: no copy, returns at once
    when the pages are there), so the opens and reads of a task's files overlap each
    other and the parsing, which then finds the header in memory. Threads are daemons:
    a read stuck on a stalled mount never keeps a process from exiting.

    Args:
        threads: How many opens may wait on the storage at once.
    """

    def __init__(self, threads: int = 8) -> None:
        self.threads = threads
        self._queue: queue.SimpleQueue[str] | None = None
        #: Local files queued so far (zip members and objects are not read ahead).
        self.queued = 0

    def submit(self, refs: Sequence[FileRef]) -> None:
        """Start reading ahead the local files among ``refs`` (others are skipped)."""
        if not hasattr(os, "posix_fadvise"):
            return
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            for _ in range(self.threads):
                threading.Thread(target=self._run, name="dicomlake-prefetch", daemon=True).start()
        for ref in refs:
            path = local_file(ref)
            if path is not None:
                self._queue.put(path)
                self.queued += 1

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            path = self._queue.get()
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # the parser will report it
            try:
                os.posix_fadvise(fd, 0, _PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)
