"""The ``acquisition`` table from ``meta``: for lakes made before ingest wrote it.

Ingest makes each instance's acquisition row in its workers, from the header it
parsed (:mod:`dicomlake.kernels.acquisition`). :func:`update_acquisition` derives the
same rows from the ``instances`` table's ``meta`` alone, never from the files, so a
lake made before the table existed gains it without reading them again (at its next
ingest, or with ``dicomlake optimize``). It is incremental: it extracts only
instances without a row, or whose ``instances`` row is newer (``ingested_at``) than
the one it was extracted from, and drops rows of instances no longer ``ok`` in the
lake, which also tidies what a crashed ingest left (see ``acquisition`` in
:mod:`dicomlake.lake.sql`). The per-modality series views (``ct_series``,
``mr_series``...) read this table.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dicomlake.errors import DicomLakeError
from dicomlake.kernels.acquisition import batch_from_meta
from dicomlake.lake.location import ACQUISITION_TABLE, table_exists
from dicomlake.lake.sql import ACQUISITION_ROWS, connect
from dicomlake.lake.writer import TableWriter
from dicomlake.schema import ACQUISITION_SCHEMA

if TYPE_CHECKING:
    from collections.abc import Iterator

    import duckdb

    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)

#: Instances read and extracted at a time (their ``meta`` is most of the memory).
BATCH_ROWS: Final = 2000

_TODO_NEW: Final = """
SELECT row_id, "SeriesInstanceUID", "Modality", ingested_at, meta
FROM instances WHERE status = 'ok'
"""

# which rows to redo, without reading ``meta``: a whole lake's would be gigabytes. The
# stored rows, not the view: a crashed ingest may have left a stale one beside the
# instance's own
_TODO_CHANGED: Final = f"""
SELECT i.row_id, i.ingested_at
FROM instances i LEFT JOIN {ACQUISITION_ROWS} a ON a.row_id = i.row_id
WHERE i.status = 'ok' AND (a.row_id IS NULL OR a.ingested_at IS DISTINCT FROM i.ingested_at)
"""

# their ``meta``: the time range lets the scan skip the row groups of older runs
_TODO_ROWS: Final = """
SELECT i.row_id, i."SeriesInstanceUID", i."Modality", i.ingested_at, i.meta
FROM instances i SEMI JOIN __dl_todo t ON i.row_id = t.row_id
WHERE i.status = 'ok' AND (i.ingested_at BETWEEN $first AND $last OR i.ingested_at IS NULL)
"""

_GONE: Final = f"""
SELECT a.row_id FROM {ACQUISITION_ROWS} a
ANTI JOIN (SELECT row_id FROM instances WHERE status = 'ok') i ON a.row_id = i.row_id
"""


@dataclass
class AcquisitionSummary:
    """What :func:`update_acquisition` did."""

    extracted: int = 0  # rows written (new or redone)
    removed: int = 0  # rows of instances gone from the lake
    warnings: int = 0  # rows with a value that did not convert
    seconds: float = 0.0


def update_acquisition(lake: str, storage_options: StorageOptions = None) -> AcquisitionSummary:
    """Bring the lake's ``acquisition`` table up to date with its ``instances``.

    Args:
        lake: Lake folder or URI.
        storage_options: Options for object storage.

    Returns:
        Rows extracted and removed, and rows with warnings.

    Raises:
        TableNotFound: The lake has no ``instances`` table.
        LakeError: A table cannot be read or written.
    """
    started = time.monotonic()
    summary = AcquisitionSummary()
    exists = table_exists(lake, ACQUISITION_TABLE, storage_options=storage_options)
    # the writer notes the table's files before the lake is read (see TableWriter)
    with (
        TableWriter(
            lake, ACQUISITION_TABLE, max_rows=50_000, storage_options=storage_options
        ) as writer,
        connect(lake, storage_options=storage_options) as con,
    ):
        if exists:
            gone = _row_ids(con, _GONE)
            if len(gone):
                writer.write(ACQUISITION_SCHEMA.empty_table(), instances=gone.tolist())
                summary.removed = len(gone)
        for rows in _todo(con, exists=exists):
            batch, warned = batch_from_meta(rows)
            if exists:  # every row of the instance gives way: a crashed ingest may leave two
                writer.write(batch, instances=batch.column("row_id").to_pylist())
            else:
                writer.write(batch)
            summary.extracted += batch.num_rows
            summary.warnings += warned
    summary.seconds = time.monotonic() - started
    if summary.extracted or summary.removed:
        log.info(
            "acquisition: %d rows extracted, %d removed in %.1f s",
            summary.extracted,
            summary.removed,
            summary.seconds,
        )
    return summary


def _todo(con: duckdb.DuckDBPyConnection, *, exists: bool) -> Iterator[pa.RecordBatch]:
    """The ``instances`` rows to extract, in batches of :data:`BATCH_ROWS`."""
    if not exists:
        yield from con.sql(_TODO_NEW).to_arrow_reader(BATCH_ROWS)
        return
    todo = con.sql(_TODO_CHANGED).to_arrow_table()
    if not todo.num_rows:
        return
    stamps = todo.column("ingested_at")
    first, last = pc.min(stamps).as_py(), pc.max(stamps).as_py()
    con.register("__dl_todo", todo.select(["row_id"]))
    try:
        params = {"first": first, "last": last}
        yield from con.sql(_TODO_ROWS, params=params).to_arrow_reader(BATCH_ROWS)
    finally:
        con.unregister("__dl_todo")


def _row_ids(con: duckdb.DuckDBPyConnection, sql: str) -> np.ndarray:
    table = con.sql(sql).to_arrow_table()
    ids: np.ndarray = table.column("row_id").to_numpy().astype(np.int64, copy=False)
    return ids


def update_or_say_why(lake: str, storage_options: StorageOptions = None) -> tuple[int, str]:
    """:func:`update_acquisition`: rows extracted, and why not ('' when done).

    For a process of its own (``run_apart``): a LakeError does not pickle.
    """
    try:
        return update_acquisition(lake, storage_options=storage_options).extracted, ""
    except DicomLakeError as exc:
        return 0, str(exc)
