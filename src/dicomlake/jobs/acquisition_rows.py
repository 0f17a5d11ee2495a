"""Writing the ``acquisition`` rows that ingest and the store make beside instance rows.

Both buffer them in a writer of their own that commits only when the ``instances``
writer is about to (its ``before_commit``), so an instance row is never committed
before its acquisition row; the ``acquisition`` view hides what a crash between the
two commits leaves (see :mod:`dicomlake.lake.sql`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomlake.lake.location import ACQUISITION_TABLE, INSTANCES_TABLE
from dicomlake.lake.writer import TableWriter

if TYPE_CHECKING:
    from dicomlake._types import Batches, StorageOptions


def acquisition_writer(lake: str, storage_options: StorageOptions = None) -> TableWriter:
    """The writer of the ``acquisition`` rows, for the instances writer's ``before_commit``.

    It never commits on its own (no row or time bound). It keeps rows another writer
    committed first (``dedupe=False``): the instances writer decides whose row wins,
    and the view shows that run's acquisition row.
    """
    return TableWriter(
        lake,
        ACQUISITION_TABLE,
        max_rows=1 << 62,
        max_seconds=float("inf"),
        dedupe=False,
        storage_options=storage_options,
    )


def write_acquisition(writer: TableWriter, out: Batches, *, replace: bool) -> None:
    """Buffer the ``acquisition`` rows of a kernel's batches, if it made any.

    Rows that replace earlier ones replace every row of their instances (those of the
    ``instances`` batch beside them): a file that is no longer ``ok`` keeps none.
    """
    batch = out.get(ACQUISITION_TABLE)
    if batch is None:
        return
    if replace:
        writer.write(batch, instances=out[INSTANCES_TABLE].column("row_id").to_pylist())
    else:
        writer.write(batch)
