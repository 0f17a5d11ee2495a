"""Compaction in bounded memory: a table's small data files merged into few large ones.

delta-rs' ``optimize.compact`` holds the rows of each file it writes in memory, about
1.6 KB per ``instances`` row: 160 MiB for 100,000 rows, gigabytes for a 128 MiB file
of a million. Here the small files are read one record batch at a time and written
row group by row group, so memory is one row group's worth whatever the table's size,
and the file statistics are folded as the batches pass.

Each output file is committed in its own transaction that removes its inputs and adds
it, both with ``dataChange=false`` (no row changed). If another writer removed one of
those inputs first (a MERGE that replaced its rows), delta-rs refuses the commit; the
output is deleted and the other groups go on. A crash leaves an output file that no
version names, which a vacuum deletes.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.lake.location import open_table
from dicomlake.lake.shards import FileStats, filesystem, new_job_id, shard_name
from dicomlake.lake.tables import TABLES, TARGET_FILE_SIZE, file_actions

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

#: A row group is written once this many bytes of decoded rows are waiting...
ROW_GROUP_BYTES: Final = 32 * 1024 * 1024
#: ...or this many rows.
ROW_GROUP_ROWS: Final = 65_536
#: Rows read from an input file at a time.
READ_BATCH_ROWS: Final = 4096


@dataclass
class Compacted:
    """What :func:`compact_table` did."""

    files_before: int = 0
    files_removed: int = 0
    files_added: int = 0
    rows: int = 0
    #: Groups whose commit another writer's commit refused (their inputs were gone).
    conflicts: int = 0


@dataclass(frozen=True, slots=True)
class _DataFile:
    path: str  # as the log names it (relative, URL-encoded)
    size: int
    rows: int


def compact_table(
    lake: str,
    table: str,
    *,
    storage_options: StorageOptions = None,
    target_size: int = TARGET_FILE_SIZE,
) -> Compacted:
    """Merge the small data files of ``<lake>/<table>`` into files of about ``target_size``.

    Files of at least half the target are left alone; the rest are packed, in the
    log's order, into groups of at most ``target_size`` bytes (as stored), and each
    group of two or more becomes one file.

    Raises:
        TableNotFound: The lake has no such table.
        LakeError: The table cannot be read or written.
    """
    from deltalake.exceptions import CommitFailedError

    dt = open_table(lake, table, storage_options=storage_options)
    # a user's table (dicomlake apply) has no spec: its schema is the one its log says
    schema = TABLES[table].schema if table in TABLES else pa.schema(dt.schema().to_arrow())
    fs, root = filesystem(dt.table_uri, storage_options)
    job = new_job_id()
    files = _data_files(dt)
    done = Compacted(files_before=len(files))
    small = [f for f in files if f.size < target_size // 2]
    for group in _groups(small, target_size):
        name = shard_name(job, "compact")
        try:
            rows, stats = _merge(fs, root, group, name, schema)
            _commit(dt, group, fs, root, name, stats, schema)
        except CommitFailedError as exc:
            _delete(fs, f"{root}/{name}")
            log.info("compaction of %d files skipped: %s", len(group), exc)
            done.conflicts += 1
            dt.update_incremental()
            continue
        except BaseException:
            _delete(fs, f"{root}/{name}")
            raise
        done.files_removed += len(group)
        done.files_added += 1
        done.rows += rows
    return done


def _delete(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):
        fs.delete_file(path)


def _data_files(dt: DeltaTable) -> list[_DataFile]:
    actions = file_actions(dt, flatten=True)
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    counts = actions.column("num_records").to_pylist()
    return [
        _DataFile(path, int(size), int(rows if rows is not None else -1))
        for path, size, rows in zip(paths, sizes, counts, strict=True)
    ]


def _groups(files: Sequence[_DataFile], target_size: int) -> Iterator[list[_DataFile]]:
    """Consecutive files packed up to ``target_size`` bytes; groups of one are dropped."""
    group: list[_DataFile] = []
    size = 0
    for file in files:
        if group and size + file.size > target_size:
            if len(group) > 1:
                yield group
            group, size = [], 0
        group.append(file)
        size += file.size
    if len(group) > 1:
        yield group


def _merge(
    fs: pafs.FileSystem, root: str, group: Sequence[_DataFile], name: str, schema: pa.Schema
) -> tuple[int, FileStats]:
    """Stream the rows of ``group`` into the new file ``name``; its rows and statistics."""
    import pyarrow.parquet as pq

    from dicomlake.errors import LakeError

    stats = FileStats(schema)
    waiting: list[pa.RecordBatch] = []
    waiting_bytes = waiting_rows = 0
    with pq.ParquetWriter(
        f"{root}/{name}", schema, filesystem=fs, compression="zstd", compression_level=3
    ) as out:
        for file in group:
            read = 0
            with fs.open_input_file(f"{root}/{urllib.parse.unquote(file.path)}") as source:
                # one thread, no read-ahead: the reader's thread pool and buffers
                # cost more memory than the rows themselves
                reader = pq.ParquetFile(source, pre_buffer=False)
                for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, use_threads=False):
                    batch = _conform(batch, schema)
                    stats.add(batch)
                    read += batch.num_rows
                    waiting.append(batch)
                    waiting_bytes += batch.nbytes
                    waiting_rows += batch.num_rows
                    if waiting_bytes >= ROW_GROUP_BYTES or waiting_rows >= ROW_GROUP_ROWS:
                        out.write_table(pa.Table.from_batches(waiting, schema))
                        waiting, waiting_bytes, waiting_rows = [], 0, 0
            if file.rows >= 0 and read != file.rows:
                raise LakeError(
                    f"compaction: {file.path} holds {read} rows, its add-action says {file.rows}",
                    lake=root,
                )
        if waiting:
            out.write_table(pa.Table.from_batches(waiting, schema))
    return stats.rows, stats


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch in the table's schema, its missing columns null.

    Files delta-rs wrote may use other string types, and a file written before a
    column was added (a user's apply table grows) lacks that column.
    """
    if batch.schema.equals(schema):
        return batch
    names = set(batch.schema.names)
    columns = [
        batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(len(batch), f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _commit(
    dt: DeltaTable,
    group: Sequence[_DataFile],
    fs: pafs.FileSystem,
    root: str,
    name: str,
    stats: FileStats,
    schema: pa.Schema,
) -> None:
    """One transaction: the group's files removed, the merged file added, no data change."""
    from deltalake import Schema
    from deltalake.transaction import AddAction, RemoveAction

    now = int(time.time() * 1000)
    info = fs.get_file_info(f"{root}/{name}")
    mtime = info.mtime_ns // 1_000_000 if info.mtime_ns else now
    actions: list[AddAction | RemoveAction] = [
        RemoveAction(path=f.path, data_change=False, deletion_timestamp=now, size=f.size)
        for f in group
    ]
    actions.append(AddAction(name, int(info.size or 0), {}, mtime, False, stats.to_json()))
    dt.create_write_transaction(
        actions,
        mode="append",
        schema=Schema.from_arrow(schema),
    )
    dt.update_incremental()


__all__ = ["Compacted", "compact_table"]
