"""The lake: Delta tables written through delta-rs, read with SQL through DuckDB.

- :mod:`~dicomlake.lake.location`: where each table lives, opening it, read errors;
- :mod:`~dicomlake.lake.tables`: the tables' schemas and keys, reading their files;
- :mod:`~dicomlake.lake.writer`: :class:`TableWriter`, the one writer of every table;
- :mod:`~dicomlake.lake.shards`: Parquet files written by workers, committed as
  add-actions;
- :mod:`~dicomlake.lake.fingerprints`: what a re-run may skip;
- :mod:`~dicomlake.lake.sync`: rows of files that are gone (``--sync``);
- :mod:`~dicomlake.lake.probe`: is the lake writable, before a run starts;
- :mod:`~dicomlake.lake.sql`: a DuckDB connection with the lake's views;
- :mod:`~dicomlake.lake.selection`: rows picked by a user's SQL, for datasets and jobs;
- :mod:`~dicomlake.lake.maintenance`: compaction, checkpoints, vacuum, table state.

Names load on first use (module ``__getattr__``): a worker process that writes a
shard never imports DuckDB, and one that parses files never imports deltalake.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomlake.lake.fingerprints import CHANGED, NEW, UNCHANGED, UNKNOWN, Fingerprints
    from dicomlake.lake.location import (
        instances_uri,
        open_table,
        table_exists,
        table_uri,
        table_version,
    )
    from dicomlake.lake.probe import check_lake_writable
    from dicomlake.lake.sql import connect, lake_summary
    from dicomlake.lake.sync import delete_instances, delete_rows, stale_row_ids
    from dicomlake.lake.writer import (
        TableWriter,
        conform_batch,
    )

_HOMES = {
    "CHANGED": "fingerprints",
    "NEW": "fingerprints",
    "UNCHANGED": "fingerprints",
    "UNKNOWN": "fingerprints",
    "Fingerprints": "fingerprints",
    "check_lake_writable": "probe",
    "connect": "sql",
    "lake_summary": "sql",
    "delete_instances": "sync",
    "delete_rows": "sync",
    "stale_row_ids": "sync",
    "instances_uri": "location",
    "open_table": "location",
    "table_exists": "location",
    "table_uri": "location",
    "table_version": "location",
    "TableWriter": "writer",
    "conform_batch": "writer",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dicomlake.lake' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dicomlake.lake.{home}"), name)


__all__ = [
    "CHANGED",
    "NEW",
    "UNCHANGED",
    "UNKNOWN",
    "Fingerprints",
    "TableWriter",
    "check_lake_writable",
    "conform_batch",
    "connect",
    "delete_instances",
    "delete_rows",
    "instances_uri",
    "lake_summary",
    "open_table",
    "stale_row_ids",
    "table_exists",
    "table_uri",
    "table_version",
]
