"""dicomlake: DICOM files in folders, zips and buckets, as a Delta Lake you query with SQL.

The whole API in three lines::

    import dicomlake
    summary = dicomlake.ingest(["/data/dicom"], lake="/data/lake")
    con = dicomlake.connect("/data/lake")   # DuckDB, with views instances/series/studies

or, holding one connection for many queries, ``with dicomlake.Lake(path) as lake:``.

Heavy modules (deltalake, duckdb, the process pool) load on first use, so
``import dicomlake`` and ``dicomlake --help`` stay fast; so do the option classes
below, imported from this package on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Unpack

from dicomlake.client import Lake
from dicomlake.errors import (
    DicomLakeError,
    ExtractError,
    LakeError,
    QueryError,
    SourceNotFound,
    TableNotFound,
)
from dicomlake.kernels.base import UNIT_TIMEOUT as _UNIT_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Literal

    import duckdb

    from dicomlake._types import IngestOptions, PathLike, StorageOptions
    from dicomlake.deidentify.keys import Key
    from dicomlake.deidentify.pixels import RegionRules
    from dicomlake.dicom.frames import Window
    from dicomlake.jobs.apply import ApplySummary
    from dicomlake.jobs.deid import DeidSummary
    from dicomlake.jobs.ingest import CommitPolicy, IngestSummary
    from dicomlake.kernels.apply import Function, Unit
    from dicomlake.kernels.thumbnails import ThumbnailOptions
    from dicomlake.notebook import ThumbnailGrid
    from dicomlake.storage.settings import Retries, StorageConfig

__version__ = "0.1.0"

#: Names loaded on first use, and the module each comes from.
_LAZY = {
    "ApplySummary": "dicomlake.jobs.apply",
    "CommitPolicy": "dicomlake.jobs.ingest",
    "DeidSummary": "dicomlake.jobs.deid",
    "IngestSummary": "dicomlake.jobs.ingest",
    "Retries": "dicomlake.storage.settings",
    "StorageConfig": "dicomlake.storage.settings",
    "ThumbnailOptions": "dicomlake.kernels.thumbnails",
}


def ingest(
    sources: PathLike | list[PathLike] | tuple[PathLike, ...],
    lake: PathLike,
    **options: Unpack[IngestOptions],
) -> IngestSummary:
    """Ingest DICOM files into ``lake``; the options are :func:`dicomlake.jobs.ingest.ingest`'s.

    Raises:
        SourceNotFound: A source does not exist.
        LakeError: The lake cannot be written.
        ValueError: An option is out of range.
    """
    from dicomlake.jobs.ingest import ingest as _ingest

    return _ingest(sources, lake, **options)


def connect(
    lake: PathLike, *, storage_options: StorageOptions = None, version: int | None = None
) -> duckdb.DuckDBPyConnection:
    """Return a DuckDB connection with the lake's views registered.

    Args:
        lake: Lake folder or URI.
        storage_options: Settings for object storage.
        version: Version of the ``instances`` table to read; None for the latest.

    Raises:
        TableNotFound: Nothing has been ingested into ``lake`` yet.
        LakeError: The lake cannot be read.
    """
    import os

    from dicomlake.lake.sql import connect as _connect

    return _connect(os.fspath(lake), storage_options=storage_options, version=version)


def show(
    result: Any,
    *,
    lake: PathLike | Lake | duckdb.DuckDBPyConnection | None = None,
    columns: int = 4,
    size: int = 160,
    limit: int | None = None,
) -> ThumbnailGrid:
    """Return a grid of the thumbnails of ``result``'s rows, shown inline by Jupyter.

    ``result`` is a DuckDB relation, Arrow table or list of dicts with a ``row_id``
    column; see :func:`dicomlake.notebook.show`.

    Raises:
        ValueError: The result has no ``row_id`` column, or no lake can be found.
    """
    import os

    from dicomlake.notebook import MAX_ROWS
    from dicomlake.notebook import show as _show

    where = os.fspath(lake) if isinstance(lake, str | os.PathLike) else lake
    return _show(
        result, lake=where, columns=columns, size=size, limit=MAX_ROWS if limit is None else limit
    )


def deid(
    lake: PathLike,
    out: PathLike,
    *,
    key: Key | bytes | PathLike,
    where: str | None = None,
    options: Iterable[str] = (),
    workers: int | None = None,
    regions: PathLike | RegionRules | None = None,
    storage_options: StorageOptions = None,
    progress: Callable[[DeidSummary], None] | None = None,
) -> DeidSummary:
    """Write a de-identified copy (PS3.15) of the lake's ``ok`` instances to ``out``.

    See :func:`dicomlake.jobs.deid.deid`; the rules are in :mod:`dicomlake.deidentify`.

    Raises:
        DeidKeyError: The key is missing or shorter than 32 bytes.
        ValueError: An unknown option name, or unreadable region rules.
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into ``lake``.
    """
    from dicomlake.jobs.deid import deid as _deid

    return _deid(
        lake,
        out,
        key=key,
        where=where,
        options=options,
        workers=workers,
        regions=regions,
        storage_options=storage_options,
        progress=progress,
    )


def apply(
    lake: PathLike | Lake,
    sql: str,
    fn: Function,
    table: str = "features",
    unit: Unit = "frame",
    workers: int | None = None,
    version: str = "1",
    window: Window = None,
    size: int | tuple[int, int] | None = None,
    on_error: Literal["row", "raise"] = "row",
    unit_timeout: float = _UNIT_TIMEOUT,
    progress: Callable[[ApplySummary], None] | None = None,
    storage_options: StorageOptions = None,
) -> ApplySummary:
    """Run your function over the frames, instances or series ``sql`` picks, into ``table``.

    ``fn`` (``"package.module:name"`` or a picklable callable) gets one item as the
    datasets give it, with numpy arrays, and returns a dict whose keys become typed
    columns; see :func:`dicomlake.jobs.apply.apply` and :mod:`dicomlake.kernels.apply`.

    Raises:
        ValueError: An invalid unit, table name, window, size or function name.
        ImportError: The function's module cannot be imported.
        QueryError: The query fails or lacks the column it must return.
        TableNotFound: Nothing has been ingested into ``lake``.
        LakeError: The table cannot be written.
        FunctionFailed: ``on_error='raise'`` and ``fn`` raised.
    """
    import os

    from dicomlake.jobs.apply import apply as _apply

    return _apply(
        lake if isinstance(lake, Lake) else os.fspath(lake),
        sql,
        fn,
        table=table,
        unit=unit,
        workers=workers,
        version=version,
        window=window,
        size=size,
        on_error=on_error,
        unit_timeout=unit_timeout,
        progress=progress,
        storage_options=storage_options,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dicomlake' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ApplySummary",
    "CommitPolicy",
    "DeidSummary",
    "DicomLakeError",
    "ExtractError",
    "IngestSummary",
    "Lake",
    "LakeError",
    "QueryError",
    "Retries",
    "SourceNotFound",
    "StorageConfig",
    "TableNotFound",
    "ThumbnailOptions",
    "__version__",
    "apply",
    "connect",
    "deid",
    "ingest",
    "show",
]
