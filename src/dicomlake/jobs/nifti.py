"""The NIfTI export job: one ``.nii.gz`` and one JSON sidecar per series volume.

Series come from the ``instances`` table as :mod:`dicomlake.jobs.volumes` reads them
(``where`` filters instances), are checked and ordered by
:func:`~dicomlake.dicom.geometry.series_geometry`, and a series that is not one
regular volume is skipped with its reason. The others are decoded slice by slice
(stored values, as the file holds them) and written by :mod:`dicomlake.dicom.nifti`
in dcm2niix's layout and scaling, as ``<SeriesInstanceUID>.nii.gz`` beside
``<SeriesInstanceUID>.json``.

Segmentations (SEG, RT structure sets) of the written series follow, on the same grid:
see :mod:`dicomlake.jobs.nifti_labels`.

The sidecar holds the series' key tags (see :data:`SERIES_TAGS`), its measured
spacing, the stored values' scaling and the SOP Instance UID of each slice in ``k``
order. Patient names, IDs, dates, sex and age (:data:`PATIENT_TAGS`) are left out
unless ``patient_tags=True``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
from pydicom.pixels.processing import apply_modality_lut

from dicomlake.catalog import open_ref
from dicomlake.dicom.geometry import GeometryTolerance, Rejection, VolumeGeometry
from dicomlake.dicom.nifti import (
    empty_voxels,
    nifti_image,
    put_slice,
    require_nibabel,
    write_nifti,
)
from dicomlake.dicom.pixels import frame_view, read_frame
from dicomlake.dicom.quiet import quiet
from dicomlake.errors import DicomLakeError, QueryError
from dicomlake.jobs.nifti_labels import ExportedVolume, SkippedLabels, write_label_niftis
from dicomlake.jobs.volumes import SeriesSlices, read_series_slices
from dicomlake.rows import error_text

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicomlake._types import StorageOptions

log = logging.getLogger(__name__)

#: Reason of a series whose slices are not one grayscale image each.
NOT_GRAYSCALE: Final = "not_grayscale"
#: Reason of a series a slice of which cannot be read or decoded.
UNREADABLE: Final = "unreadable"

#: ``instances`` columns the sidecar takes from the series' first slice.
SERIES_TAGS: Final = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
    "SliceThickness",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
)

#: What ``patient_tags=True`` adds: who the patient is and when the study was.
PATIENT_TAGS: Final = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
)

#: Segmentation Storage and Label Map Segmentation Storage: pixel data that labels
#: another series, never an image series of its own.
_SEGMENTATION_CLASSES: Final = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")

#: Which instances make image series: not segmentations.
IMAGES_SQL: Final = (
    "coalesce(\"Modality\", '') <> 'SEG' AND coalesce(\"SOPClassUID\", '') NOT IN ("
    + ", ".join(f"'{uid}'" for uid in _SEGMENTATION_CLASSES)
    + ")"
)

#: Rescale pairs closer than this (relative) are one pair.
_SAME_SCALE: Final = 1e-6

_UNSAFE_NAME: Final = re.compile(r"[^0-9A-Za-z._-]")


class SkippedSeries(NamedTuple):
    """A selected series that was not written, and why."""

    SeriesInstanceUID: str
    reason: str
    message: str


@dataclass
class NiftiSummary:
    """What :func:`export_nifti` did.

    Attributes:
        series: Series selected.
        written: SeriesInstanceUID → the ``.nii.gz`` written for it.
        skipped: Series not written, with the reason (a code of
            :mod:`dicomlake.dicom.geometry`, ``not_grayscale`` or ``unreadable``).
        labels: (segmentation SOP Instance UID, labelled SeriesInstanceUID) → the
            label file written (see :mod:`dicomlake.jobs.nifti_labels`).
        labels_skipped: Segmentations of written series that were not written, with
            the reason (a code of :mod:`dicomlake.dicom.segments`).
        bytes: Size of the image NIfTI files written.
        seconds: Wall time.
    """

    series: int = 0
    written: dict[str, Path] = field(default_factory=dict)
    skipped: list[SkippedSeries] = field(default_factory=list)
    labels: dict[tuple[str, str], Path] = field(default_factory=dict)
    labels_skipped: list[SkippedLabels] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        """Series handled so far (written or skipped)."""
        return len(self.written) + len(self.skipped)

    def __str__(self) -> str:
        reasons = Counter(s.reason for s in self.skipped)
        shown = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        text = (
            f"export-nifti: {self.series} series, {len(self.written)} written, "
            f"{len(self.skipped)} skipped" + (f" ({shown})" if shown else "")
        )
        if self.labels or self.labels_skipped:
            text += (
                f"; segmentations: {len(self.labels)} written, {len(self.labels_skipped)} skipped"
            )
        return text


class _Unexportable(Exception):
    """A series' voxels cannot be exported; ``reason`` says which way."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ScaledVolume:
    """A series' voxels and how they map to physical values.

    Attributes:
        voxels: Stored values, or float32 physical ones, in the NIfTI layout
            (:func:`~dicomlake.dicom.nifti.empty_voxels`: columns, rows reversed,
            slices).
        slope: Physical = stored × slope + intercept (1 for physical voxels).
        intercept: See ``slope`` (0 for physical voxels).
    """

    voxels: np.ndarray
    slope: float
    intercept: float


def _number(value: Any, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


@quiet
def _read_slice(
    path: str, frame: int, storage_options: StorageOptions
) -> tuple[np.ndarray, Dataset]:
    """One frame's stored values and its frame view (functional groups on top)."""
    with open_ref(path, storage_options=storage_options) as fp:
        stored, ds, _ = read_frame(fp, frame)
    return stored, frame_view(ds, frame)


@quiet
def _read_volume(
    geometry: VolumeGeometry, *, storage_options: StorageOptions = None
) -> ScaledVolume:
    """Decode a volume's slices and choose its scaling, as dcm2niix does.

    Stored values are kept when every slice has the same *Rescale Slope* and
    *Intercept* (and no *Modality LUT Sequence*) and one dtype; otherwise each slice
    goes through its own Modality LUT into float32.

    Raises:
        _Unexportable: A slice cannot be read or decoded, is not grayscale, or is
            not the size the lake recorded.
    """
    voxels: np.ndarray | None = None
    dtypes: set[np.dtype[Any]] = set()
    views: list[Dataset] = []
    for k, (path, frame) in enumerate(zip(geometry.paths, geometry.frames, strict=True)):
        try:
            values, view = _read_slice(path, frame, storage_options)
        except Exception as exc:
            raise _Unexportable(
                UNREADABLE,
                f"frame {frame} of {path} (slice {k} of {geometry.n_slices}): {error_text(exc)}",
            ) from exc
        samples = int(_number(view.get("SamplesPerPixel"), 1))
        photometric = str(view.get("PhotometricInterpretation", "") or "").upper()
        if samples != 1 or photometric == "PALETTE COLOR" or values.ndim != 2:
            raise _Unexportable(
                NOT_GRAYSCALE,
                f"{path} is {photometric or 'color'} with {samples} samples per pixel; "
                "only grayscale series are exported",
            )
        if values.shape != (geometry.rows, geometry.columns):
            raise _Unexportable(
                UNREADABLE,
                f"frame {frame} of {path} decodes to {values.shape}, the lake says "
                f"({geometry.rows}, {geometry.columns})",
            )
        dtypes.add(values.dtype)
        if voxels is None:
            voxels = empty_voxels(geometry, values.dtype)
        elif not np.can_cast(values.dtype, voxels.dtype, "safe"):
            wider = empty_voxels(geometry, np.promote_types(values.dtype, voxels.dtype))
            wider[:, :, :k] = voxels[:, :, :k]
            voxels = wider
        put_slice(voxels, k, values)
        views.append(view)
    assert voxels is not None  # a volume has at least two slices
    scales = np.array(
        [
            (_number(v.get("RescaleSlope"), 1.0), _number(v.get("RescaleIntercept"), 0.0))
            for v in views
        ]
    )
    uniform = (
        np.allclose(scales, scales[0], rtol=_SAME_SCALE, atol=0)
        and len(dtypes) == 1
        and not any("ModalityLUTSequence" in v for v in views)
    )
    if uniform:
        return ScaledVolume(voxels, float(scales[0, 0]), float(scales[0, 1]))
    # the Modality LUT maps each value on its own: the layout does not matter to it
    physical = empty_voxels(geometry, np.float32)
    for k, view in enumerate(views):
        physical[:, :, k] = apply_modality_lut(voxels[:, :, k], view)
    return ScaledVolume(physical, 1.0, 0.0)


# --------------------------------------------------------------------------- sidecar


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _read_tags(
    lake: str,
    first_paths: Sequence[str],
    all_paths: Sequence[str],
    *,
    patient_tags: bool,
    storage_options: StorageOptions,
) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
    """Sidecar tags per first-slice path, and the SOP Instance UID of every path."""
    from dicomlake.lake.sql import connect

    names = list(SERIES_TAGS) + (list(PATIENT_TAGS) if patient_tags else [])
    columns = ", ".join(f'i."{name}"' for name in names)
    con = connect(lake, storage_options=storage_options)
    try:
        con.register("__dl_first", pa.table({"path": pa.array(first_paths, pa.string())}))
        con.register("__dl_slices", pa.table({"path": pa.array(all_paths, pa.string())}))
        tags = con.sql(
            f"SELECT i.path, {columns}, tag(i.meta, 'FrameOfReferenceUID') AS "
            '"FrameOfReferenceUID" FROM instances i JOIN __dl_first f USING (path)'
        ).to_arrow_table()
        sops = con.sql(
            'SELECT i.path, i."SOPInstanceUID" FROM instances i JOIN __dl_slices s USING (path)'
        ).fetchall()
    except duckdb.Error as exc:
        raise QueryError(f"reading the sidecar tags failed: {exc}", sql="instances") from exc
    finally:
        con.close()
    by_path = {row.pop("path"): row for row in tags.to_pylist()}
    return by_path, dict(sops)


def _software() -> str:
    try:
        return version("dicomlake")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def sidecar(
    tags: Mapping[str, Any],
    geometry: VolumeGeometry,
    volume: ScaledVolume,
    sop_uids: Sequence[str | None],
) -> dict[str, Any]:
    """The JSON sidecar of one exported series.

    Args:
        tags: The series' first slice's columns (:data:`SERIES_TAGS`, maybe
            :data:`PATIENT_TAGS`, ``FrameOfReferenceUID``).
        geometry: Its geometry.
        volume: What was written.
        sop_uids: SOP Instance UID of each slice, in slice (``k``) order.
    """
    shape = volume.voxels.shape
    body: dict[str, Any] = {name: _json_value(value) for name, value in tags.items()}
    body |= {
        # measured from the positions, not read from Spacing Between Slices
        "SpacingBetweenSlices": geometry.spacing[2],
        "ImageOrientationPatient": list(geometry.orientation),
        "ImagePositionPatient": list(geometry.origin),
        "shape": list(shape),
        "voxels": "stored" if volume.voxels.dtype.kind in "iu" else "rescaled",
        "scl_slope": volume.slope,
        "scl_inter": volume.intercept,
        "SOPInstanceUIDs": list(sop_uids),
        "ConversionSoftware": "dicomlake",
        "ConversionSoftwareVersion": _software(),
    }
    return body


def _write_json(body: Mapping[str, Any], path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    try:
        with temporary.open("x", encoding="utf-8") as fp:
            json.dump(body, fp, indent=2, ensure_ascii=False)
            fp.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def file_stem(series_uid: str) -> str:
    """The file name (without suffix) of a series: its UID, any unsafe character as ``_``."""
    return _UNSAFE_NAME.sub("_", series_uid) or "_"


# --------------------------------------------------------------------------- job


def _prepare_out(out: str | os.PathLike[str]) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise DicomLakeError(f"--out {os.fspath(out)!r} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DicomLakeError(
            f"cannot create the output folder {os.fspath(out)!r}: {exc.strerror}"
        ) from exc
    return folder


def export_nifti(
    lake: str,
    out: str | os.PathLike[str],
    where: str | None = None,
    *,
    patient_tags: bool = False,
    segmentations: bool = True,
    storage_options: StorageOptions = None,
    tolerance: GeometryTolerance | float | None = None,
    progress: Callable[[NiftiSummary], None] | None = None,
) -> NiftiSummary:
    """Write each series volume of the lake as NIfTI, as dcm2niix would.

    Files already in ``out`` under the same names are replaced.

    Args:
        lake: The lake folder or URI.
        out: A local folder (made when missing).
        where: A SQL expression over ``instances`` (``Modality = 'CT'``): only the
            instances it is true for form the series. Segmentations (SEG) never do.
        patient_tags: Also write :data:`PATIENT_TAGS` to the sidecars.
        segmentations: Also write the SEGs and RT structure sets of the written
            series' studies that label them, on their grid (see
            :mod:`dicomlake.jobs.nifti_labels`), whatever ``where`` says of them.
        storage_options: Options for an object-store lake and its files.
        tolerance: How far slices may be from a regular grid (see
            :class:`~dicomlake.dicom.geometry.GeometryTolerance`).
        progress: Called with the running summary after each series.

    Returns:
        What was written and what was skipped, with reasons.

    Raises:
        QueryError: ``where`` is not a valid expression over ``instances``.
        TableNotFound: Nothing has been ingested into the lake.
        DicomLakeError: ``out`` is a file or cannot be created.
        OSError: A file cannot be written in ``out``.
        ImportError: nibabel is not installed.
        TypeError: ``tolerance`` is not a tolerance.
        ValueError: ``tolerance`` is an invalid number.

    Example:
        >>> export_nifti("lake", "nifti", "Modality = 'CT'")  # doctest: +SKIP
        NiftiSummary(series=3, written={...}, skipped=[SkippedSeries(...)], ...)
    """
    started = time.perf_counter()
    require_nibabel()
    tol = GeometryTolerance.of(tolerance)
    picked = IMAGES_SQL
    if where is not None and where.strip():
        picked = f"({where.strip().rstrip(';')}) AND {IMAGES_SQL}"
    slices = read_series_slices(lake, picked, storage_options=storage_options)
    summary = NiftiSummary(series=len(slices))
    if not slices:
        summary.seconds = time.perf_counter() - started
        return summary
    folder = _prepare_out(out)
    volumes: dict[str, tuple[SeriesSlices, VolumeGeometry]] = {}
    for uid, series in slices.items():
        result = series.geometry(tol)
        if isinstance(result, Rejection):
            summary.skipped.append(SkippedSeries(uid, result.reason, result.message))
        else:
            volumes[uid] = (series, result)
    tags, sops = _read_tags(
        lake,
        [g.paths[0] for _, g in volumes.values()],
        [p for _, g in volumes.values() for p in g.paths],
        patient_tags=patient_tags,
        storage_options=storage_options,
    )
    if progress is not None:
        progress(summary)
    exported: dict[str, ExportedVolume] = {}
    for uid, (series, geometry) in volumes.items():
        try:
            volume = _read_volume(geometry, storage_options=storage_options)
        except _Unexportable as exc:
            summary.skipped.append(SkippedSeries(uid, exc.reason, str(exc)))
        else:
            stem = file_stem(uid)
            target = folder / f"{stem}.nii.gz"
            image = nifti_image(
                volume.voxels, geometry, slope=volume.slope, intercept=volume.intercept
            )
            summary.bytes += write_nifti(image, target)
            body = sidecar(
                tags.get(geometry.paths[0], {"SeriesInstanceUID": uid}),
                geometry,
                volume,
                [sops.get(p) for p in geometry.paths],
            )
            _write_json(body, folder / f"{stem}.json")
            summary.written[uid] = target
            exported[uid] = ExportedVolume(
                geometry,
                tuple(sops.get(p) for p in geometry.paths),
                target,
                series.StudyInstanceUID,
            )
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(summary)
    if segmentations and exported:
        summary.labels, summary.labels_skipped = write_label_niftis(
            lake,
            folder,
            exported,
            stem=file_stem,
            write_json=_write_json,
            not_written={s.SeriesInstanceUID: s.reason for s in summary.skipped},
            storage_options=storage_options,
        )
        if progress is not None:
            progress(summary)
    summary.seconds = time.perf_counter() - started
    log.info("%s in %.1f s", summary, summary.seconds)
    return summary
