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
        self._queue: queue.SimpleQueue[str | list[str]] | None = None
        #: Local files queued so far (zip members and objects are not read ahead).
        self.queued = 0
        #: Local files not read ahead because their task's first pages were in memory.
        self.cached = 0

    def submit(self, refs: Sequence[FileRef]) -> None:
        """Start reading ahead the local files among ``refs`` (others are skipped).

        Returns at once: a thread first looks whether a sample of the files is in the
        page cache already (then read-ahead would only cost CPU), so that a stalled
        mount never blocks the caller.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            for _ in range(self.threads):
                threading.Thread(target=self._run, name="dicomlake-prefetch", daemon=True).start()
        paths = [path for ref in refs if (path := local_file(ref)) is not None]
        if paths:
            self._queue.put(paths)

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if isinstance(item, list):  # a task's files: read ahead unless warm
                if _in_page_cache(item[:: max(len(item) // 2, 1)]):
                    self.cached += len(item)
                    continue
                for path in item:
                    self._queue.put(path)
                self.queued += len(item)
                continue
            try:
                fd = os.open(item, os.O_RDONLY)
            except OSError:
                continue  # the parser will report it
            try:
                os.posix_fadvise(fd, 0, _PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def _in_page_cache(paths: Sequence[str]) -> bool:
    """Whether the first page of each of ``paths`` is in memory (a task's sample).

    A read with ``RWF_NOWAIT`` returns the page's bytes only when the kernel has them
    and fails with EAGAIN when it would wait for the disk. Where it is not supported
    (another OS, or a file system that refuses it), the answer is False: read ahead as
    for a cold cache. A file that cannot be opened is left to the parser to report.
    """
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None or not hasattr(os, "preadv"):
        return False
    probe = bytearray(1)
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.preadv(fd, [probe], 0, flag)
        except OSError:  # BlockingIOError (not in memory), or RWF_NOWAIT refused
            return False
        finally:
            os.close(fd)
    return True
