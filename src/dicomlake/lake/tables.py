"""The lake's tables: their schemas and keys, and reading their files with pyarrow.

Where the tables live and how to open them is :mod:`dicomlake.lake.location`. A lake
is a folder (or an object-store prefix) of Delta tables written through
delta-rs (:mod:`deltalake`), so no JVM is needed and Spark, DuckDB or Trino can read
the same tables. Every function takes ``storage_options``
(:data:`dicomlake._types.StorageOptions`), turned into delta-rs's options by
:func:`~dicomlake.storage.delta_options`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pyarrow as pa
from deltalake import DeltaTable, WriterProperties

from dicomlake.lake.location import (
    ACQUISITION_TABLE,
    DEID_TABLE,
    INSTANCES_TABLE,
    PATCHES_TABLE,
    SEGMENTS_TABLE,
    THUMBNAILS_TABLE,
    VOLUMES_TABLE,
)
from dicomlake.schema import (
    ACQUISITION_SCHEMA,
    DEID_SCHEMA,
    INSTANCES_SCHEMA,
    PATCHES_SCHEMA,
    SEGMENTS_SCHEMA,
    THUMBNAILS_SCHEMA,
    VOLUMES_SCHEMA,
)
from dicomlake.storage.locations import url_local_path

if TYPE_CHECKING:
    import pyarrow.dataset as pads


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What the writer needs to know of a table: schema, merge keys, description."""

    name: str
    schema: pa.Schema
    keys: tuple[str, ...]
    description: str


#: The lake's tables (see :mod:`dicomlake.schema` for their columns).
TABLES: Final[dict[str, TableSpec]] = {
    spec.name: spec
    for spec in (
        TableSpec(
            INSTANCES_TABLE,
            INSTANCES_SCHEMA,
            ("row_id",),
            "dicomlake: one row per DICOM file or zip member",
        ),
        TableSpec(
            THUMBNAILS_TABLE,
            THUMBNAILS_SCHEMA,
            ("row_id", "frame"),
            "dicomlake: thumbnails, one row per instance frame drawn",
        ),
        TableSpec(
            PATCHES_TABLE,
            PATCHES_SCHEMA,
            ("row_id", "frame", "x", "y"),
            "dicomlake: frames tiled into patches, one row per patch kept",
        ),
        TableSpec(
            VOLUMES_TABLE,
            VOLUMES_SCHEMA,
            ("SeriesInstanceUID",),
            "dicomlake: one row per series, its volume geometry or why not",
        ),
        TableSpec(
            DEID_TABLE,
            DEID_SCHEMA,
            ("row_id", "destination"),
            "dicomlake: de-identified copies, one row per instance and destination",
        ),
        TableSpec(
            SEGMENTS_TABLE,
            SEGMENTS_SCHEMA,
            ("row_id", "ReferencedSeriesInstanceUID", "segment_number"),
            "dicomlake: one row per segment of a SEG or ROI of an RT structure set",
        ),
        TableSpec(
            ACQUISITION_TABLE,
            ACQUISITION_SCHEMA,
            ("row_id",),
            "dicomlake: acquisition attributes of each ok instance, typed, from its meta",
        ),
    )
}

#: Parquet settings of every data file we write: zstd is smaller than snappy for the
#: repetitive JSON in ``meta`` at about the same speed.
WRITER_PROPERTIES: Final = WriterProperties(compression="ZSTD", compression_level=3)

#: Target size of data files (delta-rs splits larger writes; compaction merges smaller).
TARGET_FILE_SIZE: Final = 128 * 1024 * 1024


def arrow_dataset(dt: DeltaTable) -> pads.Dataset:
    """A pyarrow dataset over the files of ``dt``'s loaded version.

    For a local table the dataset reads through pyarrow's native filesystem instead of
    delta-rs's Python filesystem handler: with the handler (deltalake 1.6.6, pyarrow
    26) a process that scanned the dataset aborts now and then at exit with
    "terminate called without an active exception" (delta-rs issue #2184).

    Read columns from it, but do not filter on string columns: the files a MERGE or
    DELETE rewrote hold ``string_view`` columns, which pyarrow 26 cannot compare, so
    ``filter=pc.field("status") == "ok"`` fails on them. :func:`dicomlake.lake.sql.connect`
    reads through DuckDB's own Parquet reader for that reason.

    Args:
        dt: A loaded table.

    Returns:
        A dataset that keeps reading that version even after later commits (until a
        vacuum deletes its files), with per-file row-id statistics for pruning.
    """
    import pyarrow.fs as pafs

    local = url_local_path(dt.table_uri)
    if local is not None:
        fs = pafs.SubTreeFileSystem(local.rstrip("/"), pafs.LocalFileSystem())
        return dt.to_pyarrow_dataset(filesystem=fs)
    return dt.to_pyarrow_dataset()


def file_actions(dt: DeltaTable, *, flatten: bool = False) -> pa.Table:
    """The add-actions of ``dt``'s loaded version (one row per data file), in pyarrow.

    Read as an Arrow C stream: ``pa.table()`` of delta-rs's table would first ask
    whether it is a pandas DataFrame, importing pandas (0.2 s) to ask.
    """
    return pa.RecordBatchReader.from_stream(dt.get_add_actions(flatten=flatten)).read_all()


def data_files(dt: DeltaTable) -> set[str]:
    """The paths (relative to the table) of the data files of ``dt``'s loaded version."""
    return set(file_actions(dt).column("path").to_pylist())
