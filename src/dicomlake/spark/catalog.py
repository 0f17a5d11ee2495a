"""``Catalog``: list files into a DataFrame, save DataFrames as Delta, load them back."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import pyarrow as pa

from dicomlake._types import StorageOptions
from dicomlake.catalog import FileRef, iter_files, local_file
from dicomlake.errors import TableNotFound
from dicomlake.spark._compat import require_pyspark, to_arrow, to_spark
from dicomlake.storage.settings import StorageConfig, delta_options

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from dicomlake.engine.spark import ArrowMapper, Companion

#: pixels' ``object_catalog`` columns, then dicomlake's own names for the same facts.
CATALOG_SCHEMA: Final = pa.schema(
    [
        pa.field("rowId", pa.int64()),
        pa.field("path", pa.string()),
        pa.field("modificationTime", pa.timestamp("us", tz="UTC")),
        pa.field("length", pa.int64()),
        pa.field("relative_path", pa.string()),
        pa.field("local_path", pa.string()),
        pa.field("extension", pa.string()),
        pa.field("path_tags", pa.list_(pa.string())),
        pa.field("is_anon", pa.bool_()),
        pa.field("row_id", pa.int64()),
        pa.field("size", pa.int64()),
        pa.field("modification_time", pa.timestamp("us", tz="UTC")),
    ]
)

#: Rows per Arrow batch while listing: the listing is held as Arrow columns, not rows.
LIST_BATCH_ROWS: Final = 10_000


def _catalog_batches(
    refs: Iterator[FileRef], *, extensions: set[str] | None, is_anon: bool
) -> Iterator[pa.RecordBatch]:
    from dicomlake.catalog import source_columns

    rows: list[dict[str, Any]] = []
    for ref in refs:
        row = source_columns(ref)
        if extensions is not None and row["extension"] not in extensions:
            continue
        row.update(
            rowId=row["row_id"],
            modificationTime=row["modification_time"],
            length=row["size"],
            local_path=_text_local_path(ref),
            is_anon=is_anon,
        )
        rows.append(row)
        if len(rows) >= LIST_BATCH_ROWS:
            yield pa.RecordBatch.from_pylist(rows, schema=CATALOG_SCHEMA)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=CATALOG_SCHEMA)


def _text_local_path(ref: FileRef) -> str | None:
    """The ``local_path`` column: a local file's path, None where it is not valid text.

    A name that is not valid UTF-8 has no text form that ``open`` takes; its ``path``
    (``file://localhost/...``) opens it through :func:`dicomlake.catalog.open_ref`.
    """
    local = local_file(ref)
    if local is None:
        return None
    try:
        local.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return local


def _listing_slices(listing: Broadcast[pa.Table], rows: int) -> ArrowMapper:
    """The ``mapInArrow`` function that turns task numbers into their rows of the listing.

    The listing reaches each Python worker once, as a broadcast, and each task takes
    its ``rows`` rows from it: no row is shuffled or converted by the JVM on the way
    to the extractors, which run in the same task when the DataFrame is saved.
    """

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = listing.value
        for batch in batches:
            for task in batch.column(0).to_pylist():
                yield from table.slice(task * rows, rows).to_batches()

    return run


_active_storage_options: StorageOptions = None


def delta_writer(spark: SparkSession) -> Literal["delta-rs", "delta-spark"]:
    """Which Delta writer this session has: Spark's own (Databricks, delta-spark) or ours.

    Plain PySpark from PyPI has no Delta jars: tasks write Parquet and delta-rs commits.
    """
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "delta-spark"
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    return "delta-spark" if "DeltaSparkSessionExtension" in extensions else "delta-rs"


def active_storage_options() -> StorageOptions:
    """Storage settings of the :class:`Catalog` made last in this process (or None)."""
    return _active_storage_options


class Catalog:
    """The pixels ``Catalog``: lists files, and saves and loads the ``object_catalog`` table.

    Args:
        spark: The Spark session.
        table: Name of the Delta table :meth:`save` writes.
        lake: Folder or URI the table lives in (``<lake>/<table>``); by default a folder
            named after the table in the current directory.
        storage_options: A :class:`~dicomlake.storage.StorageConfig` or a dict of
            options for object storage (``anon`` marks rows ``is_anon``): used to list
            and read the sources, pickled to the executors that write the table, and
            given to delta-rs for the commit.
        files_per_partition: Files per Spark task when extracting.
        writer: How :meth:`save` writes Delta: ``delta-spark`` is Spark's own writer
            (Databricks, or a session with delta-spark configured; a dotted ``table``
            with no ``lake`` is saved as a metastore / Unity Catalog table),
            ``delta-rs`` has tasks write Parquet and the driver commit with delta-rs
            (plain PySpark, no jars); ``auto`` picks the first the session supports.

    Raises:
        ImportError: pyspark is not installed.
        ValueError: ``writer`` or ``files_per_partition`` is out of range.
    """

    def __init__(
        self,
        spark: SparkSession,
        table: str = "object_catalog",
        lake: str | None = None,
        *,
        storage_options: StorageOptions = None,
        files_per_partition: int = 256,
        writer: Literal["auto", "delta-rs", "delta-spark"] = "auto",
    ) -> None:
        require_pyspark()
        if writer not in ("auto", "delta-rs", "delta-spark"):
            raise ValueError(f"writer must be 'auto', 'delta-rs' or 'delta-spark', got {writer!r}")
        self.writer = delta_writer(spark) if writer == "auto" else writer
        if files_per_partition < 1:
            raise ValueError(f"files_per_partition must be at least 1, got {files_per_partition}")
        self.spark = spark
        self.table = table
        self.lake = lake
        self.storage_options = storage_options
        global _active_storage_options
        # the seven-line program builds DicomThumbnailExtractor() without the catalog:
        # it reads the files with the settings of the catalog made last in this driver
        _active_storage_options = storage_options
        self.files_per_partition = files_per_partition
        if lake is None:
            self.table_uri = os.path.abspath(table)
        else:
            from dicomlake.lake.location import table_uri

            self.table_uri = table_uri(lake, table)

    def __repr__(self) -> str:
        return f"Catalog(table={self.table!r}, uri={self.table_uri!r})"

    # -- listing

    def catalog(
        self, path: str | Sequence[str], extension: str | Sequence[str] | None = None
    ) -> DataFrame:
        """List every file and zip member under ``path`` into a DataFrame.

        The listing runs on the driver (:func:`dicomlake.catalog.iter_files`) and is
        broadcast once as an Arrow table; each task takes its slice of
        ``files_per_partition`` rows, so the rows reach the extractors without a shuffle.

        Args:
            path: A folder, file, zip archive or fsspec URL, or a list of them.
            extension: Keep only files with this extension (``'dcm'``) or these.

        Returns:
            One row per file: ``rowId``, ``path``, ``modificationTime``, ``length``,
            ``relative_path``, ``local_path``, ``extension``, ``path_tags``,
            ``is_anon``, and ``row_id``, ``size``, ``modification_time``.

        Raises:
            SourceNotFound: A source does not exist.
        """
        from dicomlake.catalog import check_sources

        sources = [path] if isinstance(path, str) else list(path)
        check_sources(sources, storage_options=self.storage_options)
        wanted = None
        if extension is not None:
            names = [extension] if isinstance(extension, str) else list(extension)
            wanted = {e.lower().lstrip(".") for e in names}
        batches = list(
            _catalog_batches(
                iter_files(sources, storage_options=self.storage_options),
                extensions=wanted,
                is_anon=StorageConfig.coerce(self.storage_options).anon,
            )
        )
        table = pa.Table.from_batches(batches, schema=CATALOG_SCHEMA).combine_chunks()
        context = self.spark.sparkContext
        wanted_tasks = max(
            context.defaultParallelism, math.ceil(table.num_rows / self.files_per_partition)
        )
        tasks = max(1, min(table.num_rows, wanted_tasks))
        rows = max(1, math.ceil(table.num_rows / tasks))
        from dicomlake.engine.spark import chain

        tasks_df = self.spark.range(0, tasks, 1, numPartitions=tasks)
        return chain(tasks_df, _listing_slices(context.broadcast(table), rows), CATALOG_SCHEMA)

    # -- the table

    def save(
        self,
        df: DataFrame,
        mode: Literal["append", "overwrite", "replace"] = "append",
        *,
        cleanup: bool = True,
    ) -> int:
        """Write ``df`` to the Delta table ``<lake>/<table>`` in one transaction.

        Each task writes its rows as one Parquet file in the table's folder and returns
        that file's add-action; the driver commits the actions of the successful tasks
        through delta-rs, then removes files that failed or retried attempts left.

        Args:
            df: The rows to write.
            mode: ``append`` adds the rows; ``overwrite`` replaces the table's rows;
                ``replace`` replaces every earlier row of the saved rows' ``row_id``
                values and leaves the others, in the same one commit (a re-run of
                :class:`~dicomlake.spark.dicom.DicomApply`, or a re-extraction of
                ``instances``, then leaves one generation of rows per unit).
            cleanup: Remove the files of failed task attempts after the commit.

        Saving a lake's ``instances`` table also writes the saved rows'
        ``acquisition`` rows, made by the executors from their ``meta``, as a local
        ingest does (committed just before the instances, in the same mode: with
        ``replace``, the saved instances' earlier ``acquisition`` rows go too).

        Returns:
            The number of rows committed.

        Raises:
            ValueError: ``mode`` is not ``append``, ``overwrite`` or ``replace``; or it
                is ``replace`` and the rows or the table have no ``row_id`` column, or
                the writer is ``delta-spark``.
            LakeError: The table cannot be written.
        """
        if self.writer == "delta-spark":
            return self._save_with_delta_spark(df, mode)
        from dicomlake.engine.spark import save_dataframe

        companion, catch_up = self._acquisition(df)
        saved = save_dataframe(
            df,
            self.table_uri,
            mode=mode,
            name=self.table,
            storage_options=self.storage_options,
            cleanup=cleanup,
            companion=companion,
        )
        if catch_up and mode != "overwrite":
            from dicomlake.jobs.acquisition import update_acquisition

            assert self.lake is not None
            update_acquisition(self.lake, storage_options=self.storage_options)
        return saved

    def _acquisition(self, df: DataFrame) -> tuple[Companion | None, bool]:
        """The ``acquisition`` rows a save of a lake's ``instances`` also writes.

        The executors make them from each saved row's ``meta``, beside its Parquet
        file, as the local engine's workers do. Also says whether the lake's earlier
        instances lack theirs (a lake made before the table): those are derived on
        the driver after the save.
        """
        from dicomlake.kernels.acquisition import FROM_INSTANCE, of_saved_instances
        from dicomlake.lake.location import ACQUISITION_TABLE, INSTANCES_TABLE, table_exists

        needed = {*FROM_INSTANCE, "meta", "status"}
        if self.lake is None or self.table != INSTANCES_TABLE or not needed <= set(df.columns):
            return None, False
        from dicomlake.engine.spark import Companion
        from dicomlake.lake.location import table_uri
        from dicomlake.schema import ACQUISITION_SCHEMA

        options = self.storage_options
        older = table_exists(self.lake, INSTANCES_TABLE, storage_options=options)
        catch_up = older and not table_exists(self.lake, ACQUISITION_TABLE, storage_options=options)
        uri = table_uri(self.lake, ACQUISITION_TABLE)
        return Companion(ACQUISITION_TABLE, uri, ACQUISITION_SCHEMA, of_saved_instances), catch_up

    def _save_with_delta_spark(self, df: DataFrame, mode: str) -> int:
        """Spark's own Delta writer (Databricks): a catalog table name or a path."""
        if mode == "replace":
            raise ValueError(
                "mode='replace' needs the default writer (writer='delta-rs'): Spark's Delta "
                "writer cannot replace rows by row_id in one commit here; save with "
                "mode='append' or 'overwrite', or use the default writer"
            )
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
        writer = df.write.format("delta").mode(mode)
        if self.lake is None and "." in self.table:  # a Unity Catalog / metastore name
            writer.saveAsTable(self.table)
            target = self.table
        else:
            writer.save(self.table_uri)
            target = f"delta.`{self.table_uri}`"
        last = self.spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()[0]
        return int((last["operationMetrics"] or {}).get("numOutputRows", 0))

    def load(self) -> DataFrame:
        """Read the saved table's current version back into a DataFrame.

        Returns:
            The table's rows (read from the Parquet files its Delta log lists; on object
            storage the executors read them with ``storage_options``, so Spark needs no
            Hadoop S3 connector).

        Raises:
            TableNotFound: Nothing was saved to this table yet.
        """
        if self.writer == "delta-spark":
            if self.lake is None and "." in self.table:
                return self.spark.table(self.table)
            return self.spark.read.format("delta").load(self.table_uri)
        from deltalake import DeltaTable

        from dicomlake.engine.spark import parquet_reader
        from dicomlake.storage.locations import local_path

        options = delta_options(self.storage_options)
        if not DeltaTable.is_deltatable(self.table_uri, options):
            raise TableNotFound(
                f"no Delta table at {self.table_uri}: save a DataFrame with Catalog.save() first",
                lake=self.table_uri,
            )
        table = DeltaTable(self.table_uri, storage_options=options)
        schema = to_spark(pa.schema(table.schema().to_arrow()))
        uris = table.file_uris()
        if not uris:
            return self.spark.createDataFrame([], schema)
        if local_path(self.table_uri) is not None:
            return self.spark.read.schema(schema).parquet(*uris)
        files = self.spark.createDataFrame([(u,) for u in uris], "uri string")
        files = files.repartition(min(len(uris), self.spark.sparkContext.defaultParallelism))
        reader = parquet_reader(to_arrow(schema), self.storage_options)
        return files.mapInArrow(reader, schema)


__all__ = ["CATALOG_SCHEMA", "Catalog"]
