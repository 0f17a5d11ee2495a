"""Where the lake's tables live, opening them, and the errors of reading them.

Kept apart from :mod:`dicomlake.lake.tables` (the tables' schemas) so that what only
opens a table, :func:`dicomlake.connect` and ``dicomlake sql`` first of all, never
imports pyarrow: that import was a sixth of a short query's start-up.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from dicomlake.errors import LakeError, TableNotFound, disk_full
from dicomlake.storage.settings import delta_options

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

INSTANCES_TABLE: Final = "instances"
THUMBNAILS_TABLE: Final = "thumbnails"
VOLUMES_TABLE: Final = "volumes"
PATCHES_TABLE: Final = "patches"
DEID_TABLE: Final = "deid"
SEGMENTS_TABLE: Final = "segments"
ACQUISITION_TABLE: Final = "acquisition"

#: Tables a lake may have beside ``instances`` (each is a view of its name in SQL).
OPTIONAL_TABLES: Final = (
    THUMBNAILS_TABLE,
    VOLUMES_TABLE,
    PATCHES_TABLE,
    DEID_TABLE,
    SEGMENTS_TABLE,
    ACQUISITION_TABLE,
)
#: The tables dicomlake writes (a user table takes none of these names).
BUILT_IN_TABLES: Final = (INSTANCES_TABLE, *OPTIONAL_TABLES)

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
    if disk_full(exc):
        return LakeError(
            f"cannot {action} lake at {lake}: the disk is full (no space left on device); "
            "committed rows are kept: free space and run again to go on",
            lake=lake,
        )
    return LakeError(f"cannot {action} lake at {lake}: {_reason(exc)}", lake=lake)


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
