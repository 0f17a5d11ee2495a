"""Keeping a lake healthy: compact small files, checkpoint the log, vacuum old files.

Ingest writes many small Parquet files (one per worker task, one per commit) and a
JSON log entry per commit. Readers pay for both: DuckDB opens every file, delta-rs
replays the log since the last checkpoint. :func:`optimize` rewrites each table's
small files into few large ones (:mod:`~dicomlake.lake.compaction`: streamed, in
bounded memory, transactions that change no row), writes a checkpoint, and on request
vacuums files no table version within the retention period needs (files replaced by
compaction or MERGE, and shards of killed runs that no commit named).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from deltalake.exceptions import DeltaError

from dicomlake._types import StorageOptions
from dicomlake.errors import LakeError
from dicomlake.lake.location import (
    INSTANCES_TABLE,
    OPTIONAL_TABLES,
    is_panic,
    lake_error,
    open_table,
    table_exists,
    table_uri,
)
from dicomlake.lake.tables import data_files
from dicomlake.lake.user_tables import user_tables

log = logging.getLogger(__name__)

#: A run that leaves a table with more data files than this compacts it by itself.
AUTO_COMPACT_FILES: Final = 64

#: Files younger than this are kept by :func:`optimize`'s vacuum (Delta's default):
#: a reader that opened an older version keeps its files for a week.
DEFAULT_RETENTION_HOURS: Final = 7 * 24


@dataclass
class TableMaintenance:
    """What :func:`optimize` did to one table."""

    table: str
    files_before: int = 0
    files_after: int = 0
    files_removed: int = 0
    files_added: int = 0
    vacuumed: list[str] = field(default_factory=list)


@dataclass
class OptimizeSummary:
    """What :func:`optimize` did to the lake's tables."""

    tables: list[TableMaintenance] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        parts = [
            f"{t.table}: {t.files_before} -> {t.files_after} files"
            + (f", {len(t.vacuumed)} vacuumed" if t.vacuumed else "")
            for t in self.tables
        ]
        return "optimized: " + ("; ".join(parts) or "no tables") + f" in {self.seconds:.1f} s"


def file_count(lake: str, table: str, storage_options: StorageOptions = None) -> int:
    """Number of data files in the current version of ``table``.

    Raises:
        TableNotFound: The lake has no such table.
    """
    return len(open_table(lake, table, storage_options=storage_options).file_uris())


def optimize(
    lake: str,
    *,
    vacuum: bool = False,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    tables: tuple[str, ...] | None = None,
    storage_options: StorageOptions = None,
) -> OptimizeSummary:
    """Compact every table of the lake, checkpoint its log, and optionally vacuum.

    Args:
        lake: Lake folder or URI.
        vacuum: Also delete files no version younger than ``retention_hours`` needs.
        retention_hours: How long replaced files are kept for readers of old versions.
        tables: Which tables (default: ``instances``, whichever of the derived
            tables the lake has, and its user tables: an apply run commits every
            ``commit_rows`` rows, so its table gathers small files as ``instances``
            does).
        storage_options: Options for object storage.

    Returns:
        Per table: files before and after, and the files vacuumed.

    Raises:
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: A table cannot be read or written.
        ValueError: ``retention_hours`` is negative.
    """
    if retention_hours < 0:
        raise ValueError(f"retention_hours must be >= 0, got {retention_hours}")
    started = time.monotonic()
    if not tables:
        present = (
            t for t in OPTIONAL_TABLES if table_exists(lake, t, storage_options=storage_options)
        )
        tables = (INSTANCES_TABLE, *present, *user_tables(lake, storage_options=storage_options))
    summary = OptimizeSummary()
    for name in tables:
        summary.tables.append(_optimize_table(lake, name, vacuum, retention_hours, storage_options))
    summary.seconds = time.monotonic() - started
    log.info("%s", summary)
    return summary


def compact_or_say_why(
    lake: str, tables: Sequence[str], storage_options: StorageOptions = None
) -> tuple[int, str]:
    """Compact and checkpoint tables: the first's files removed, and why not ('' when done).

    Tables the lake does not have are passed over (the first is the run's ``instances``
    table, whose count the ingest summary reports). The end of an ingest runs it in a
    process of its own (see ``run_apart``), so the reason comes back as text: a
    :class:`~dicomlake.errors.LakeError` does not pickle.
    """
    try:
        present = tuple(t for t in tables if table_exists(lake, t, storage_options=storage_options))
        done = optimize(lake, tables=present, storage_options=storage_options) if present else None
    except LakeError as exc:
        return 0, str(exc)
    return (done.tables[0].files_removed if done else 0), ""


def _optimize_table(
    lake: str,
    name: str,
    vacuum: bool,
    retention_hours: int,
    storage_options: StorageOptions,
) -> TableMaintenance:
    from dicomlake.lake.compaction import compact_table

    done = TableMaintenance(name)
    try:
        compacted = compact_table(lake, name, storage_options=storage_options)
        done.files_before = compacted.files_before
        done.files_removed = compacted.files_removed
        done.files_added = compacted.files_added
        dt = open_table(lake, name, storage_options=storage_options)
        dt.create_checkpoint()
        dt.cleanup_metadata()
        if vacuum:
            done.vacuumed = dt.vacuum(
                retention_hours=retention_hours,
                dry_run=False,
                enforce_retention_duration=False,
                full=True,
            )
        done.files_after = len(dt.file_uris())
    except (DeltaError, OSError) as exc:
        raise lake_error("optimize", lake, exc) from exc
    except BaseException as exc:
        if is_panic(exc):  # delta-rs panics surface as pyo3 PanicException
            raise lake_error("optimize", lake, exc) from exc
        raise
    return done


#: A log entry that object_store staged (``<version>.json#<n>``) but never linked into
#: place: the commit was interrupted. Readers ignore it; the next commit picks another.
_STAGED_LOG_ENTRY: Final = re.compile(r"^\d{20}\.json#\d+$")


@dataclass
class TableState:
    """Where a table stands: what ``dicomlake info`` reports after a crash or a run."""

    table: str
    version: int
    #: When the current version was committed (UTC), and by which operation.
    committed_at: datetime | None
    operation: str | None
    data_files: int
    #: Parquet files in the folder that this version does not use: replaced files kept
    #: for readers of older versions, or files of a run killed before its commit.
    #: ``dicomlake optimize --vacuum`` deletes them once older than the retention.
    unreferenced_files: int
    #: Log entries staged by commits that were interrupted (ignored by every reader).
    interrupted_commits: list[str] = field(default_factory=list)
    #: Version of the newest checkpoint, None before the first.
    checkpoint: int | None = None


def table_state(
    lake: str, table: str = INSTANCES_TABLE, storage_options: StorageOptions = None
) -> TableState:
    """Read a table's version, last commit, and the leftovers of interrupted runs.

    Raises:
        TableNotFound: The lake has no such table.
        LakeError: The table or its folder cannot be read.
    """
    import pyarrow.fs as pafs

    from dicomlake.lake.shards import filesystem

    dt = open_table(lake, table, storage_options=storage_options)
    try:
        used = data_files(dt)
        last = dt.history(1)[0] if dt.version() >= 0 else {}
        fs, root = filesystem(table_uri(lake, table), storage_options)
        names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.is_file]
        log_dir = f"{root.rstrip('/')}/_delta_log"
        logs = [i.base_name for i in fs.get_file_info(pafs.FileSelector(log_dir)) if i.is_file]
        checkpoint = None
        if "_last_checkpoint" in logs:
            with fs.open_input_stream(f"{log_dir}/_last_checkpoint") as handle:
                checkpoint = int(json.loads(handle.read())["version"])
    except (DeltaError, OSError, ValueError, KeyError) as exc:
        raise lake_error("read", lake, exc) from exc
    stamp = last.get("timestamp")
    return TableState(
        table=table,
        version=dt.version(),
        committed_at=(datetime.fromtimestamp(stamp / 1000, tz=UTC) if stamp is not None else None),
        operation=last.get("operation"),
        data_files=len(used),
        unreferenced_files=sum(1 for n in names if n.endswith(".parquet") and n not in used),
        interrupted_commits=sorted(n for n in logs if _STAGED_LOG_ENTRY.match(n)),
        checkpoint=checkpoint,
    )
