"""Which instances each table keyed by an instance's ``row_id`` holds rows of."""

from __future__ import annotations

from dicomlake.lake.location import (
    ACQUISITION_TABLE,
    INSTANCES_TABLE,
    THUMBNAILS_TABLE,
    open_table,
)
from dicomlake.lake.tables import arrow_dataset

#: ``instances`` and the tables whose rows hang off an instance row.
INSTANCE_TABLES = (INSTANCES_TABLE, THUMBNAILS_TABLE, ACQUISITION_TABLE)


def table_row_ids(lake: str, table: str) -> list[int]:
    """The ``row_id`` of every stored row of ``table`` (not a view's), sorted."""
    data = arrow_dataset(open_table(lake, table)).to_table(columns=["row_id"])
    return sorted(data.column("row_id").to_pylist())


def row_ids_by_table(lake: str) -> dict[str, list[int]]:
    """:func:`table_row_ids` of ``instances`` and each of its companion tables."""
    return {table: table_row_ids(lake, table) for table in INSTANCE_TABLES}
