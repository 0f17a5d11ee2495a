"""The lake's tables: where they live, opening them, and the errors of reading them.

A lake is a folder (or an object-store prefix) of Delta tables written through
delta-rs (:mod:`deltalake`), so no JVM is needed and Spark, DuckDB or Trino can read
the same tables. Every function takes ``storage_options``
(:data:`dicomlake._types.StorageOptions`), turned into delta-rs's options by
:func:`~dicomlake.storage.delta_options`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pyarrow as pa
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import DeltaError

from dicomlake.errors import LakeError, TableNotFound
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
from dicomlake.storage.settings import delta_options

if TYPE_CHECKING:
    import pyarrow.dataset as pads

    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)


INSTANCES_TABLE: Final = "instances"
THUMBNAILS_TABLE: Final = "thumbnails"
VOLUMES_TABLE: Final = "volumes"
PATCHES_TABLE: Final = "patches"
DEID_TABLE: Final = "deid"
SEGMENTS_TABLE: Final = "segments"
ACQUISITION_TABLE: Final = "acquisition"


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

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lake_root(lake: str) -> str:
    """Normalise a lake location: absolute for a local path, no trailing slash.

    delta-rs 1.6.6 turns a local path into a URL: a ``[`` makes it panic and a ``%``
    is decoded (so ``a%20b`` means ``a b``). Refuse both here, with a clear message.
    """
    if not lake:
        raise LakeError("the lake location is empty: pass a folder or a URI", lake=lake)
    plain = "://" not in lake
    if "[" in lake or ((plain or lake.startswith("file://")) and "%" in lake):
        raise LakeError(
            f"cannot use lake at {lake}: delta-rs cannot open local paths that contain "
            "'[' or '%'; choose a folder without them",
            lake=lake,
        )
    root = os.path.abspath(os.path.expanduser(lake)) if plain else lake
    return root.rstrip("/") or root


def is_panic(exc: BaseException) -> bool:
    """A Rust panic inside delta-rs (pyo3's PanicException derives from BaseException)."""
    return type(exc).__name__ == "PanicException"


def lake_error(action: str, lake: str, exc: BaseException) -> LakeError:
    """The :class:`LakeError` of a failed read or write, its reason safe to show.

    A full disk gets its own message (what is kept and how to go on); any other
    reason is :func:`_reason` of the error: one line, no patient values.
    """
    if _disk_full(exc):
        return LakeError(
            f"cannot {action} lake at {lake}: the disk is full (no space left on device); "
            "committed rows are kept: free space and run again to go on",
            lake=lake,
        )
    return LakeError(f"cannot {action} lake at {lake}: {_reason(exc)}", lake=lake)


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC (or a quota), from Python, pyarrow, or delta-rs (which gives only text)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def table_uri(lake: str, table: str) -> str:
    """Location of the Delta table ``table`` inside ``lake``.

    Args:
        lake: Lake folder or object-store URI prefix.
        table: Table name, e.g. ``"instances"`` or ``"thumbnails"``.

    Returns:
        ``<lake>/<table>``, with a local ``lake`` made absolute.

    Raises:
        LakeError: If ``lake`` is empty.
    """
    return f"{lake_root(lake)}/{table}"


def instances_uri(lake: str) -> str:
    """Location of the ``instances`` table inside ``lake``.

    Args:
        lake: Lake folder or object-store URI prefix.

    Returns:
        ``<lake>/instances``, with a local ``lake`` made absolute.

    Raises:
        LakeError: If ``lake`` is empty.
    """
    return table_uri(lake, INSTANCES_TABLE)


def _reason(exc: BaseException) -> str:
    """A one-line reason from a delta-rs or OS error, safe to show.

    delta-rs colours its messages and, for constraint failures, appends a preview of
    the offending rows; rows can hold patient data, so that part is dropped.
    """
    text = _ANSI.sub("", str(exc)).split("Preview of invalid data", 1)[0]
    text = " ".join(part.strip(" ↳") for part in text.splitlines() if part.strip())
    return text or type(exc).__name__


def table_exists(
    lake: str, table: str = INSTANCES_TABLE, *, storage_options: StorageOptions = None
) -> bool:
    """Whether ``<lake>/<table>`` is a Delta table.

    Args:
        lake: Lake folder or object-store URI prefix.
        table: Table name.
        storage_options: Options for the storage backend.

    Returns:
        True if the table has at least one commit.

    Raises:
        LakeError: If the location cannot be read (e.g. a path runs through a file).
    """
    uri = table_uri(lake, table)
    try:
        return bool(DeltaTable.is_deltatable(uri, delta_options(storage_options)))
    except (DeltaError, OSError) as exc:
        raise lake_error("read", lake, exc) from exc


def open_table(
    lake: str,
    table: str = INSTANCES_TABLE,
    *,
    version: int | None = None,
    storage_options: StorageOptions = None,
) -> DeltaTable:
    """Open ``<lake>/<table>`` at its current (or a given) version.

    Args:
        lake: Lake folder or object-store URI prefix.
        table: Table name.
        version: Table version to load; None for the latest.
        storage_options: Options for the storage backend.

    Returns:
        The loaded table.

    Raises:
        TableNotFound: If the lake has no such table yet.
        LakeError: If the table exists but cannot be read.
    """
    if not table_exists(lake, table, storage_options=storage_options):
        raise TableNotFound(
            f"no {table} table in lake {lake}: run `dicomlake ingest SRC --lake {lake}` first",
            lake=lake,
        )
    try:
        return DeltaTable(
            table_uri(lake, table), version=version, storage_options=delta_options(storage_options)
        )
    except (DeltaError, OSError) as exc:
        raise lake_error("read", lake, exc) from exc


def try_open(
    lake: str, storage_options: StorageOptions, table: str = INSTANCES_TABLE
) -> DeltaTable | None:
    """``<lake>/<table>`` at its current version, or None when it does not exist yet."""
    try:
        return open_table(lake, table, storage_options=storage_options)
    except TableNotFound:
        return None


def table_version(lake: str, *, storage_options: StorageOptions = None) -> int | None:
    """Current version of the ``instances`` table.

    Args:
        lake: Lake folder or object-store URI prefix.
        storage_options: Options for the storage backend.

    Returns:
        The version number, or None when the table does not exist yet.

    Raises:
        LakeError: If the table exists but cannot be read.
    """
    dt = try_open(lake, storage_options)
    return None if dt is None else dt.version()


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


def data_files(dt: DeltaTable) -> set[str]:
    """The paths (relative to the table) of the data files of ``dt``'s loaded version."""
    return set(pa.table(dt.get_add_actions(flatten=False)).column("path").to_pylist())
