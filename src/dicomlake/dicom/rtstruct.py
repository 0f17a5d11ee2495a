"""RT structure sets: ROIs, their contours, and the contours filled on a volume.

Read with pydicom. Each ROI of (3006,0020) *Structure Set ROI Sequence* has contours in
(3006,0039) *ROI Contour Sequence* (matched by *Referenced ROI Number*); a
CLOSED_PLANAR contour is a polygon of (3006,0050) *Contour Data* points in patient
coordinates (mm). Its series is the one (3006,0010) *Referenced Frame of Reference
Sequence* → *RT Referenced Study Sequence* → *RT Referenced Series Sequence* lists
under the ROI's frame of reference (else the first listed).

On the volume, each contour's points go through the inverse of the volume's affine
to voxel indices; the contour must lie on one slice (within
:data:`~dicomlake.dicom.segments.GRID_TOLERANCE` voxels). The contours of a slice are
filled together, even-odd (:func:`~dicomlake.dicom.rasterize.fill_polygons`), so a
contour inside another is a hole. POINT and OPEN_PLANAR contours enclose nothing and
are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any, Final

import numpy as np

from dicomlake.dicom.rasterize import fill_polygons
from dicomlake.dicom.segments import (
    GEOMETRY_MISMATCH,
    GRID_TOLERANCE,
    LabelMasks,
    Problem,
    SegmentInfo,
    TargetVolume,
)

RTSTRUCT_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True, slots=True)
class Roi:
    """One ROI: what the table lists, its series, and its closed contours.

    Attributes:
        info: Number, name and generation algorithm.
        series_uid: The series its frame of reference names, or None.
        contours: CLOSED_PLANAR contours, each ``(n, 3)`` patient coordinates (mm).
    """

    info: SegmentInfo
    series_uid: str | None
    contours: tuple[np.ndarray, ...]


@dataclass(frozen=True, slots=True)
class StructureSet:
    """An RT structure set as read.

    Attributes:
        sop_instance_uid: Its (0008,0018) *SOP Instance UID*.
        rois: Its ROIs, in (3006,0020) order.
    """

    sop_instance_uid: str
    rois: tuple[Roi, ...]

    @property
    def segments(self) -> tuple[SegmentInfo, ...]:
        """The ROIs' descriptions."""
        return tuple(r.info for r in self.rois)


def _series_by_frame_of_reference(ds: Any) -> dict[str | None, str]:
    """Frame of Reference UID → its first referenced series (None → the first of all)."""
    found: dict[str | None, str] = {}
    for frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                uid = series.get("SeriesInstanceUID")
                if uid:
                    found.setdefault(str(frame.get("FrameOfReferenceUID", "")), str(uid))
                    found.setdefault(None, str(uid))
    return found


def read_rtstruct(fp: IO[bytes] | Any) -> StructureSet:
    """Read an RT structure set from an open file (or a pydicom Dataset).

    Raises:
        ValueError: Contour data that are not triplets of numbers (pydicom errors and
            AttributeError for a broken file pass through).
    """
    import pydicom

    ds = fp if isinstance(fp, pydicom.Dataset) else pydicom.dcmread(fp, force=True)
    series = _series_by_frame_of_reference(ds)
    contours: dict[int, list[np.ndarray]] = {}
    for roi_contour in ds.get("ROIContourSequence") or []:
        number = int(roi_contour.ReferencedROINumber)
        for contour in roi_contour.get("ContourSequence") or []:
            if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData") or []], np.float64)
            if len(data) % 3:
                raise ValueError(f"ROI {number}: contour data of {len(data)} numbers, not triplets")
            contours.setdefault(number, []).append(data.reshape(-1, 3))
    rois = []
    for item in ds.get("StructureSetROISequence") or []:
        number = int(item.ROINumber)
        frame = str(item.get("ReferencedFrameOfReferenceUID", ""))
        rois.append(
            Roi(
                info=SegmentInfo(
                    number=number,
                    label=str(item.get("ROIName", "") or "") or None,
                    algorithm_type=str(item.get("ROIGenerationAlgorithm", "") or "") or None,
                ),
                series_uid=series.get(frame) or series.get(None),
                contours=tuple(contours.get(number, ())),
            )
        )
    return StructureSet(str(ds.SOPInstanceUID), tuple(rois))


def roi_mask(roi: Roi, target: TargetVolume) -> np.ndarray | Problem:
    """The ROI's contours filled on ``target``'s slices, or why they do not fit."""
    geometry = target.geometry
    by_slice: dict[int, list[np.ndarray]] = {}
    for number, points in enumerate(roi.contours, 1):
        if not len(points):
            continue
        index = target.voxel_indices(points)
        k = int(np.rint(index[:, 2].mean()))
        off = float(np.abs(index[:, 2] - k).max())
        if off > GRID_TOLERANCE or not 0 <= k < geometry.n_slices:
            return Problem(
                GEOMETRY_MISMATCH,
                f"contour {number} lies at slice index {index[:, 2].mean():.2f} "
                f"(up to {off:.2f} off) of a {geometry.n_slices}-slice volume",
            )
        by_slice.setdefault(k, []).append(index[:, :2])
    mask = np.zeros(geometry.shape, bool)
    for k, polygons in by_slice.items():
        mask[:, :, k] = fill_polygons(polygons, (geometry.rows, geometry.columns))
    return mask


def rtstruct_masks(structure: StructureSet, target: TargetVolume, series_uid: str) -> LabelMasks:
    """Fill the ROIs of ``structure`` that reference ``series_uid`` on its volume.

    ROIs of another series are left out of ``segments``.
    """
    rois = [r for r in structure.rois if r.series_uid == series_uid]
    masks: dict[int, np.ndarray] = {}
    problems: dict[int, Problem] = {}
    for roi in rois:
        result = roi_mask(roi, target)
        if isinstance(result, Problem):
            problems[roi.info.number] = result
        else:
            masks[roi.info.number] = result
    return LabelMasks(tuple(r.info for r in rois), masks, problems)
