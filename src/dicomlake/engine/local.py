"""The local engine: a process pool over all cores, fed from a stream of tasks.

Why not ``concurrent.futures``: a file on a stalled mount can hang a read forever, and
a process pool cannot cancel one task. Here each worker publishes which file it is on
and since when; the coordinator kills a worker stuck past the per-file timeout, turns
that one file into an error row, and hands the rest of the task to a fresh worker.
The same path covers a worker that dies (a codec crashing the interpreter).

Tasks are pulled from the caller's iterator only when a worker has room, so memory
stays flat whatever the corpus size. What a worker does with a task's batches before
they travel back is the engine's ``sink`` (:mod:`dicomlake.engine.sinks`); reading a
task's files ahead is its ``prefetch``. Kernels know neither.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import queue
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from dicomlake.catalog import FileRef, Prefetcher
from dicomlake.catalog.refs import split_zip_uri
from dicomlake.errors import WorkersFailed
from dicomlake.kernels.base import Kernel, timeout_reason
from dicomlake.storage.locations import local_path

_T = TypeVar("_T")

if TYPE_CHECKING:
    from dicomlake._types import Batches
    from dicomlake.engine.sinks import Sink

logger = logging.getLogger(__name__)


_TASKS_PER_WORKER = 2
#: How often an idle worker checks that its coordinator is still alive.
_PARENT_CHECK_SECONDS = 1.0
_POLL_SECONDS = 0.2
_SLOT = 4  # shared state per worker: sequence number, task id, file index, start time
#: Workers that may die in a row before they start a task, before the run gives up: one
#: is a crash to survive (the OOM killer), several mean no worker can start at all.
_EARLY_DEATHS = 3


def _publish(state: Any, base: int, task_id: float, index: float, started: float) -> None:
    """Write a worker's slot as a seqlock: odd sequence while the values change.

    No lock: a process killed while holding a shared lock (kill -9 of the coordinator
    during a check) would leave its workers blocked on it forever. Each slot has one
    writer at a time: its worker, or the coordinator once that worker is dead.
    """
    writing = int(state[base]) | 1  # odd (also after a writer that died mid-write)
    state[base] = writing
    state[base + 1], state[base + 2], state[base + 3] = task_id, index, started
    state[base] = writing + 1


def _read_slot(state: Any, base: int) -> tuple[int, int, float]:
    """Read a slot written by :func:`_publish`, retrying while a write is under way.

    A write takes microseconds; a slot odd for longer belongs to a worker that died
    mid-write, and its values are returned as they are (the worker is dead anyway).
    """
    for _ in range(10_000):
        seq = state[base]
        task_id, index, started = state[base + 1], state[base + 2], state[base + 3]
        if seq % 2 == 0 and state[base] == seq:
            break
        time.sleep(0)
    return int(task_id), int(index), started


@dataclass
class Task:
    """A batch of files; ``replace``: their rows replace rows the lake has (changed files)."""

    refs: Sequence[FileRef]
    replace: bool = False
    task_id: int = 0


@dataclass(frozen=True, slots=True)
class _Work:
    """What each worker runs: the kernel, and the engine's sink and read-ahead."""

    kernel: Kernel
    sink: Sink | None
    prefetch: Prefetcher | None

    def run(
        self,
        refs: Sequence[FileRef],
        replace: bool,
        before: Callable[[int], None] | None = None,
    ) -> Batches:
        """A task's result as it leaves the worker (``before(i)`` ahead of file i)."""
        if self.prefetch is not None:
            self.prefetch.submit(refs)
        rows = []
        for index, ref in enumerate(refs):
            if before is not None:
                before(index)
            rows.append(self.kernel.row(ref))
        out = self.kernel.batch(rows)
        return out if self.sink is None else self.sink.ship(out, replace=replace)


@dataclass
class _Worker:
    process: Any
    inbox: Any
    slot: int
    tasks: deque[Task] = field(default_factory=deque)


class _NoPandas:
    """A meta path finder that refuses pandas: see :func:`skip_pandas_probe`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not used by this worker's kernel")


def skip_pandas_probe() -> None:
    """Let pyarrow's one-time probe for pandas find none, in this process.

    pyarrow imports pandas, when it is installed, on a process's first ``pa.array`` of a
    Python list, to recognise pandas objects: 0.3 s of every worker's start, for a
    kernel that never hands pyarrow one. The probe runs once per process; anything
    that needs pandas later (``to_pandas``) still imports it. A process that has
    imported pandas already is left as it is.
    """
    import sys

    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


def _worker_main(work: _Work, inbox: Any, outbox: Any, state: Any, slot: int, parent: int) -> None:
    """Worker loop: run tasks from ``inbox``, publishing progress in ``state``."""
    warnings.simplefilter("ignore")  # pydicom warns on every odd value; rows say it
    if getattr(work.kernel, "pandas_free", False):
        skip_pandas_probe()
    base = slot * _SLOT
    # ``parent`` is the coordinator's pid, sent along: asking os.getppid() here would
    # give 1 if the coordinator was killed while this process was still starting
    # if the coordinator dies, results nobody reads must not keep this process alive
    outbox.cancel_join_thread()
    while True:
        try:
            message = inbox.get(timeout=_PARENT_CHECK_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # the coordinator died (kill -9): do not linger
                return
            continue
        if message is None:
            return
        task_id, refs, replace = message

        def started(index: int, task_id: int = task_id) -> None:
            _publish(state, base, task_id, index, time.monotonic())

        out = work.run(refs, replace, started)
        _publish(state, base, task_id, len(refs), 0.0)
        outbox.put((task_id, out))


#: Files of a lone task run in the calling process rather than in workers.
IN_PROCESS_MAX_FILES = 8


def _on_local_disk(ref: FileRef) -> bool:
    """Whether a file (or a zip member's archive) is a regular local file.

    Its read cannot stall the way a network read or a FIFO's can.
    """
    zipped = split_zip_uri(ref.path)
    path = local_path(zipped[1] if zipped is not None else ref.path)
    return path is not None and os.path.isfile(path)


def run_apart(function: Callable[..., _T], *args: Any) -> _T:
    """Call ``function(*args)`` in a fresh process and return what it returns.

    For one heavy call whose memory the long-lived coordinator should not keep after
    it (allocators seldom give freed memory back): the process exits, the memory goes.
    ``function``, its arguments and its result must pickle; it should return errors
    rather than raise them when their class does not pickle.
    """
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


class LocalEngine:
    """Run a kernel over a stream of tasks on a pool of worker processes.

    Args:
        kernel: Picklable object making rows and batches (see
            :class:`~dicomlake.kernels.base.Kernel`).
        workers: Number of processes; 0 runs the kernel in this process (no timeout).
        file_timeout: Seconds one file may take before its worker is killed.
        sink: What a worker does with a task's batches before they travel back (see
            :mod:`dicomlake.engine.sinks`); None sends them back whole.
        prefetch: Read each task's local files ahead on a few threads per worker.
        small_here: Run a lone small task of local files in this process (see
            :meth:`map`); False keeps every file in a worker, under the timeout (a
            user's function may hang on any file).
    """

    def __init__(
        self,
        kernel: Kernel,
        *,
        workers: int | None = None,
        file_timeout: float = 120.0,
        sink: Sink | None = None,
        prefetch: bool = False,
        small_here: bool = True,
    ) -> None:
        self.kernel = kernel
        self.small_here = small_here
        self._work = _Work(kernel, sink, Prefetcher() if prefetch else None)
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.file_timeout = file_timeout
        self.timeouts = 0
        self.crashes = 0
        self._pool: _Pool | None = None

    def start(self) -> None:
        """Start the worker processes now, ahead of :meth:`map`.

        A worker takes most of a second to start (a fresh interpreter importing
        pydicom and pyarrow); started before the caller lists files or loads what the
        lake has, that time overlaps with the caller's. Call :meth:`close` if
        :meth:`map` is never reached.
        """
        if self.workers > 0 and self._pool is None:
            self._pool = _Pool(self)
            self._pool.start()

    def close(self) -> None:
        """Stop worker processes started by :meth:`start` and not used by :meth:`map`."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def map(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Batches]]:
        """Yield (task, {table: batch}) for every task, in completion order.

        Nothing to do, or one task of at most :data:`IN_PROCESS_MAX_FILES` files on local
        disk, runs here and stops the workers unused: a worker's start-up (most of a
        second) was most of a one-file ingest or of a re-run that finds nothing new.
        Remote files always go to workers, whose per-file timeout bounds a stalled read.
        """
        if self.workers <= 0:
            yield from self._run_here(tasks)
            return
        pending = iter(tasks)
        first = next(pending, None)
        second = next(pending, None) if first is not None else None
        tiny = (
            self.small_here
            and second is None
            and first is not None
            and len(first.refs) <= IN_PROCESS_MAX_FILES
        )
        if first is None or (tiny and all(_on_local_disk(ref) for ref in first.refs)):
            self._abandon()
            yield from self._run_here([first] if first is not None else [])
            return
        self.start()
        pool, self._pool = self._pool, None
        assert pool is not None
        started = [first] if second is None else [first, second]
        yield from pool.run(itertools.chain(started, pending))

    def _run_here(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Batches]]:
        for task in tasks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self._work.run(task.refs, task.replace)
            yield task, out

    def _abandon(self) -> None:
        """Stop workers started ahead and never given work, without waiting for them."""
        if self._pool is not None:
            self._pool.kill()
            self._pool = None


class _Pool:
    """One run of the pool: owns the processes and the bookkeeping."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.ctx = mp.get_context("spawn")
        self.state = self.ctx.Array("d", engine.workers * _SLOT, lock=False)
        self.outbox = self.ctx.Queue()
        self.workers: list[_Worker] = []
        self.next_id = 0
        self.by_id: dict[int, Task] = {}
        self.retry: deque[Task] = deque()
        self.early_deaths = 0  # in a row, reset by any result

    def _start(self, slot: int) -> _Worker:
        inbox = self.ctx.Queue()
        process = self.ctx.Process(
            target=_worker_main,
            args=(self.engine._work, inbox, self.outbox, self.state, slot, os.getpid()),
            daemon=True,
        )
        process.start()
        return _Worker(process=process, inbox=inbox, slot=slot)

    def _send(self, worker: _Worker, task: Task) -> None:
        self.next_id += 1
        task.task_id = self.next_id
        self.by_id[task.task_id] = task
        worker.tasks.append(task)
        worker.inbox.put((task.task_id, list(task.refs), task.replace))

    def start(self) -> None:
        if not self.workers:
            self.workers = [self._start(slot) for slot in range(self.engine.workers)]

    def run(self, tasks: Iterator[Task]) -> Iterator[tuple[Task, Batches]]:
        self.start()
        exhausted = False
        try:
            while True:
                if not exhausted or self.retry:
                    exhausted = self._fill(tasks, exhausted)
                if exhausted and not self.retry and not self.by_id:
                    return
                try:
                    task_id, batch = self.outbox.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    yield from self._check_stuck()
                    continue
                task = self.by_id.pop(task_id, None)
                if task is None:  # a result from a worker we already gave up on
                    continue
                self.early_deaths = 0
                for worker in self.workers:
                    if worker.tasks and worker.tasks[0].task_id == task_id:
                        worker.tasks.popleft()
                        break
                yield task, batch
        finally:
            self.shutdown()

    def _fill(self, tasks: Iterator[Task], exhausted: bool) -> bool:
        for worker in self.workers:
            while len(worker.tasks) < _TASKS_PER_WORKER:
                if self.retry:
                    task = self.retry.popleft()
                elif not exhausted:
                    following = next(tasks, None)
                    if following is None:
                        exhausted = True
                        break
                    task = following
                else:
                    break
                self._send(worker, task)
        return exhausted

    def _check_stuck(self) -> Iterator[tuple[Task, Batches]]:
        now = time.monotonic()
        for i, worker in enumerate(self.workers):
            if not worker.tasks:
                continue
            base = worker.slot * _SLOT
            task_id, index, started = _read_slot(self.state, base)
            dead = not worker.process.is_alive()
            stuck = started > 0 and now - started > self.engine.file_timeout
            if not (dead or stuck):
                continue
            current = worker.tasks[0]
            if task_id != current.task_id or started == 0:
                if not dead:
                    continue
                # died before it started this task: blame nobody's file, hand its tasks
                # to a fresh worker, and give up when no worker lives to read a file
                self.early_deaths += 1
                if self.early_deaths >= _EARLY_DEATHS:
                    raise WorkersFailed(
                        f"worker processes die as they start (exit code "
                        f"{worker.process.exitcode}), {self.early_deaths} in a row; a "
                        "script that calls dicomlake.ingest needs an "
                        "`if __name__ == '__main__':` guard (workers are spawned and "
                        "import it), or run with workers=0"
                    )
                self.engine.crashes += 1
                self._replace(i, list(worker.tasks))
                continue
            reason = (
                timeout_reason(self.engine.file_timeout)
                if stuck and not dead
                else f"WorkerCrashed: the worker process died (exit code {worker.process.exitcode})"
            )
            if stuck and not dead:
                self.engine.timeouts += 1
            else:
                self.engine.crashes += 1
            logger.warning("%s while reading %s", reason, current.refs[index].path)
            bad = current.refs[index]
            rest = [r for j, r in enumerate(current.refs) if j != index]
            first = [Task(refs=rest, replace=current.replace)] if rest else []
            self._replace(i, first + list(worker.tasks)[1:])
            kernel = self.engine.kernel
            batch = kernel.batch([kernel.error_row(bad, reason)])
            yield Task(refs=[bad], replace=current.replace), batch

    def _replace(self, i: int, requeue: list[Task]) -> None:
        """Stop worker ``i`` (dead or stuck), queue ``requeue`` again, start a fresh one.

        Its tasks' results no longer count: a late one is dropped as a stranger's. The
        slot is cleared before the new worker can write it.
        """
        worker = self.workers[i]
        worker.process.kill()
        worker.process.join()
        for task in worker.tasks:
            self.by_id.pop(task.task_id, None)
        for task in requeue:
            self.retry.append(Task(refs=task.refs, replace=task.replace))
        _publish(self.state, worker.slot * _SLOT, 0, 0, 0.0)
        self.workers[i] = self._start(worker.slot)

    def kill(self) -> None:
        """Stop every worker now (they hold no work)."""
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
        self.outbox.close()

    def shutdown(self) -> None:
        for worker in self.workers:
            if not worker.process.is_alive():
                continue
            if not worker.tasks:  # its results are all in: nothing to lose, and the
                worker.process.kill()  # interpreter's teardown costs a tenth of a second
                continue
            with contextlib.suppress(OSError, ValueError):
                worker.inbox.put(None)
        deadline = time.monotonic() + 5
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.outbox.close()
