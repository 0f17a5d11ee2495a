"""Parquet shards: data files written straight into a Delta table's folder, then committed.

Whoever parses files (a Spark executor, a local worker process) writes its rows as one
Parquet file in the table's folder and hands back only that file's add-action (name,
size, row count, statistics); one process commits the add-actions of many shards in a
single Delta transaction through delta-rs. Rows never travel through a pipe or the
driver, and a crash between writing a shard and committing it leaves a file that no
table version names: readers never see it, the next run parses those files again, and
:func:`remove_orphans` (or a vacuum) deletes it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal

import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.storage.settings import delta_options, fsspec_options

if TYPE_CHECKING:
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

#: Schema of what each write task returns to the driver: one row per Parquet file.
ADD_ACTION_SCHEMA: Final = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("modification_time", pa.int64()),
        pa.field("num_records", pa.int64()),
        pa.field("stats", pa.string()),
    ]
)


def filesystem(uri: str, storage_options: StorageOptions = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and path for ``uri``.

    Object storage goes through fsspec, with the storage options (the same
    credentials, endpoint and retry settings the kernels read sources with, pickled to
    the executors) or else the environment. Not pyarrow's own S3 file system: it
    uploads even a small file in parts, which some S3-compatible stores (moto 5.2.1)
    fail to complete.
    """
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, str(path)
    import fsspec.core

    from dicomlake.storage.faults import tune_filesystem

    protocol = uri.split("://", 1)[0]
    fs, root = fsspec.core.url_to_fs(uri, **fsspec_options(storage_options, protocol))
    tune_filesystem(fs)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


class FileStats:
    """Delta file statistics folded batch by batch: row count, null counts, min/max.

    Bounds are kept for numbers and dates (what queries prune on); a float column
    with a NaN bound gets none. Nested and binary columns get no statistics.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.rows = 0
        self._kept = [
            f.name for f in schema if not (pa.types.is_nested(f.type) or pa.types.is_binary(f.type))
        ]
        self._bounded = {
            f.name
            for f in schema
            if f.name in self._kept
            and (
                pa.types.is_integer(f.type)
                or pa.types.is_floating(f.type)
                or pa.types.is_date(f.type)
            )
        }
        self._nulls = dict.fromkeys(self._kept, 0)
        self._mins: dict[str, Any] = {}
        self._maxs: dict[str, Any] = {}
        self._nan: set[str] = set()

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Fold the statistics of ``batch``'s rows in."""
        import pyarrow.compute as pc

        self.rows += batch.num_rows
        for name in self._kept:
            column = batch.column(name)
            self._nulls[name] += column.null_count
            if name not in self._bounded or name in self._nan:
                continue
            if column.null_count == len(column):
                continue
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if isinstance(low, float) and (low != low or high != high):  # NaN: no bounds
                self._nan.add(name)
                self._mins.pop(name, None)
                self._maxs.pop(name, None)
                continue
            self._mins[name] = low if name not in self._mins else min(self._mins[name], low)
            self._maxs[name] = high if name not in self._maxs else max(self._maxs[name], high)

    def to_json(self) -> str:
        """The statistics as the ``stats`` string of a Delta add-action."""

        def text(value: Any) -> Any:
            return value.isoformat() if isinstance(value, dt.date) else value

        return json.dumps(
            {
                "numRecords": self.rows,
                "minValues": {k: text(v) for k, v in self._mins.items()},
                "maxValues": {k: text(v) for k, v in self._maxs.items()},
                "nullCount": self._nulls,
            }
        )


def file_stats(table: pa.Table) -> str:
    """Delta file statistics of ``table``'s rows (see :class:`FileStats`)."""
    stats = FileStats(table.schema)
    stats.add(table)
    return stats.to_json()


def remove_orphans(
    table_uri: str,
    job_id: str,
    committed: set[str],
    storage_options: StorageOptions = None,
) -> list[str]:
    """Delete the files of job ``job_id`` in the table's folder that are not committed.

    Args:
        table_uri: The table's folder or URI.
        job_id: The id the job's files carry in their names.
        committed: Names of the files in the commit.
        storage_options: Credentials and endpoint for an object-storage table.

    Returns:
        The names deleted.
    """
    import pyarrow.fs as pafs

    fs, root = filesystem(table_uri, storage_options)
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        base = info.base_name
        if f"-{job_id}-" in base and base not in committed and info.is_file:
            fs.delete_file(info.path)
            removed.append(base)
    if removed:
        log.info("removed %d files of failed task attempts from %s", len(removed), table_uri)
    return removed


def new_job_id() -> str:
    """A short random id that marks the files of one write job."""
    return uuid.uuid4().hex[:12]


def shard_name(job_id: str, tag: str) -> str:
    """A data file name no other writer can pick: ``part-<tag>-<job>-<random>.zstd.parquet``.

    :func:`remove_orphans` finds a job's files by the ``-<job_id>-`` in their names.
    """
    return f"part-{tag}-{job_id}-{uuid.uuid4().hex[:8]}.zstd.parquet"


def write_shard(
    table_uri: str,
    table: pa.Table,
    name: str,
    *,
    storage_options: StorageOptions = None,
) -> dict[str, Any]:
    """Write ``table`` as the data file ``name`` in the table's folder.

    Args:
        table_uri: The Delta table's folder or URI.
        table: The rows, already in the table's schema.
        name: From :func:`shard_name`.
        storage_options: Credentials and endpoint for an object-storage table.

    Returns:
        The file's add-action as a row of :data:`ADD_ACTION_SCHEMA`.
    """
    import pyarrow.parquet as pq

    fs, root = filesystem(table_uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"
    pq.write_table(table, target, filesystem=fs, compression="zstd", compression_level=3)
    return add_action(fs, target, name, table)


def add_action(fs: pafs.FileSystem, target: str, name: str, table: pa.Table) -> dict[str, Any]:
    """The add-action of the data file ``name``, written at ``target`` with ``table``'s rows.

    Returns:
        A row of :data:`ADD_ACTION_SCHEMA`: name, size and time from the file system,
        row count and statistics from the rows.
    """
    info = fs.get_file_info(target)
    mtime = info.mtime_ns // 1_000_000 if info.mtime_ns else int(time.time() * 1000)
    return {
        "path": name,
        "size": info.size,
        "modification_time": mtime,
        "num_records": table.num_rows,
        "stats": file_stats(table),
    }


def add_actions(actions: Iterable[dict[str, Any]]) -> list[Any]:
    """delta-rs ``AddAction`` objects of :data:`ADD_ACTION_SCHEMA` rows."""
    from deltalake.transaction import AddAction

    return [
        AddAction(
            path=a["path"],
            size=a["size"],
            partition_values={},
            modification_time=a["modification_time"],
            data_change=True,
            stats=a["stats"],
        )
        for a in actions
    ]


def commit_shards(
    table_uri: str,
    schema: pa.Schema,
    actions: Iterable[dict[str, Any]],
    *,
    mode: Literal["append", "overwrite"] = "append",
    name: str | None = None,
    storage_options: StorageOptions = None,
) -> int:
    """Commit written shards in one Delta transaction; create the table if need be.

    A new table is created with the files in its first commit
    (``deltalake.transaction.create_table_with_add_actions``); an existing one gets a
    write transaction (``DeltaTable.create_write_transaction``), which for
    ``overwrite`` also removes every file the table had.

    Returns:
        The number of rows committed.

    Raises:
        LakeError: If delta-rs cannot commit.
    """
    from deltalake import DeltaTable, Schema
    from deltalake.exceptions import DeltaError
    from deltalake.transaction import create_table_with_add_actions

    from dicomlake.lake.tables import lake_error

    adds = add_actions(actions)
    rows = sum(json.loads(a.stats)["numRecords"] for a in adds)
    delta_schema = Schema.from_arrow(schema)
    delta = delta_options(storage_options)
    try:
        if DeltaTable.is_deltatable(table_uri, delta):
            table = DeltaTable(table_uri, storage_options=delta)
            table.create_write_transaction(adds, mode=mode, schema=delta_schema)
        else:
            create_table_with_add_actions(
                table_uri, delta_schema, adds, mode="error", name=name, storage_options=delta
            )
    except (DeltaError, OSError) as exc:
        raise lake_error("write", table_uri, exc) from exc
    return int(rows)
