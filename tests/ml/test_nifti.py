"""NIfTI export against dcm2niix: same layout, affine, scaling and voxels, per series.

Series are written with pydicom (64 x 48 x 20 CT and PET): shuffled file names and
Instance Numbers, known positions, a known stored value at two corners of each slice
(so slice order and row flips show in the pixels). dcm2niix (Debian's package) converts
each series' folder, ``dicomlake.ingest`` + :func:`export_nifti` the lake of them all,
and both files are read back with nibabel.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.dicom.nifti import nifti_voxels
from dicomlake.jobs.labels import load_labels
from dicomlake.jobs.nifti import NOT_GRAYSCALE, PATIENT_TAGS, NiftiSummary, export_nifti
from dicomlake.sample import sample_file
from helpers.geometry import AXIAL, OBLIQUE, turned
from helpers.segmentations import new_seg
from helpers.terminal import run_on_a_terminal

nib = pytest.importorskip("nibabel", reason="nibabel is not installed (the ml extra)")
hd = pytest.importorskip("highdicom", reason="highdicom is not installed (the ml extra)")

DCM2NIIX = shutil.which("dcm2niix")
needs_dcm2niix = pytest.mark.skipif(
    DCM2NIIX is None, reason="dcm2niix (Debian package dcm2niix) is not installed"
)

ROWS, COLUMNS, SLICES = 64, 48, 20
ORIGIN = np.array([-30.5, -20.25, 10.0])
PATIENT_NAME, PATIENT_ID = "Secret^Patient", "PID-4711"
runner = CliRunner()


@dataclass
class Written:
    """A written series: its folder, UID and each slice's position, in position order."""

    folder: Path
    uid: str
    positions: list[np.ndarray]


def write_series(
    folder: Path,
    *,
    orientation: tuple[float, ...] = AXIAL,
    gaps: list[float] | None = None,
    numbering: str = "shuffled",
    orientations: dict[int, tuple[float, ...]] | None = None,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    slope_step: float = 0.0,
    unsigned: bool = False,
    color: bool = False,
    study: str | None = None,
    seed: int = 0,
) -> Written:
    """Slice k (in position order) at ORIGIN + sum(gaps[:k]) along the normal.

    ``numbering``: 'shuffled' Instance Numbers, or 'reversed' (decreasing with
    position). Pixel (0, 0) of slice k holds k and pixel (rows - 1, 0) 1000 + k.
    """
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shuffle = random.Random(seed)
    gaps = [2.5] * (SLICES - 1) if gaps is None else gaps
    n = len(gaps) + 1
    names, numbers = list(range(n)), list(range(1, n + 1))
    shuffle.shuffle(names)
    if numbering == "shuffled":
        while numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True):
            shuffle.shuffle(numbers)
    else:
        numbers.reverse()
    cosines = np.asarray(orientation)
    normal = np.cross(cosines[:3], cosines[3:])
    steps = np.concatenate([[0.0], np.cumsum(gaps)])
    positions = [ORIGIN + step * normal for step in steps]
    series, frame = generate_uid(), generate_uid()
    study = study or generate_uid()
    sop_class = PositronEmissionTomographyImageStorage if modality == "PT" else CTImageStorage
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = sop_class
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19600101"
        ds.StudyDate, ds.StudyTime, ds.PatientSex = "20240102", "101500", "O"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = modality, "ACME", "Scan 9"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "test series", 7, numbers[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (orientations or {}).get(k, orientation)]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.8], 2.5
        ds.Rows, ds.Columns = ROWS, COLUMNS
        if color:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
            ds.PlanarConfiguration = 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = rng.integers(0, 255, (ROWS, COLUMNS, 3), dtype=np.uint8).tobytes()
        else:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 0 if unsigned else 1
            ds.RescaleSlope = f"{slope + k * slope_step:.6g}"
            ds.RescaleIntercept = f"{intercept:.6g}"
            pixels = rng.integers(0, 3000, (ROWS, COLUMNS)) + 50 * k
            pixels[0, 0], pixels[ROWS - 1, 0] = k, 1000 + k
            ds.PixelData = pixels.astype(np.uint16 if unsigned else np.int16).tobytes()
        ds.save_as(folder / f"im{names[k]:03d}.dcm", enforce_file_format=True)
    return Written(folder, series, positions)


#: Series dcm2niix and the export must agree on.
VOLUMES = ("axial", "oblique", "reversed", "reversed_oblique", "pet", "varying_scale")
#: Series that are no volume, and the reason they are skipped for.
REJECTED = {
    "missing_slice": "missing_slices",
    "mixed_orientation": "orientation_differs",
    "uneven": "nonuniform_spacing",
    "color": NOT_GRAYSCALE,
}


def write_corpus(src: Path) -> dict[str, Written]:
    oblique = turned(30, 20)
    return {
        "axial": write_series(src / "axial", seed=1),
        "oblique": write_series(src / "oblique", orientation=oblique, seed=2),
        "reversed": write_series(src / "reversed", numbering="reversed", seed=3),
        "reversed_oblique": write_series(
            src / "reversed_oblique", orientation=turned(-15, 40), numbering="reversed", seed=4
        ),
        "pet": write_series(
            src / "pet", modality="PT", slope=0.0123, intercept=0.0, unsigned=True, seed=5
        ),
        "varying_scale": write_series(
            src / "varying_scale", slope=0.5, intercept=3.0, slope_step=0.1, seed=6
        ),
        "missing_slice": write_series(
            src / "missing_slice", gaps=[2.5, 2.5, 5.0, 2.5, 2.5], seed=7
        ),
        "mixed_orientation": write_series(
            src / "mixed_orientation", gaps=[2.5] * 5, orientations={3: oblique}, seed=8
        ),
        "uneven": write_series(src / "uneven", gaps=[2.5, 2.5, 3.1, 2.5, 2.5], seed=9),
        "color": write_series(src / "color", gaps=[2.5] * 4, color=True, seed=10),
    }


#: A box: (slices, rows, columns) ranges, in position order.
Box = tuple[slice, slice, slice]


@dataclass
class Seg:
    """A written SEG: its SOP Instance UID, and its masks (slices, rows, columns, K)."""

    uid: str
    masks: np.ndarray
    labels: tuple[str, ...]


def write_seg(series: Written, path: Path, boxes: dict[str, Box]) -> Seg:
    """A binary SEG (highdicom) on ``series``, segment n + 1 the n-th box."""
    sources = [pydicom.dcmread(p) for p in series.folder.iterdir()]
    cosines = np.asarray(sources[0].ImageOrientationPatient, np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    sources.sort(key=lambda ds: float(normal @ np.asarray(ds.ImagePositionPatient, np.float64)))
    masks = np.zeros((len(sources), ROWS, COLUMNS, len(boxes)), bool)
    for n, box in enumerate(boxes.values()):
        masks[(*box, n)] = True
    described = [
        hd.seg.SegmentDescription(
            segment_number=n + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(boxes)
    ]
    seg = new_seg(sources, masks, described, "BINARY")
    path.parent.mkdir(parents=True)
    seg.save_as(path)
    return Seg(str(seg.SOPInstanceUID), masks, tuple(boxes))


def in_nifti_layout(masks: np.ndarray) -> np.ndarray:
    """(slices, rows, columns[, K]) → NIfTI's (columns, rows reversed, slices[, K])."""
    return np.moveaxis(masks, 0, 2).swapaxes(0, 1)[:, ::-1]


@dataclass
class Exported:
    lake: Path
    out: Path
    series: dict[str, Written]
    segs: dict[str, Seg]
    summary: NiftiSummary


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("nifti")
    series = write_corpus(root / "src")
    # SEGs have pixel data and plane positions, but label a series: they are no image series
    segs = {
        "oblique": write_seg(
            series["oblique"],
            root / "src" / "seg_oblique" / "seg.dcm",
            {"box": np.s_[3:8, 10:30, 5:20], "small": np.s_[10:12, 40:50, 30:40]},
        ),
        "axial": write_seg(
            series["axial"],
            root / "src" / "seg_axial" / "seg.dcm",
            {"outer": np.s_[2:9, 5:40, 5:40], "inner": np.s_[4:6, 10:20, 10:20]},
        ),
    }
    lake = root / "lake"
    ingested = dicomlake.ingest([str(root / "src")], str(lake), workers=0)
    assert ingested.ok == 2 + sum(len(list(s.folder.iterdir())) for s in series.values())
    out = root / "out"
    summary = export_nifti(str(lake), out)
    return Exported(lake, out, series, segs, summary)


def dcm2niix(folder: Path, out: Path) -> Path:
    """dcm2niix's NIfTI of the one series in ``folder``."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [DCM2NIIX, "-z", "y", "-f", "%j", "-o", str(out), str(folder)],  # type: ignore[list-item]
        check=True,
        capture_output=True,
        timeout=120,
    )
    (made,) = out.glob("*.nii.gz")
    return made


def unscaled(image: Any) -> np.ndarray:
    return np.asanyarray(image.dataobj.get_unscaled())


# --------------------------------------------------------------------------- dcm2niix


@needs_dcm2niix
@pytest.mark.parametrize("name", VOLUMES)
def test_export_equals_dcm2niix(exported: Exported, name: str, tmp_path: Path) -> None:
    written = exported.series[name]
    theirs_path = dcm2niix(written.folder, tmp_path / "dcm2niix")
    ours_path = exported.summary.written[written.uid]
    assert ours_path.name == theirs_path.name == f"{written.uid}.nii.gz"
    ours, theirs = nib.load(ours_path), nib.load(theirs_path)
    # same layout: no reorientation needed
    assert ours.shape == theirs.shape == (COLUMNS, ROWS, SLICES)
    for form in ("get_sform", "get_qform"):
        np.testing.assert_allclose(getattr(ours, form)(), getattr(theirs, form)(), atol=1e-3)
    assert int(ours.header["qform_code"]) == int(theirs.header["qform_code"]) == 1
    assert int(ours.header["sform_code"]) == int(theirs.header["sform_code"]) == 1
    assert ours.header.get_xyzt_units() == theirs.header.get_xyzt_units() == ("mm", "sec")
    # same scaling: stored values with scl_slope/scl_inter, or float32 when they vary
    assert ours.get_data_dtype() == theirs.get_data_dtype()
    assert ours.dataobj.slope == pytest.approx(theirs.dataobj.slope, rel=1e-7)
    assert ours.dataobj.inter == pytest.approx(theirs.dataobj.inter, rel=1e-7)
    if name == "varying_scale":
        assert ours.get_data_dtype() == np.float32 and ours.dataobj.slope == 1.0
        # float32 rescaling: at most one unit in the last place apart
        scaled = theirs.get_fdata()
        np.testing.assert_allclose(ours.get_fdata(), scaled, rtol=2 * np.finfo(np.float32).eps)
    else:
        np.testing.assert_array_equal(unscaled(ours), unscaled(theirs))
        np.testing.assert_array_equal(ours.get_fdata(), theirs.get_fdata())
    # and after both are turned to the closest canonical (RAS) orientation
    ours_ras, theirs_ras = nib.as_closest_canonical(ours), nib.as_closest_canonical(theirs)
    np.testing.assert_allclose(ours_ras.affine, theirs_ras.affine, atol=1e-3)
    np.testing.assert_allclose(ours_ras.get_fdata(), theirs_ras.get_fdata(), rtol=1e-6)


@pytest.mark.parametrize("name", VOLUMES)
def test_voxels_lie_where_the_slices_do(exported: Exported, name: str) -> None:
    """Independent of dcm2niix: each slice's first stored pixel is where DICOM puts it."""
    written = exported.series[name]
    image = nib.load(exported.summary.written[written.uid])
    raw = unscaled(image)
    ras = np.diag([-1.0, -1.0, 1.0])
    for k, position in enumerate(written.positions):
        # DICOM pixel (row 0, column 0) of slice k is NIfTI voxel (0, rows - 1, k)
        assert image.affine @ [0, ROWS - 1, k, 1] == pytest.approx([*(ras @ position), 1], abs=1e-3)
        if name != "varying_scale":
            assert raw[0, ROWS - 1, k] == k
            assert raw[0, 0, k] == 1000 + k


@needs_dcm2niix
def test_enhanced_multiframe_ct_equals_dcm2niix(tmp_path: Path) -> None:
    """A real enhanced CT (pydicom-data's eCT_Supplemental.dcm): two frames, one file."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(sample_file("eCT_Supplemental.dcm"), src / "ect.dcm")
    dicomlake.ingest([str(src)], str(tmp_path / "lake"), workers=0)
    summary = export_nifti(str(tmp_path / "lake"), tmp_path / "out")
    (ours_path,) = summary.written.values()
    ours, theirs = nib.load(ours_path), nib.load(dcm2niix(src, tmp_path / "dcm2niix"))
    assert ours.shape == theirs.shape == (512, 512, 2)
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_allclose(ours.get_qform(), theirs.get_qform(), atol=1e-3)
    assert ours.get_data_dtype() == theirs.get_data_dtype()
    assert (ours.dataobj.slope, ours.dataobj.inter) == (theirs.dataobj.slope, theirs.dataobj.inter)
    np.testing.assert_array_equal(unscaled(ours), unscaled(theirs))


def test_rescaled_values(exported: Exported) -> None:
    pet = nib.load(exported.summary.written[exported.series["pet"].uid])
    assert pet.get_data_dtype() == np.uint16
    assert pet.dataobj.slope == pytest.approx(0.0123) and pet.dataobj.inter == 0.0
    assert pet.get_fdata()[0, 0, 5] == pytest.approx(1005 * 0.0123, rel=1e-6)
    ct = nib.load(exported.summary.written[exported.series["axial"].uid])
    assert ct.get_data_dtype() == np.int16
    assert ct.get_fdata()[0, ROWS - 1, 3] == 3 - 1024
    varying = nib.load(exported.summary.written[exported.series["varying_scale"].uid])
    for k in (0, 7, 19):
        assert varying.get_fdata()[0, ROWS - 1, k] == pytest.approx(k * (0.5 + 0.1 * k) + 3.0)


# --------------------------------------------------------------------------- skipped


def test_series_that_are_no_volume_are_skipped_with_the_reason(exported: Exported) -> None:
    summary = exported.summary
    assert summary.series == len(exported.series)
    assert set(summary.written) == {exported.series[name].uid for name in VOLUMES}
    reasons = {s.SeriesInstanceUID: s.reason for s in summary.skipped}
    assert reasons == {exported.series[name].uid: reason for name, reason in REJECTED.items()}
    names = {p.name for p in exported.out.iterdir()}
    stems = [exported.series[n].uid for n in VOLUMES] + [
        f"{exported.series[n].uid}_seg-{seg.uid}" for n, seg in exported.segs.items()
    ]
    assert names == {f"{stem}{suffix}" for stem in stems for suffix in (".nii.gz", ".json")}
    assert str(summary).startswith(
        f"export-nifti: {len(exported.series)} series, 6 written, 4 skipped ("
    )
    assert str(summary).endswith("; segmentations: 2 written, 0 skipped")


def test_a_series_whose_file_is_gone_is_skipped(tmp_path: Path) -> None:
    kept = write_series(tmp_path / "src" / "kept", gaps=[2.5] * 3, seed=11)
    broken = write_series(tmp_path / "src" / "broken", gaps=[2.5] * 3, seed=12)
    dicomlake.ingest([str(tmp_path / "src")], str(tmp_path / "lake"), workers=0)
    next(broken.folder.iterdir()).unlink()
    summary = export_nifti(str(tmp_path / "lake"), tmp_path / "out")
    assert list(summary.written) == [kept.uid]
    (skipped,) = summary.skipped
    assert (skipped.SeriesInstanceUID, skipped.reason) == (broken.uid, "unreadable")
    assert "FileNotFoundError" in skipped.message
    assert not list((tmp_path / "out").glob(f"{broken.uid}*"))


# --------------------------------------------------------------------------- labels


def test_segmentation_is_a_labelmap_on_the_image_grid(exported: Exported) -> None:
    series, seg = exported.series["oblique"], exported.segs["oblique"]
    path = exported.summary.labels[(seg.uid, series.uid)]
    assert path.name == f"{series.uid}_seg-{seg.uid}.nii.gz"
    labels, image = nib.load(path), nib.load(exported.summary.written[series.uid])
    assert labels.shape == image.shape == (COLUMNS, ROWS, SLICES)
    np.testing.assert_array_equal(labels.affine, image.affine)
    np.testing.assert_array_equal(labels.get_qform(), image.get_qform())
    assert labels.get_data_dtype() == np.uint8 and labels.header.get_intent()[0] == "label"
    expected = in_nifti_layout(seg.masks) @ np.array([1, 2], np.uint8)  # segment numbers
    np.testing.assert_array_equal(np.asanyarray(labels.dataobj), expected)
    body = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert body["ReferencedSeriesInstanceUID"] == series.uid and body["SOPInstanceUID"] == seg.uid
    assert body["image"] == f"{series.uid}.nii.gz" and body["layout"] == "labelmap"
    assert [(s["number"], s["label"], s["value"]) for s in body["segments"]] == [
        (1, "box", 1),
        (2, "small", 2),
    ]
    assert body["segments"][0]["type"] == {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
    assert body["not_placed"] == [] and body["Modality"] == "SEG"


def test_overlapping_segments_are_channels(exported: Exported) -> None:
    series, seg = exported.series["axial"], exported.segs["axial"]
    path = exported.summary.labels[(seg.uid, series.uid)]
    labels = nib.load(path)
    assert labels.shape == (COLUMNS, ROWS, SLICES, 2)
    assert labels.get_data_dtype() == np.uint8 and labels.header.get_intent()[0] == "none"
    np.testing.assert_array_equal(np.asanyarray(labels.dataobj), in_nifti_layout(seg.masks))
    np.testing.assert_array_equal(
        labels.affine, nib.load(exported.summary.written[series.uid]).affine
    )
    body = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert body["layout"] == "channels"
    assert [(s["label"], s["value"]) for s in body["segments"]] == [("outer", 0), ("inner", 1)]


def test_rt_structure_set_labels_as_the_labels_job_places_them(tmp_path: Path) -> None:
    """An RTSTRUCT (a ring: a contour with a hole) exports as load_labels rasterizes it."""
    from helpers.segmentations import Roi, star
    from helpers.segmentations import write_rtstruct as write_structure_set
    from helpers.segmentations import write_series as write_ct

    series = write_ct(tmp_path / "src" / "ct", 5, orientation=OBLIQUE, seed=3)
    outer = np.array([[20.0, 20.0], [20.0, 100.0], [100.0, 100.0], [100.0, 20.0]])
    hole = np.array([[50.0, 50.0], [50.0, 70.0], [70.0, 70.0], [70.0, 50.0]])
    rois = [
        Roi(1, "ring", {1: [outer, hole], 2: [outer, hole]}),
        Roi(2, "star", {3: [star((60.0, 60.0), 30.0, 9, seed=1)]}),
    ]
    (tmp_path / "src" / "rt").mkdir()
    sop = write_structure_set(tmp_path / "src" / "rt" / "rt.dcm", series, rois)
    lake = tmp_path / "lake"
    dicomlake.ingest([str(tmp_path / "src")], str(lake), workers=0)
    summary = export_nifti(str(lake), tmp_path / "out")
    labels = nib.load(summary.labels[(sop, series.uid)])
    expected = load_labels(str(lake), sop, labelmap=True)
    np.testing.assert_array_equal(np.asanyarray(labels.dataobj), nifti_voxels(expected.array[0]))
    np.testing.assert_array_equal(labels.affine, nib.load(summary.written[series.uid]).affine)
    voxels = np.asanyarray(labels.dataobj)
    assert voxels[30, 127 - 30, 1] == 1 and voxels[60, 127 - 60, 1] == 0  # ring, hole
    assert voxels[60, 127 - 60, 3] == 2 and not voxels[..., 0].any()
    body = json.loads(
        summary.labels[(sop, series.uid)].with_suffix("").with_suffix(".json").read_text()
    )
    assert body["Modality"] == "RTSTRUCT" and body["layout"] == "labelmap"
    assert [(s["number"], s["label"]) for s in body["segments"]] == [(1, "ring"), (2, "star")]


def test_segmentation_of_a_skipped_series_is_listed(tmp_path: Path) -> None:
    study = generate_uid()
    kept = write_series(tmp_path / "src" / "kept", gaps=[2.5] * 9, study=study, seed=13)
    gap = write_series(tmp_path / "src" / "gap", gaps=[2.5, 5.0] + [2.5] * 8, study=study, seed=14)
    seg = write_seg(gap, tmp_path / "src" / "seg" / "seg.dcm", {"box": np.s_[1:3, 4:9, 4:9]})
    dicomlake.ingest([str(tmp_path / "src")], str(tmp_path / "lake"), workers=0)
    summary = export_nifti(str(tmp_path / "lake"), tmp_path / "out")
    assert list(summary.written) == [kept.uid] and summary.labels == {}
    (skipped,) = summary.labels_skipped
    assert (skipped.SOPInstanceUID, skipped.SeriesInstanceUID) == (seg.uid, gap.uid)
    assert skipped.reason == "volume_rejected"
    assert skipped.message == "the labelled series was not written: missing_slices"
    result = runner.invoke(
        app, ["export-nifti", "-l", str(tmp_path / "lake"), "-o", str(tmp_path / "o2")]
    )
    assert f"  skipped segmentation {seg.uid} on {gap.uid}: volume_rejected: " in result.stdout


def test_no_segmentations_when_asked(exported: Exported, tmp_path: Path) -> None:
    summary = export_nifti(str(exported.lake), tmp_path, "Modality = 'CT'", segmentations=False)
    assert summary.labels == {} and not list(tmp_path.glob("*_seg-*"))
    assert "segmentations" not in str(summary)


# --------------------------------------------------------------------------- sidecar


def test_sidecar_holds_the_key_tags_and_no_patient(exported: Exported) -> None:
    written = exported.series["oblique"]
    body = json.loads((exported.out / f"{written.uid}.json").read_text())
    assert body["SeriesInstanceUID"] == written.uid
    assert body["Modality"] == "CT" and body["Manufacturer"] == "ACME"
    assert body["ManufacturerModelName"] == "Scan 9"
    assert body["SeriesDescription"] == "test series" and body["SeriesNumber"] == 7
    assert body["SliceThickness"] == 2.5 and body["PixelSpacing"] == [0.7, 0.8]
    assert body["SpacingBetweenSlices"] == pytest.approx(2.5, abs=1e-4)
    assert body["ImageOrientationPatient"] == pytest.approx(turned(30, 20), abs=1e-5)
    assert body["ImagePositionPatient"] == pytest.approx(written.positions[0].tolist(), abs=1e-5)
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "SOPClassUID"):
        assert body[key].startswith("1.2.")
    assert body["shape"] == [COLUMNS, ROWS, SLICES]
    assert (body["voxels"], body["scl_slope"], body["scl_inter"]) == ("stored", 1.0, -1024.0)
    assert len(body["SOPInstanceUIDs"]) == SLICES and len(set(body["SOPInstanceUIDs"])) == SLICES
    assert not set(body) & set(PATIENT_TAGS)
    text = json.dumps(body)
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    # dates as values (as digits they may also lie inside a random UID)
    dates = {"1960-01-01", "19600101", "2024-01-02", "20240102"}
    assert not dates & {v for v in body.values() if isinstance(v, str)}
    nifti = gzip.decompress(exported.summary.written[written.uid].read_bytes())
    assert PATIENT_NAME.encode() not in nifti and PATIENT_ID.encode() not in nifti


def test_sidecar_slices_are_in_k_order(exported: Exported) -> None:
    written = exported.series["reversed"]
    body = json.loads((exported.out / f"{written.uid}.json").read_text())
    by_position = {}
    for path in written.folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_position[float(ds.ImagePositionPatient[2])] = (ds.SOPInstanceUID, ds.InstanceNumber)
    ordered = [by_position[z] for z in sorted(by_position)]
    assert body["SOPInstanceUIDs"] == [uid for uid, _ in ordered]
    assert [number for _, number in ordered] == list(range(SLICES, 0, -1))


def test_patient_tags_only_when_asked(exported: Exported, tmp_path: Path) -> None:
    summary = export_nifti(str(exported.lake), tmp_path, "Modality = 'PT'", patient_tags=True)
    (uid,) = summary.written
    body = json.loads((tmp_path / f"{uid}.json").read_text())
    assert body["PatientName"] == PATIENT_NAME and body["PatientID"] == PATIENT_ID
    assert body["PatientBirthDate"] == "1960-01-01" and body["StudyDate"] == "2024-01-02"


# --------------------------------------------------------------------------- CLI


def test_cli_writes_the_selected_series(exported: Exported, tmp_path: Path) -> None:
    out = tmp_path / "made" / "here"
    result = runner.invoke(
        app,
        [
            "export-nifti",
            "--lake",
            str(exported.lake),
            "--out",
            str(out),
            "--where",
            "SeriesDescription = 'test series' AND Modality = 'CT'",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("export-nifti: 9 series, 5 written, 4 skipped (")
    assert "color" not in lines[0] and "missing_slices 1" in lines[0]
    skipped = {exported.series[n].uid: reason for n, reason in REJECTED.items()}
    for uid, reason in skipped.items():
        assert any(line.startswith(f"  skipped {uid}: {reason}: ") for line in lines[1:])
    expected = {exported.series[n].uid for n in VOLUMES if n != "pet"} | {
        f"{exported.series[n].uid}_seg-{seg.uid}" for n, seg in exported.segs.items()
    }
    assert {p.name for p in out.glob("*.nii.gz")} == {f"{uid}.nii.gz" for uid in expected}
    assert {p.name for p in out.glob("*.json")} == {f"{uid}.json" for uid in expected}
    assert PATIENT_NAME not in result.output and PATIENT_ID not in result.output
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    plain = tmp_path / "plain"
    plain.write_text("x")  # made with the process's umask, as the exported files are
    assert {p.stat().st_mode for p in out.iterdir()} == {plain.stat().st_mode}


def test_cli_quiet_prints_nothing(exported: Exported, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "export-nifti",
            "-l",
            str(exported.lake),
            "-o",
            str(tmp_path),
            "--where",
            "Modality = 'PT'",
            "--quiet",
        ],
    )
    assert result.exit_code == 0 and result.stdout == ""
    assert len(list(tmp_path.glob("*.nii.gz"))) == 1


def test_cli_empty_selection_is_a_clear_message(exported: Exported, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "export-nifti",
            "--lake",
            str(exported.lake),
            "--out",
            str(tmp_path / "o"),
            "--where",
            "Modality IN ('MR', 'SEG')",
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "dicomlake: error: nothing to export: no ok image instance (with pixel data, not a "
        "SEG) matches --where"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "X"], "Missing option '--lake'"),
        (["--lake", "L"], "Missing option '--out'"),
        (["--lake", "L", "--out", "X", "--bogus"], "No such option"),
        (["--lake", "LAKE", "--out", "X", "--where", "NoSuchColumn = 1"], "the query failed"),
        (["--lake", "LAKE", "--out", "FILE"], "is a file"),
        (["--lake", "EMPTY", "--out", "X"], "no instances table"),
    ],
    ids=["no-lake", "no-out", "unknown-flag", "bad-where", "out-is-a-file", "no-lake-table"],
)
def test_cli_wrong_options_exit_2(
    exported: Exported, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "FILE").write_text("x")
    places = {
        "LAKE": str(exported.lake),
        "EMPTY": str(tmp_path / "empty"),
        "FILE": str(tmp_path / "FILE"),
        "X": str(tmp_path / "x"),
    }
    result = runner.invoke(app, ["export-nifti", *(places.get(a, a) for a in args)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_progress_on_a_terminal(exported: Exported, tmp_path: Path) -> None:
    run = run_on_a_terminal(["export-nifti", "-l", str(exported.lake), "-o", str(tmp_path / "out")])
    stdout = run.stdout.decode()
    assert run.returncode == 0
    assert f"/{len(exported.series)} series · " in run.screen and " written · " in run.screen
    assert stdout.startswith(f"export-nifti: {len(exported.series)} series, 6 written, 4 skipped")
