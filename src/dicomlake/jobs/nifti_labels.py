"""Segmentations as NIfTI, on the grid of the series volumes :mod:`~dicomlake.jobs.nifti` wrote.

Each DICOM SEG or RT structure set (found and read as :mod:`dicomlake.jobs.labels`
does) that labels an exported series becomes
``<SeriesInstanceUID>_seg-<segmentation SOPInstanceUID>.nii.gz``, with the image's
affine and voxel layout, so label voxel ``(i, j, k)`` is image voxel ``(i, j, k)``:

* a labelmap (uint8, 3D, NIfTI intent ``label``) of segment (or ROI) numbers when no
  two segments overlap, as segmentation tools and trainers read labels;
* else one uint8 0/1 channel per segment along a 4th axis, in the sidecar's order.

Its JSON sidecar names the segments (number, label, category and type codes,
algorithm), the layout, the labelled series and the segments that could not be placed
with the reason. Only segmentations of the studies of the exported series are read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np

from dicomlake.dicom.nifti import nifti_image, nifti_voxels, write_nifti
from dicomlake.dicom.segments import (
    UNREADABLE,
    VOLUME_REJECTED,
    Code,
    LabelMasks,
    SegmentInfo,
    TargetVolume,
)
from dicomlake.jobs.labels import find_segmentations, masks_on, read_segmentation, referenced_series
from dicomlake.rows import error_text

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions
    from dicomlake.dicom.geometry import VolumeGeometry

log = logging.getLogger(__name__)

#: Layouts of a label file.
LABELMAP: Final = "labelmap"
CHANNELS: Final = "channels"


class SkippedLabels(NamedTuple):
    """A segmentation (on one series) that was not written, and why."""

    SOPInstanceUID: str
    SeriesInstanceUID: str | None
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ExportedVolume:
    """What a label file needs of an exported series: its grid, slices and image file.

    Attributes:
        geometry: The volume's geometry.
        sop_uids: SOP Instance UID of each slice, in slice order.
        image: The image's NIfTI file.
        study_uid: Its study (segmentations are looked for there).
    """

    geometry: VolumeGeometry
    sop_uids: tuple[str | None, ...]
    image: Path
    study_uid: str | None


def _code(code: Code | None) -> dict[str, str] | None:
    if code is None:
        return None
    return {"value": code.value, "scheme": code.scheme, "meaning": code.meaning}


def _segment(info: SegmentInfo, value: int) -> dict[str, Any]:
    return {
        "number": info.number,
        "label": info.label,
        "value": value,
        "category": _code(info.category),
        "type": _code(info.type),
        "algorithm_type": info.algorithm_type,
        "algorithm_name": info.algorithm_name,
    }


def label_voxels(masks: LabelMasks) -> tuple[np.ndarray, str, tuple[SegmentInfo, ...]]:
    """The placed segments as NIfTI-layout voxels, their layout, and their order.

    Returns:
        uint8 ``(columns, rows, slices)`` of segment numbers (:data:`LABELMAP`) when no
        two overlap and every number fits a byte, else ``(columns, rows, slices,
        K)`` of 0/1 (:data:`CHANNELS`); and the segments in channel order.

    Raises:
        ValueError: No segment was placed.
    """
    placed = tuple(s for s in masks.segments if s.number in masks.masks)
    numbers = tuple(s.number for s in placed)
    stacked = masks.array(numbers)  # (K, rows, columns, slices) 0/1
    if int(stacked.sum(axis=0, dtype=np.uint16).max(initial=0)) <= 1 and max(numbers) <= 255:
        labelmap = masks.array(numbers, labelmap=True)[0]
        return np.asfortranarray(nifti_voxels(labelmap)), LABELMAP, placed
    channels = np.moveaxis(stacked, 0, -1)
    return np.asfortranarray(nifti_voxels(channels)), CHANNELS, placed


def labels_sidecar(
    row: Mapping[str, Any],
    series_uid: str,
    volume: ExportedVolume,
    masks: LabelMasks,
    layout: str,
    placed: tuple[SegmentInfo, ...],
) -> dict[str, Any]:
    """The JSON sidecar of one label file."""
    return {
        "SOPInstanceUID": row["SOPInstanceUID"],
        "SOPClassUID": row["SOPClassUID"],
        "Modality": row["Modality"],
        "StudyInstanceUID": row["StudyInstanceUID"],
        "ReferencedSeriesInstanceUID": series_uid,
        "image": volume.image.name,
        "layout": layout,
        "segments": [
            _segment(info, info.number if layout == LABELMAP else channel)
            for channel, info in enumerate(placed)
        ],
        "not_placed": [
            {"number": number, "reason": problem.reason, "message": problem.message}
            for number, problem in sorted(masks.problems.items())
        ],
    }


def _read(row: Mapping[str, Any], storage_options: StorageOptions) -> Any:
    return read_segmentation(
        row["path"], row["SOPClassUID"], row["Modality"], storage_options=storage_options
    )


def write_label_niftis(
    lake: str,
    folder: Path,
    volumes: Mapping[str, ExportedVolume],
    *,
    stem: Callable[[str], str],
    write_json: Callable[[Mapping[str, Any], Path], None],
    not_written: Mapping[str, str] | None = None,
    storage_options: StorageOptions = None,
) -> tuple[dict[tuple[str, str], Path], list[SkippedLabels]]:
    """Write a label file for each segmentation of an exported series.

    Args:
        lake: The lake folder or URI.
        folder: Where the images were written.
        volumes: SeriesInstanceUID → what was exported of it.
        stem: File stem of a UID.
        write_json: Writes a sidecar.
        not_written: SeriesInstanceUID → reason, of the selected series that were not
            written: their segmentations are listed as skipped (``volume_rejected``).
        storage_options: Options for an object-store lake and its files.

    Returns:
        (segmentation SOP Instance UID, series UID) → label file; and what was not
        written, with the reason.

    Raises:
        TableNotFound: Nothing has been ingested into the lake.
        OSError: A file cannot be written in ``folder``.
    """
    written: dict[tuple[str, str], Path] = {}
    skipped: list[SkippedLabels] = []
    if not volumes:
        return written, skipped
    studies = {v.study_uid for v in volumes.values()}
    where = None  # a series without a study: look everywhere
    if None not in studies:
        listed = ", ".join("'" + str(u).replace("'", "''") + "'" for u in sorted(map(str, studies)))
        where = f'"StudyInstanceUID" IN ({listed})'
    rows = find_segmentations(lake, where, storage_options=storage_options).to_pylist()
    for row in rows:
        sop = str(row["SOPInstanceUID"])
        try:
            doc = _read(row, storage_options)
        except Exception as exc:  # ImportError (no highdicom) included: one line, go on
            skipped.append(SkippedLabels(sop, None, UNREADABLE, error_text(exc)))
            continue
        for series_uid in referenced_series(doc):
            volume = volumes.get(series_uid) if series_uid is not None else None
            if series_uid is not None and series_uid in (not_written or {}):
                why = f"the labelled series was not written: {(not_written or {})[series_uid]}"
                skipped.append(SkippedLabels(sop, series_uid, VOLUME_REJECTED, why))
            if volume is None or series_uid is None:
                continue  # labels a series this export did not write
            target = TargetVolume(
                volume.geometry,
                {
                    (str(uid), frame): k
                    for k, (uid, frame) in enumerate(
                        zip(volume.sop_uids, volume.geometry.frames, strict=True)
                    )
                    if uid is not None
                },
            )
            masks = masks_on(doc, series_uid, target)
            if not masks.masks:
                first = next(iter(masks.problems.values()), None)
                reason = first.reason if first else "empty"
                message = first.message if first else "the segmentation has no segment"
                skipped.append(SkippedLabels(sop, series_uid, reason, message))
                continue
            voxels, layout, placed = label_voxels(masks)
            image = nifti_image(voxels, volume.geometry)
            if layout == LABELMAP:
                image.header.set_intent("label")
            name = f"{stem(series_uid)}_seg-{stem(sop)}"
            target_path = folder / f"{name}.nii.gz"
            write_nifti(image, target_path)
            write_json(
                labels_sidecar(row, series_uid, volume, masks, layout, placed),
                folder / f"{name}.json",
            )
            written[(sop, series_uid)] = target_path
    return written, skipped
