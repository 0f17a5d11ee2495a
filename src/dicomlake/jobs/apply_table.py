"""A user's apply table: its columns grow and widen as tasks bring new ones.

The kernel types each task's columns alone (:mod:`dicomlake.kernels.apply_columns`);
here each batch is joined to the table by the same rule before it is written:

- a new column is added to the table (earlier rows read null);
- an integer column that meets fractions becomes ``double``: the table is rewritten
  once, in one commit, with the column cast (a features table is small);
- a column whose values disagree otherwise (a string where the table has numbers)
  turns the batch's rows that have such a value into error rows naming the column,
  their function columns null; the table keeps its type;
- a column with only nulls so far (or empty lists) waits until a value says its type.

Rows are written through :class:`~dicomlake.lake.writer.TableWriter`, replacing by
unit: each task's rows replace every earlier row of its units' ``row_id`` in one
transaction, so a unit never has zero or two generations of rows, whenever the run
dies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from dicomlake.kernels.apply import RESERVED, Unit, key_schema
from dicomlake.kernels.apply_columns import undecided, widen
from dicomlake.lake.location import lake_error, table_exists, table_uri
from dicomlake.lake.tables import TableSpec
from dicomlake.lake.writer import TableWriter
from dicomlake.rows import clip_error

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from dicomlake._types import StorageOptions


def table_unit(schema: pa.Schema) -> Unit:
    """The unit whose rows a table holds, from its key columns."""
    if "frame" in schema.names:
        return "frame"
    if "SeriesInstanceUID" in schema.names:
        return "series"
    return "instance"


class ApplyTable:
    """Writes an apply run's batches to ``<lake>/<name>``, evolving its schema.

    Args:
        lake: The lake folder or URI.
        name: The table (checked by the caller).
        unit: What a row is; must match the table's rows when it exists.
        storage_options: Options for object storage.
        max_rows: Rows buffered before a commit (a crash loses at most these).

    Raises:
        ValueError: The table holds rows of another unit.
        LakeError: The table exists but cannot be read.
    """

    def __init__(
        self,
        lake: str,
        name: str,
        unit: Unit,
        *,
        storage_options: StorageOptions = None,
        max_rows: int = 1000,
    ) -> None:
        self.lake = lake
        self.name = name
        self.unit = unit
        self.storage_options = storage_options
        self.max_rows = max_rows
        self.schema = key_schema(unit)
        self.writer: TableWriter | None = None
        #: Instances (units) whose earlier rows a write replaced.
        self.replaced = 0
        #: Columns the run widened from integer to double.
        self.widened: list[str] = []
        existing = self._open()
        if existing is not None:
            schema = pa.schema(existing.schema().to_arrow())
            found = table_unit(schema)
            if found != unit:
                raise ValueError(
                    f"table {name!r} holds unit={found!r} rows, not {unit!r}: use another "
                    "--table for this unit"
                )
            self.schema = schema

    def _open(self) -> DeltaTable | None:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        from dicomlake.storage.settings import delta_options

        if not table_exists(self.lake, self.name, storage_options=self.storage_options):
            return None
        try:
            return DeltaTable(
                table_uri(self.lake, self.name),
                storage_options=delta_options(self.storage_options),
            )
        except (DeltaError, OSError) as exc:
            raise lake_error("read", self.lake, exc) from exc

    def done(self) -> dict[int, tuple[Any, Any, Any]]:
        """row_id → (version, size, modification_time) of the rows the table has."""
        from dicomlake.lake.tables import arrow_dataset

        dt = self._open()
        if dt is None:
            return {}
        columns = ["row_id", "version", "size", "modification_time"]
        table = arrow_dataset(dt).to_table(columns=columns)
        ids, *rest = (table.column(c).to_pylist() for c in columns)
        return {rid: (v, s, m) for rid, v, s, m in zip(ids, *rest, strict=True)}

    # -- writing

    def write(self, batch: pa.RecordBatch, instances: Iterable[int]) -> pa.RecordBatch:
        """Write a task's rows, replacing every earlier row of ``instances``.

        Returns:
            The rows as written (type disagreements turned into error rows).

        Raises:
            LakeError: The table cannot be written.
        """
        target = list(self.schema)
        names = {f.name: i for i, f in enumerate(target)}
        widened: list[str] = []
        for field in batch.schema:
            if field.name in RESERVED:
                continue
            at = names.get(field.name)
            if at is None:
                if not undecided(field.type):
                    names[field.name] = len(target)
                    target.append(pa.field(field.name, field.type))
                continue
            joined = widen(target[at].type, field.type)
            if joined is None:
                batch = _refuse(batch, field.name, target[at].type, field.type)
            elif joined != target[at].type:
                target[at] = pa.field(field.name, joined)
                widened.append(field.name)
        schema = pa.schema(target)
        if not schema.equals(self.schema):
            self._evolve(schema, widened)
        fitted = _fit(batch, self.schema)
        self._writer().write(fitted, instances=list(instances))
        return fitted

    def _writer(self) -> TableWriter:
        if self.writer is None:
            spec = TableSpec(
                self.name,
                self.schema,
                ("row_id",),
                f"dicomlake apply: one row per {self.unit}, a user's function's columns",
            )
            self.writer = TableWriter(
                self.lake,
                self.name,
                spec=spec,
                max_rows=self.max_rows,
                storage_options=self.storage_options,
            )
        return self.writer

    def _evolve(self, schema: pa.Schema, widened: list[str]) -> None:
        """Commit what is buffered, then give the table ``schema`` (see the docstring)."""
        from deltalake import write_deltalake
        from deltalake.exceptions import DeltaError

        from dicomlake.lake.tables import WRITER_PROPERTIES, arrow_dataset

        self.close()
        dt = self._open()
        try:
            if dt is not None and widened:
                rows = arrow_dataset(dt).to_table()
                write_deltalake(
                    dt,
                    _fit(rows, schema),
                    mode="overwrite",
                    schema_mode="overwrite",
                    writer_properties=WRITER_PROPERTIES,
                )
                self.widened.extend(widened)
            elif dt is not None:
                write_deltalake(dt, schema.empty_table(), mode="append", schema_mode="merge")
        except (DeltaError, OSError, pa.ArrowException) as exc:
            raise lake_error("write", self.lake, exc) from exc
        self.schema = schema

    @property
    def commits(self) -> int:
        """Commits made by the current writer (for the crash tests' kill point)."""
        return 0 if self.writer is None else self.writer.commits

    def flush(self) -> None:
        """Commit every buffered row now.

        Raises:
            LakeError: The table cannot be written.
        """
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Commit what is buffered; a later write opens a new writer.

        Raises:
            LakeError: The table cannot be written.
        """
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            self.replaced += writer.instances_replaced


def _refuse(
    batch: pa.RecordBatch, name: str, have: pa.DataType, found: pa.DataType
) -> pa.RecordBatch:
    """``batch`` with the rows that hold a ``found`` value of ``name`` made error rows."""
    column = batch.column(name)
    bad = pc.is_valid(column)
    text = clip_error(
        f"TypeError: {name!r} is {found} here but {have} in table rows; return one type "
        "per key (integers widen to float, nothing else does)"
    )
    arrays: list[Any] = []
    for field, array in zip(batch.schema, batch.columns, strict=True):
        if field.name == "status":
            array = pc.if_else(bad, pa.scalar("error"), array)
        elif field.name == "error":
            array = pc.if_else(bad, pa.scalar(text), array)
        elif field.name not in RESERVED:
            array = pc.if_else(bad, pa.scalar(None, field.type), array)
        arrays.append(array)
    out = pa.RecordBatch.from_arrays(arrays, schema=batch.schema)
    return out.drop_columns([name])


def _fit(data: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    """``data``'s columns in ``schema``: missing ones null, others cast (safely)."""
    rows = data.num_rows
    arrays = []
    for field in schema:
        if field.name in data.schema.names:
            column = data.column(field.name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            arrays.append(column.cast(field.type) if column.type != field.type else column)
        else:
            arrays.append(pa.nulls(rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
