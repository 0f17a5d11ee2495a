"""Parquet shards: data files written straight into a Delta table's folder, then committed.

Whoever parses files (a Spark executor, a local worker process) writes its rows as one
Parquet file in the table's folder and hands back only that file's add-action (name,
size, row count, statistics); one process commits the add-actions of many shards in a
single Delta transaction through delta-rs. Rows never travel through a pipe or the
driver, and a crash between writing a shard and committing it leaves a file that no
table version names: readers never see it, the next run parses those files again, and
:func:`remove_orphans` (or a vacuum) deletes it.

A commit in ``replace`` mode also takes away every earlier row of the new rows'
``row_id`` (a re-run's rows give way to nothing else): the table's files that hold any
of those ids (pruned by their ``row_id`` bounds, then read) are rewritten without them,
and the one transaction removes them and adds their rewrites and the new shards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.lake.ids import member_of, sorted_unique
from dicomlake.storage.settings import delta_options, fsspec_options

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, RemoveAction

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

#: How a commit treats the table's earlier rows (see :func:`commit_shards`).
CommitMode = Literal["append", "overwrite", "replace"]
#: The column whose values a ``replace`` commit replaces the earlier rows of.
REPLACE_KEY: Final = "row_id"


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
    fs, root = filesystem(table_uri, storage_options)
    return _write_at(fs, root, table, name)


def _write_at(fs: pafs.FileSystem, root: str, table: pa.Table, name: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    target = f"{root.rstrip('/')}/{name}"
    pq.write_table(table, target, filesystem=fs, compression="zstd", compression_level=3)
    return add_action(fs, target, name, table)


def row_ids_of(path: str, fs: Any) -> np.ndarray:
    """The ``row_id`` column of one data file (read alone: 8 bytes a row)."""
    import pyarrow.parquet as pq

    ids: np.ndarray = (
        pq.read_table(path, columns=[REPLACE_KEY], filesystem=fs).column(REPLACE_KEY).to_numpy()
    )
    return ids


def without_ids(
    fs: pafs.FileSystem, root: str, path: str, ids: np.ndarray, job: str, tag: str
) -> tuple[int, dict[str, Any] | None]:
    """Take the rows whose ``row_id`` is in ``ids`` (sorted, distinct) out of a data file.

    Only the file's ``row_id`` column is read, unless some rows go and others stay:
    those are then written to a new file (:func:`shard_name` of ``job`` and ``tag``).
    The file ``<root>/<path>`` itself is left as it is, for the caller to delete or to
    remove in a commit.

    Returns:
        How many rows go, and the new file's add-action (None when no row goes, or
        every row does).
    """
    import pyarrow.parquet as pq

    source = f"{root.rstrip('/')}/{path}"
    keep = ~member_of(row_ids_of(source, fs), ids)
    gone = int(len(keep) - keep.sum())
    if not gone or not keep.any():
        return gone, None
    rest = pq.read_table(source, filesystem=fs).filter(pa.array(keep))
    return gone, _write_at(fs, root, rest, shard_name(job, tag))


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


def require_key(schema: pa.Schema, table_uri: str) -> None:
    """Check that a table can be saved in ``replace`` mode: it has a ``row_id`` column.

    Raises:
        ValueError: ``schema`` has no ``row_id`` column.
    """
    if REPLACE_KEY not in schema.names:
        raise ValueError(
            f"mode='replace' replaces earlier rows by their {REPLACE_KEY!r}, and the table "
            f"at {table_uri} has no such column (its columns: {', '.join(schema.names)}); "
            "add a row_id column, or save with mode='append' or 'overwrite'"
        )


def check_replaceable(
    table_uri: str, schema: pa.Schema, storage_options: StorageOptions = None
) -> None:
    """Check, before any file is written, that rows of ``schema`` can replace by ``row_id``.

    Raises:
        ValueError: ``schema``, or the table already at ``table_uri``, has no ``row_id``.
    """
    from deltalake import DeltaTable

    require_key(schema, table_uri)
    delta = delta_options(storage_options)
    if DeltaTable.is_deltatable(table_uri, delta):
        existing = DeltaTable(table_uri, storage_options=delta).schema().to_arrow()
        require_key(pa.schema(existing), table_uri)


def row_ids(
    table_uri: str, paths: Iterable[str], storage_options: StorageOptions = None
) -> np.ndarray:
    """The distinct ``row_id`` values (sorted, nulls left out) of some data files.

    Args:
        table_uri: The table's folder or URI the files are in.
        paths: The files, relative to the table, as its log or an add-action names them.
        storage_options: Credentials and endpoint for an object-storage table.

    Returns:
        A sorted int64 array; only the ``row_id`` column of each file is read.
    """
    import pyarrow.parquet as pq

    fs, root = filesystem(table_uri, storage_options)
    parts = [np.empty(0, dtype=np.int64)]
    for path in paths:
        column = pq.read_table(
            f"{root.rstrip('/')}/{urllib.parse.unquote(path)}",
            columns=[REPLACE_KEY],
            filesystem=fs,
        ).column(REPLACE_KEY)
        parts.append(column.drop_null().to_numpy().astype(np.int64, copy=False))
    return sorted_unique(np.concatenate(parts))


def commit_shards(
    table_uri: str,
    schema: pa.Schema,
    actions: Iterable[dict[str, Any]],
    *,
    mode: CommitMode = "append",
    name: str | None = None,
    storage_options: StorageOptions = None,
    replacing: np.ndarray | None = None,
) -> int:
    """Commit written shards in one Delta transaction; create the table if need be.

    A new table is created with the files in its first commit
    (``deltalake.transaction.create_table_with_add_actions``); an existing one gets a
    write transaction (``DeltaTable.create_write_transaction``), which for
    ``overwrite`` also removes every file the table had, and for ``replace`` every
    earlier row of the ids being replaced (:func:`replace_rows`).

    Args:
        table_uri: The table's folder or URI.
        schema: The shards' Arrow schema.
        actions: The shards' add-actions (:data:`ADD_ACTION_SCHEMA` rows).
        mode: ``append``, ``overwrite`` or ``replace``.
        name: The table's name, for a new table's metadata.
        storage_options: Credentials and endpoint for an object-storage table.
        replacing: With ``replace``: the row ids whose earlier rows go (sorted,
            distinct); by default those of the shards' rows (:func:`row_ids`).

    Returns:
        The number of rows committed.

    Raises:
        ValueError: ``replace`` on a table without a ``row_id`` column.
        LakeError: If delta-rs cannot commit.
    """
    from deltalake import DeltaTable, Schema
    from deltalake.exceptions import DeltaError
    from deltalake.transaction import create_table_with_add_actions

    from dicomlake.lake.location import lake_error

    actions = list(actions)
    if mode == "replace":
        require_key(schema, table_uri)
    adds = add_actions(actions)
    rows = sum(json.loads(a.stats)["numRecords"] for a in adds)
    delta_schema = Schema.from_arrow(schema)
    delta = delta_options(storage_options)
    try:
        if DeltaTable.is_deltatable(table_uri, delta):
            table = DeltaTable(table_uri, storage_options=delta)
            if mode == "replace":
                if replacing is None:
                    replacing = row_ids(table_uri, [a["path"] for a in actions], storage_options)
                replace_rows(table, table_uri, schema, adds, replacing, storage_options)
            else:
                table.create_write_transaction(adds, mode=mode, schema=delta_schema)
        else:
            create_table_with_add_actions(
                table_uri, delta_schema, adds, mode="error", name=name, storage_options=delta
            )
    except (DeltaError, OSError) as exc:
        raise lake_error("write", table_uri, exc) from exc
    return int(rows)


def replace_rows(
    table: DeltaTable,
    table_uri: str,
    schema: pa.Schema,
    adds: Sequence[AddAction],
    ids: np.ndarray,
    storage_options: StorageOptions = None,
) -> None:
    """One transaction: the rows of ``ids`` the table had give way to the files ``adds``.

    Each data file whose ``row_id`` bounds (from its statistics; none: every file)
    take in one of ``ids`` has its ``row_id`` column read; a file holding some of them
    is removed and, unless all its rows go, rewritten without them as a new file
    named like a shard (``part-replace-...``). The removes, the rewrites and ``adds``
    are committed together against the version read, so a concurrent commit that
    removed one of those files makes delta-rs refuse this one; the rewrites are then
    deleted.

    Args:
        table: The table, loaded at the version the replacement is based on.
        table_uri: Its folder or URI (to read and write its files).
        schema: The Arrow schema of the files in ``adds``.
        adds: The new files' add-actions.
        ids: The row ids whose earlier rows go: sorted, distinct.
        storage_options: Credentials and endpoint for an object-storage table.

    Raises:
        ValueError: The table has no ``row_id`` column.
        LakeError: The table uses deletion vectors.
        DeltaError: delta-rs refused the commit.
    """
    from deltalake import Schema

    from dicomlake.errors import LakeError

    require_key(pa.schema(table.schema().to_arrow()), table_uri)
    if "deletionVectors" in (table.protocol().writer_features or []):
        raise LakeError(
            f"cannot replace rows of {table_uri}: it uses deletion vectors, which this "
            "writer cannot rewrite; save with mode='append' or 'overwrite', or through "
            "Spark's Delta writer",
            lake=table_uri,
        )
    fs, root = filesystem(table_uri, storage_options)
    root = root.rstrip("/")
    job = new_job_id()
    written: list[str] = []
    actions: list[AddAction | RemoveAction] = list(adds)
    try:
        for path, size in _files_in_range(table, ids):
            actions.extend(_without_ids(fs, root, path, size, ids, job, written))
        table.create_write_transaction(actions, mode="append", schema=Schema.from_arrow(schema))
    except BaseException:
        for name in written:
            with contextlib.suppress(OSError):
                fs.delete_file(f"{root}/{name}")
        raise
    if written:
        log.info("replace: %d files rewritten without the replaced rows", len(written))


def _files_in_range(table: DeltaTable, ids: np.ndarray) -> list[tuple[str, int]]:
    """(path as the log names it, size) of the files whose ``row_id`` bounds take an id."""
    from dicomlake.lake.tables import file_actions

    if len(ids) == 0:
        return []
    files = file_actions(table, flatten=True)
    paths = files.column("path").to_pylist()
    sizes = files.column("size_bytes").to_pylist()
    n = len(paths)
    low_name, high_name = f"min.{REPLACE_KEY}", f"max.{REPLACE_KEY}"
    lows = files.column(low_name).to_pylist() if low_name in files.column_names else [None] * n
    highs = files.column(high_name).to_pylist() if high_name in files.column_names else [None] * n
    found = []
    for path, size, low, high in zip(paths, sizes, lows, highs, strict=True):
        if low is not None and high is not None:
            first = np.searchsorted(ids, low, side="left")
            if first == len(ids) or ids[first] > high:
                continue
        found.append((path, int(size)))
    return found


def _without_ids(
    fs: pafs.FileSystem,
    root: str,
    path: str,
    size: int,
    ids: np.ndarray,
    job: str,
    written: list[str],
) -> list[AddAction | RemoveAction]:
    """The actions that take ``ids``' rows out of one data file (none if it has none).

    The file is removed; the rows it keeps, if any, go to a new file whose name is
    appended to ``written``.
    """
    from deltalake.transaction import RemoveAction

    gone, kept = without_ids(fs, root, urllib.parse.unquote(path), ids, job, "replace")
    if gone == 0:
        return []
    now = int(time.time() * 1000)
    actions: list[AddAction | RemoveAction] = [
        RemoveAction(path=path, data_change=True, deletion_timestamp=now, size=size)
    ]
    if kept is not None:
        written.append(kept["path"])
        actions.extend(add_actions([kept]))
    return actions
