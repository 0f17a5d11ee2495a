"""Thumbnails inline in Jupyter: ``show(result)`` draws a grid of a query's images.

Example:
    >>> import dicomlake
    >>> from dicomlake.notebook import show
    >>> con = dicomlake.connect("demo-lake")  # doctest: +SKIP
    >>> show(con.sql("SELECT * FROM instances WHERE Modality = 'MR'"))  # doctest: +SKIP

Images come from the lake's ``thumbnails`` table (one PNG per instance frame), looked
up by the result's ``row_id`` column, and are embedded as ``data:`` URIs, so the
notebook shows them without a server and keeps them when saved.
"""

from __future__ import annotations

import base64
import html
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from dicomlake.client import Lake

__all__ = ["ThumbnailGrid", "show"]

#: Rows drawn at most; the rest are counted, not shown.
MAX_ROWS = 100

#: Columns used for a tile's caption, when the result has them.
_CAPTION_COLUMNS = ("Modality", "SeriesDescription", "InstanceNumber")

_THUMBS_SQL = """
SELECT row_id, data, format FROM thumbnails
WHERE status = 'ok' AND data IS NOT NULL AND row_id IN ({ids})
QUALIFY row_number() OVER (PARTITION BY row_id ORDER BY frame) = 1
"""


@dataclass
class Tile:
    """One row of the result: its id, caption and image (None when not drawn)."""

    row_id: int
    caption: str
    data: bytes | None = None
    format: str = "png"


@dataclass
class ThumbnailGrid:
    """A grid of thumbnails that Jupyter renders through :meth:`_repr_html_`.

    Attributes:
        tiles: The rows shown, in the result's order.
        left_out: Rows of the result not shown (beyond ``limit``).
        columns: Tiles per grid row.
        size: Tile width and height in CSS pixels.
    """

    tiles: list[Tile] = field(default_factory=list)
    left_out: int = 0
    columns: int = 4
    size: int = 160

    def _repr_html_(self) -> str:
        cells = []
        for tile in self.tiles:
            caption = html.escape(tile.caption, quote=True)
            if tile.data is not None:
                mime = "image/jpeg" if tile.format.lower() in ("jpeg", "jpg") else "image/png"
                encoded = base64.b64encode(tile.data).decode("ascii")
                image = (
                    f'<img src="data:{mime};base64,{encoded}" alt="{caption}" '
                    f'style="width:{self.size}px;height:{self.size}px;object-fit:contain;'
                    'background:#000;display:block">'
                )
            else:
                image = (
                    f'<div style="width:{self.size}px;height:{self.size}px;background:#222;'
                    "color:#aaa;display:flex;align-items:center;justify-content:center;"
                    'font:12px sans-serif">no thumbnail</div>'
                )
            cells.append(
                f'<figure style="margin:0" title="row_id {tile.row_id}">{image}'
                f'<figcaption style="font:12px sans-serif;width:{self.size}px;overflow:hidden;'
                f'text-overflow:ellipsis;white-space:nowrap">{caption}</figcaption></figure>'
            )
        grid = (
            f'<div style="display:grid;grid-template-columns:repeat({self.columns},'
            f'{self.size}px);gap:8px">' + "".join(cells) + "</div>"
        )
        if self.left_out:
            grid += (
                f'<p style="font:12px sans-serif">{self.left_out} more row'
                f"{'' if self.left_out == 1 else 's'} not shown</p>"
            )
        if not self.tiles:
            grid = '<p style="font:12px sans-serif">no rows</p>'
        return grid

    def __repr__(self) -> str:
        drawn = sum(t.data is not None for t in self.tiles)
        return (
            f"ThumbnailGrid({len(self.tiles)} rows, {drawn} with thumbnails, "
            f"{self.left_out} not shown)"
        )


def _caption(row: Mapping[str, Any]) -> str:
    parts = [str(row[c]) for c in _CAPTION_COLUMNS if row.get(c) not in (None, "")]
    if parts:
        return " · ".join(parts)
    path = row.get("path")
    if path:
        inner = path.split("::", 1)[0] if str(path).startswith("zip://") else str(path)
        return posixpath.basename(inner)
    return f"row {row['row_id']}"


def _is_relation(result: Any) -> bool:
    return type(result).__name__ == "DuckDBPyRelation" and hasattr(result, "query")


def _rows(result: Any, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` rows (row_id and caption columns) and the total row count."""
    wanted = ("row_id", "path", *_CAPTION_COLUMNS)
    if _is_relation(result):
        names = [c for c in wanted if c in result.columns]
        if "row_id" not in names:
            raise ValueError("show() needs a result with a row_id column")
        projection = ", ".join(f'"{c}"' for c in names)
        rows = result.query(
            "_dicomlake_show", f"SELECT {projection} FROM _dicomlake_show LIMIT {limit}"
        ).fetchall()
        total = result.query("_dicomlake_show", "SELECT count(*) FROM _dicomlake_show")
        return [dict(zip(names, r, strict=True)) for r in rows], int(total.fetchall()[0][0])
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        records = list(result)
        if records and not all(isinstance(r, Mapping) and "row_id" in r for r in records):
            raise ValueError("show() needs dicts that each have a row_id key")
        return [dict(r) for r in records[:limit]], len(records)
    import pyarrow as pa

    table: pa.Table = result if isinstance(result, pa.Table) else _to_arrow(result)
    if "row_id" not in table.column_names:
        raise ValueError("show() needs a result with a row_id column")
    names = [c for c in wanted if c in table.column_names]
    return table.select(names).slice(0, limit).to_pylist(), table.num_rows


def _to_arrow(result: Any) -> pa.Table:
    import pyarrow as pa

    if hasattr(result, "__arrow_c_stream__"):
        return pa.table(result)
    raise TypeError(
        "show() takes a DuckDB relation, a pyarrow Table, a list of dicts or any object "
        f"with __arrow_c_stream__, not {type(result).__name__}"
    )


def _lookup(con: Any, row_ids: Iterable[int]) -> dict[int, tuple[bytes, str]]:
    ids = ", ".join(str(int(r)) for r in row_ids)  # ints only: safe to inline
    if not ids:
        return {}
    rows = con.execute(_THUMBS_SQL.format(ids=ids)).fetchall()
    return {int(r): (bytes(d), f or "png") for r, d, f in rows}


def _lookup_in_relation(result: Any, row_ids: list[int]) -> dict[int, tuple[bytes, str]] | None:
    """Thumbnails through the relation's own connection.

    Its ``thumbnails`` view is used when it has one; otherwise the lake named by its
    ``dicomlake_lake`` variable is opened afresh (the table may be newer than the
    connection). None when the connection is not a dicomlake one.
    """
    import duckdb

    ids = ", ".join(str(int(r)) for r in row_ids) or "NULL"
    try:
        rows = result.query("_dicomlake_show", _THUMBS_SQL.format(ids=ids)).fetchall()
    except duckdb.CatalogException:
        pass
    else:
        return {int(r): (bytes(d), f or "png") for r, d, f in rows}
    try:
        variable = result.query("_dicomlake_show", "SELECT getvariable('dicomlake_lake')")
        lake = variable.fetchall()[0][0]
    except duckdb.Error:
        lake = None
    return None if lake is None else _lookup_with(str(lake), row_ids)


def show(
    result: Any,
    *,
    lake: str | Lake | duckdb.DuckDBPyConnection | None = None,
    columns: int = 4,
    size: int = 160,
    limit: int = MAX_ROWS,
) -> ThumbnailGrid:
    """Show a query result's thumbnails as an inline grid in a notebook.

    Args:
        result: Rows with a ``row_id`` column: a DuckDB relation (from
            ``dicomlake.connect(lake).sql(...)``), a pyarrow Table, a list of dicts, or
            anything with ``__arrow_c_stream__`` (a pandas or polars frame).
        lake: Where the thumbnails are: a lake path, a :class:`~dicomlake.Lake` or a
            connection from :func:`dicomlake.connect`. Not needed for a relation made on
            a dicomlake connection: its own ``thumbnails`` view is used.
        columns: Tiles per grid row.
        size: Tile size in CSS pixels.
        limit: Rows shown at most; the grid says how many more there were.

    Returns:
        A :class:`ThumbnailGrid`; Jupyter draws it, ``repr()`` summarises it.

    Raises:
        ValueError: The result has no ``row_id`` column, or no lake can be found.
        TypeError: The result is of a kind ``show`` does not read.
        TableNotFound: ``lake`` has nothing ingested.
    """
    if columns < 1 or size < 1 or limit < 0:
        raise ValueError("columns and size must be positive and limit not negative")
    rows, total = _rows(result, limit)
    row_ids = [int(r["row_id"]) for r in rows]
    found: dict[int, tuple[bytes, str]] | None = None
    if lake is None:
        if not _is_relation(result):
            raise ValueError(
                "show() needs lake= (a lake path, Lake or connection) to find thumbnails "
                "for a result that is not a DuckDB relation"
            )
        found = _lookup_in_relation(result, row_ids)
        if found is None:
            raise ValueError(
                "cannot tell which lake the relation reads; pass lake= or query through "
                "dicomlake.connect(lake)"
            )
    else:
        found = _lookup_with(lake, row_ids)
    tiles = []
    for row, rid in zip(rows, row_ids, strict=True):
        data, fmt = found.get(rid, (None, "png"))
        tiles.append(Tile(rid, _caption(row), data, fmt))
    return ThumbnailGrid(tiles, max(total - len(tiles), 0), columns, size)


def _lookup_with(
    lake: str | Lake | duckdb.DuckDBPyConnection, row_ids: list[int]
) -> dict[int, tuple[bytes, str]]:
    import duckdb

    from dicomlake.client import Lake

    if isinstance(lake, duckdb.DuckDBPyConnection):
        return _lookup_or_empty(lake, row_ids)
    if isinstance(lake, Lake):
        return _lookup_or_empty(lake.connection, row_ids)
    from dicomlake.lake.sql import connect

    con = connect(str(lake))
    try:
        return _lookup_or_empty(con, row_ids)
    finally:
        con.close()


def _lookup_or_empty(con: duckdb.DuckDBPyConnection, row_ids: list[int]) -> dict[int, Any]:
    import duckdb

    try:
        return _lookup(con, row_ids)
    except duckdb.CatalogException:  # no thumbnails table yet: every tile a placeholder
        return {}
