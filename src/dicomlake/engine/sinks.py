"""Sinks: what happens to a task's batches in the worker, before they travel back.

Without a sink the batches go back to the coordinator whole. A
:class:`ShardSink` writes the rows of new files as one Parquet file (a shard) in the
table's folder, from the worker, and sends back only the file's add-action and the
columns the coordinator counts; the coordinator commits add-actions of many shards in
one Delta transaction (see :meth:`dicomlake.lake.writer.TableWriter.add_shards`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from dicomlake.killpoints import kill_point
from dicomlake.rows import error_text

if TYPE_CHECKING:
    from dicomlake._types import Batches, StorageOptions

log = logging.getLogger(__name__)

#: The key of the add-actions of the shards a sink wrote, in what it sends back.
SHARDS: Final = "shards"


class Sink(Protocol):
    """Takes a task's batches in the worker; returns what goes back to the coordinator."""

    def ship(self, out: Batches, *, replace: bool) -> Batches:
        """Store what it can of ``out``; ``replace``: the rows replace existing ones."""
        ...


@dataclass(frozen=True, slots=True)
class ShardSink:
    """Rows of new files written by the worker as a shard of ``table_uri`` (picklable).

    Args:
        table_uri: The table's folder or URI (a local folder must exist).
        job_id: Marks this run's files (see :func:`dicomlake.lake.shards.shard_name`).
        table: The key of the batches it writes.
        counted: The columns sent back in their place, for the coordinator's counts.
        storage_options: Settings for an object-storage table.
    """

    table_uri: str
    job_id: str
    table: str = "instances"
    counted: tuple[str, ...] = ("status", "error", "parser")
    storage_options: StorageOptions = field(default=None)

    def ship(self, out: Batches, *, replace: bool) -> Batches:
        """Write ``out[table]`` as a shard unless its rows replace others (merged instead).

        A shard that cannot be written goes back whole: the coordinator then writes
        it itself, or says why not.
        """
        batch = out.get(self.table)
        if batch is None or replace or not batch.num_rows:
            return out
        import pyarrow as pa

        from dicomlake.lake.shards import ADD_ACTION_SCHEMA, shard_name, write_shard

        try:
            action = write_shard(
                self.table_uri,
                pa.Table.from_batches([batch]),
                shard_name(self.job_id, f"w{os.getpid()}"),
                storage_options=self.storage_options,
            )
        except Exception as exc:  # the coordinator's own write will say what is wrong
            log.warning("could not write a shard to %s (%s)", self.table_uri, error_text(exc))
            return out
        kill_point("shard")
        shards = pa.RecordBatch.from_pylist([action], schema=ADD_ACTION_SCHEMA)
        return {**out, self.table: batch.select(list(self.counted)), SHARDS: shards}
