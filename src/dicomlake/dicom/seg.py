"""DICOM SEG: its segments, and its frames as masks on the referenced series' volume.

Read with highdicom (``pip install 'dicomlake[ml]'``), which decodes the three
segmentation types: BINARY (one bit a pixel), FRACTIONAL (0 to (0062,000E) *Maximum
Fractional Value*: a pixel is in the segment from half of it up) and LABELMAP (each
pixel holds a segment number; Labelmap Segmentation Storage).

Each frame is placed on a slice of the volume by its (0008,9124) *Derivation Image
Sequence* → (0008,2112) *Source Image Sequence* (the referenced SOP Instance UID and
frame), else by its (0020,9113) *Plane Position Sequence*: the frame's first pixel
centre must then be the volume's first row and column on one of its slices, within
:data:`~dicomlake.dicom.segments.GRID_TOLERANCE` voxels. A BINARY or FRACTIONAL frame
holds one segment, named by its (0062,000A) *Segment Identification Sequence*; a
LABELMAP frame holds them all. A segment without a frame (highdicom leaves out empty
frames) is an empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Final

import numpy as np

from dicomlake.dicom.segments import (
    GEOMETRY_MISMATCH,
    REFERENCE_MISSING,
    Code,
    LabelMasks,
    Problem,
    SegmentInfo,
    TargetVolume,
    slice_of,
)

if TYPE_CHECKING:
    from highdicom.seg import Segmentation

#: SOP Class UIDs of segmentations highdicom reads.
SEG_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_CLASSES: Final = (SEG_STORAGE, LABELMAP_SEG_STORAGE)

#: How far direction cosines of a SEG may be from the volume's.
_ORIENTATION_TOLERANCE: Final = 1e-3


def _require_highdicom() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise ImportError("reading DICOM SEG needs highdicom: pip install 'dicomlake[ml]'") from exc
    return highdicom


@dataclass(frozen=True, slots=True)
class SegFile:
    """A SEG as read: what the ``segments`` table lists, and the dataset to place.

    Attributes:
        sop_instance_uid: Its (0008,0018) *SOP Instance UID*.
        segmentation_type: BINARY, FRACTIONAL or LABELMAP.
        referenced_series_uid: The first series of (0008,1115) *Referenced Series
            Sequence*, or None.
        segments: Its (0062,0002) *Segment Sequence*, in file order.
        dataset: The highdicom object.
    """

    sop_instance_uid: str
    segmentation_type: str
    referenced_series_uid: str | None
    segments: tuple[SegmentInfo, ...]
    dataset: Segmentation


def read_seg(fp: IO[bytes]) -> SegFile:
    """Read a SEG from an open file.

    Raises:
        ImportError: highdicom is not installed.
        ValueError: The file is not a segmentation highdicom can read (also a
            pydicom error or AttributeError for a broken one).
    """
    hd = _require_highdicom()
    seg = hd.seg.segread(fp)
    segments = []
    for number in seg.segment_numbers:
        item = seg.get_segment_description(number)
        segments.append(
            SegmentInfo(
                number=int(number),
                label=str(item.get("SegmentLabel", "") or "") or None,
                category=Code.of(item.get("SegmentedPropertyCategoryCodeSequence")),
                type=Code.of(item.get("SegmentedPropertyTypeCodeSequence")),
                algorithm_type=str(item.get("SegmentAlgorithmType", "") or "") or None,
                algorithm_name=str(item.get("SegmentAlgorithmName", "") or "") or None,
            )
        )
    series = seg.get("ReferencedSeriesSequence") or []
    return SegFile(
        sop_instance_uid=str(seg.SOPInstanceUID),
        segmentation_type=str(seg.segmentation_type.value),
        referenced_series_uid=str(series[0].SeriesInstanceUID) if series else None,
        segments=tuple(segments),
        dataset=seg,
    )


def _orientation(seg: Segmentation) -> tuple[float, ...] | None:
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or [None]
    planes = _group(per_frame[0], shared, "PlaneOrientationSequence")
    if planes:
        return tuple(float(v) for v in planes[0].ImageOrientationPatient)
    return None


def _referenced_slice(derivations: Any, target: TargetVolume) -> tuple[int | None, bool]:
    """The slice a frame's source references name, and whether it names any."""
    named = False
    for derivation in derivations:
        for source in derivation.get("SourceImageSequence") or []:
            uid = source.get("ReferencedSOPInstanceUID")
            if uid is None:
                continue
            named = True
            frames = source.get("ReferencedFrameNumber")
            if frames is not None and not isinstance(frames, int):
                frames = next(iter(frames), None)
            frame = int(frames) - 1 if frames else 0
            k = target.slices.get((str(uid), frame))
            if k is not None:
                return k, True
    return None, named


def _group(item: Any, shared: Any, keyword: str) -> Any:
    """A functional group of one frame: its own item's, else the shared one's."""
    found = item.get(keyword) if item else None
    if not found and shared is not None:
        found = shared.get(keyword)
    return found or []


def _frame_slice(item: Any, shared: Any, target: TargetVolume, frame: int) -> int | Problem:
    k, named = _referenced_slice(_group(item, shared, "DerivationImageSequence"), target)
    if k is not None:
        return k
    planes = _group(item, shared, "PlanePositionSequence")
    if planes and planes[0].get("ImagePositionPatient") is not None:
        return slice_of(target, np.asarray(planes[0].ImagePositionPatient, np.float64))
    if named:
        return Problem(
            REFERENCE_MISSING,
            f"frame {frame + 1} references an instance that is not a slice of the volume "
            "and has no plane position",
        )
    return Problem(
        GEOMETRY_MISMATCH, f"frame {frame + 1} has neither a source image nor a position"
    )


def seg_masks(seg: SegFile, target: TargetVolume) -> LabelMasks:
    """Place every frame of ``seg`` on ``target``: one mask per segment.

    Returns:
        The masks; a frame that lies on no slice of the volume fails its segment(s)
        with ``reference_missing`` or ``geometry_mismatch``, another frame size or
        orientation fails them all.
    """
    ds = seg.dataset
    geometry = target.geometry
    segments = seg.segments
    if (int(ds.Rows), int(ds.Columns)) != (geometry.rows, geometry.columns):
        return LabelMasks.failed(
            segments,
            Problem(
                GEOMETRY_MISMATCH,
                f"frames of {ds.Rows}x{ds.Columns} on a volume of {geometry.rows}x"
                f"{geometry.columns}",
            ),
        )
    orientation = _orientation(ds)
    if orientation is not None and (
        len(orientation) != 6
        or np.abs(np.subtract(orientation, geometry.orientation)).max() > _ORIENTATION_TOLERANCE
    ):
        return LabelMasks.failed(
            segments, Problem(GEOMETRY_MISMATCH, "the frames' orientation is not the volume's")
        )
    numbers = [s.number for s in segments]
    masks = {n: np.zeros(geometry.shape, bool) for n in numbers}
    problems: dict[int, Problem] = {}
    labelmap = seg.segmentation_type == "LABELMAP"
    fractional = seg.segmentation_type == "FRACTIONAL"
    half = float(ds.get("MaximumFractionalValue", 255) or 255) / 2
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    for index in range(int(ds.get("NumberOfFrames", 1) or 1)):
        item = per_frame[index] if index < len(per_frame) else {}
        if labelmap:
            holds = numbers
        else:
            ids = _group(item, shared, "SegmentIdentificationSequence")
            holds = [int(ids[0].ReferencedSegmentNumber)] if ids else []
        holds = [n for n in holds if n in masks and n not in problems]
        if not holds:
            continue
        k = _frame_slice(item, shared, target, index)
        if isinstance(k, Problem):
            problems.update({n: k for n in holds})
            continue
        stored = ds.get_stored_frame(index, as_index=True)
        if labelmap:
            for n in holds:
                masks[n][:, :, k] |= stored == n
        elif fractional:
            masks[holds[0]][:, :, k] |= stored >= half
        else:
            masks[holds[0]][:, :, k] |= stored > 0
    for n in problems:
        masks.pop(n, None)
    return LabelMasks(segments, masks, problems)
