"""Segmentation labels: SEG and RTSTRUCT masks on the volumes of the series they label.

:func:`build_segments` finds every segmentation of the lake (a DICOM SEG or Labelmap
SEG, an RT structure set: by *SOP Class UID*, else *Modality*), reads it, places its
labels on the volume of the series it references (that series' geometry from the
lake, as :mod:`dicomlake.jobs.volumes` checks it) and writes the ``segments`` table:
one row per segment or ROI with its codes, voxel count and bounding box, or why it
could not be placed (see :mod:`dicomlake.dicom.segments` for the reasons). A
segmentation's rows replace those an earlier run wrote for it.

:func:`load_labels` gives one segmentation's masks on its volume with the volume's
affine, for writers (NIfTI) and for a look at one case; the datasets use
:func:`label_array`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from dicomlake.catalog import open_ref
from dicomlake.dicom.geometry import GeometryTolerance, Rejection, VolumeGeometry
from dicomlake.dicom.rtstruct import RTSTRUCT_STORAGE, StructureSet, read_rtstruct, rtstruct_masks
from dicomlake.dicom.seg import SEG_CLASSES, SegFile, read_seg, seg_masks
from dicomlake.dicom.segments import (
    EMPTY,
    REFERENCE_MISSING,
    UNREADABLE,
    VOLUME_REJECTED,
    LabelMasks,
    Problem,
    SegmentInfo,
    TargetVolume,
    mask_extent,
)
from dicomlake.errors import ExtractError, QueryError, TableNotFound
from dicomlake.jobs.volumes import SeriesSlices, read_series_slices
from dicomlake.lake.location import SEGMENTS_TABLE
from dicomlake.lake.writer import TableWriter
from dicomlake.rows import error_text
from dicomlake.schema import SEGMENTS_SCHEMA
from dicomlake.storage.locations import file_uri

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)

Segmentation = SegFile | StructureSet

#: The instances that are segmentations.
SEGMENTATION_SQL: Final = (
    "status = 'ok' AND (\"SOPClassUID\" IN ("
    + ", ".join(f"'{uid}'" for uid in (*SEG_CLASSES, RTSTRUCT_STORAGE))
    + ") OR \"Modality\" IN ('SEG', 'RTSTRUCT'))"
)

_FIND_SQL: Final = (
    'SELECT row_id, path, size, modification_time, "SOPInstanceUID", "StudyInstanceUID", '
    '"Modality", "SOPClassUID" FROM instances WHERE '
)

#: Segmentations read and written per commit.
_CHUNK: Final = 32


@dataclass
class SegmentsSummary:
    """What :func:`build_segments` wrote.

    Attributes:
        segmentations: Files read.
        segments: Rows written (segments and ROIs, and one per unreadable file).
        ok: Rows placed on their volume with at least one voxel.
        empty: Rows placed with no voxel.
        errors: Rows not placed, per reason code.
        seconds: Wall time.
    """

    segmentations: int = 0
    segments: int = 0
    ok: int = 0
    empty: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        return (
            f"segments: {self.segmentations} segmentations, {self.segments} segments, "
            f"{self.ok} ok, {self.empty} empty, {sum(self.errors.values())} not placed"
            + (f" ({reasons})" if reasons else "")
        )


# --------------------------------------------------------------------------- reading


def is_seg(sop_class: str | None, modality: str | None) -> bool:
    """Whether an instance is read as a SEG (else as an RT structure set)."""
    if sop_class in SEG_CLASSES:
        return True
    return sop_class != RTSTRUCT_STORAGE and modality == "SEG"


def read_segmentation(
    path: str,
    sop_class: str | None,
    modality: str | None,
    *,
    storage_options: StorageOptions = None,
) -> Segmentation:
    """Read the SEG or RT structure set at ``path``.

    Raises:
        ImportError: highdicom is missing (SEG).
        Exception: The file cannot be read (OSError, pydicom's and highdicom's errors).
    """
    with open_ref(path, storage_options=storage_options) as fp:
        if is_seg(sop_class, modality):
            return read_seg(fp)
        return read_rtstruct(fp)


def _read_or_fail(
    path: str, sop_class: str | None, modality: str | None, storage_options: StorageOptions
) -> Segmentation:
    """:func:`read_segmentation`, its read errors raised as :class:`ExtractError`.

    Raises:
        ExtractError: The file cannot be read.
        ImportError: highdicom is missing (SEG).
    """
    try:
        return read_segmentation(path, sop_class, modality, storage_options=storage_options)
    except ImportError:
        raise
    except Exception as exc:
        raise ExtractError(
            f"cannot read segmentation {path}: {error_text(exc)}", path=path
        ) from exc


def referenced_series(doc: Segmentation) -> list[str | None]:
    """The series a segmentation labels, in file order (None: it names none)."""
    if isinstance(doc, SegFile):
        return [doc.referenced_series_uid]
    return list(dict.fromkeys(r.series_uid for r in doc.rois)) or [None]


def segments_of(doc: Segmentation, series_uid: str | None) -> tuple[SegmentInfo, ...]:
    """The segments of ``doc`` that label ``series_uid``."""
    if isinstance(doc, SegFile):
        return doc.segments
    return tuple(r.info for r in doc.rois if r.series_uid == series_uid)


def masks_on(doc: Segmentation, series_uid: str, target: TargetVolume) -> LabelMasks:
    """The masks of ``doc``'s segments that label ``series_uid``, on its volume."""
    if isinstance(doc, SegFile):
        return seg_masks(doc, target)
    return rtstruct_masks(doc, target, series_uid)


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True, slots=True)
class ReferencedVolume:
    """A referenced series that is one regular volume: its slices and placement."""

    series: SeriesSlices
    target: TargetVolume

    @property
    def geometry(self) -> VolumeGeometry:
        """The volume's geometry."""
        return self.target.geometry


def _in_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def referenced_volumes(
    lake: str,
    series_uids: Iterable[str],
    *,
    tolerance: GeometryTolerance | float | None = None,
    storage_options: StorageOptions = None,
) -> dict[str, ReferencedVolume | Problem]:
    """The volume of each series, or why labels cannot be placed on it.

    Raises:
        TableNotFound: Nothing has been ingested into the lake.
    """
    from dicomlake.lake.sql import connect

    uids = sorted(set(series_uids))
    if not uids:
        return {}
    listed = _in_list(uids)
    slices = read_series_slices(
        lake, f'"SeriesInstanceUID" IN ({listed})', storage_options=storage_options
    )
    con = connect(lake, storage_options=storage_options)
    try:
        sops = dict(
            con.execute(
                "SELECT path, \"SOPInstanceUID\" FROM instances WHERE status = 'ok' "
                f'AND has_pixel_data AND "SeriesInstanceUID" IN ({listed})'
            ).fetchall()
        )
    finally:
        con.close()
    found: dict[str, ReferencedVolume | Problem] = {}
    for uid in uids:
        series = slices.get(uid)
        if series is None:
            found[uid] = Problem(REFERENCE_MISSING, "the referenced series is not in the lake")
            continue
        result = series.geometry(tolerance)
        if isinstance(result, Rejection):
            found[uid] = Problem(
                VOLUME_REJECTED,
                f"the referenced series is not one regular volume: {result.reason}",
            )
            continue
        placed = {
            (str(sops[p]), f): k
            for k, (p, f) in enumerate(zip(result.paths, result.frames, strict=True))
            if sops.get(p)
        }
        found[uid] = ReferencedVolume(series, TargetVolume(result, placed))
    return found


# --------------------------------------------------------------------------- rows


def _base_row(row: Mapping[str, Any], created_at: datetime) -> dict[str, Any]:
    return {
        "row_id": row["row_id"],
        "path": row["path"],
        "SOPInstanceUID": row["SOPInstanceUID"],
        "StudyInstanceUID": row["StudyInstanceUID"],
        "Modality": row["Modality"],
        "size": row["size"],
        "modification_time": row["modification_time"],
        "created_at": created_at,
    }


def _segment_row(info: SegmentInfo) -> dict[str, Any]:
    codes: dict[str, Any] = {}
    for prefix, code in (("category", info.category), ("type", info.type)):
        codes[f"{prefix}_code_value"] = code.value if code else None
        codes[f"{prefix}_code_scheme"] = code.scheme if code else None
        codes[f"{prefix}_code_meaning"] = code.meaning if code else None
    return {
        "segment_number": info.number,
        "label": info.label,
        **codes,
        "algorithm_type": info.algorithm_type,
        "algorithm_name": info.algorithm_name,
    }


def _placed(masks: LabelMasks, info: SegmentInfo) -> dict[str, Any]:
    problem = masks.problems.get(info.number)
    if problem is not None:
        return {"status": "error", "reason": problem.reason, "message": problem.message}
    count, box = mask_extent(masks.masks[info.number])
    placed: dict[str, Any] = {"status": "ok", "voxel_count": count}
    if box is None:
        return placed | {"reason": EMPTY, "message": "the segment has no voxel on the volume"}
    names = ("min_row", "max_row", "min_column", "max_column", "min_slice", "max_slice")
    return placed | dict(zip(names, box, strict=True))


def segmentation_rows(
    row: Mapping[str, Any],
    doc: Segmentation | BaseException,
    volumes: Mapping[str, ReferencedVolume | Problem],
    created_at: datetime,
) -> list[dict[str, Any]]:
    """The ``segments`` rows of one segmentation (``doc``, or the error reading it)."""
    base = _base_row(row, created_at)
    if isinstance(doc, BaseException):
        return [base | {"status": "error", "reason": UNREADABLE, "message": error_text(doc)}]
    kind = doc.segmentation_type if isinstance(doc, SegFile) else "CONTOUR"
    rows = []
    for series_uid in referenced_series(doc):
        segments = segments_of(doc, series_uid)
        volume = volumes.get(series_uid) if series_uid is not None else None
        if series_uid is None:
            masks = LabelMasks.failed(
                segments, Problem(REFERENCE_MISSING, "the segmentation names no series")
            )
        elif isinstance(volume, ReferencedVolume):
            masks = masks_on(doc, series_uid, volume.target)
        else:
            problem = volume or Problem(
                REFERENCE_MISSING, "the referenced series is not in the lake"
            )
            masks = LabelMasks.failed(segments, problem)
        for info in segments:
            rows.append(
                base
                | {"segmentation_type": kind, "ReferencedSeriesInstanceUID": series_uid}
                | _segment_row(info)
                | _placed(masks, info)
            )
    return rows


def find_segmentations(
    lake: str, where: str | None = None, *, storage_options: StorageOptions = None
) -> pa.Table:
    """The lake's segmentation instances (those ``where`` also picks), by path.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
    """
    from dicomlake.lake.sql import connect

    sql = _FIND_SQL + SEGMENTATION_SQL
    if where is not None and where.strip():
        sql += f" AND ({where.strip().rstrip(';')})"
    con = connect(lake, storage_options=storage_options)
    try:
        return con.sql(sql + " ORDER BY path").to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"the query failed: {str(exc).splitlines()[0]}", sql=where or sql) from exc
    finally:
        con.close()


def build_segments(
    lake: str,
    where: str | None = None,
    *,
    storage_options: StorageOptions = None,
    tolerance: GeometryTolerance | float | None = None,
    progress: Callable[[SegmentsSummary], None] | None = None,
) -> SegmentsSummary:
    """Read every segmentation of the lake and write its rows of the ``segments`` table.

    Each segmentation's rows replace the rows an earlier run wrote for it; rows of
    segmentations this run did not select stay.

    Args:
        lake: The lake folder or URI.
        where: A SQL expression over ``instances`` that picks segmentations
            (``StudyDate >= '2024-01-01'``).
        storage_options: Options for object storage.
        tolerance: How far the referenced slices may be from a regular grid (see
            :class:`~dicomlake.dicom.geometry.GeometryTolerance`).
        progress: Called with the running summary after each segmentation.

    Returns:
        Counts of segmentations, segments and reasons.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
        LakeError: The ``segments`` table cannot be written.
        TypeError: ``tolerance`` is not a tolerance.
        ValueError: ``tolerance`` is an invalid number.

    Example:
        >>> build_segments("lake")  # doctest: +SKIP
        SegmentsSummary(segmentations=3, segments=7, ok=6, empty=1, ...)
    """
    started = time.perf_counter()
    tol = GeometryTolerance.of(tolerance)
    found = find_segmentations(lake, where, storage_options=storage_options).to_pylist()
    summary = SegmentsSummary()
    volumes: dict[str, ReferencedVolume | Problem] = {}
    with TableWriter(lake, SEGMENTS_TABLE, storage_options=storage_options) as writer:
        for start in range(0, len(found), _CHUNK):
            chunk = found[start : start + _CHUNK]
            docs: list[Segmentation | BaseException] = []
            for row in chunk:
                try:
                    docs.append(
                        read_segmentation(
                            row["path"],
                            row["SOPClassUID"],
                            row["Modality"],
                            storage_options=storage_options,
                        )
                    )
                except ImportError:
                    raise
                except Exception as exc:
                    log.debug("cannot read segmentation %s: %s", row["path"], type(exc).__name__)
                    docs.append(exc)
            wanted = {
                uid
                for doc in docs
                if not isinstance(doc, BaseException)
                for uid in referenced_series(doc)
                if uid is not None and uid not in volumes
            }
            volumes.update(
                referenced_volumes(lake, wanted, tolerance=tol, storage_options=storage_options)
            )
            created_at = datetime.now(UTC)
            rows: list[dict[str, Any]] = []
            for row, doc in zip(chunk, docs, strict=True):
                made = segmentation_rows(row, doc, volumes, created_at)
                _count(summary, made)
                rows.extend(made)
                if progress is not None:
                    progress(summary)
            writer.write(
                pa.Table.from_pylist(rows, schema=SEGMENTS_SCHEMA),
                instances=[r["row_id"] for r in chunk],
            )
    summary.seconds = time.perf_counter() - started
    log.info("%s in %.1f s", summary, summary.seconds)
    return summary


def _count(summary: SegmentsSummary, rows: Sequence[Mapping[str, Any]]) -> None:
    summary.segmentations += 1
    for row in rows:
        summary.segments += 1
        if row["status"] != "ok":
            summary.errors[row["reason"]] += 1
        elif row.get("reason") == EMPTY:
            summary.empty += 1
        else:
            summary.ok += 1


# --------------------------------------------------------------------------- one case


@dataclass(frozen=True, slots=True)
class LabelVolume:
    """One segmentation's labels on the volume of the series it labels.

    Attributes:
        array: uint8 ``(K, rows, columns, slices)``, one channel per segment in
            :attr:`segments` order; or ``(1, rows, columns, slices)`` of segment
            numbers for a labelmap.
        segments: The channels' segments.
        geometry: The volume's geometry: ``geometry.affine`` maps (row, column, slice,
            1) to patient coordinates (mm, LPS), as :class:`SeriesVolumeDataset`'s.
        series_uid: The labelled series.
        path: The segmentation file.
        sop_instance_uid: The segmentation's SOP Instance UID.
        problems: Segment number → why that segment is not a channel.
    """

    array: np.ndarray
    segments: tuple[SegmentInfo, ...]
    geometry: VolumeGeometry
    series_uid: str
    path: str
    sop_instance_uid: str
    problems: dict[int, Problem] = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        """4x4 float64 voxel → patient (LPS, mm)."""
        return self.geometry.affine


def label_array(
    path: str,
    sop_class: str | None,
    modality: str | None,
    series_uid: str,
    target: TargetVolume,
    numbers: Sequence[int] | None = None,
    *,
    labelmap: bool = False,
    storage_options: StorageOptions = None,
) -> tuple[np.ndarray, LabelMasks]:
    """Read one segmentation and stack its masks on ``target`` (see :meth:`LabelMasks.array`).

    Raises:
        ExtractError: The file cannot be read, or a segment of ``numbers`` cannot be
            placed on the volume.
        ImportError: highdicom is missing (SEG).
    """
    doc = _read_or_fail(path, sop_class, modality, storage_options)
    masks = masks_on(doc, series_uid, target)
    wanted = (
        tuple(numbers)
        if numbers is not None
        else tuple(s.number for s in masks.segments if s.number in masks.masks)
    )
    unplaced = [n for n in wanted if n not in masks.masks]
    if unplaced or not wanted:
        why = masks.problems.get(unplaced[0]) if unplaced else None
        raise ExtractError(
            f"segmentation {path}: segment(s) {unplaced or 'none'} cannot be placed on the "
            f"volume" + (f" ({why.reason}: {why.message})" if why else ""),
            path=path,
        )
    return masks.array(wanted, labelmap=labelmap), masks


def load_labels(
    lake: str,
    segmentation: str,
    *,
    series_uid: str | None = None,
    labelmap: bool = False,
    storage_options: StorageOptions = None,
    tolerance: GeometryTolerance | float | None = None,
) -> LabelVolume:
    """The masks of one segmentation on its referenced volume, with the affine.

    Args:
        lake: The lake folder or URI.
        segmentation: The segmentation's ``path`` in the lake, or its SOP Instance UID.
        series_uid: The series to place it on, for an RT structure set whose ROIs
            label several; None for the first it references.
        labelmap: One channel of segment numbers instead of one channel per segment.
        storage_options: Options for object storage.
        tolerance: How far the referenced slices may be from a regular grid.

    Returns:
        Every segment that could be placed, as channels; the others in ``problems``.

    Raises:
        QueryError: No segmentation in the lake has that path or SOP Instance UID.
        ExtractError: The file cannot be read, or no segment can be placed (the
            message says why: the series is missing, not a volume, another grid).
        TableNotFound: Nothing has been ingested into the lake.
    """
    from dicomlake.lake.sql import connect

    keys = [segmentation]
    if "://" not in segmentation:  # a local path as typed: the row holds its file:// URI
        keys.append(file_uri(os.path.abspath(segmentation)))
    con = connect(lake, storage_options=storage_options)
    try:
        table = con.sql(
            _FIND_SQL + SEGMENTATION_SQL + ' AND (list_contains($keys, path) OR "SOPInstanceUID" '
            "= $key) ORDER BY list_contains($keys, path) DESC, path LIMIT 1",
            params={"keys": keys, "key": segmentation},
        ).to_arrow_table()
    finally:
        con.close()
    if not table.num_rows:
        raise QueryError(
            "no SEG or RTSTRUCT instance of the lake has that path or SOP Instance UID",
            sql=segmentation,
        )
    row = table.to_pylist()[0]
    path = row["path"]
    doc = _read_or_fail(path, row["SOPClassUID"], row["Modality"], storage_options)
    series = [u for u in referenced_series(doc) if u is not None]
    chosen = series_uid or (series[0] if series else None)
    if chosen is None:
        raise ExtractError(f"segmentation {path} names no series", path=path)
    volume = referenced_volumes(
        lake, [chosen], tolerance=tolerance, storage_options=storage_options
    )[chosen]
    if isinstance(volume, Problem):
        raise ExtractError(f"segmentation {path}: {volume.reason}: {volume.message}", path=path)
    masks = masks_on(doc, chosen, volume.target)
    placed = tuple(s for s in masks.segments if s.number in masks.masks)
    if not placed:
        first = next(iter(masks.problems.values()), None)
        raise ExtractError(
            f"segmentation {path}: no segment can be placed on the volume"
            + (f" ({first.reason}: {first.message})" if first else ""),
            path=path,
        )
    return LabelVolume(
        array=masks.array(tuple(s.number for s in placed), labelmap=labelmap),
        segments=placed,
        geometry=volume.geometry,
        series_uid=chosen,
        path=path,
        sop_instance_uid=str(row["SOPInstanceUID"]),
        problems=dict(masks.problems),
    )


# --------------------------------------------------------------------------- selection


class RejectedSegmentation(NamedTuple):
    """A selected segmentation that gives no item, and why."""

    path: str
    SeriesInstanceUID: str | None
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SelectedSegmentation:
    """One segmentation on one series, as the ``segments`` table lists it.

    Attributes:
        path: The segmentation file.
        size: Its size (cache key).
        modification_time: Its modification time (cache key).
        sop_instance_uid: Its SOP Instance UID.
        sop_class: The SOP class it is read as (SEG or RT Structure Set Storage).
        modality: Its *Modality*.
        series_uid: The series it labels.
        numbers: The segment numbers of its channels, in channel order.
        labels: Their labels.
    """

    path: str
    size: int | None
    modification_time: datetime | None
    sop_instance_uid: str | None
    sop_class: str
    modality: str | None
    series_uid: str
    numbers: tuple[int, ...]
    labels: tuple[str | None, ...]


def select_segmentations(
    lake: str, sql: str, *, storage_options: StorageOptions = None
) -> tuple[list[SelectedSegmentation], list[RejectedSegmentation]]:
    """The segmentations a user's query selects, one per (file, labelled series).

    The query must return ``path`` or ``SOPInstanceUID`` of segmentations (a query
    over ``segments`` or ``instances``). When it also returns ``segment_number``,
    only those segments become channels. Channels are the selected segments that
    the ``segments`` table placed (``status = 'ok'``, empty ones too), in segment
    number order.

    Returns:
        The segmentations that have a channel, in the query's order, and the others
        with the reasons of their segments.

    Raises:
        QueryError: The query fails, or returns neither ``path`` nor
            ``SOPInstanceUID``.
        TableNotFound: The lake has no ``segments`` table (run ``dicomlake labels``)
            or no instances.
    """
    from dicomlake.lake.location import table_exists
    from dicomlake.lake.selection import PRIVATE, query_columns, strip_query
    from dicomlake.lake.sql import connect

    if not table_exists(lake, SEGMENTS_TABLE, storage_options=storage_options):
        raise TableNotFound(
            f"no segments table in lake {lake}: run `dicomlake labels --lake {lake}` first",
            lake=lake,
        )
    con = connect(lake, storage_options=storage_options)
    try:
        columns = query_columns(con, sql)
        keys = [str(c) for c in ("path", "SOPInstanceUID") if c in columns][:1]
        if not keys:
            raise QueryError(
                "the query must return path or SOPInstanceUID of segmentations (as "
                f"SELECT * FROM segments does); it returns {columns}",
                sql=sql,
            )
        if "segment_number" in columns:
            keys.append("segment_number")
        picked = ", ".join(f'"{k}"' for k in keys)
        match = " AND ".join(f's."{k}" = q."{k}"' for k in keys)
        selected, order = f"{PRIVATE}selected", f"{PRIVATE}order"
        try:
            con.execute(
                f"CREATE TEMP TABLE {selected} AS SELECT {picked}, row_number() OVER () "
                f"AS {order} FROM ({strip_query(sql)})"
            )
            table = con.sql(
                'SELECT s.path, s.size, s.modification_time, s."SOPInstanceUID", '
                's."Modality", s.segmentation_type, s."ReferencedSeriesInstanceUID", '
                "s.segment_number, s.label, s.status, s.reason, s.message, "
                f"min(q.{order}) AS {order} FROM segments s JOIN {selected} q ON {match} "
                f"GROUP BY ALL ORDER BY {order}, s.path, "
                's."ReferencedSeriesInstanceUID", s.segment_number'
            ).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"the query failed: {str(exc).splitlines()[0]}", sql=sql) from exc
    finally:
        con.close()
    grouped: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        grouped.setdefault((row["path"], row["ReferencedSeriesInstanceUID"]), []).append(row)
    chosen, rejected = [], []
    for (path, series_uid), rows in grouped.items():
        ok = [r for r in rows if r["status"] == "ok" and r["segment_number"] is not None]
        if not ok or series_uid is None:
            first = rows[0]
            rejected.append(
                RejectedSegmentation(
                    path, series_uid, first["reason"] or UNREADABLE, first["message"] or ""
                )
            )
            continue
        first = ok[0]
        contour = first["segmentation_type"] == "CONTOUR"
        chosen.append(
            SelectedSegmentation(
                path=path,
                size=first["size"],
                modification_time=first["modification_time"],
                sop_instance_uid=first["SOPInstanceUID"],
                sop_class=RTSTRUCT_STORAGE if contour else SEG_CLASSES[0],
                modality=first["Modality"],
                series_uid=series_uid,
                numbers=tuple(int(r["segment_number"]) for r in ok),
                labels=tuple(r["label"] for r in ok),
            )
        )
    return chosen, rejected
