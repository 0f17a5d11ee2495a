"""The lake: Delta tables written through delta-rs, read with SQL through DuckDB.

:mod:`dicomlake.lake.delta` writes ``<lake>/instances`` and reads what incremental
runs need; :mod:`dicomlake.lake.sql` opens a DuckDB connection with the SQL views.
"""

from __future__ import annotations

from dicomlake.lake.delta import (
    CHANGED,
    NEW,
    UNCHANGED,
    UNKNOWN,
    Fingerprints,
    InstanceWriter,
    StorageOptions,
    TableWriter,
    ThumbnailWriter,
    check_lake_writable,
    conform_batch,
    delete_rows,
    instances_uri,
    open_table,
    stale_row_ids,
    table_exists,
    table_uri,
    table_version,
)
from dicomlake.lake.sql import connect, lake_summary

__all__ = [
    "CHANGED",
    "NEW",
    "UNCHANGED",
    "UNKNOWN",
    "Fingerprints",
    "InstanceWriter",
    "StorageOptions",
    "TableWriter",
    "ThumbnailWriter",
    "check_lake_writable",
    "conform_batch",
    "connect",
    "delete_rows",
    "instances_uri",
    "lake_summary",
    "open_table",
    "stale_row_ids",
    "table_exists",
    "table_uri",
    "table_version",
]
