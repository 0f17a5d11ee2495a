"""The Spark engine: the same kernels as the local engine, run inside ``mapInArrow``.

Everything here is plain pyarrow plus the kernels; pyspark is imported only inside the
functions that need a task context, so this module imports without Spark. Three parts:

- :func:`instances_mapper` and :func:`thumbnails_mapper` build the functions given to
  ``DataFrame.mapInArrow``: each turns a partition's Arrow batches into file references,
  runs :class:`~dicomlake.kernels.instances.InstancesKernel` (or
  :func:`~dicomlake.kernels.thumbnails.thumbnail_rows`) on them and returns the input
  columns with the kernel's columns added;
- :func:`parquet_writer` builds the executors' side of a Delta write: each task writes
  its rows to one Parquet file in the table's folder and returns that file's add-action;
- :func:`chain` marks a transformer's output DataFrame with its Arrow stages, so that
  :func:`save_dataframe` runs them in the writing task itself: file references go in,
  add-actions come out, and the parsed rows never cross into the JVM (one Python pass,
  as the local engine's workers write shards);
- :func:`commit` is the driver's side: it commits the add-actions of the successful
  tasks in one Delta transaction through delta-rs, then deletes the files the job wrote
  that are not in the log (failed or retried task attempts). In ``replace`` mode the
  same transaction takes away every earlier row of the saved rows' ``row_id``
  (:func:`~dicomlake.lake.shards.replace_rows`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.catalog import FileRef
from dicomlake.errors import LakeError
from dicomlake.lake.shards import (
    ADD_ACTION_SCHEMA,
    CommitMode,
    add_action,
    check_replaceable,
    commit_shards,
    filesystem,
    new_job_id,
    remove_orphans,
    row_ids,
    write_shard,
)
from dicomlake.schema import INSTANCES_SCHEMA
from dicomlake.storage.locations import local_path

if TYPE_CHECKING:
    import numpy as np
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

    from dicomlake.kernels.instances import InstancesKernel
    from dicomlake.kernels.thumbnails import ThumbnailOptions

log = logging.getLogger(__name__)

ArrowMapper = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

#: Columns of a catalog DataFrame that a file reference is built from, with the pixels
#: names accepted as fallbacks (a DataFrame from ``dbx.pixels`` works too).
_SIZE_COLUMNS: Final = ("size", "length")
_MTIME_COLUMNS: Final = ("modification_time", "modificationTime")

#: ``thumbnail`` column: Spark's image schema (``pyspark.ml.image.ImageSchema``), as pixels.
THUMBNAIL_TYPE: Final = pa.struct(
    [
        pa.field("origin", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("nChannels", pa.int32()),
        pa.field("mode", pa.int32()),
        pa.field("data", pa.binary()),
    ]
)
#: OpenCV type codes of Spark's image schema: CV_8UC1 and CV_8UC3.
OPENCV_MODES: Final = {"L": (0, 1), "RGB": (16, 3)}

# --------------------------------------------------------------------------- helpers


def require_pyspark() -> Any:
    """Import and return :mod:`pyspark`.

    Raises:
        ImportError: pyspark (with pandas, which ``mapInArrow`` needs) is not installed;
            the message names the extra to install.
    """
    try:
        import pandas  # noqa: F401  (pyspark's mapInArrow needs it)
        import pyspark
    except ImportError as exc:
        raise ImportError(
            f"dicomlake's Spark engine needs pyspark with pandas ({exc.name} is missing): "
            "pip install 'dicomlake[spark]'"
        ) from exc
    return pyspark


def to_spark(schema: pa.Schema) -> StructType:
    """The Spark schema of an Arrow schema (every field nullable).

    Raises:
        ImportError: pyspark is not installed.
    """
    require_pyspark()
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema, prefer_timestamp_ntz=False)


def to_arrow(schema: StructType) -> pa.Schema:
    """The Arrow schema of a Spark schema (timestamps in UTC).

    Raises:
        ImportError: pyspark is not installed.
    """
    require_pyspark()
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


def nullable(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every top-level field nullable (Spark declares them so)."""
    return pa.schema([field.with_nullable(True) for field in schema])


def _column(batch: pa.RecordBatch, names: Sequence[str]) -> list[Any] | None:
    for name in names:
        index = batch.schema.get_field_index(name)
        if index >= 0:
            values: list[Any] = batch.column(index).to_pylist()
            return values
    return None


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


def refs_from_batch(batch: pa.RecordBatch) -> list[FileRef]:
    """File references of a catalog batch (``path``; sizes, times, relative paths if any).

    Args:
        batch: Rows with a ``path`` column, and optionally ``relative_path``,
            ``size`` (or pixels' ``length``) and ``modification_time`` (or
            ``modificationTime``).

    Returns:
        One reference per row, in order.

    Raises:
        ValueError: If the batch has no ``path`` column.
    """
    paths = _column(batch, ("path",))
    if paths is None:
        raise ValueError("the DataFrame has no 'path' column: make it with Catalog.catalog()")
    n = len(paths)
    relative = _column(batch, ("relative_path",)) or [None] * n
    sizes = _column(batch, _SIZE_COLUMNS) or [None] * n
    mtimes = _column(batch, _MTIME_COLUMNS) or [None] * n
    return [
        FileRef(
            path=path,
            relative_path=rel if rel is not None else posixpath.basename(path),
            size=size,
            mtime=_utc(mtime),
        )
        for path, rel, size, mtime in zip(paths, relative, sizes, mtimes, strict=True)
    ]


def merge_schema(input_schema: pa.Schema, added: pa.Schema) -> pa.Schema:
    """The input's columns (those ``added`` also has are replaced in place), then the rest.

    Args:
        input_schema: Schema of the batches going in.
        added: Schema of the columns a kernel produces.

    Returns:
        The schema of the batches coming out, every field nullable.
    """
    fields = [
        added.field(f.name) if added.get_field_index(f.name) >= 0 else f for f in input_schema
    ]
    have = {f.name for f in input_schema}
    fields += [f for f in added if f.name not in have]
    return nullable(pa.schema(fields))


def _combine(batch: pa.RecordBatch, added: pa.RecordBatch, out: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for field in out:
        index = added.schema.get_field_index(field.name)
        column = added.column(index) if index >= 0 else batch.column(field.name)
        arrays.append(column.cast(field.type) if column.type != field.type else column)
    return pa.RecordBatch.from_arrays(arrays, schema=out)


# --------------------------------------------------------------------------- mappers


def instances_mapper(kernel: InstancesKernel, out_schema: pa.Schema) -> ArrowMapper:
    """The ``mapInArrow`` function that runs ``kernel`` on each file of a partition.

    Args:
        kernel: The instances kernel, options bound (picklable).
        out_schema: ``merge_schema(input schema, INSTANCES_SCHEMA)``.

    Returns:
        A function from input batches to output batches: every input column kept,
        the ``instances`` columns (``meta``, the typed tags, ``status``, ...) added.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import warnings

        warnings.simplefilter("ignore")  # pydicom warns on odd values; rows say it
        for batch in batches:
            rows = [kernel.row(ref) for ref in refs_from_batch(batch)]
            added = kernel.batch(rows)["instances"]
            yield _combine(batch, added, out_schema)

    return run


def _image_struct(row: dict[str, Any]) -> dict[str, Any] | None:
    """A row of :func:`~dicomlake.kernels.thumbnails.thumbnail_rows` as a Spark image struct."""
    if row.get("status") != "ok" or row.get("data") is None:
        return None
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(row["data"])) as image:
        pixels = np.asarray(image.convert(row["mode"]))
    mode, channels = OPENCV_MODES[row["mode"]]
    if channels == 3:
        pixels = pixels[:, :, ::-1]  # OpenCV order: BGR
    return {
        "origin": row["path"],
        "height": int(pixels.shape[0]),
        "width": int(pixels.shape[1]),
        "nChannels": channels,
        "mode": mode,
        "data": np.ascontiguousarray(pixels).tobytes(),
    }


def thumbnails_mapper(
    options: ThumbnailOptions,
    out_schema: pa.Schema,
    *,
    storage_options: StorageOptions = None,
) -> ArrowMapper:
    """The ``mapInArrow`` function that draws one thumbnail per row with pixel data.

    Frames go through the same display pipeline as ``dicomlake ingest --thumbnails``
    (:func:`dicomlake.kernels.thumbnails.thumbnail_rows`); the first frame drawn becomes the row's
    ``thumbnail``, a Spark image struct (raw bytes, row-major, BGR for colour). Rows
    without pixel data, or whose frame cannot be drawn, get a null ``thumbnail``.

    Args:
        options: Size and frame choice.
        out_schema: The input schema plus ``thumbnail``.
        storage_options: fsspec options for object-storage sources.

    Returns:
        A function from input batches to output batches.
    """
    from dicomlake.catalog import open_ref
    from dicomlake.kernels.thumbnails import thumbnail_rows
    from dicomlake.rows import row_id

    def one(ref: FileRef, has_pixels: bool, status: str, frames: int | None) -> Any:
        if not has_pixels or status != "ok":
            return None
        try:
            with open_ref(ref, storage_options=storage_options) as fp:
                rows = thumbnail_rows(
                    fp,
                    path=ref.path,
                    instance_id=row_id(ref.path),
                    sop_instance_uid=None,
                    frames=frames or 1,
                    options=options,
                )
        except Exception:  # an unreadable file: no thumbnail, the row stays
            return None
        return _image_struct(rows[0]) if rows else None

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import warnings

        warnings.simplefilter("ignore")
        for batch in batches:
            refs = refs_from_batch(batch)
            n = len(refs)  # each column read once per batch, not once per row
            flags = _column(batch, ("has_pixel_data",)) or [True] * n
            statuses = _column(batch, ("status",)) or ["ok"] * n
            frames = _column(batch, ("NumberOfFrames",)) or [None] * n
            images = [
                one(ref, *row) for ref, *row in zip(refs, flags, statuses, frames, strict=True)
            ]
            added = pa.RecordBatch.from_arrays(
                [pa.array(images, type=THUMBNAIL_TYPE)], names=["thumbnail"]
            )
            yield _combine(batch, added, out_schema)

    return run


# --------------------------------------------------------------------------- chains

#: The attribute of a DataFrame that holds its :class:`Chain`.
_CHAIN_ATTRIBUTE: Final = "_dicomlake_chain"


@dataclass(frozen=True, slots=True)
class Chain:
    """How a transformer's output DataFrame was made: ``source`` through Arrow ``stages``.

    The DataFrame it marks is ``source.mapInArrow(stages[0]).mapInArrow(stages[1])...``;
    :func:`save_dataframe` runs the stages and the Parquet write in one task instead,
    so that each row is made, written and dropped in the Python worker.
    """

    source: DataFrame
    stages: tuple[ArrowMapper, ...]


def chain_of(df: DataFrame) -> Chain | None:
    """The :class:`Chain` that made ``df``, or None for any other DataFrame."""
    found = getattr(df, "__dict__", {}).get(_CHAIN_ATTRIBUTE)
    return found if isinstance(found, Chain) else None


def chain(df: DataFrame, stage: ArrowMapper, schema: pa.Schema) -> DataFrame:
    """``df.mapInArrow(stage, schema)``, marked so that a save can run ``stage`` itself.

    A chain grows while each step's input is the previous step's output; any other
    DataFrame operation in between starts none (the result is an ordinary DataFrame,
    saved through its rows).

    Args:
        df: The input DataFrame.
        stage: A ``mapInArrow`` function whose output batches are in ``schema``.
        schema: The Arrow schema of the output.

    Returns:
        The output DataFrame, the same as ``df.mapInArrow`` gives.
    """
    out = df.mapInArrow(stage, to_spark(schema))
    before = chain_of(df)
    marked = (
        Chain(df, (stage,)) if before is None else Chain(before.source, (*before.stages, stage))
    )
    with contextlib.suppress(AttributeError, TypeError):  # a DataFrame without __dict__
        out.__dict__[_CHAIN_ATTRIBUTE] = marked
    return out


def _stages_then(stages: Sequence[ArrowMapper]) -> ArrowMapper:
    """One function that runs ``stages`` one after the other on a task's batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for stage in stages:
            batches = stage(batches)
        return batches

    return run


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch``'s columns, by name, cast to ``schema`` (the table's schema).

    Raises:
        KeyError: ``batch`` lacks a column of ``schema``.
    """
    arrays = []
    for field in schema:
        column = batch.column(field.name)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Companion:
    """A second table written from the same rows, in the same task (picklable).

    Its rows are made from each batch written to the main table (``rows``, a
    module-level function); :func:`save_dataframe` commits them just before the main
    table's (``acquisition`` before ``instances``).
    """

    name: str
    table_uri: str
    schema: pa.Schema
    rows: Callable[[pa.RecordBatch], pa.RecordBatch]


#: What a task returns when it also wrote a companion: each file's add-action and table.
TABLED_ACTIONS: Final = ADD_ACTION_SCHEMA.append(pa.field("table", pa.string()))


def parquet_writer(
    table_uri: str,
    schema: pa.Schema,
    job_id: str,
    *,
    stages: Sequence[ArrowMapper] = (),
    task_hook: ArrowMapper | None = None,
    storage_options: StorageOptions = None,
    companion: Companion | None = None,
) -> ArrowMapper:
    """The ``mapInArrow`` function that writes a partition as one Parquet file.

    The file is named ``part-<partition>-<job_id>-a<attempt>-<random>.zstd.parquet`` so
    that no two task attempts ever share a name and :func:`commit` can find the files
    of this job that did not make it into the log.

    Args:
        table_uri: The Delta table's folder or URI.
        schema: The table's Arrow schema; batches are cast to it (columns by name).
        job_id: Marks every file of this write job.
        stages: ``mapInArrow`` functions run first, in the same task, on the input
            batches (a :class:`Chain`'s): their rows go to the file without a trip
            through the JVM.
        task_hook: Applied to the batches on their way into the file (after
            ``stages``), in the writer's process: a seam for tests that kill a task
            attempt midway.
        storage_options: Credentials and endpoint for an object-storage table (a
            :class:`~dicomlake.storage.StorageConfig` or dict, pickled to the tasks).
        companion: Also write its rows, made from the same batches, as a file of
            its table.

    Returns:
        A function from a partition's batches to one row in
        :data:`ADD_ACTION_SCHEMA` (none for an empty partition); with a companion,
        rows in :data:`TABLED_ACTIONS`, the companion's file too.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId() if context else 0
        attempt = context.attemptNumber() if context else 0
        name = f"part-{partition:05d}-{job_id}-a{attempt}-{uuid.uuid4().hex[:8]}.zstd.parquet"
        fs, root = filesystem(table_uri, storage_options)
        target = f"{root.rstrip('/')}/{name}"
        collected: list[pa.RecordBatch] = []
        made: list[pa.RecordBatch] = []  # the companion's rows
        writer: pq.ParquetWriter | None = None
        batches = _stages_then(stages)(batches)
        if task_hook is not None:
            batches = task_hook(batches)
        try:
            for batch in batches:
                batch = conform(batch, schema)
                if writer is None:
                    writer = pq.ParquetWriter(
                        target, schema, filesystem=fs, compression="zstd", compression_level=3
                    )
                writer.write_batch(batch)
                collected.append(batch)
                if companion is not None:
                    made.append(companion.rows(batch))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return
        table = pa.Table.from_batches(collected, schema=schema)
        action = add_action(fs, target, name, table)
        if companion is None:
            yield pa.RecordBatch.from_pylist([action], schema=ADD_ACTION_SCHEMA)
            return
        actions = [{**action, "table": None}]
        rows = pa.Table.from_batches(made, schema=companion.schema)
        if rows.num_rows:
            other = write_shard(companion.table_uri, rows, name, storage_options=storage_options)
            actions.append({**other, "table": companion.name})
        yield pa.RecordBatch.from_pylist(actions, schema=TABLED_ACTIONS)

    return run


def commit(
    table_uri: str,
    schema: pa.Schema,
    actions: Iterable[dict[str, Any]],
    *,
    mode: CommitMode,
    job_id: str,
    name: str | None = None,
    storage_options: StorageOptions = None,
    cleanup: bool = True,
    replacing: np.ndarray | None = None,
) -> int:
    """Commit the files the tasks wrote, in one Delta transaction, then remove orphans.

    The commit is :func:`~dicomlake.lake.shards.commit_shards`'s (a new table gets the
    files in its first commit; ``overwrite`` replaces every file the table had;
    ``replace`` every earlier row of the new rows' ``row_id``).

    Args:
        table_uri: The table's folder or URI.
        schema: The table's Arrow schema.
        actions: What the successful tasks returned (:data:`ADD_ACTION_SCHEMA` rows).
        mode: ``append``, ``overwrite`` or ``replace``.
        job_id: The id the job's files carry in their names.
        name: The table's name, recorded in a new table's metadata.
        storage_options: A :class:`~dicomlake.storage.StorageConfig` or dict of options
            (either library's names), for delta-rs and for removing orphans.
        cleanup: Delete this job's files that are not in the commit (written by task
            attempts that failed or were retried).
        replacing: With ``replace``: the row ids whose earlier rows go (sorted,
            distinct); by default those of the files' rows.

    Returns:
        The number of rows committed.

    Raises:
        ValueError: ``replace`` on a table without a ``row_id`` column.
        LakeError: If delta-rs cannot commit.
    """
    actions = list(actions)
    rows = commit_shards(
        table_uri,
        schema,
        actions,
        mode=mode,
        name=name,
        storage_options=storage_options,
        replacing=replacing,
    )
    if cleanup:
        remove_orphans(table_uri, job_id, {a["path"] for a in actions}, storage_options)
    return rows


def save_dataframe(
    df: DataFrame,
    table_uri: str,
    *,
    mode: CommitMode = "append",
    name: str | None = None,
    storage_options: StorageOptions = None,
    cleanup: bool = True,
    task_hook: ArrowMapper | None = None,
    companion: Companion | None = None,
) -> int:
    """Write ``df`` as the Delta table at ``table_uri``, in one transaction.

    Executors write one Parquet file per task into the table's folder
    (:func:`parquet_writer`); the driver collects the add-actions of the tasks that
    succeeded and commits them (:func:`commit`). A file written by a failed or retried
    attempt is never in the log, and is deleted after the commit with ``cleanup``.

    When ``df`` is a transformer's output (a :class:`Chain`), each task runs the
    transformers' stages on its share of the chain's source (the catalog's file
    references) and writes their rows straight away: the same rows, without sending
    them to the JVM and back to a second Python pass.

    With ``replace``, the driver reads the ``row_id`` column of the tasks' files, and
    the commit also removes every earlier row with one of those ids (the files that
    hold some are rewritten without them): a re-run of the same units leaves one
    generation of their rows, and other rows are untouched. A companion loses the
    rows of the same ids, so an instance saved again keeps one ``acquisition`` row
    (none, if it is no longer ``ok``).

    Args:
        df: The rows to write.
        table_uri: The table's folder or URI (a local folder is created).
        mode: ``append``, ``overwrite``, or ``replace`` (the rows of the saved
            ``row_id`` values give way to the new ones; the table needs that column).
        name: The table's name, for a new table's metadata.
        storage_options: A :class:`~dicomlake.storage.StorageConfig` or dict: the
            executors write with it (it is pickled to them), the driver commits with it.
        cleanup: Delete files of failed task attempts after the commit.
        task_hook: See :func:`parquet_writer`.
        companion: Another table the tasks also write, from the same rows; it is
            committed (in the same ``mode``) just before ``df``'s table.

    Returns:
        The number of rows committed (to ``df``'s table).

    Raises:
        ValueError: ``mode`` is not ``append``, ``overwrite`` or ``replace``, or it is
            ``replace`` and ``df`` (or the table) has no ``row_id`` column.
        LakeError: The table cannot be written.
    """
    if mode not in ("append", "overwrite", "replace"):
        raise ValueError(f"mode must be 'append', 'overwrite' or 'replace', got {mode!r}")
    schema = nullable(to_arrow(df.schema))
    if mode == "replace":
        check_replaceable(table_uri, schema, storage_options)
    for uri in (table_uri, *([] if companion is None else [companion.table_uri])):
        local = local_path(uri)
        if local is not None:
            if os.path.exists(local) and not os.path.isdir(local):
                raise LakeError(f"cannot save to {local}: it is a file, not a folder", lake=local)
            os.makedirs(local, exist_ok=True)
    job_id = new_job_id()
    made = chain_of(df)
    source, stages = (df, ()) if made is None else (made.source, made.stages)
    writer = parquet_writer(
        table_uri,
        schema,
        job_id,
        stages=stages,
        task_hook=task_hook,
        storage_options=storage_options,
        companion=companion,
    )
    returned = TABLED_ACTIONS if companion is not None else ADD_ACTION_SCHEMA
    written = [row.asDict() for row in source.mapInArrow(writer, to_spark(returned)).collect()]
    tables = [action.pop("table", None) for action in written]
    mine = [a for a, t in zip(written, tables, strict=True) if t is None]
    paths = [a["path"] for a in mine]
    ids = row_ids(table_uri, paths, storage_options) if mode == "replace" else None
    if companion is not None:
        companions = [a for a, t in zip(written, tables, strict=True) if t == companion.name]
        if companions or mode == "overwrite" or (ids is not None and len(ids)):
            commit(
                companion.table_uri,
                companion.schema,
                companions,
                mode=mode,
                job_id=job_id,
                name=companion.name,
                storage_options=storage_options,
                cleanup=cleanup,
                replacing=ids,
            )
    return commit(
        table_uri,
        schema,
        mine,
        mode=mode,
        job_id=job_id,
        name=name,
        storage_options=storage_options,
        cleanup=cleanup,
        replacing=ids,
    )


def parquet_reader(schema: pa.Schema, storage_options: StorageOptions = None) -> ArrowMapper:
    """The ``mapInArrow`` function that reads the Parquet files named in a ``uri`` column.

    Lets Spark load a table on object storage without Hadoop's S3 connector: each task
    reads its files through :func:`_filesystem` with ``storage_options``.

    Args:
        schema: The Arrow schema of the output (the Spark schema's Arrow form); each
            file's columns are selected and cast to it.
        storage_options: Credentials and endpoint (pickled to the tasks).

    Returns:
        A function from batches of file URIs to batches of their rows.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for batch in batches:
            for uri in batch.column(0).to_pylist():
                fs, path = filesystem(uri, storage_options)
                table = pq.read_table(path, filesystem=fs, columns=schema.names)
                yield from table.cast(schema).to_batches()

    return run


__all__ = [
    "ADD_ACTION_SCHEMA",
    "INSTANCES_SCHEMA",
    "OPENCV_MODES",
    "THUMBNAIL_TYPE",
    "Chain",
    "chain",
    "chain_of",
    "commit",
    "conform",
    "instances_mapper",
    "merge_schema",
    "new_job_id",
    "nullable",
    "parquet_reader",
    "parquet_writer",
    "refs_from_batch",
    "remove_orphans",
    "require_pyspark",
    "save_dataframe",
    "thumbnails_mapper",
    "to_arrow",
    "to_spark",
]
