"""modality_float32: pydicom's Modality LUT as float32, the same bits, for every path;
load_frames: each frame its own rescale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from dicomlake.dicom.frames import load_frames, modality_float32


def dataset(slope: object = None, intercept: object = None) -> Dataset:
    ds = Dataset()
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    return ds


def expected(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    return apply_modality_lut(stored, ds).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32])
@pytest.mark.parametrize(
    ("slope", "intercept"),
    [
        ("1", "-1024"),  # CT: the float32 path
        ("2", "0"),
        ("-3", "0"),  # -0.0 where pydicom has +0.0 would differ in bits
        ("0.0123456789", "3.3"),  # PET-like: float64 in blocks
        ("2.5", "-0.1"),
        ("1", "16777216"),  # integers, but past float32's exact range
        (None, None),
        ("1", None),  # half a rescale: pydicom leaves the values alone
    ],
)
def test_same_bits_as_pydicom(dtype: type, slope: str | None, intercept: str | None) -> None:
    rng = np.random.default_rng(7)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        stored = rng.integers(info.min, info.max, (300, 257), endpoint=True, dtype=dtype)
        stored[0, :3] = (0, info.min, info.max)
    else:
        stored = rng.normal(0, 1000, (300, 257)).astype(dtype)
    ds = dataset(slope and DSfloat(slope), intercept and DSfloat(intercept))
    got = modality_float32(stored, ds)
    want = expected(stored, ds)
    assert got.dtype == np.float32 and got.shape == stored.shape
    assert got.tobytes() == want.tobytes()


def test_a_lut_sequence_is_pydicoms() -> None:
    ds = Dataset()
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = [10, 20, 30, 40]
    ds.ModalityLUTSequence = [item]
    stored = np.array([[0, 1], [2, 9]], dtype=np.uint16)
    got = modality_float32(stored, ds)
    assert got.tobytes() == expected(stored, ds).tobytes()
    assert got.tolist() == [[10.0, 20.0], [30.0, 40.0]]


def _multiframe(path: Path, per_frame: bool) -> Path:
    """A 3-frame 4 x 4 CT; the rescale per frame (intercept -1000, -500, 0) or shared."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.NumberOfFrames = 3
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.arange(48, dtype="<i2").tobytes()

    def rescale(intercept: int) -> Dataset:
        item, transform = Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = "2", str(intercept)
        transform.RescaleType = "HU"
        item.PixelValueTransformationSequence = PydicomSequence([transform])
        return item

    if per_frame:
        ds.PerFrameFunctionalGroupsSequence = PydicomSequence(
            [rescale(i) for i in (-1000, -500, 0)]
        )
    else:
        ds.SharedFunctionalGroupsSequence = PydicomSequence([rescale(-1000)])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("per_frame", [True, False])
def test_load_frames_takes_each_frames_rescale(tmp_path: Path, per_frame: bool) -> None:
    """Frames share one decoded dataset only where no per-frame groups can differ."""
    path = _multiframe(tmp_path / "mf.dcm", per_frame)
    stored = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    intercepts = (-1000, -500, 0) if per_frame else (-1000, -1000, -1000)
    got = dict(load_frames(str(path), [0, 1, 2]))
    for frame, intercept in enumerate(intercepts):
        loaded = got[frame]
        assert not isinstance(loaded, Exception), loaded
        assert np.array_equal(loaded.values[0], stored[frame] * 2 + intercept)
