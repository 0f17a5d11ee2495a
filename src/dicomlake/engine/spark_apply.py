"""Spark's side of ``dicomlake.apply``: the same :class:`ApplyKernel`, in Arrow UDFs.

Frame and instance units run in ``mapInArrow`` over a catalog or meta DataFrame, one
file per row, so they chain with :class:`~dicomlake.spark.dicom.DicomMetaExtractor`
and a save runs both in one task. Series units need every slice of a series in one
place: the meta rows are grouped by *Series Instance UID* and each group becomes one
unit in ``applyInArrow``, its geometry checked by the same code as the lake's
(:func:`~dicomlake.jobs.volumes.group_slices`).

A unit past its time (``unit_timeout``) is an error row, as in the local engine; here
the executor's Python worker interrupts the unit with a timer signal instead of
stopping a worker process, so a call stuck inside C code ends only when it returns.

One difference from the local engine cannot be hidden: a Spark DataFrame's schema is
fixed before any row is made, while the local job grows its table as the function
returns new keys. The function's columns are therefore declared up front (given, or
inferred on the driver from the first units, see :func:`infer_columns`), and a value
that does not fit them (a new key, a string in a number column, a fraction in an
integer column) makes its row an error row, as a disagreement inside one local task
does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from dicomlake.catalog import FileRef
from dicomlake.kernels.apply import (
    RESERVED,
    ApplyKernel,
    ApplyOptions,
    InstanceSource,
    SeriesSource,
    Unit,
    key_schema,
    series_key,
    series_source,
)
from dicomlake.kernels.apply_columns import undecided, widen
from dicomlake.kernels.base import timeout_reason
from dicomlake.rows import clip_error

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from dicomlake._types import StorageOptions
    from dicomlake.engine.spark import ArrowMapper

#: The table name the kernel's batches come under (Spark saves them under any name).
_TABLE: Final = "apply"

#: Meta columns a series unit's geometry is built from (the lake's slice query).
SLICE_COLUMNS: Final = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "path",
    "size",
    "modification_time",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "meta",
)


def output_schema(unit: Unit, columns: pa.Schema) -> pa.Schema:
    """The DataFrame's schema: the unit's key columns, then the function's, all nullable."""
    keys = key_schema(unit)
    fields = [f.with_nullable(True) for f in keys]
    fields += [f.with_nullable(True) for f in columns if f.name not in keys.names]
    return pa.schema(fields)


def fit(batch: pa.RecordBatch, out: pa.Schema) -> pa.RecordBatch:
    """A kernel batch in the declared schema ``out``; rows that do not fit are errors.

    A column the batch lacks is null; a column whose type widens into the declared
    one (null, integer into double) is cast. A row with a value of another type, or
    with a key ``out`` lacks, becomes an error row (``TypeError``) with its function
    values null, as a disagreement within one local task does.
    """
    n = batch.num_rows
    statuses: list[Any] = batch.column("status").to_pylist()
    errors: list[Any] = batch.column("error").to_pylist()
    bad: dict[int, str] = {}
    columns: dict[str, pa.Array] = {}
    for name in batch.schema.names:
        if out.get_field_index(name) >= 0:
            continue
        for i, value in enumerate(batch.column(name).to_pylist()):
            if value is not None and i not in bad:
                bad[i] = (
                    f"TypeError: the function returned {name!r}, a column the DataFrame's "
                    "schema lacks (inferred from the first units): declare it in "
                    "DicomApply(columns=...)"
                )
    for field in out:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns[field.name] = pa.nulls(n, field.type)
            continue
        column = batch.column(index)
        if column.type == field.type or widen(field.type, column.type) == field.type:
            columns[field.name] = column.cast(field.type)
            continue
        for i, value in enumerate(column.to_pylist()):
            if value is not None and i not in bad:
                bad[i] = (
                    f"TypeError: {field.name!r} is {column.type} here but {field.type} in "
                    "the DataFrame's schema; return one type per key (integers widen to "
                    "float, nothing else does) or declare it in DicomApply(columns=...)"
                )
        columns[field.name] = pa.nulls(n, field.type)
    if bad:
        import pyarrow.compute as pc

        keep = pa.array([i not in bad for i in range(n)])
        for name in set(out.names) - RESERVED:
            columns[name] = pc.if_else(keep, columns[name], pa.scalar(None, out.field(name).type))
        for i, text in bad.items():
            statuses[i], errors[i] = "error", clip_error(text)
        columns["status"] = pa.array(statuses, pa.string())
        columns["error"] = pa.array(errors, pa.string())
    return pa.RecordBatch.from_arrays([columns[f.name] for f in out], schema=out)


# --------------------------------------------------------------------------- frames, instances


def _values(batch: pa.RecordBatch, name: str) -> list[Any] | None:
    index = batch.schema.get_field_index(name)
    return batch.column(index).to_pylist() if index >= 0 else None


def instance_units(batch: pa.RecordBatch) -> tuple[list[FileRef], dict[str, InstanceSource]]:
    """The file references of a batch's units, and what its meta columns say of them.

    A meta batch (from :class:`~dicomlake.spark.dicom.DicomMetaExtractor`) keeps only
    ``ok`` rows with pixel data, as the lake's selection does, and gives each file's
    frame count and UID; a catalog batch gives bare files, whose headers the kernel
    reads (a file that is not DICOM or has no pixels is then an error row).
    """
    from dicomlake.engine.spark import refs_from_batch

    refs = refs_from_batch(batch)
    n = len(refs)
    statuses = _values(batch, "status") or ["ok"] * n
    pixels = _values(batch, "has_pixel_data") or [True] * n
    frames = _values(batch, "NumberOfFrames")
    uids = _values(batch, "SOPInstanceUID")
    kept: list[FileRef] = []
    sources: dict[str, InstanceSource] = {}
    for i, ref in enumerate(refs):
        if statuses[i] != "ok" or not pixels[i] or ref.path in sources:
            continue
        kept.append(ref)
        if frames is not None:
            count = max(int(frames[i] or 1), 1)
            uid = uids[i] if uids is not None else None
            sources[ref.path] = InstanceSource(ref.path, uid, count, ref.size, ref.mtime)
    return kept, sources


class UnitTimeout(BaseException):
    """A unit ran past ``unit_timeout``.

    A BaseException, as KeyboardInterrupt is: the kernel turns a function's errors
    into error rows, and must not take the timer's for one of them.
    """


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`UnitTimeout` in the body after ``seconds`` (None: no limit).

    A SIGALRM timer, so only in a process's main thread, where Spark's Python workers
    run their functions; in another thread the body runs without a limit.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise UnitTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_units(
    options: ApplyOptions,
    refs: list[FileRef],
    sources: Mapping[str, InstanceSource | SeriesSource],
    *,
    storage_options: StorageOptions,
    created_at: dt.datetime,
    unit_timeout: float | None = None,
) -> pa.RecordBatch:
    """The kernel's rows of ``refs``; one past ``unit_timeout`` gives its error row(s)."""
    kernel = ApplyKernel(
        options,
        table=_TABLE,
        sources=sources,
        storage_options=storage_options,
        created_at=created_at,
    )
    rows = []
    for ref in refs:
        try:
            with time_limit(unit_timeout):
                rows.append(kernel.row(ref))
        except UnitTimeout:
            assert unit_timeout is not None  # only a limit raises it
            rows.append(kernel.error_row(ref, timeout_reason(unit_timeout)))
    return kernel.batch(rows)[_TABLE]


def units_mapper(
    options: ApplyOptions,
    out: pa.Schema,
    *,
    storage_options: StorageOptions,
    created_at: dt.datetime,
    unit_timeout: float | None = None,
) -> ArrowMapper:
    """The ``mapInArrow`` function of frame and instance units: rows in ``out``.

    Args:
        options: The kernel's options (function, unit, version, window, size).
        out: :func:`output_schema` of the unit and the function's columns.
        storage_options: Settings to read object storage with (pickled to tasks).
        created_at: The run's ``created_at``, stamped on every row.
        unit_timeout: Seconds one file's units may take; None: no limit.

    Returns:
        A function from catalog or meta batches to batches of the apply table.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        warnings.simplefilter("ignore")  # pydicom warns on odd values; rows say it
        for batch in batches:
            refs, sources = instance_units(batch)
            if refs:
                made = _run_units(
                    options,
                    refs,
                    sources,
                    storage_options=storage_options,
                    created_at=created_at,
                    unit_timeout=unit_timeout,
                )
                yield fit(made, out)

    return run


# --------------------------------------------------------------------------- series


def run_series(
    group: pa.Table,
    options: ApplyOptions,
    *,
    storage_options: StorageOptions,
    created_at: dt.datetime,
    unit_timeout: float | None = None,
) -> pa.RecordBatch:
    """One row per series among ``group``'s slice rows (:data:`SLICE_COLUMNS`)."""
    from dicomlake.jobs.volumes import group_slices

    sources = {
        series_key(uid): series_source(uid, s.files, s.geometry())
        for uid, s in group_slices(group).items()
    }
    refs = [FileRef(key, "", s.size, s.mtime) for key, s in sources.items()]
    return _run_units(
        options,
        refs,
        sources,
        storage_options=storage_options,
        created_at=created_at,
        unit_timeout=unit_timeout,
    )


def series_function(
    options: ApplyOptions,
    out: pa.Schema,
    *,
    storage_options: StorageOptions,
    created_at: dt.datetime,
    unit_timeout: float | None = None,
) -> Any:
    """The ``applyInArrow`` function of series units: a series' slice rows to its row."""

    def run(group: pa.Table) -> pa.Table:
        warnings.simplefilter("ignore")
        made = run_series(
            group,
            options,
            storage_options=storage_options,
            created_at=created_at,
            unit_timeout=unit_timeout,
        )
        return pa.Table.from_batches([fit(made, out)], schema=out)

    return run


def slice_rows(df: DataFrame) -> DataFrame:
    """The ``ok`` rows with pixel data of a meta DataFrame, in the slice query's columns.

    ``meta`` is kept only for multi-frame instances (their per-frame geometry), so the
    shuffle that groups series carries little more than the lake's typed columns.
    """
    from pyspark.sql import functions as F

    picked = df.where(
        (F.col("status") == F.lit("ok"))
        & F.col("has_pixel_data")
        & F.col("SeriesInstanceUID").isNotNull()
    )
    multi = F.coalesce(F.col("NumberOfFrames"), F.lit(1)) > F.lit(1)
    columns = [
        F.when(multi, F.col("meta")).alias("meta") if c == "meta" else F.col(c)
        for c in SLICE_COLUMNS
    ]
    return picked.select(*columns)


# --------------------------------------------------------------------------- columns


def infer_columns(
    df: DataFrame,
    options: ApplyOptions,
    *,
    sample: int,
    storage_options: StorageOptions,
) -> pa.Schema:
    """The function's columns, from running it on the driver over the first units.

    Units are tried in the DataFrame's order (series: the first ``sample`` series)
    until one gives an ok row; the types of every ok row among them are joined as the
    local job joins them.

    Args:
        df: A catalog or meta DataFrame (frame, instance units), or the output of
            :func:`slice_rows` (series units).
        options: The kernel's options.
        sample: Most units (files, or series) to try.
        storage_options: Settings to read object storage with.

    Returns:
        The function's columns, in the order their keys first appear.

    Raises:
        ValueError: No tried unit gave an ok row, or a column held only nulls: its
            type cannot be known, so it must be declared.
    """
    import pyarrow.compute as pc

    created_at = dt.datetime.now(dt.UTC)
    if options.unit == "series":
        from pyspark.sql import functions as F

        uids = [r[0] for r in df.select("SeriesInstanceUID").distinct().limit(sample).collect()]
        rows = df.where(F.col("SeriesInstanceUID").isin(uids)).toArrow()
        made = run_series(rows, options, storage_options=storage_options, created_at=created_at)
    else:
        batches = df.limit(sample).toArrow().to_batches()
        refs: list[FileRef] = []
        sources: dict[str, InstanceSource | SeriesSource] = {}
        for batch in batches:
            found, known = instance_units(batch)
            refs.extend(found)
            sources.update(known)
        made = _run_units(
            options, refs, sources, storage_options=storage_options, created_at=created_at
        )
    keys = key_schema(options.unit)
    ok = made.filter(pc.equal(made.column("status"), "ok"))
    columns = pa.schema([f for f in ok.schema if f.name not in keys.names])
    errors = [e for e in made.column("error").to_pylist() if e]
    if ok.num_rows == 0:
        first = f": the first says {errors[0]!r}" if errors else ""
        raise ValueError(
            f"cannot infer the function's columns: none of the {made.num_rows} units tried "
            f"on the driver gave an ok row{first}; declare them with "
            "DicomApply(columns={'name': 'double', ...}) or raise sample="
        )
    unknown = [f.name for f in columns if undecided(f.type)]
    if unknown:
        raise ValueError(
            f"cannot infer the type of {unknown}: the function returned only None (or "
            f"empty lists) for them on the {ok.num_rows} ok units tried; declare them with "
            "DicomApply(columns={'name': 'double', ...})"
        )
    return columns


def declared_columns(columns: pa.Schema | Mapping[str, pa.DataType | str]) -> pa.Schema:
    """``columns`` as a schema: Arrow types, or their names (``'double'``, ``'string'``).

    Raises:
        ValueError: A type name Arrow does not know, or a key column's name.
    """
    if isinstance(columns, pa.Schema):
        fields = list(columns)
    else:
        fields = []
        for name, kind in columns.items():
            if isinstance(kind, str):
                try:
                    kind = pa.type_for_alias(kind)
                except ValueError:
                    raise ValueError(
                        f"column {name!r}: {kind!r} is not an Arrow type name (use 'double', "
                        "'int64', 'string', 'bool', 'binary', or a pyarrow type such as "
                        "pa.list_(pa.float64()))"
                    ) from None
            fields.append(pa.field(name, kind))
    taken = [f.name for f in fields if f.name in RESERVED]
    if taken:
        raise ValueError(f"{taken} name key columns of the apply table; rename them")
    return pa.schema(fields)
