"""Exceptions raised by dicomlake.

Callers catch :class:`DicomLakeError` for anything this package raises on purpose; the
subclasses exist only where a caller acts differently::

    DicomLakeError
    ├── SourceNotFound      a SRC given to ingest does not exist (CLI exit code 2)
    ├── LakeError           the lake folder cannot be created, written or read
    │   └── TableNotFound   the lake has no such table yet (nothing ingested)
    ├── ExtractError        a file could not be turned into a row (kept as an error row,
                            raised only by the single-file helpers)
    └── QueryError          a query given to select data (datasets, patches, volumes)
                            fails or lacks a column it must return (also a ValueError)

Messages name what was expected and what was found. They never carry patient data:
paths are fine, tag values are not.
"""

from __future__ import annotations


class DicomLakeError(Exception):
    """Base class of every error dicomlake raises on purpose."""


class SourceNotFound(DicomLakeError):
    """A source given to ingest does not exist or cannot be listed."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


class LakeError(DicomLakeError):
    """The lake cannot be created, written or read."""

    def __init__(self, message: str, *, lake: str) -> None:
        super().__init__(message)
        self.lake = lake


class TableNotFound(LakeError):
    """The lake exists but the requested table has not been written yet."""


class ExtractError(DicomLakeError):
    """A single file could not be parsed into a row."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class QueryError(DicomLakeError, ValueError):
    """A query that selects data for a dataset or a derived table is not usable.

    Attributes:
        sql: The query as given.
    """

    def __init__(self, message: str, *, sql: str) -> None:
        super().__init__(message)
        self.sql = sql
