"""What SEG and RTSTRUCT share: segment descriptions, and masks on a series' volume.

A segmentation (a DICOM SEG, or an RT structure set) labels the voxels of another
series. Its labels become masks on that series' volume, as
:mod:`dicomlake.dicom.geometry` orders and places it: one bool array (rows, columns,
slices) per segment, on the slices of the volume. :mod:`dicomlake.dicom.seg` and
:mod:`dicomlake.dicom.rtstruct` read the files; this module holds what both return.

Reason codes of a segment that has no mask, or an empty one:

======================  ==================================================================
``reference_missing``   the referenced series (or a referenced instance) is not in the lake
``volume_rejected``     the referenced series is not one regular volume (see ``volumes``)
``geometry_mismatch``   the labels do not lie on the volume's grid: another frame size,
                        orientation, or a position between or beyond its slices
``empty``               the segment has no voxel (a mask of zeros: still a channel)
``unreadable``          the file cannot be read as a SEG or RT structure set
======================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from dicomlake.dicom.geometry import VolumeGeometry

REFERENCE_MISSING: Final = "reference_missing"
VOLUME_REJECTED: Final = "volume_rejected"
GEOMETRY_MISMATCH: Final = "geometry_mismatch"
EMPTY: Final = "empty"
UNREADABLE: Final = "unreadable"

#: Every reason code a ``segments`` row may carry.
REASONS: Final = (REFERENCE_MISSING, VOLUME_REJECTED, GEOMETRY_MISMATCH, EMPTY, UNREADABLE)

#: How far (in voxels) a label's position may lie off the volume's grid.
GRID_TOLERANCE: Final = 0.1


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept: (0008,0100) *Code Value*, (0008,0102) scheme, (0008,0104) meaning."""

    value: str
    scheme: str
    meaning: str

    @classmethod
    def of(cls, sequence: Any) -> Code | None:
        """The first item of a code sequence (a pydicom Sequence), or None."""
        if not sequence:
            return None
        item = sequence[0]
        value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
        return cls(
            str(value or ""),
            str(item.get("CodingSchemeDesignator", "") or ""),
            str(item.get("CodeMeaning", "") or ""),
        )


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment (SEG) or ROI (RTSTRUCT), as the file describes it.

    Attributes:
        number: (0062,0004) *Segment Number*, or (3006,0022) *ROI Number*.
        label: (0062,0005) *Segment Label*, or (3006,0026) *ROI Name*.
        category: (0062,0003) *Segmented Property Category Code Sequence* (SEG only).
        type: (0062,000F) *Segmented Property Type Code Sequence* (SEG only).
        algorithm_type: (0062,0008) *Segment Algorithm Type*, or (3006,0036) *ROI
            Generation Algorithm*: AUTOMATIC, SEMIAUTOMATIC or MANUAL.
        algorithm_name: (0062,0009) *Segment Algorithm Name* (SEG only).
    """

    number: int
    label: str | None
    category: Code | None = None
    type: Code | None = None
    algorithm_type: str | None = None
    algorithm_name: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a segment has no mask on the volume: a reason code and what was found."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class TargetVolume:
    """The volume labels are placed on: its geometry, and its slices by source instance.

    Attributes:
        geometry: Slice order and affine of the referenced series.
        slices: (SOP Instance UID, 0-based frame) of each source frame → slice index.
    """

    geometry: VolumeGeometry
    slices: Mapping[tuple[str, int], int] = field(repr=False)

    def voxel_indices(self, points: np.ndarray) -> np.ndarray:
        """Patient coordinates ``(n, 3)`` (mm, LPS) → ``(n, 3)`` float voxel indices."""
        inverse = np.linalg.inv(self.geometry.affine)
        homogeneous = np.c_[np.asarray(points, np.float64).reshape(-1, 3), np.ones(len(points))]
        indices: np.ndarray = (homogeneous @ inverse.T)[:, :3]
        return indices


@dataclass(slots=True)
class LabelMasks:
    """The segments of one segmentation on one volume.

    Attributes:
        segments: Every segment the file describes, in file order.
        masks: Segment number → bool (rows, columns, slices), for the segments placed.
        problems: Segment number → why it has no mask.
    """

    segments: tuple[SegmentInfo, ...]
    masks: dict[int, np.ndarray]
    problems: dict[int, Problem]

    @classmethod
    def failed(cls, segments: tuple[SegmentInfo, ...], problem: Problem) -> LabelMasks:
        """No segment placed, all for one reason."""
        return cls(segments, {}, {s.number: problem for s in segments})

    def array(
        self, numbers: tuple[int, ...] | None = None, *, labelmap: bool = False
    ) -> np.ndarray:
        """The masks as uint8 ``(K, rows, columns, slices)``, one channel per segment.

        Args:
            numbers: Segment numbers in channel order; None for every placed segment
                in file order.
            labelmap: One channel of segment numbers instead (where segments overlap,
                the later one in ``numbers`` wins; needs numbers below 256).

        Raises:
            KeyError: A segment of ``numbers`` has no mask.
            ValueError: ``labelmap`` with a segment number above 255, or no segment.
        """
        if numbers is None:
            numbers = tuple(s.number for s in self.segments if s.number in self.masks)
        if not numbers:
            raise ValueError("no segment to stack: every segment has a problem")
        masks = [self.masks[n] for n in numbers]
        if not labelmap:
            return np.stack(masks).astype(np.uint8)
        if max(numbers) > 255:
            raise ValueError(f"segment number {max(numbers)} does not fit a uint8 labelmap")
        out = np.zeros((1, *masks[0].shape), np.uint8)
        for number, mask in zip(numbers, masks, strict=True):
            out[0][mask] = number
        return out


def mask_extent(mask: np.ndarray) -> tuple[int, tuple[int, int, int, int, int, int] | None]:
    """Voxel count and bounding box of a (rows, columns, slices) mask.

    Returns:
        The count, and (min row, max row, min column, max column, min slice, max
        slice), inclusive, or None when the mask is empty.
    """
    count = int(np.count_nonzero(mask))
    if not count:
        return 0, None
    box: list[int] = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        box += [int(hit[0]), int(hit[-1])]
    return count, (box[0], box[1], box[2], box[3], box[4], box[5])


def slice_of(target: TargetVolume, position: np.ndarray, *, in_plane: bool = True) -> int | Problem:
    """The slice a plane through ``position`` (mm) is, or why it is none.

    Args:
        target: The volume.
        position: A point of the plane: a frame's first pixel centre (``in_plane``:
            it must be the volume's first row and column too), or any contour point.
        in_plane: Check the row and column indices as well as the slice index.
    """
    index = target.voxel_indices(np.asarray(position, np.float64).reshape(1, 3))[0]
    k = int(np.rint(index[2]))
    off = abs(index[2] - k)
    if in_plane:
        off = max(off, abs(index[0]), abs(index[1]))
    if off > GRID_TOLERANCE or not 0 <= k < target.geometry.n_slices:
        return Problem(
            GEOMETRY_MISMATCH,
            f"a plane lies at voxel ({index[0]:.2f}, {index[1]:.2f}, {index[2]:.2f}) of a "
            f"{target.geometry.n_slices}-slice volume, off its slices",
        )
    return k
