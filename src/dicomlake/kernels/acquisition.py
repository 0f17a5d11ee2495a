"""Rows of the ``acquisition`` table, made beside an instance's row from the same header.

Ingest's workers hold each header's top-level elements already (the native parser
hands over those :data:`~dicomlake.dicom.acquisition.TOP_LEVEL_KEYS` names with the
promoted tags), so extracting the acquisition attributes there costs a few
microseconds a file; :mod:`dicomlake.jobs.acquisition` makes the same rows from the
``meta`` column for instances ingested before the table existed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

import orjson
import pyarrow as pa

from dicomlake._types import Row
from dicomlake.dicom.acquisition import found_values
from dicomlake.schema import ACQUISITION_SCHEMA

#: The instance row's columns an ``acquisition`` row copies.
FROM_INSTANCE: Final = ("row_id", "SeriesInstanceUID", "Modality", "ingested_at")


def acquisition_row(instance: Row, header: dict[str, Any]) -> tuple[Row, list[str]]:
    """The ``acquisition`` row of an ``ok`` instance row, and its conversion warnings.

    The row holds only the columns the header has (see :func:`found_values`);
    :func:`acquisition_batch` makes the rest null.

    Args:
        instance: The instance's row (its :data:`FROM_INSTANCE` columns are copied).
        header: The header's DICOM JSON, or the part holding its top-level
            acquisition elements.
    """
    row, warnings = found_values(header)
    for name in FROM_INSTANCE:
        row[name] = instance.get(name)
    row["warnings"] = warnings or None
    return row, warnings


def acquisition_batch(rows: Sequence[Row], ingested_at: dt.datetime | None) -> pa.RecordBatch:
    """The rows in :data:`~dicomlake.schema.ACQUISITION_SCHEMA`.

    Built a row's values at a time, as the rows are sparse: column by column, each
    row's absent sixty-odd keys would cost more than its values.

    Args:
        rows: Rows made by :func:`acquisition_row`.
        ingested_at: The run's timestamp for every row, or None to keep each row's
            own (the instance row's, when made from the lake).
    """
    count = len(rows)
    columns: dict[str, list[Any]] = {}  # only those some row has: a CT batch has no MR's
    for index, row in enumerate(rows):
        for name, value in row.items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = [None] * count
            column[index] = value
    if ingested_at is not None:
        columns["ingested_at"] = [ingested_at] * count
    arrays = [
        pa.array(columns[field.name], type=field.type)
        if field.name in columns
        else pa.nulls(count, type=field.type)
        for field in ACQUISITION_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=ACQUISITION_SCHEMA)


def batch_from_meta(rows: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
    """Rows of the ``acquisition`` table for a batch of ``ok`` ``instances`` rows.

    For rows written without them (a lake made before the table, a Spark save): the
    values come from each row's ``meta``, never from the file.

    Args:
        rows: The :data:`FROM_INSTANCE` columns and ``meta`` of ``ok`` instances.

    Returns:
        The batch in :data:`~dicomlake.schema.ACQUISITION_SCHEMA`, and how many of its
        rows have warnings.

    Raises:
        orjson.JSONDecodeError: If a ``meta`` is not JSON (the lake never writes one).
    """
    made = []
    warned = 0
    instances = rows.select(list(FROM_INSTANCE))
    for instance, meta in zip(instances.to_pylist(), rows.column("meta").to_pylist(), strict=True):
        row, warnings = acquisition_row(instance, orjson.loads(meta) if meta else {})
        made.append(row)
        warned += bool(warnings)
    return acquisition_batch(made, ingested_at=None), warned


def of_saved_instances(rows: pa.RecordBatch) -> pa.RecordBatch:
    """The ``acquisition`` rows of the ``ok`` rows of an ``instances`` batch (Spark's save)."""
    import pyarrow.compute as pc

    ok = rows.filter(pc.equal(rows.column("status"), "ok"))
    return batch_from_meta(ok)[0]


__all__ = [
    "FROM_INSTANCE",
    "acquisition_batch",
    "acquisition_row",
    "batch_from_meta",
    "of_saved_instances",
]
