"""One ingest run: list sources, skip what the lake already has, extract, commit.

The run is incremental and crash-safe by construction: a file's row is committed at
most once per (path, size, modification time), rows are committed every few thousand
rows or seconds, and a re-run after a crash skips exactly what was committed. So
``kill -9`` followed by the same command ends with one row per file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dicomlake.catalog import FileRef, check_sources, iter_files
from dicomlake.dicom.pixels import FrameChoice
from dicomlake.engine.local import LocalEngine, Task
from dicomlake.errors import LakeError
from dicomlake.kernels import InstancesKernel, ShardTarget, row_id, tally
from dicomlake.killpoints import kill_point
from dicomlake.lake.delta import (
    INSTANCES_TABLE,
    Fingerprints,
    InstanceWriter,
    ThumbnailWriter,
    check_lake_writable,
    delete_rows,
    stale_row_ids,
    table_uri,
)
from dicomlake.lake.shards import local_folder, new_job_id
from dicomlake.storage import StorageConfig, StorageOptionsLike, fsspec_options
from dicomlake.thumbnails import ThumbnailOptions

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


def source_prefix(source: str, storage_options: StorageOptionsLike = None) -> str:
    """Return the path prefix under which ``source``'s rows live (for ``--sync``)."""
    if source.startswith("file://"):
        source = source.removeprefix("file://")
    if "://" in source:
        import fsspec

        fs, path = fsspec.core.url_to_fs(source, **fsspec_options(storage_options))
        uri = source.rstrip("/")
        return uri + "/" if fs.isdir(path) else uri
    path = os.path.abspath(source)
    return f"file://{path}/" if os.path.isdir(path) else f"file://{path}"


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
    """True when one source lies inside another (so a file could be listed twice)."""
    return any(
        i != j and (a == b or (b.endswith("/") and a.startswith(b)))
        for i, a in enumerate(prefixes)
        for j, b in enumerate(prefixes)
    )


def _plan(
    refs: Iterator[FileRef],
    fingerprints: Fingerprints,
    summary: IngestSummary,
    seen: _Seen,
    task_size: int,
) -> Iterator[Task]:
    """Yield tasks of new files and of changed files (context: replace?)."""
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
            yield Task(refs=new, context=False)
        if changed:
            yield Task(refs=changed, context=True)
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
        if len(pending) >= task_size:
            yield from flush()
    yield from flush()


def ingest(
    sources: Sequence[str] | str,
    lake: str,
    *,
    workers: int | None = None,
    sync: bool = False,
    file_timeout: float = 120.0,
    task_size: int = 64,
    commit_rows: int = 5000,
    commit_seconds: float = 5.0,
    bulk_threshold: int = 1024,
    thumbnails: bool = False,
    thumbnail_size: int = 256,
    thumbnail_frame: FrameChoice = "middle",
    storage_options: StorageOptionsLike = None,
    progress: Callable[[IngestSummary], None] | None = None,
    parser: str = "auto",
    shards: bool | None = None,
    prefetch: bool = True,
    optimize: bool | None = None,
) -> IngestSummary:
    """Ingest DICOM files from ``sources`` into the lake at ``lake``.

    Args:
        sources: Folders, files, zip archives or fsspec URLs.
        lake: Folder or URI of the lake; created when missing.
        workers: Worker processes (default: all cores; 0 runs in this process).
        sync: Also remove rows of files under ``sources`` that no longer exist.
        file_timeout: Seconds one file may take before it becomes an error row.
        task_size: Files per task sent to a worker.
        commit_rows: Commit at least every this many rows...
        commit_seconds: ...or this many seconds, whichever comes first.
        bulk_threshold: Binary values longer than this become BulkDataURIs.
        thumbnails: Also draw thumbnails, from the same read of each file; instances
            already in the lake without one get theirs at the end of the run.
        thumbnail_size: Longest side of a thumbnail, in pixels.
        thumbnail_frame: Which frames to draw: 'first', 'middle', 'all' or an index.
        storage_options: Object-storage settings: a :class:`~dicomlake.storage.StorageConfig`
            or a dict with either fsspec's or delta-rs' names.
        progress: Called with the running summary after each batch.
        parser: 'auto' reads headers with the native parser where it can (local
            files it accepts) and pydicom otherwise; 'pydicom' always uses pydicom;
            'native' is 'auto' that fails when the native parser is not built.
        shards: Workers write the rows of new files as Parquet files in the table's
            folder themselves and send back only their add-actions, which this
            process commits (default: whenever there are worker processes).
        prefetch: Each worker reads its next local files ahead on a few threads, so
            opens and reads overlap on cold or network storage.
        optimize: Compact the ``instances`` table's small files and checkpoint its log
            at the end (see :func:`dicomlake.lake.maintenance.optimize`); by default
            only when the run leaves it with more than
            :data:`~dicomlake.lake.maintenance.AUTO_COMPACT_FILES` files.

    Returns:
        The run's summary.

    Raises:
        SourceNotFound: A source does not exist.
        LakeError: The lake cannot be written.
        ValueError: A thumbnail option is out of range, ``parser`` is unknown, or
            'native' was asked for and the native parser is not built.

    Example:
        >>> summary = ingest(["/data/dicom"], "/data/lake")  # doctest: +SKIP
        >>> summary.ok  # doctest: +SKIP
        1234
    """
    source_list = [sources] if isinstance(sources, str) else list(sources)
    storage_options = StorageConfig.coerce(storage_options)  # one form, each layer converts
    check_sources(source_list, storage_options=storage_options)
    check_lake_writable(lake, storage_options=storage_options)
    summary = IngestSummary()
    drawing = ThumbnailOptions(thumbnail_size, thumbnail_frame) if thumbnails else None
    pool = (os.cpu_count() or 1) if workers is None else workers
    kernel = InstancesKernel(
        bulk_threshold=bulk_threshold,
        storage_options=storage_options,
        thumbnails=drawing,
        parser=_check_parser(parser),
        prefetch=prefetch,
        shards=_shard_target(lake, storage_options)
        if (shards is None and pool > 0) or shards
        else None,
    )
    engine = LocalEngine(kernel, workers=pool, file_timeout=file_timeout)
    engine.start()  # workers import while this process loads what the lake has
    try:
        return _run(
            engine,
            source_list,
            lake,
            summary,
            sync=sync,
            task_size=task_size,
            commit_rows=commit_rows,
            commit_seconds=commit_seconds,
            drawing=drawing,
            workers=workers,
            file_timeout=file_timeout,
            storage_options=storage_options,
            progress=progress,
            optimize=optimize,
        )
    finally:
        engine.close()


def _run(
    engine: LocalEngine,
    source_list: list[str],
    lake: str,
    summary: IngestSummary,
    *,
    sync: bool,
    task_size: int,
    commit_rows: int,
    commit_seconds: float,
    drawing: ThumbnailOptions | None,
    workers: int | None,
    file_timeout: float,
    storage_options: StorageOptionsLike,
    progress: Callable[[IngestSummary], None] | None,
    optimize: bool | None,
) -> IngestSummary:
    """The body of :func:`ingest`, once its options are checked and its engine started."""
    # the writers note the tables' files before the fingerprints are read, so rows that
    # another ingest commits in between are seen by both (see TableWriter)
    thumb_writer = (
        ThumbnailWriter(lake, max_seconds=commit_seconds, storage_options=storage_options)
        if drawing
        else None
    )
    writer = InstanceWriter(
        lake, max_rows=commit_rows, max_seconds=commit_seconds, storage_options=storage_options
    )
    fingerprints = Fingerprints.load(lake, storage_options=storage_options)
    prefixes = [source_prefix(s, storage_options) for s in source_list]
    seen = _Seen(dedupe=_overlapping(prefixes), keep=sync)
    refs = iter_files(source_list, storage_options=storage_options)
    tasks = _plan(refs, fingerprints, summary, seen, task_size)
    with writer, thumb_writer or nullcontext():
        for task, out in engine.map(tasks):
            batch = out["instances"]
            # thumbnails first: an instance row committed means its thumbnail was too,
            # or the end-of-run pass below draws it
            if thumb_writer is not None and "thumbnails" in out:
                thumb_writer.write(out["thumbnails"], replace=bool(task.context))
                _count_thumbnails(summary, out["thumbnails"])
            if "shards" in out:  # the worker wrote the rows itself
                writer.add_shards(out["shards"])
            else:
                writer.write(batch, replace=bool(task.context))
            _count(summary, batch)
            summary.timeouts = engine.timeouts
            summary.commits = writer.commits
            if progress is not None:
                progress(summary)
    summary.commits = writer.commits
    summary.taken = writer.rows_taken
    if writer.commits and optimize is not False:
        from dicomlake.lake.maintenance import AUTO_COMPACT_FILES, file_count
        from dicomlake.lake.maintenance import optimize as compact

        many = file_count(lake, INSTANCES_TABLE, storage_options) > AUTO_COMPACT_FILES
        if optimize or many:
            try:
                done = compact(
                    lake,
                    tables=(INSTANCES_TABLE,),
                    storage_options=storage_options,
                    max_concurrent_tasks=1,  # bounded memory (see optimize)
                )
                summary.compacted = done.tables[0].files_removed
            except LakeError as exc:  # the rows are committed; compaction can wait
                log.warning("compaction skipped (%s); run `dicomlake optimize`", exc)
    if drawing is not None:
        from dicomlake.thumbnails import build_thumbnails

        catch_up = build_thumbnails(
            lake,
            size=drawing.size,
            frame=drawing.frame,
            workers=workers,
            file_timeout=file_timeout,
            storage_options=storage_options,
        )
        summary.thumbnails += catch_up.ok
        summary.thumbnail_errors.update(catch_up.errors)
    if sync:
        stale = stale_row_ids(
            lake, prefixes, seen.as_array(), storage_options=storage_options, keep=seen.unlisted
        )
        if len(stale):
            summary.deleted = delete_rows(lake, stale, storage_options=storage_options)
    summary.seconds = time.monotonic() - summary.started
    return summary


def _count_thumbnails(summary: IngestSummary, batch: Any) -> None:
    counts = tally(batch)
    summary.thumbnails += counts.pop("ok", 0)
    summary.thumbnail_errors.update(counts)


def _check_parser(parser: str) -> str:
    """Refuse 'native' when it is not built (the kernel checks the name itself)."""
    if parser == "native":
        from dicomlake.dicom import native

        if not native.available():
            raise ValueError(
                "parser='native': the native header parser is not built (it is compiled "
                "at install; reinstall with a C compiler), or use parser='auto'"
            )
    return parser


def _shard_target(lake: str, storage_options: StorageOptionsLike) -> ShardTarget:
    """Where workers write shards: the instances table's folder, created if local."""
    uri = table_uri(lake, INSTANCES_TABLE)
    local = local_folder(uri)
    if local is not None:
        os.makedirs(local, exist_ok=True)
    return ShardTarget(uri, new_job_id(), storage_options)


def _count(summary: IngestSummary, batch: Any) -> None:
    summary.parsers.update(p for p in batch.column("parser").to_pylist() if p)
    counts = tally(batch)
    summary.done += batch.num_rows
    summary.ok += counts.pop("ok", 0)
    summary.not_dicom += counts.pop("not_dicom", 0)
    summary.errors.update(counts)
