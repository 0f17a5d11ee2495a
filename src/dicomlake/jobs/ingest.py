"""One ingest run: list sources, skip what the lake already has, extract, commit.

The run is incremental and crash-safe by construction: a file's row is committed at
most once per (path, size, modification time), rows are committed every few thousand
rows or seconds, and a re-run after a crash skips exactly what was committed. So
``kill -9`` followed by the same command ends with one row per file.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa

from dicomlake._types import Parser, StorageOptions
from dicomlake.catalog import FileRef, check_sources, iter_files
from dicomlake.engine.local import IN_PROCESS_MAX_FILES, LocalEngine, Task, run_apart
from dicomlake.engine.sinks import SHARDS, ShardSink
from dicomlake.jobs.acquisition_rows import acquisition_writer, write_acquisition
from dicomlake.kernels.instances import BULK_THRESHOLD, InstancesKernel
from dicomlake.killpoints import kill_point
from dicomlake.lake.fingerprints import Fingerprints
from dicomlake.lake.location import ACQUISITION_TABLE, INSTANCES_TABLE, THUMBNAILS_TABLE, table_uri
from dicomlake.lake.probe import check_lake_writable
from dicomlake.lake.shards import new_job_id
from dicomlake.lake.sync import delete_instances, stale_row_ids
from dicomlake.lake.writer import TableWriter
from dicomlake.rows import row_id, tally
from dicomlake.storage.locations import file_uri, local_path, uri_forms
from dicomlake.storage.settings import StorageConfig, fsspec_options

if TYPE_CHECKING:  # drawing imports pydicom and the codecs: only when asked for
    from dicomlake.kernels.thumbnails import ThumbnailOptions

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)


@dataclass
class IngestSummary:
    """What a run did, for the progress bar and the closing table."""

    listed: int = 0
    skipped_unchanged: int = 0
    duplicates: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    done: int = 0
    ok: int = 0
    not_dicom: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    commits: int = 0
    thumbnails: int = 0
    thumbnail_errors: Counter[str] = field(default_factory=Counter)
    #: Files read by each header parser: 'native' (the C fast path) and 'pydicom'.
    parsers: Counter[str] = field(default_factory=Counter)
    #: Small data files merged by the compaction at the end of the run (0: none ran).
    compacted: int = 0
    #: Files extracted but not committed: another ingest committed them first.
    taken: int = 0
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    @property
    def error_count(self) -> int:
        """Number of files that gave an error row."""
        return sum(self.errors.values())

    @property
    def files_per_second(self) -> float:
        """Extracted files per second of wall time."""
        elapsed = self.seconds or (time.monotonic() - self.started)
        return self.done / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON-able values."""
        return {
            "files": self.listed,
            "extracted": self.done,
            "ok": self.ok,
            "not_dicom": self.not_dicom,
            "errors": dict(self.errors),
            "skipped_unchanged": self.skipped_unchanged,
            "new": self.new,
            "changed": self.changed,
            "deleted": self.deleted,
            "thumbnails": self.thumbnails,
            "thumbnail_errors": dict(self.thumbnail_errors),
            "commits": self.commits,
            "taken_by_another_ingest": self.taken,
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files_per_second, 1),
        }


def source_prefix(source: str, storage_options: StorageOptions = None) -> str:
    """Return the path prefix under which ``source``'s rows live (for ``--sync``).

    A local source is written as its rows are (:func:`file_uri`), so a folder whose
    name is not valid UTF-8 gives a ``file://localhost/`` prefix.
    """
    path = local_path(source)
    if path is None:
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(source, **fsspec_options(storage_options))
        uri = source.rstrip("/")
        return uri + "/" if fs.isdir(fs_path) else uri
    uri = file_uri(path)
    return uri + "/" if os.path.isdir(path) else uri


def _mtime_us(ref: FileRef) -> int:
    return -1 if ref.mtime is None else (ref.mtime - _EPOCH) // _ONE_US


class _Seen:
    """Row ids met in this run: a set only when sources overlap, else a compact array.

    A 10-million-file run must not hold 10 million Python ints: duplicates can only
    come from overlapping sources (the walker never visits a folder twice), and
    ``--sync`` needs the ids only as one int64 array at the end.
    """

    def __init__(self, *, dedupe: bool, keep: bool) -> None:
        self._set: set[int] | None = set() if dedupe else None
        self._ids: array[int] | None = array("q") if keep else None
        #: Folders whose listing failed: what lies under them was not seen, not gone.
        self.unlisted: list[str] = []

    def add(self, rid: int) -> bool:
        """Record ``rid``; return False when it was already met."""
        if self._set is not None:
            if rid in self._set:
                return False
            self._set.add(rid)
        if self._ids is not None:
            self._ids.append(rid)
        return True

    def as_array(self) -> np.ndarray:
        """All ids met, as int64."""
        return np.frombuffer(self._ids or array("q"), dtype=np.int64)


def _overlapping(prefixes: Sequence[str]) -> bool:
    """True when one source lies inside another (so a file could be listed twice).

    Each prefix in both of its forms (:func:`uri_forms`): ``file:///data/`` holds
    ``file://localhost/data/dir%FF/``.
    """
    forms = [uri_forms(prefix) for prefix in prefixes]
    return any(
        i != j and (a == b or (b.endswith("/") and a.startswith(b)))
        for i, mine in enumerate(forms)
        for j, theirs in enumerate(forms)
        for a in mine
        for b in theirs
    )


#: Files in the first tasks of a run, and the most in one task: a task's rows become one
#: shard, so big tasks mean few files for the end-of-run compaction, and small first
#: tasks keep a short run's workers busy and its progress moving.
FIRST_TASK_FILES: Final = 64
MAX_TASK_FILES: Final = 512
#: About how long one task should take a worker; longer ones make the progress bar
#: jumpy and leave workers idle at the end of the run while the last ones finish.
TASK_SECONDS: Final = 0.5


@dataclass
class TaskSizer:
    """Files per task, from the rate the workers reach (or fixed, when ``fixed`` is set).

    Each task should take a worker about :data:`TASK_SECONDS`: 512 headers read
    natively from a local disk, 64 files from a bucket or with thumbnails drawn.

    Example:
        >>> sizer = TaskSizer(workers=2)
        >>> sizer.size()
        64
        >>> sizer.done(files=20_000, seconds=2.0)  # 5,000 files/s a worker
        >>> sizer.size()
        512
    """

    workers: int = 1
    fixed: int | None = None
    rate: float = 0.0  # files a second, one worker

    def done(self, *, files: int, seconds: float) -> None:
        """Note that ``files`` were done in ``seconds`` since the first task left."""
        if seconds > 0:
            self.rate = files / seconds / max(self.workers, 1)

    def size(self) -> int:
        """Files for the next task: a power of two in [64, 512]."""
        if self.fixed is not None:
            return self.fixed
        want = self.rate * TASK_SECONDS
        size = FIRST_TASK_FILES
        while size * 2 <= min(want, MAX_TASK_FILES):
            size *= 2
        return size


def _plan(
    refs: Iterator[FileRef],
    fingerprints: Fingerprints,
    summary: IngestSummary,
    seen: _Seen,
    sizer: TaskSizer,
) -> Iterator[Task]:
    """Yield tasks of new files and of changed files (whose rows replace the old)."""
    pending: list[FileRef] = []
    ids: list[int] = []

    def flush() -> Iterator[Task]:
        if not pending:
            return
        states = fingerprints.classify(
            np.array(ids, dtype=np.int64),
            np.array([-1 if r.size is None else r.size for r in pending], dtype=np.int64),
            np.array([_mtime_us(r) for r in pending], dtype=np.int64),
        )
        new = [r for r, s in zip(pending, states, strict=True) if s == 0]
        changed = [r for r, s in zip(pending, states, strict=True) if s == 1]
        summary.skipped_unchanged += int((states == 2).sum())
        summary.new += len(new)
        summary.changed += len(changed)
        if new:
            yield Task(refs=new, replace=False)
        if changed:
            yield Task(refs=changed, replace=True)
        pending.clear()
        ids.clear()

    for ref in refs:
        kill_point("list")
        summary.listed += 1
        if ref.listing_error and ref.path.endswith("/"):
            seen.unlisted.append(ref.path)
        rid = row_id(ref.path)
        if not seen.add(rid):  # the same file reached through two sources
            summary.duplicates += 1
            continue
        pending.append(ref)
        ids.append(rid)
        if len(pending) >= sizer.size():
            yield from flush()
    yield from flush()


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """How often a run commits: every ``rows`` rows or ``seconds`` seconds, which comes first.

    A crash loses at most the rows not committed yet; a re-run extracts those again.

    Raises:
        ValueError: ``rows`` below 1 or ``seconds`` not positive.

    Example:
        >>> CommitPolicy(rows=1000)
        CommitPolicy(rows=1000, seconds=5.0)
    """

    rows: int = 5000
    seconds: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise ValueError(f"commit rows must be a whole number >= 1, got {self.rows!r}")
        if not self.seconds > 0:
            raise ValueError(f"commit seconds must be positive, got {self.seconds!r}")


def ingest(
    sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    lake: str | os.PathLike[str],
    *,
    workers: int | None = None,
    sync: bool = False,
    thumbnails: bool | ThumbnailOptions = False,
    parser: Parser = "auto",
    storage_options: StorageOptions = None,
    file_timeout: float = 120.0,
    commits: CommitPolicy | None = None,
    optimize: bool | None = None,
    progress: Callable[[IngestSummary], None] | None = None,
    bulk_threshold: int = BULK_THRESHOLD,
    task_size: int | None = None,
    shards: bool | None = None,
    prefetch: bool = True,
) -> IngestSummary:
    """Ingest DICOM files from ``sources`` into the lake at ``lake``.

    Args:
        sources: Folders, files, zip archives or fsspec URLs.
        lake: Folder or URI of the lake; created when missing.
        workers: Worker processes (default: all cores; 0 runs in this process).
        sync: Also remove rows of files under ``sources`` that no longer exist.
        thumbnails: Also draw thumbnails, from the same read of each file (True for
            the defaults of :class:`~dicomlake.kernels.thumbnails.ThumbnailOptions`);
            instances already in the lake without one get theirs at the end of the run.
        parser: 'auto' reads headers with the native parser where it can (local
            files it accepts) and pydicom otherwise; 'pydicom' always uses pydicom;
            'native' is 'auto' that fails when the native parser is not built.
        storage_options: Object-storage settings: a :class:`~dicomlake.storage.StorageConfig`
            or a dict with either fsspec's or delta-rs' names.
        file_timeout: Seconds one file may take before it becomes an error row.
        commits: How often to commit (default: every 5,000 rows or 5 seconds).
        optimize: Compact the ``instances`` table's small files and checkpoint its log
            at the end (see :func:`dicomlake.lake.maintenance.optimize`); by default
            only when the run leaves it with more than
            :data:`~dicomlake.lake.maintenance.AUTO_COMPACT_FILES` files.
        progress: Called with the running summary after each batch.
        bulk_threshold: Binary values longer than this become BulkDataURIs.
        task_size: Files per task sent to a worker (and rows per shard a worker
            writes); by default sized to the rate the workers reach: 64 at first,
            up to 512 (see :class:`TaskSizer`).
        shards: Workers write the rows of new files as Parquet files in the table's
            folder themselves and send back only their add-actions, which this
            process commits (default: whenever there are worker processes).
        prefetch: Each worker reads its next local files ahead on a few threads, so
            opens and reads overlap on cold or network storage.

    Returns:
        The run's summary.

    Raises:
        SourceNotFound: A source does not exist.
        LakeError: The lake cannot be written.
        WorkersFailed: Worker processes die as they start (a calling script without an
            ``if __name__ == "__main__":`` guard); rows committed so far stay.
        ValueError: An option is out of range, ``parser`` is unknown, or 'native' was
            asked for and the native parser is not built.

    Example:
        >>> summary = ingest(["/data/dicom"], "/data/lake")  # doctest: +SKIP
        >>> summary.ok  # doctest: +SKIP
        1234
    """
    if isinstance(sources, str | os.PathLike):
        source_list = [os.fspath(sources)]
    else:
        source_list = [os.fspath(source) for source in sources]
    lake = os.fspath(lake)
    storage_options = StorageConfig.coerce(storage_options)  # one form, each layer converts
    check_sources(source_list, storage_options=storage_options)
    check_lake_writable(lake, storage_options=storage_options)
    if thumbnails is True:
        from dicomlake.kernels.thumbnails import ThumbnailOptions

        thumbnails = ThumbnailOptions()
    drawing = thumbnails or None
    pool = (os.cpu_count() or 1) if workers is None else workers
    kernel = InstancesKernel(
        bulk_threshold=bulk_threshold,
        storage_options=storage_options,
        thumbnails=drawing,
        parser=_check_parser(parser),
        acquisition=True,
    )
    sharded = shards if shards is not None else pool > 0
    engine = LocalEngine(
        kernel,
        workers=pool,
        file_timeout=file_timeout,
        sink=_shard_sink(lake, storage_options) if sharded else None,
        prefetch=prefetch,
    )
    run = _Run(
        lake=lake,
        sources=source_list,
        storage_options=storage_options,
        commits=commits or CommitPolicy(),
        drawing=drawing,
        sync=sync,
        task_size=task_size,
        workers=workers,
        file_timeout=file_timeout,
        progress=progress,
    )
    try:
        run.extract(engine)
    finally:
        engine.close()
    run.finish(optimize)
    return run.summary


@dataclass
class _Run:
    """One ingest run once its options are checked: extract, then finish the lake."""

    lake: str
    sources: list[str]
    storage_options: StorageConfig
    commits: CommitPolicy
    drawing: ThumbnailOptions | None
    sync: bool
    task_size: int | None
    workers: int | None
    file_timeout: float
    progress: Callable[[IngestSummary], None] | None
    summary: IngestSummary = field(default_factory=IngestSummary)
    prefixes: list[str] = field(default_factory=list)
    seen: _Seen | None = None
    # a lake made before the acquisition table: derive it from meta at the end
    catch_up_acquisition: bool = False

    def extract(self, engine: LocalEngine) -> None:
        """List, skip what the lake has, extract the rest and commit it as it comes."""
        options, summary = self.storage_options, self.summary
        # workers import while this process lists and reads the lake. A bucket's listing
        # takes a while: they start first. Local sources first list a few files: a tiny
        # ingest runs here with no workers at all (their start-up would be most of it)
        if not all(local_path(source) or os.path.exists(source) for source in self.sources):
            engine.start()
        listing = iter_files(self.sources, storage_options=options)
        head = list(itertools.islice(listing, IN_PROCESS_MAX_FILES + 1))
        if len(head) > IN_PROCESS_MAX_FILES:
            engine.start()
        refs = itertools.chain(head, listing)
        # the writers note the tables' files before the fingerprints are read, so rows
        # that another ingest commits in between are seen by both (see TableWriter)
        thumb_writer = (
            TableWriter(
                self.lake,
                THUMBNAILS_TABLE,
                max_rows=2000,
                max_seconds=self.commits.seconds,
                storage_options=options,
            )
            if self.drawing
            else None
        )
        acquired = acquisition_writer(self.lake, options)
        writer = TableWriter(
            self.lake,
            INSTANCES_TABLE,
            max_rows=self.commits.rows,
            max_seconds=self.commits.seconds,
            storage_options=options,
            before_commit=acquired.flush,
        )
        self.catch_up_acquisition = writer.existed and not acquired.existed
        fingerprints = Fingerprints.load(self.lake, storage_options=options)
        self.prefixes = [source_prefix(s, options) for s in self.sources]
        self.seen = _Seen(dedupe=_overlapping(self.prefixes), keep=self.sync)
        sizer = TaskSizer(workers=max(engine.workers, 1), fixed=self.task_size)
        tasks = _plan(refs, fingerprints, summary, self.seen, sizer)
        began, base = 0.0, -1  # the rate counts from the first result on
        with acquired, writer, thumb_writer or nullcontext():
            for task, out in engine.map(tasks):
                if base < 0:
                    began, base = time.monotonic(), summary.done + len(task.refs)
                else:
                    sizer.done(files=summary.done - base, seconds=time.monotonic() - began)
                batch = out[INSTANCES_TABLE]
                # thumbnails first: an instance row committed means its thumbnail was
                # too, or the end-of-run pass draws it
                if thumb_writer is not None and THUMBNAILS_TABLE in out:
                    thumb_writer.write(out[THUMBNAILS_TABLE], replace=task.replace)
                    _count_thumbnails(summary, out[THUMBNAILS_TABLE])
                write_acquisition(acquired, out, replace=task.replace)
                if SHARDS in out:  # the worker wrote the rows itself
                    writer.add_shards(out[SHARDS].to_pylist())
                else:
                    writer.write(batch, replace=task.replace)
                _count(summary, batch)
                summary.timeouts = engine.timeouts
                summary.commits = writer.commits
                if self.progress is not None:
                    self.progress(summary)
        summary.commits = writer.commits
        summary.taken = writer.rows_taken

    def finish(self, optimize: bool | None) -> None:
        """Compact, draw the thumbnails still missing, and remove rows of gone files."""
        summary, options = self.summary, self.storage_options
        if summary.commits and optimize is not False:
            self._compact(force=bool(optimize))
        if self.drawing is not None:
            from dicomlake.jobs.thumbnails import build_thumbnails

            catch_up = build_thumbnails(
                self.lake,
                size=self.drawing.size,
                frame=self.drawing.frame,
                workers=self.workers,
                file_timeout=self.file_timeout,
                storage_options=options,
            )
            summary.thumbnails += catch_up.ok
            summary.thumbnail_errors.update(catch_up.errors)
        if self.catch_up_acquisition:
            self._catch_up_acquisition()
        if self.sync and self.seen is not None:
            stale = stale_row_ids(
                self.lake,
                self.prefixes,
                self.seen.as_array(),
                storage_options=options,
                keep=self.seen.unlisted,
            )
            if len(stale):
                summary.deleted = delete_instances(self.lake, stale, options)
        summary.seconds = time.monotonic() - summary.started

    def _catch_up_acquisition(self) -> None:
        """Give a lake made before the ``acquisition`` table its rows, from ``meta``."""
        from dicomlake.jobs.acquisition import update_or_say_why

        options = self.storage_options
        if self.workers == 0:
            made, problem = update_or_say_why(self.lake, options)
        else:  # apart, as compaction: it reads every header's JSON once
            made, problem = run_apart(update_or_say_why, self.lake, options)
        if problem:  # the instances are committed; this can wait
            log.warning("acquisition table not made (%s); run `dicomlake optimize`", problem)
        else:
            log.info("acquisition table made for %d earlier instances", made)

    def _compact(self, *, force: bool) -> None:
        from dicomlake.lake.maintenance import AUTO_COMPACT_FILES, compact_or_say_why, file_count

        options = self.storage_options
        many = file_count(self.lake, INSTANCES_TABLE, options) > AUTO_COMPACT_FILES
        if not (force or many):
            return
        tables = (INSTANCES_TABLE, ACQUISITION_TABLE)
        if self.workers == 0:
            removed, problem = compact_or_say_why(self.lake, tables, options)
        else:
            # apart, like a worker: reading and writing Parquet leaves the allocator
            # some 130 MiB larger, which the coordinator would keep to its end
            removed, problem = run_apart(compact_or_say_why, self.lake, tables, options)
        if problem:  # the rows are committed; compaction can wait
            log.warning("compaction skipped (%s); run `dicomlake optimize`", problem)
        self.summary.compacted = removed


def _count_thumbnails(summary: IngestSummary, batch: pa.RecordBatch) -> None:
    counts = tally(batch)
    summary.thumbnails += counts.pop("ok", 0)
    summary.thumbnail_errors.update(counts)


def _check_parser(parser: Parser) -> Parser:
    """Refuse 'native' when it is not built (the kernel checks the name itself)."""
    if parser == "native":
        from dicomlake.dicom import native

        if not native.available():
            raise ValueError(
                "parser='native': the native header parser is not built (it is compiled "
                "at install; reinstall with a C compiler), or use parser='auto'"
            )
    return parser


def _shard_sink(lake: str, storage_options: StorageConfig) -> ShardSink:
    """Where workers write shards: the instances table's folder, created if local."""
    uri = table_uri(lake, INSTANCES_TABLE)
    local = local_path(uri)
    if local is not None:
        os.makedirs(local, exist_ok=True)
    return ShardSink(uri, new_job_id(), storage_options=storage_options)


def _count(summary: IngestSummary, batch: pa.RecordBatch) -> None:
    summary.parsers.update(p for p in batch.column("parser").to_pylist() if p)
    counts = tally(batch)
    summary.done += batch.num_rows
    summary.ok += counts.pop("ok", 0)
    summary.not_dicom += counts.pop("not_dicom", 0)
    summary.errors.update(counts)
