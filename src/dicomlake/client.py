"""``Lake``: one object that owns a lake's DuckDB connection and its operations.

The top-level verbs :func:`dicomlake.ingest` and :func:`dicomlake.connect` are thin
wrappers; use ``Lake`` when a program ingests and queries the same lake repeatedly,
so the connection is made once and refreshed only after the lake changes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Self, Unpack

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from dicomlake._types import LakeIngestOptions, PathLike, StorageOptions
    from dicomlake.jobs.ingest import IngestSummary


class Lake:
    """A lake folder or object-store prefix, with a lazily opened DuckDB connection.

    Args:
        path: Lake folder or URI (``s3://bucket/prefix``).
        storage_options: fsspec / delta-rs options for object storage.

    Example:
        >>> with Lake("/data/lake") as lake:  # doctest: +SKIP
        ...     lake.ingest(["/data/dicom"])
        ...     lake.sql("SELECT Modality, count(*) FROM instances GROUP BY 1").fetchall()
    """

    def __init__(self, path: PathLike, *, storage_options: StorageOptions = None) -> None:
        self.path = os.fspath(path)
        self.storage_options = storage_options
        self._con: duckdb.DuckDBPyConnection | None = None

    def ingest(
        self,
        sources: PathLike | list[PathLike] | tuple[PathLike, ...],
        **options: Unpack[LakeIngestOptions],
    ) -> IngestSummary:
        """Ingest ``sources`` into this lake; options as :func:`dicomlake.jobs.ingest.ingest`.

        Raises:
            SourceNotFound: A source does not exist.
            LakeError: The lake cannot be written.
            ValueError: An option is out of range.
        """
        from dicomlake.jobs.ingest import ingest

        summary = ingest(sources, self.path, storage_options=self.storage_options, **options)
        self.close()  # the next query sees the new version
        return summary

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection with the lake's views (opened on first use).

        Raises:
            TableNotFound: Nothing has been ingested yet.
        """
        if self._con is None:
            from dicomlake.lake.sql import connect

            self._con = connect(self.path, storage_options=self.storage_options)
        return self._con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run ``query`` over the views ``instances``, ``series``, ``studies``.

        Raises:
            TableNotFound: Nothing has been ingested yet.
            duckdb.Error: The query fails.
        """
        return self.connection.sql(query)

    def to_arrow(self, query: str) -> pa.Table:
        """Run ``query`` and return the whole result as an Arrow table.

        Raises:
            TableNotFound: Nothing has been ingested yet.
            duckdb.Error: The query fails.
        """
        return self.connection.sql(query).to_arrow_table()

    def summary(self) -> dict[str, Any]:
        """Counts of files, statuses, errors by class, studies, series, modalities.

        Raises:
            TableNotFound: Nothing has been ingested yet.
        """
        from dicomlake.lake.sql import lake_summary

        return lake_summary(self.connection)

    def close(self) -> None:
        """Close the connection; the next query opens a fresh one."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lake({self.path!r})"
