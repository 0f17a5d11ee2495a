"""Series written with pydicom, SEGs with highdicom and RT structure sets with pydicom.

Each series is CT_small.dcm (128 x 128) restacked: slice k at a known position, its
stored values offset by 10 * k, file names and Instance Numbers shuffled. Masks are
given in slice order, ``(rows, columns, slices)``, and written in the files' order, so
a reader that trusted file or Instance Number order would misplace them.

The independent rasterizer is matplotlib's ``Path.contains_points`` (pixel centres,
one contour at a time, combined by XOR); the test extra installs matplotlib.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomlake.sample import sample_file
from helpers.geometry import AXIAL, OBLIQUE

ORIGIN = np.array([-158.135803, -179.035797, -75.699997])
SIZE = 128


@dataclass
class Series:
    """A written series: slice k is ``datasets[order[k]]``, saved as ``files[order[k]]``."""

    uid: str
    study_uid: str
    frame_of_reference: str
    orientation: tuple[float, ...]
    spacing: float
    files: list[Path]
    datasets: list[Dataset]
    order: list[int]  # slice index -> index into files/datasets
    affine: np.ndarray = field(repr=False)

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def in_file_order(self, by_slice: np.ndarray) -> np.ndarray:
        """(rows, columns, slices[, ...]) in slice order → (files, rows, columns[, ...])."""
        moved = np.moveaxis(by_slice, 2, 0)
        out = np.empty_like(moved)
        for k, i in enumerate(self.order):
            out[i] = moved[k]
        return out

    def patient(self, rows_columns: np.ndarray, k: float) -> np.ndarray:
        """(n, 2) voxel (row, column) on slice k → (n, 3) patient coordinates (mm)."""
        n = len(rows_columns)
        voxels = np.c_[rows_columns, np.full(n, k), np.ones(n)]
        return (voxels @ self.affine.T)[:, :3]


def write_series(
    folder: Path, n: int, *, orientation: tuple[float, ...] = AXIAL, gap: float = 2.5, seed: int = 0
) -> Series:
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    template = pydicom.dcmread(sample_file("CT_small.dcm"))
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    names, numbers = list(range(n)), list(range(1, n + 1))
    while names == sorted(names):
        rng.shuffle(names)
    while numbers == sorted(numbers):
        rng.shuffle(numbers)
    files: list[Path] = []
    datasets: list[Dataset] = []
    positions = [ORIGIN + k * gap * normal for k in range(n)]
    for k in range(n):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.FrameOfReferenceUID = frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [round(float(v), 6) for v in positions[k]]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelData = (template.pixel_array + np.int16(10 * k)).tobytes()
        path = folder / f"img{names[k]:02d}.dcm"
        ds.save_as(path)
        files.append(path)
        datasets.append(ds)
    # files[k] is slice k as written; list them in name order, as a directory would
    listing = sorted(range(n), key=lambda k: names[k])
    files = [files[k] for k in listing]
    datasets = [datasets[k] for k in listing]
    order = [listing.index(k) for k in range(n)]
    spacing = float(template.PixelSpacing[0])
    affine = np.eye(4)
    affine[:3, 0] = column * spacing
    affine[:3, 1] = row * float(template.PixelSpacing[1])
    affine[:3, 2] = normal * gap
    affine[:3, 3] = [round(float(v), 6) for v in positions[0]]
    return Series(uid, study, frame, orientation, gap, files, datasets, order, affine)


# --------------------------------------------------------------------------- SEG


def segment_description(number: int, label: str, algorithm: str = "MANUAL") -> object:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Liver if number == 1 else codes.SCT.Spleen,
        algorithm_type=algorithm,
        algorithm_identification=None
        if algorithm == "MANUAL"
        else hd.AlgorithmIdentificationSequence(
            name="tester", version="1", family=codes.cid7162.ArtificialIntelligence
        ),
    )


def new_seg(
    sources: Sequence[Dataset], pixels: np.ndarray, descriptions: Sequence[object], kind: str
) -> Any:
    """A highdicom SEG over ``sources`` (new UIDs, series 100): ``pixels`` in their order."""
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicomlake tests",
        manufacturer_model_name="segmentations",
        software_versions="1",
        device_serial_number="1",
    )


def write_seg(
    path: Path,
    series: Series,
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    kind: str = "BINARY",
    by_position: bool = False,
) -> str:
    """A SEG over ``series``: ``masks`` (rows, columns, slices, segments) in slice order.

    FRACTIONAL masks are floats in [0, 1]; LABELMAP masks (rows, columns, slices) hold
    segment numbers. ``by_position`` drops the frames' source references, so only
    their plane positions place them.
    """

    descriptions = [segment_description(i + 1, label) for i, label in enumerate(labels)]
    pixels = series.in_file_order(masks)
    seg = new_seg(series.datasets, pixels, descriptions, kind)
    if by_position:
        for item in seg.PerFrameFunctionalGroupsSequence:
            del item.DerivationImageSequence
    seg.save_as(path)
    return str(seg.SOPInstanceUID)


# --------------------------------------------------------------------------- RTSTRUCT


@dataclass
class Roi:
    number: int
    name: str
    contours: dict[int, list[np.ndarray]]  # slice -> polygons of (row, column) vertices


def write_rtstruct(path: Path, series: Series, rois: Sequence[Roi]) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "SEGTEST"
    ds.PatientName = "Test^Segments"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    images = DicomSequence()
    for d in series.datasets:
        image = Dataset()
        image.ReferencedSOPClassUID = d.SOPClassUID
        image.ReferencedSOPInstanceUID = d.SOPInstanceUID
        images.append(image)
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.uid
    referenced_series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = series.study_uid
    study.RTReferencedSeriesSequence = DicomSequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for roi in rois:
        item = Dataset()
        item.ROINumber = roi.number
        item.ReferencedFrameOfReferenceUID = series.frame_of_reference
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(item)
        contours = DicomSequence()
        for k, polygons in roi.contours.items():
            for polygon in polygons:
                contour = Dataset()
                contour.ContourGeometricType = "CLOSED_PLANAR"
                points = series.patient(np.asarray(polygon, float), k)
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [f"{v:.6f}" for v in points.reshape(-1)]
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = roi.number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = contours
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = roi.number
        observation.ReferencedROINumber = roi.number
        observation.RTROIInterpretedType = "ORGAN"
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


# --------------------------------------------------------------------------- reference


def reference_fill(
    polygons: Sequence[np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, str]:
    """Even-odd fill by another rasterizer, and its name; see the module docstring."""
    import pytest

    mpl_path = pytest.importorskip(
        "matplotlib.path", reason="matplotlib (the test extra) is the reference rasterizer"
    )
    rows, columns = shape
    inside = np.zeros(shape, bool)
    rr, cc = np.mgrid[0:rows, 0:columns]
    centres = np.c_[rr.ravel(), cc.ravel()].astype(float)
    for polygon in polygons:
        inside ^= mpl_path.Path(np.asarray(polygon, float)).contains_points(centres).reshape(shape)
    return inside, "matplotlib"


def near_edges(
    polygons: Sequence[np.ndarray], shape: tuple[int, int], distance: float
) -> np.ndarray:
    """Pixels whose centre lies within ``distance`` of an edge of ``polygons``."""
    rows, columns = shape
    rr, cc = np.mgrid[0:rows, 0:columns]
    p = np.stack([rr, cc], -1).astype(float)
    near = np.zeros(shape, bool)
    for polygon in polygons:
        a = np.asarray(polygon, float)
        b = np.roll(a, -1, axis=0)
        for start, end in zip(a, b, strict=True):
            d = end - start
            t = np.clip(((p - start) @ d) / max(float(d @ d), 1e-12), 0, 1)
            closest = start + t[..., None] * d
            near |= np.linalg.norm(p - closest, axis=-1) <= distance
    return near


def star(centre: tuple[float, float], radius: float, points: int, seed: int) -> np.ndarray:
    """A simple (not self-intersecting) polygon: random radii at increasing angles."""
    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(0.45, 1.0, points)
    return np.c_[centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles)]


# --------------------------------------------------------------------------- corpus


@dataclass
class Case:
    """One segmentation written for the tests, and what its rows must say."""

    path: Path
    series: Series | None  # None: the referenced series is not ingested
    truth: dict[int, np.ndarray]  # segment number -> (rows, columns, slices) bool
    labels: dict[int, str]
    reasons: dict[int, str | None] = field(default_factory=dict)  # None: ok with voxels
    contours: dict[int, dict[int, list[np.ndarray]]] = field(default_factory=dict)  # RTSTRUCT


@dataclass
class Corpus:
    lake: Path
    cases: dict[str, Case]
    series: dict[str, Series]


def blob(shape: tuple[int, int, int], rows: slice, columns: slice, slices: slice) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, columns, slices] = True
    return mask


def build_corpus(root: Path) -> Corpus:
    """Two series (axial 6 slices, oblique 5), a third not ingested, and their labels."""
    import dicomlake

    src = root / "src"
    axial = write_series(src / "axial", 6, seed=1)
    oblique = write_series(src / "oblique", 5, orientation=OBLIQUE, gap=3.0, seed=2)
    absent = write_series(root / "absent", 3, seed=3)
    shape_a, shape_o = (SIZE, SIZE, 6), (SIZE, SIZE, 5)
    cases: dict[str, Case] = {}

    # binary over the axial series: two organs and a segment on no slice
    liver = blob(shape_a, slice(20, 60), slice(30, 70), slice(1, 4))
    spleen = blob(shape_a, slice(80, 90), slice(10, 25), slice(4, 5))
    masks = np.stack([liver, spleen, np.zeros(shape_a, bool)], -1).astype(np.uint8)
    path = src / "seg_binary.dcm"
    write_seg(path, axial, masks, ["liver", "spleen", "nothing"])
    cases["binary"] = Case(
        path,
        axial,
        {1: liver, 2: spleen, 3: np.zeros(shape_a, bool)},
        {1: "liver", 2: "spleen", 3: "nothing"},
        {1: None, 2: None, 3: "empty"},
    )

    # fractional over the oblique series: 0.8 inside, 0.3 around (below half: outside)
    inner = blob(shape_o, slice(40, 70), slice(40, 80), slice(1, 4))
    outer = blob(shape_o, slice(35, 75), slice(35, 85), slice(0, 5))
    fraction = np.where(inner, 0.8, np.where(outer, 0.3, 0.0)).astype(np.float32)
    path = src / "seg_fractional.dcm"
    write_seg(path, oblique, fraction[..., None], ["tumour"], kind="FRACTIONAL")
    cases["fractional"] = Case(path, oblique, {1: inner}, {1: "tumour"}, {1: None})

    # labelmap over the axial series
    kidney = blob(shape_a, slice(10, 30), slice(90, 110), slice(0, 3))
    lesion = blob(shape_a, slice(60, 70), slice(60, 75), slice(2, 6))
    labelmap = np.where(lesion, 2, np.where(kidney, 1, 0)).astype(np.uint8)
    path = src / "seg_labelmap.dcm"
    write_seg(path, axial, labelmap, ["kidney", "lesion"], kind="LABELMAP")
    cases["labelmap"] = Case(
        path,
        axial,
        {1: kidney & ~lesion, 2: lesion},
        {1: "kidney", 2: "lesion"},
        {1: None, 2: None},
    )

    # binary over the oblique series, frames placed by plane position only
    bone = blob(shape_o, slice(5, 25), slice(100, 120), slice(0, 2))
    path = src / "seg_position.dcm"
    write_seg(path, oblique, bone[..., None].astype(np.uint8), ["bone"], by_position=True)
    cases["position"] = Case(path, oblique, {1: bone}, {1: "bone"}, {1: None})

    # a SEG whose series is not in the lake
    lost = blob((SIZE, SIZE, 3), slice(5, 9), slice(5, 9), slice(0, 1))
    path = src / "seg_missing.dcm"
    write_seg(path, absent, lost[..., None].astype(np.uint8), ["lost"])
    cases["missing"] = Case(path, None, {}, {1: "lost"}, {1: "reference_missing"})

    # RT structure set over the axial series: a ring (hole) and two islands on one
    # slice; a ROI whose contour lies between slices
    ring = [star((64, 64), 40, 14, 0) + 0.37, star((62, 66), 15, 9, 1) + 0.21]
    islands = [star((30, 30), 12, 8, 2) + 0.13, star((95, 90), 14, 10, 3) + 0.29]
    rois = [
        Roi(1, "ring", {2: ring, 3: islands}),
        Roi(2, "between", {2.5: [star((64, 64), 10, 6, 4)]}),  # type: ignore[dict-item]
        Roi(3, "unused", {}),
    ]
    path = src / "rtstruct_axial.dcm"
    write_rtstruct(path, axial, rois)
    truth = np.zeros(shape_a, bool)
    truth[:, :, 2] = reference_fill(ring, (SIZE, SIZE))[0]
    truth[:, :, 3] = reference_fill(islands, (SIZE, SIZE))[0]
    cases["rtstruct"] = Case(
        path,
        axial,
        {1: truth, 3: np.zeros(shape_a, bool)},
        {1: "ring", 2: "between", 3: "unused"},
        {1: None, 2: "geometry_mismatch", 3: "empty"},
        {1: {2: ring, 3: islands}},
    )

    # RT structure set over the oblique series: a star with a hole, on two slices
    donut = [star((70, 50), 35, 16, 5) + 0.41, star((70, 52), 12, 7, 6) + 0.17]
    path = src / "rtstruct_oblique.dcm"
    write_rtstruct(path, oblique, [Roi(7, "donut", {1: donut, 3: donut})])
    truth = np.zeros(shape_o, bool)
    truth[:, :, 1] = truth[:, :, 3] = reference_fill(donut, (SIZE, SIZE))[0]
    cases["rtstruct_oblique"] = Case(
        path, oblique, {7: truth}, {7: "donut"}, {7: None}, {7: {1: donut, 3: donut}}
    )

    lake = root / "lake"
    summary = dicomlake.ingest([str(src)], str(lake), workers=0)
    assert summary.ok == 6 + 5 + len(cases), summary
    return Corpus(lake, cases, {"axial": axial, "oblique": oblique, "absent": absent})
