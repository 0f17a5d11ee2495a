"""dicomlake: DICOM files in folders, zips and buckets, as a Delta Lake you query with SQL.

The whole API in three lines::

    import dicomlake
    summary = dicomlake.ingest(["/data/dicom"], lake="/data/lake")
    con = dicomlake.connect("/data/lake")   # DuckDB, with views instances/series/studies

or, holding one connection for many queries, ``with dicomlake.Lake(path) as lake:``.

Heavy modules (deltalake, duckdb, the process pool) load on first use, so
``import dicomlake`` and ``dicomlake --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dicomlake.client import Lake
from dicomlake.errors import (
    DicomLakeError,
    ExtractError,
    LakeError,
    SourceNotFound,
    TableNotFound,
)

if TYPE_CHECKING:
    import duckdb

    from dicomlake.pipeline import IngestSummary

__version__ = "0.1.0"


def ingest(sources: list[str] | str, lake: str, **options: Any) -> IngestSummary:
    """Ingest DICOM files into ``lake``; see :func:`dicomlake.pipeline.ingest` for options.

    Raises:
        SourceNotFound: A source does not exist.
        LakeError: The lake cannot be written.
    """
    from dicomlake.pipeline import ingest as _ingest

    return _ingest(sources, lake, **options)


def connect(lake: str, **options: Any) -> duckdb.DuckDBPyConnection:
    """Return a DuckDB connection with the lake's views registered.

    Raises:
        TableNotFound: Nothing has been ingested into ``lake`` yet.
    """
    from dicomlake.lake.sql import connect as _connect

    return _connect(lake, **options)


def show(result: Any, **options: Any) -> Any:
    """Return a grid of the thumbnails of ``result``'s rows, shown inline by Jupyter.

    ``result`` is a DuckDB relation, Arrow table or list of dicts with a ``row_id``
    column; see :func:`dicomlake.notebook.show` for the options.
    """
    from dicomlake.notebook import show as _show

    return _show(result, **options)


__all__ = [
    "DicomLakeError",
    "ExtractError",
    "Lake",
    "LakeError",
    "SourceNotFound",
    "TableNotFound",
    "__version__",
    "connect",
    "ingest",
    "show",
]
