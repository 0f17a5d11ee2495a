"""The viewer's SQL: every query the pages need, with user values as parameters.

The only user text that becomes SQL is the advanced WHERE clause, and only after
:func:`dicomlake.viewer.safety.check_where` returned the exact subquery to embed;
every other filter value travels as a query parameter. The series grid is paged in
SQL (LIMIT/OFFSET over the aggregated series), so a lake of 100,000 series costs one
aggregate per page, never a transfer of all rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dicomlake.search.connection import Cursor
from dicomlake.viewer.safety import check_where
from dicomlake.viewer.tags import tag_rows

#: Series per page of the grid.
PAGE_SIZE = 48
#: Largest page a client may ask for.
MAX_PAGE_SIZE = 500

#: ``status`` filter values: a row status, or ``failed`` for both kinds of failure.
STATUS_FILTERS = ("ok", "error", "not_dicom", "failed")


class BadRequest(ValueError):
    """A request parameter is invalid; the message says which and why."""


@dataclass(frozen=True)
class Filters:
    """What the gallery's filter bar asks for; empty fields do not filter."""

    modality: str | None = None
    body_part: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    text: str | None = None
    status: str = "ok"
    where: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Filters:
        """Read filters from the query parameters of a request.

        Parameters: ``modality``, ``body_part``, ``date_from``, ``date_to``, ``q``,
        ``status``, ``where``.

        Raises:
            BadRequest: A date is not ISO (YYYY-MM-DD) or the status is unknown.
        """
        status = params.get("status") or "ok"
        if status not in STATUS_FILTERS:
            raise BadRequest(f"status must be one of {', '.join(STATUS_FILTERS)}, not {status!r}")
        return cls(
            modality=params.get("modality") or None,
            body_part=params.get("body_part") or None,
            date_from=_date(params, "date_from"),
            date_to=_date(params, "date_to"),
            text=(params.get("q") or "").strip() or None,
            status=status,
            where=(params.get("where") or "").strip() or None,
        )


def _date(params: Mapping[str, str], name: str) -> dt.date | None:
    text = params.get(name)
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name} must be a date as YYYY-MM-DD, not {text!r}") from None


def paging(params: Mapping[str, str], default: int = PAGE_SIZE) -> tuple[int, int]:
    """``offset`` and ``limit`` from query parameters, checked.

    Raises:
        BadRequest: Either is not a whole number in range.
    """
    try:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or default)
    except ValueError:
        raise BadRequest("offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(f"offset must be >= 0 and limit between 1 and {MAX_PAGE_SIZE}")
    return offset, limit


def _source(cur: Cursor, filters: Filters) -> str:
    """The rows to filter: the ``instances`` view, or the checked WHERE subquery."""
    if filters.where is None:
        return "instances"
    return f"({check_where(cur.con, filters.where)})"


def _conditions(filters: Filters, *, failures: bool) -> tuple[list[str], list[Any]]:
    """SQL conditions with ``?`` placeholders, and their values in order."""
    conds: list[str] = []
    params: list[Any] = []
    if filters.status == "failed":
        conds.append("status <> 'ok'")
    else:
        conds.append("status = ?")
        params.append(filters.status)
    for column, value in (("Modality", filters.modality), ("BodyPartExamined", filters.body_part)):
        if value is not None:
            conds.append(f'"{column}" = ?')
            params.append(value)
    if filters.date_from is not None:
        conds.append('"StudyDate" >= ?')
        params.append(filters.date_from)
    if filters.date_to is not None:
        conds.append('"StudyDate" <= ?')
        params.append(filters.date_to)
    if filters.text is not None:
        columns = ("path", "error") if failures else ("StudyDescription", "SeriesDescription")
        conds.append(
            "(" + " OR ".join(f"contains(lower(coalesce(\"{c}\", '')), ?)" for c in columns) + ")"
        )
        params.extend([filters.text.lower()] * len(columns))
    return conds, params


def thumbnail_url(row_id: int, frame: int, token: str) -> str:
    """The API address of one drawn frame (``v`` changes when the lake does)."""
    return f"/api/thumbnail/{row_id}?frame={frame}&v={token}"


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


# --------------------------------------------------------------------------- series grid

_SERIES_PAGE_SQL = """
WITH matched AS (
    SELECT DISTINCT "SeriesInstanceUID" FROM {source} AS i
    WHERE "SeriesInstanceUID" IS NOT NULL AND {conditions}
), page AS (
    SELECT
        "SeriesInstanceUID",
        min("StudyInstanceUID") AS "StudyInstanceUID",
        min("Modality") AS "Modality",
        min("BodyPartExamined") AS "BodyPartExamined",
        min("SeriesDescription") AS "SeriesDescription",
        min("StudyDescription") AS "StudyDescription",
        min("SeriesNumber") AS "SeriesNumber",
        min("StudyDate") AS study_date,
        count(*) AS n_instances,
        coalesce(sum(CASE WHEN has_pixel_data THEN coalesce("NumberOfFrames", 1) ELSE 0 END), 0)
            ::BIGINT AS n_frames
    FROM instances
    WHERE status = 'ok'
        AND "SeriesInstanceUID" IN (SELECT "SeriesInstanceUID" FROM matched)
    GROUP BY "SeriesInstanceUID"
)
SELECT *, count(*) OVER () AS total FROM page
ORDER BY study_date DESC NULLS LAST, "StudyInstanceUID", "SeriesNumber" NULLS LAST,
    "SeriesInstanceUID"
LIMIT ? OFFSET ?
"""

_SERIES_COUNT_SQL = """
SELECT count(DISTINCT "SeriesInstanceUID") FROM {source} AS i
WHERE "SeriesInstanceUID" IS NOT NULL AND {conditions}
"""

# The frame to show for each series: the instance nearest the middle by
# InstanceNumber among those with a drawn frame, and its middle frame.
_COVERS_SQL = """
WITH inst AS (
    SELECT row_id, "SeriesInstanceUID" AS uid,
        row_number() OVER (
            PARTITION BY "SeriesInstanceUID" ORDER BY "InstanceNumber" NULLS LAST, path
        ) AS rn,
        count(*) OVER (PARTITION BY "SeriesInstanceUID") AS n
    FROM instances
    WHERE status = 'ok' AND "SeriesInstanceUID" IN (SELECT unnest(?::VARCHAR[]))
), drawn AS (
    SELECT row_id, list(DISTINCT frame ORDER BY frame) AS frames FROM thumbnails
    WHERE status = 'ok' AND data IS NOT NULL AND row_id IN (SELECT row_id FROM inst)
    GROUP BY row_id
)
SELECT uid, inst.row_id, drawn.frames FROM inst JOIN drawn USING (row_id)
QUALIFY row_number() OVER (PARTITION BY uid ORDER BY abs(rn - (n + 1) / 2.0), rn) = 1
"""


def series_page(cur: Cursor, filters: Filters, offset: int, limit: int) -> dict[str, Any]:
    """One page of the series grid, newest study first.

    Returns:
        ``{"items": [...], "total": N, "offset": offset, "next_offset": M or None}``;
        each item has the series' tags, ``n_instances``, ``n_frames`` and
        ``thumbnail`` (a URL, or None when no instance of the series was drawn).

    Raises:
        UnsafeClause: The WHERE clause was refused.
        QueryTimeout: The query ran too long.
        duckdb.Error: The WHERE clause failed (unknown column, bad type).
    """
    source = _source(cur, filters)
    conds, params = _conditions(filters, failures=False)
    sql = _SERIES_PAGE_SQL.format(source=source, conditions=" AND ".join(conds))
    rows = cur.fetch_dicts(sql, [*params, limit, offset])
    if rows:
        total = int(rows[0].pop("total"))
        for row in rows[1:]:
            row.pop("total")
    else:
        count_sql = _SERIES_COUNT_SQL.format(source=source, conditions=" AND ".join(conds))
        total = int(cur.fetch(count_sql, params)[0][0])
    covers: dict[str, tuple[int, list[int]]] = {}
    if rows and cur.has_thumbnails:
        uids = [row["SeriesInstanceUID"] for row in rows]
        covers = {uid: (rid, frames) for uid, rid, frames in cur.fetch(_COVERS_SQL, [uids])}
    items = []
    for row in rows:
        cover = covers.get(row["SeriesInstanceUID"])
        row["study_date"] = _iso(row["study_date"])
        row["thumbnail"] = (
            thumbnail_url(cover[0], cover[1][len(cover[1]) // 2], cur.token) if cover else None
        )
        items.append(row)
    return _page(items, total, offset, limit)


# --------------------------------------------------------------------------- failures

_FAILURES_SQL = """
SELECT row_id::VARCHAR AS row_id, path, relative_path, status, error, size,
    count(*) OVER () AS total
FROM {source} AS i
WHERE {conditions}
ORDER BY path
LIMIT ? OFFSET ?
"""


def failures_page(cur: Cursor, filters: Filters, offset: int, limit: int) -> dict[str, Any]:
    """One page of the rows that are not ``ok``, with their error text, by path.

    Returns:
        ``{"items": [...], "total": N, "offset": offset, "next_offset": M or None}``.

    Raises:
        UnsafeClause: The WHERE clause was refused.
        QueryTimeout: The query ran too long.
        duckdb.Error: The WHERE clause failed.
    """
    if filters.status == "ok":
        filters = dataclasses.replace(filters, status="failed")
    source = _source(cur, filters)
    conds, params = _conditions(filters, failures=True)
    sql = _FAILURES_SQL.format(source=source, conditions=" AND ".join(conds))
    rows = cur.fetch_dicts(sql, [*params, limit, offset])
    total = int(rows[0]["total"]) if rows else 0
    if not rows and offset:
        count = f"SELECT count(*) FROM {source} AS i WHERE {' AND '.join(conds)}"
        total = int(cur.fetch(count, params)[0][0])
    for row in rows:
        row.pop("total")
    return _page(rows, total, offset, limit)


def _page(items: list[dict[str, Any]], total: int, offset: int, limit: int) -> dict[str, Any]:
    """The paging envelope every list endpoint answers with."""
    end = offset + len(items)
    return {
        "items": items,
        "total": total,
        "offset": offset,
        "limit": limit,
        "next_offset": end if end < total and items else None,
    }


# --------------------------------------------------------------------------- facets


def facets(cur: Cursor) -> dict[str, Any]:
    """Values for the filter bar: modalities, body parts (with counts) and statuses."""
    rows = cur.fetch(
        """
        SELECT 'modality' AS facet, "Modality" AS value, count(DISTINCT "SeriesInstanceUID")
        FROM instances WHERE status = 'ok' AND "Modality" IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT 'body_part', "BodyPartExamined", count(DISTINCT "SeriesInstanceUID")
        FROM instances WHERE status = 'ok' AND "BodyPartExamined" IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT 'status', status, count(*) FROM instances GROUP BY ALL
        ORDER BY 1, 2
        """
    )
    out: dict[str, Any] = {"modality": [], "body_part": [], "status": {}, "token": cur.token}
    for facet, value, count in rows:
        if facet == "status":
            out["status"][value] = count
        else:
            out[facet].append({"value": value, "count": count})
    return out


# --------------------------------------------------------------------------- one series

_INSTANCE_COLUMNS = """
    row_id, path, relative_path, size, "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "Rows", "Columns",
    "PhotometricInterpretation", "TransferSyntaxUID", has_pixel_data, "Modality"
"""


def _position(row: Mapping[str, Any]) -> float | None:
    """Where a slice lies along its normal (IPP · (row × column cosines)), else its z."""
    ipp = row.get("ImagePositionPatient")
    iop = row.get("ImageOrientationPatient")
    if not ipp or len(ipp) != 3 or any(v is None for v in ipp):
        return None
    if iop and len(iop) == 6 and all(v is not None for v in iop):
        r, c = iop[:3], iop[3:]
        normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        if any(normal):
            return float(sum(p * n for p, n in zip(ipp, normal, strict=True)))
    return float(ipp[2])


def instance_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key of a series' instances: InstanceNumber, then position, then path."""
    number = row.get("InstanceNumber")
    position = _position(row)
    return (
        number is None,
        number if number is not None else 0,
        position is None,
        position if position is not None else 0.0,
        row.get("path") or "",
    )


def frames_of(cur: Cursor, row_ids: list[int]) -> dict[int, list[int]]:
    """The drawn frames of each instance (only instances with at least one)."""
    if not row_ids or not cur.has_thumbnails:
        return {}
    rows = cur.fetch(
        """
        SELECT row_id, list(DISTINCT frame ORDER BY frame) FROM thumbnails
        WHERE status = 'ok' AND data IS NOT NULL AND row_id IN (SELECT unnest(?::BIGINT[]))
        GROUP BY row_id
        """,
        [row_ids],
    )
    return {int(rid): list(frames) for rid, frames in rows}


def series_detail(cur: Cursor, uid: str) -> dict[str, Any] | None:
    """A series and all its ``ok`` instances, in order, with their drawn frames.

    Returns:
        ``{"series": {...}, "instances": [...]}``, or None when no such series.

    Raises:
        QueryTimeout: The query ran too long.
    """
    series = cur.fetch_dicts(
        """
        SELECT "SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesDescription",
            "SeriesNumber", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
            n_instances, n_frames, first_date AS study_date,
            (SELECT min("StudyDescription") FROM instances
             WHERE status = 'ok' AND "SeriesInstanceUID" = $uid) AS "StudyDescription"
        FROM series WHERE "SeriesInstanceUID" = $uid
        """,
        {"uid": uid},
    )
    if not series:
        return None
    head = {k: _iso(v) for k, v in series[0].items()}
    rows = cur.fetch_dicts(
        f"""SELECT {_INSTANCE_COLUMNS} FROM instances
        WHERE status = 'ok' AND "SeriesInstanceUID" = ?""",
        [uid],
    )
    rows.sort(key=instance_order)
    frames = frames_of(cur, [int(r["row_id"]) for r in rows])
    for row in rows:
        rid = int(row["row_id"])
        drawn = frames.get(rid, [])
        row["row_id"] = str(rid)  # JSON numbers lose 64-bit precision
        row["frames"] = drawn
        row["thumbnails"] = [thumbnail_url(rid, f, cur.token) for f in drawn]
        row["download"] = download_url(row["path"])
    return {"series": head, "instances": rows}


def download_url(path: str) -> str:
    """The API address that streams the original file of a lake row."""
    import urllib.parse

    return "/api/download?" + urllib.parse.urlencode({"path": path})


# --------------------------------------------------------------------------- one instance


def instance_detail(cur: Cursor, row_id: int) -> dict[str, Any] | None:
    """One row of ``instances`` with its header as a tag table.

    Returns:
        The row's file and parse columns, ``tags`` (see
        :func:`dicomlake.viewer.tags.tag_rows`), ``frames`` and ``download``; None when
        no row has that id.

    Raises:
        QueryTimeout: The query ran too long.
    """
    rows = cur.fetch_dicts(
        """SELECT row_id, path, relative_path, size, status, error, warnings,
            "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", meta
        FROM instances WHERE row_id = ? LIMIT 1""",
        [row_id],
    )
    if not rows:
        return None
    row = rows[0]
    meta = row.pop("meta")
    try:
        parsed = json.loads(meta) if meta else {}
    except ValueError:
        parsed = {}
    row["tags"] = tag_rows(parsed if isinstance(parsed, dict) else {})
    row["row_id"] = str(row["row_id"])
    row["frames"] = frames_of(cur, [row_id]).get(row_id, [])
    row["download"] = download_url(row["path"])
    return row


def thumbnail(cur: Cursor, row_id: int, frame: int | None) -> tuple[bytes, str] | None:
    """The drawn image of one frame (the first drawn one when ``frame`` is None).

    Returns:
        ``(data, format)`` (format 'png' or 'jpeg'), or None when there is none.
    """
    if not cur.has_thumbnails:
        return None
    sql = """SELECT data, format FROM thumbnails
        WHERE row_id = ? AND status = 'ok' AND data IS NOT NULL {frame}
        ORDER BY frame LIMIT 1"""
    params: list[Any] = [row_id]
    if frame is not None:
        params.append(frame)
    rows = cur.fetch(sql.format(frame="AND frame = ?" if frame is not None else ""), params)
    if not rows:
        return None
    data, fmt = rows[0]
    return bytes(data), (fmt or "png")


def lake_path(cur: Cursor, path: str) -> str | None:
    """``path`` as stored in the lake, or None when no row has it (never open others)."""
    rows = cur.fetch("SELECT path FROM instances WHERE path = ? LIMIT 1", [path])
    return rows[0][0] if rows else None
