"""Series as volumes: slice geometry from the lake, and the ``volumes`` table.

Geometry comes from the ``instances`` table alone, never from pixels: the typed
columns *Image Position (Patient)*, *Image Orientation (Patient)*, *Pixel Spacing*,
*Rows* and *Columns* of each single-frame instance, and, for an enhanced multi-frame
instance (*Number of Frames* > 1), the per-frame functional groups of its ``meta``
JSON: (0020,9113) *Plane Position Sequence*, (0020,9116) *Plane Orientation Sequence*
and (0028,9110) *Pixel Measures Sequence*, each looked up in the frame's item of
(5200,9230) *Per-Frame Functional Groups Sequence*, then in (5200,9229) *Shared
Functional Groups Sequence*. Only those rows' ``meta`` is read.

:func:`build_volumes` checks every series (see :mod:`dicomlake.dicom.geometry`) and
overwrites the lake's ``volumes`` table with one row per series: its geometry when
it is one regular volume, else the reason it is not. The table is derived: each run
recomputes it whole, so it never holds a series that is no longer in the lake.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import duckdb
import pyarrow as pa

from dicomlake.dicom.geometry import (
    GeometryTolerance,
    Rejection,
    SliceRecord,
    VolumeGeometry,
    series_geometry,
)
from dicomlake.errors import QueryError
from dicomlake.lake.location import VOLUMES_TABLE
from dicomlake.lake.selection import PRIVATE, query_columns, strip_query
from dicomlake.lake.writer import TableWriter
from dicomlake.schema import VOLUMES_SCHEMA

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)


#: What the slice query returns for each ok instance with pixel data. ``meta`` only
#: for multi-frame instances, whose per-frame geometry lives there.
_SLICE_SQL: Final = """
SELECT i."SeriesInstanceUID", i."StudyInstanceUID", i."Modality", i.path, i.size,
    i.modification_time, i."NumberOfFrames", i."Rows", i."Columns", i."PixelSpacing",
    i."ImagePositionPatient", i."ImageOrientationPatient",
    CASE WHEN coalesce(i."NumberOfFrames", 1) > 1 THEN i.meta END AS meta
FROM instances i
WHERE i.status = 'ok' AND i.has_pixel_data AND i."SeriesInstanceUID" IS NOT NULL
"""

_ORDER: Final = ' ORDER BY i."SeriesInstanceUID", i.path'

# DICOM JSON keys of the functional groups and the attributes inside them.
_SHARED, _PER_FRAME = "52009229", "52009230"
_PLANE_POSITION, _POSITION = "00209113", "00200032"
_PLANE_ORIENTATION, _ORIENTATION = "00209116", "00200037"
_PIXEL_MEASURES, _PIXEL_SPACING = "00289110", "00280030"


class RejectedSeries(NamedTuple):
    """A selected series that is not one regular volume."""

    SeriesInstanceUID: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SeriesSlices:
    """The slices of one series, as the lake describes them (no pixels).

    Attributes:
        SeriesInstanceUID: The series.
        StudyInstanceUID: Its study.
        Modality: Its modality (of the first instance).
        records: One record per frame of each instance, ordered by path and frame.
        files: path → (size, modification time) of each instance, the cache key.
    """

    SeriesInstanceUID: str
    StudyInstanceUID: str | None
    Modality: str | None
    records: tuple[SliceRecord, ...]
    files: Mapping[str, tuple[int | None, datetime | None]] = field(repr=False)

    def geometry(
        self, tolerance: GeometryTolerance | float | None = None
    ) -> VolumeGeometry | Rejection:
        """The series' :func:`~dicomlake.dicom.geometry.series_geometry`.

        Raises:
            TypeError: ``tolerance`` is not a tolerance.
            ValueError: ``tolerance`` is an invalid number.
        """
        return series_geometry(self.records, tolerance)


@dataclass(frozen=True, slots=True)
class VolumesSummary:
    """What :func:`build_volumes` wrote.

    Attributes:
        series: Series checked.
        ok: Series that are one regular volume.
        rejected: Rejected series per reason code.
        seconds: Wall time.
    """

    series: int
    ok: int
    rejected: dict[str, int]
    seconds: float

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        return (
            f"volumes: {self.series} series, {self.ok} volumes ok, "
            f"{sum(self.rejected.values())} rejected" + (f" ({reasons})" if reasons else "")
        )


# --------------------------------------------------------------------------- slices


def _floats(value: Any, length: int) -> tuple[float, ...] | None:
    """``value`` as ``length`` floats (DICOM JSON may give DS as text), else None."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == length else None


def _first_item(element: Any) -> dict[str, Any]:
    """The first item of a DICOM JSON sequence element, or {}."""
    if isinstance(element, dict):
        items = element.get("Value") or []
        if items and isinstance(items[0], dict):
            return items[0]
    return {}


def _attribute(groups: Mapping[str, Any], sequence: str, key: str, length: int) -> Any:
    element = _first_item(groups.get(sequence)).get(key)
    return _floats(element.get("Value"), length) if isinstance(element, dict) else None


def frame_records(
    path: str,
    meta: str | None,
    frames: int,
    *,
    rows: int | None,
    columns: int | None,
    orientation: Sequence[float] | None = None,
    pixel_spacing: Sequence[float] | None = None,
) -> list[SliceRecord]:
    """One record per frame of a multi-frame instance, from its ``meta`` JSON.

    Each frame's position, orientation and pixel spacing come from its item of the
    *Per-Frame Functional Groups Sequence*, else the *Shared Functional Groups
    Sequence*; orientation and spacing fall back to the instance's own top-level
    attributes (``orientation``, ``pixel_spacing``). A frame without a position gets
    None: a single top-level *Image Position (Patient)* places only one frame.

    Args:
        path: The instance's path.
        meta: Its header as DICOM JSON, or None.
        frames: *Number of Frames*.
        rows: *Rows*.
        columns: *Columns*.
        orientation: The instance's top-level *Image Orientation (Patient)*.
        pixel_spacing: The instance's top-level *Pixel Spacing*.

    Returns:
        ``frames`` records, in frame order.
    """
    try:
        header = json.loads(meta) if meta else {}
    except ValueError:
        header = {}
    shared = _first_item(header.get(_SHARED))
    per_frame = (header.get(_PER_FRAME) or {}).get("Value") or []
    records = []
    for index in range(frames):
        groups = per_frame[index] if index < len(per_frame) else {}
        groups = groups if isinstance(groups, dict) else {}

        def find(sequence: str, key: str, length: int, groups: dict[str, Any] = groups) -> Any:
            return _attribute(groups, sequence, key, length) or _attribute(
                shared, sequence, key, length
            )

        records.append(
            SliceRecord(
                path=path,
                frame=index,
                position=find(_PLANE_POSITION, _POSITION, 3),
                orientation=find(_PLANE_ORIENTATION, _ORIENTATION, 6) or _floats(orientation, 6),
                pixel_spacing=find(_PIXEL_MEASURES, _PIXEL_SPACING, 2) or _floats(pixel_spacing, 2),
                rows=rows,
                columns=columns,
            )
        )
    return records


def _instance_records(row: Mapping[str, Any]) -> list[SliceRecord]:
    frames = row["NumberOfFrames"] or 1
    if frames > 1:
        return frame_records(
            row["path"],
            row["meta"],
            frames,
            rows=row["Rows"],
            columns=row["Columns"],
            orientation=row["ImageOrientationPatient"],
            pixel_spacing=row["PixelSpacing"],
        )
    return [
        SliceRecord(
            path=row["path"],
            frame=0,
            position=_floats(row["ImagePositionPatient"], 3),
            orientation=_floats(row["ImageOrientationPatient"], 6),
            pixel_spacing=_floats(row["PixelSpacing"], 2),
            rows=row["Rows"],
            columns=row["Columns"],
        )
    ]


def group_slices(rows: pa.Table) -> dict[str, SeriesSlices]:
    """The rows of the slice query, grouped into :class:`SeriesSlices` by series.

    Args:
        rows: Rows in the shape of the slice query (one per instance).

    Returns:
        SeriesInstanceUID → its slices, in the order the series first appear.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows.to_pylist():
        grouped.setdefault(row["SeriesInstanceUID"], []).append(row)
    result = {}
    for uid, instances in grouped.items():
        instances.sort(key=lambda r: r["path"])
        records = [record for row in instances for record in _instance_records(row)]
        result[uid] = SeriesSlices(
            SeriesInstanceUID=uid,
            StudyInstanceUID=instances[0]["StudyInstanceUID"],
            Modality=instances[0]["Modality"],
            records=tuple(records),
            files={r["path"]: (r["size"], r["modification_time"]) for r in instances},
        )
    return result


def _fail(sql: str, exc: duckdb.Error) -> QueryError:
    return QueryError(f"the query failed: {str(exc).splitlines()[0]}", sql=sql)


def read_series_slices(
    lake: str,
    where: str | None = None,
    *,
    storage_options: StorageOptions = None,
) -> dict[str, SeriesSlices]:
    """The slices of every series of the lake, or of the instances ``where`` picks.

    Args:
        lake: The lake folder or URI.
        where: A SQL expression over the ``instances`` columns (as in ``WHERE
            Modality = 'CT'``); only the instances it is true for form the series.
        storage_options: Options for object storage.

    Returns:
        SeriesInstanceUID → its slices, for ``ok`` instances with pixel data.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
    """
    from dicomlake.lake.sql import connect

    sql = _SLICE_SQL
    if where is not None and where.strip():
        sql += f" AND ({where.strip().rstrip(';')})"
    con = connect(lake, storage_options=storage_options)
    try:
        table = con.sql(sql + _ORDER).to_arrow_table()
    except duckdb.Error as exc:
        raise _fail(where or sql, exc) from exc
    finally:
        con.close()
    return group_slices(table)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def select_series(
    lake: str,
    sql: str,
    *,
    label: str | None = None,
    storage_options: StorageOptions = None,
) -> tuple[pa.Table, dict[str, SeriesSlices]]:
    """The series a user's query selects, and their slices.

    The query must return ``SeriesInstanceUID``. When it also returns ``path``, only
    the instances it names form each series; otherwise every ``ok`` instance with
    pixel data of each selected series does (so ``SELECT * FROM series`` works).

    Args:
        lake: The lake folder or URI.
        sql: The user's query.
        label: A column of the query to carry per series (its value on the series'
            first row; every row of a series must agree).
        storage_options: Options for object storage.

    Returns:
        One row per selected series in the query's order (``SeriesInstanceUID`` and
        ``label`` when given), and SeriesInstanceUID → slices for those that have
        any.

    Raises:
        QueryError: The query fails, lacks ``SeriesInstanceUID`` (or ``label``), or
            its rows of one series disagree on the label.
        TableNotFound: Nothing has been ingested into the lake.
    """
    from dicomlake.lake.sql import connect

    con = connect(lake, storage_options=storage_options)
    try:
        columns = query_columns(con, sql)
        needed = ["SeriesInstanceUID"] + ([label] if label is not None else [])
        missing = [c for c in needed if c not in columns]
        if missing:
            raise QueryError(
                f"the query must return the column(s) {missing} (SeriesInstanceUID: the "
                f"series to make volumes of; a label column); it returns {columns}",
                sql=sql,
            )
        keep = ["SeriesInstanceUID"] + (["path"] if "path" in columns else [])
        if label is not None and label not in keep:
            keep.append(label)
        text = strip_query(sql)
        picked = ", ".join(_quote(c) for c in keep)
        selected = f"{PRIVATE}selected"
        try:
            con.execute(
                f"CREATE TEMP TABLE {selected} AS SELECT {picked}, row_number() OVER () "
                f'AS {PRIVATE}order FROM ({text}) WHERE "SeriesInstanceUID" IS NOT NULL'
            )
            series = _series_rows(con, selected, label, sql)
            if "path" in keep:
                match = (
                    f"AND EXISTS (SELECT 1 FROM {selected} s WHERE s.path = i.path "
                    'AND s."SeriesInstanceUID" = i."SeriesInstanceUID")'
                )
            else:
                match = f'AND i."SeriesInstanceUID" IN (SELECT "SeriesInstanceUID" FROM {selected})'
            rows = con.sql(f"{_SLICE_SQL} {match} {_ORDER}").to_arrow_table()
        except duckdb.Error as exc:
            raise _fail(sql, exc) from exc
    finally:
        con.close()
    return series, group_slices(rows)


def _series_rows(
    con: duckdb.DuckDBPyConnection, selected: str, label: str | None, sql: str
) -> pa.Table:
    """One row per series of the selection, in the query's order, with its label."""
    order = f"{PRIVATE}order"
    if label is None:
        return con.sql(
            f'SELECT "SeriesInstanceUID" FROM {selected} GROUP BY 1 ORDER BY min({order})'
        ).to_arrow_table()
    column = _quote(label)
    table = con.sql(
        f'SELECT "SeriesInstanceUID", arg_min({column}, {order}) AS {column}, '
        f"count(DISTINCT {column}) AS {PRIVATE}labels FROM {selected} GROUP BY 1 "
        f"ORDER BY min({order})"
    ).to_arrow_table()
    disagree = [i for i, n in enumerate(table.column(f"{PRIVATE}labels").to_pylist()) if n > 1]
    if disagree:
        raise QueryError(
            f"the label column {label!r} has different values within {len(disagree)} "
            "series; a volume has one label: return one row per series or a label that "
            "is the same on every row of a series",
            sql=sql,
        )
    return table.drop_columns([f"{PRIVATE}labels"])


# --------------------------------------------------------------------------- table


def _uniform(values: Sequence[Any]) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else None


def volume_row(
    series: SeriesSlices, result: VolumeGeometry | Rejection, created_at: datetime
) -> dict[str, Any]:
    """The ``volumes`` table row of one series and its check result."""
    row: dict[str, Any] = {
        "SeriesInstanceUID": series.SeriesInstanceUID,
        "StudyInstanceUID": series.StudyInstanceUID,
        "Modality": series.Modality,
        "created_at": created_at,
    }
    if isinstance(result, Rejection):
        records = series.records
        return row | {
            "status": "rejected",
            "reason": result.reason,
            "message": result.message,
            "n_slices": result.n_slices,
            "rows": _uniform([r.rows for r in records]),
            "columns": _uniform([r.columns for r in records]),
            "paths": [r.path for r in records],
            "frames": [r.frame for r in records],
        }
    return row | {
        "status": "ok",
        "n_slices": result.n_slices,
        "rows": result.rows,
        "columns": result.columns,
        "spacing_row": result.spacing[0],
        "spacing_column": result.spacing[1],
        "spacing_slice": result.spacing[2],
        "orientation": list(result.orientation),
        "origin": list(result.origin),
        "affine": [float(v) for v in result.affine.reshape(-1)],
        "paths": list(result.paths),
        "frames": list(result.frames),
    }


def build_volumes(
    lake: str,
    where: str | None = None,
    *,
    storage_options: StorageOptions = None,
    tolerance: GeometryTolerance | float | None = None,
) -> VolumesSummary:
    """Check the geometry of every series and overwrite the lake's ``volumes`` table.

    No pixels are read. The table then holds one row per series (see
    :data:`VOLUMES_SCHEMA`) and is a view of the lake's SQL connection::

        SELECT reason, count(*) FROM volumes GROUP BY reason

    Args:
        lake: The lake folder or URI.
        where: A SQL expression over ``instances``: only the instances it is true for
            form the series (``Modality = 'CT'``). The table is overwritten with the
            series this run checked, so a ``where`` leaves only those.
        storage_options: Options for object storage.
        tolerance: How far slices may be from a regular grid (see
            :class:`~dicomlake.dicom.geometry.GeometryTolerance`; a number is the
            relative slice-spacing tolerance).

    Returns:
        Counts of series, volumes and rejections per reason.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: The ``volumes`` table cannot be written.
        TypeError: ``tolerance`` is not a tolerance.
        ValueError: ``tolerance`` is an invalid number.

    Example:
        >>> build_volumes("lake", "Modality IN ('CT', 'MR')")  # doctest: +SKIP
        VolumesSummary(series=12, ok=9, rejected={'orientation_differs': 3}, ...)
    """
    started = time.perf_counter()
    tol = GeometryTolerance.of(tolerance)
    slices = read_series_slices(lake, where, storage_options=storage_options)
    created_at = datetime.now(UTC)
    rows = []
    rejected: Counter[str] = Counter()
    for series in slices.values():
        result = series.geometry(tol)
        if isinstance(result, Rejection):
            rejected[result.reason] += 1
        rows.append(volume_row(series, result, created_at))
    writer = TableWriter(lake, VOLUMES_TABLE, storage_options=storage_options)
    writer.replace_all(pa.Table.from_pylist(rows, schema=VOLUMES_SCHEMA))
    summary = VolumesSummary(
        series=len(rows),
        ok=len(rows) - sum(rejected.values()),
        rejected=dict(rejected),
        seconds=time.perf_counter() - started,
    )
    log.info("%s in %.1f s", summary, summary.seconds)
    return summary
