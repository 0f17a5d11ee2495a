"""Data picked by SQL: run a user's query on the lake and join what a dataset needs.

A dataset is built from any query over the lake's views (``instances``, ``series``,
``thumbnails``, ``volumes``, ``patches``) that returns the column it keys on (``path``
for frames and patches, ``SeriesInstanceUID`` for volumes). The query runs once, when
the dataset is made; what comes back is a small Arrow table of keys and labels, and
the DuckDB connection is closed again, so the dataset pickles without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from dicomlake.errors import QueryError

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

#: Prefix of the columns a selection adds; a user's query should not use it.
PRIVATE = "__dl_"


def strip_query(sql: str) -> str:
    """A user's query without surrounding space and trailing ``;``, ready to nest.

    Raises:
        QueryError: Nothing is left.
    """
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise QueryError("the query is empty: give a SELECT over the lake's views", sql=sql)
    return text


def query_columns(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The column names ``sql`` returns, without running it.

    Raises:
        QueryError: The query does not parse or bind (DuckDB's message, as is).
    """
    try:
        return [row[0] for row in con.execute(f"DESCRIBE ({strip_query(sql)})").fetchall()]
    except duckdb.Error as exc:
        raise QueryError(f"the query failed: {exc}", sql=sql) from exc


def require_columns(columns: Iterable[str], needed: Iterable[str], sql: str, why: str) -> None:
    """Raise a :class:`QueryError` naming each column of ``needed`` the query lacks."""
    have = set(columns)
    missing = [c for c in needed if c not in have]
    if missing:
        raise QueryError(
            f"the query must return the column(s) {missing} ({why}); it returns {sorted(have)}",
            sql=sql,
        )


def run_query(
    lake: str,
    sql: str,
    *,
    storage_options: StorageOptions = None,
    required: Iterable[str] = (),
    why: str = "",
    wrap: str | None = None,
) -> pa.Table:
    """Run ``sql`` on the lake and return its rows as an Arrow table.

    Args:
        lake: The lake folder or URI.
        sql: The user's query.
        storage_options: Options for object storage.
        required: Columns the query must return.
        why: What those columns are for, for the error message.
        wrap: A statement run instead, in which ``{selection}`` stands for the user's
            query as a subquery that numbers its rows in ``__dl_order``.

    Raises:
        QueryError: The query fails or lacks a required column.
        TableNotFound: Nothing has been ingested into the lake.
    """
    from dicomlake.lake.sql import connect

    text = strip_query(sql)
    con = connect(lake, storage_options=storage_options)
    try:
        columns = query_columns(con, text)
        require_columns(columns, required, sql, why)
        reserved = [c for c in columns if c.startswith(PRIVATE)]
        if reserved:
            raise QueryError(
                f"column names starting with {PRIVATE!r} are reserved: {reserved}", sql=sql
            )
        statement = text
        if wrap is not None:
            selection = f"(SELECT *, row_number() OVER () AS {PRIVATE}order FROM ({text}))"
            statement = wrap.format(selection=selection)
        try:
            return con.sql(statement).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"the query failed: {exc}", sql=sql) from exc
    finally:
        con.close()


#: instances columns every pixel dataset needs, as the names a selection gives them.
INSTANCE_COLUMNS: Mapping[str, str] = {
    f"{PRIVATE}row_id": "row_id",
    f"{PRIVATE}path": "path",
    f"{PRIVATE}size": "size",
    f"{PRIVATE}mtime": "modification_time",
    f"{PRIVATE}frames": "NumberOfFrames",
    f"{PRIVATE}sop": "SOPInstanceUID",
}


def select_pixel_instances(
    lake: str,
    sql: str,
    *,
    storage_options: StorageOptions = None,
    extra: Mapping[str, str] | None = None,
) -> pa.Table:
    """The query's rows joined on ``path`` to the instances that have pixel data.

    Rows whose file is not an ``ok`` instance with pixel data are dropped. The user's
    columns come back as they are, in the query's order, with the instance's columns
    of :data:`INSTANCE_COLUMNS` (and ``extra``, alias → column) beside them.

    Raises:
        QueryError: The query fails or returns no ``path`` column.
        TableNotFound: Nothing has been ingested into the lake.
    """
    columns = {**INSTANCE_COLUMNS, **(extra or {})}
    picked = ", ".join(f'i."{column}" AS "{alias}"' for alias, column in columns.items())
    wrap = (
        f"SELECT s.*, {picked} FROM {{selection}} s JOIN instances i ON i.path = s.path "
        f"WHERE i.status = 'ok' AND i.has_pixel_data ORDER BY s.{PRIVATE}order"
    )
    table = run_query(
        lake,
        sql,
        storage_options=storage_options,
        required=("path",),
        why="the path of each instance, as in the instances view",
        wrap=wrap,
    )
    return table.drop_columns([f"{PRIVATE}order"])
