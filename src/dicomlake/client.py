"""``Lake``: one object that owns a lake's DuckDB connection and its operations.

The top-level verbs :func:`dicomlake.ingest` and :func:`dicomlake.connect` are thin
wrappers; use ``Lake`` when a program ingests and queries the same lake repeatedly,
so the connection is made once and refreshed only after the lake changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from dicomlake.pipeline import IngestSummary


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

    def __init__(self, path: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.storage_options = storage_options
        self._con: duckdb.DuckDBPyConnection | None = None

    def ingest(self, sources: Sequence[str] | str, **options: Any) -> IngestSummary:
        """Ingest ``sources`` into this lake; options as :func:`dicomlake.pipeline.ingest`.

        Raises:
            SourceNotFound: A source does not exist.
            LakeError: The lake cannot be written.
        """
        from dicomlake.pipeline import ingest

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
        """Run ``query`` over the views ``instances``, ``series``, ``studies``."""
        return self.connection.sql(query)

    def to_arrow(self, query: str) -> pa.Table:
        """Run ``query`` and return the whole result as an Arrow table."""
        return self.connection.sql(query).to_arrow_table()

    def summary(self) -> dict[str, Any]:
        """Counts of files, statuses, errors by class, studies, series, modalities."""
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
