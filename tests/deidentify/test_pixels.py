"""Clean Pixel Data: burned-in text is found, blanked, checked again, and nothing else moves.

Images are drawn here with Pillow (text in the pixels on a gradient), so the words
planted are known; the OCR that checks the output is this file's own (tesseract on
the display rendering and on a thresholded copy), not the module's.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from dicomlake.deidentify import pixels as deid_pixels
from dicomlake.deidentify.pixels import Box, RegionRules, burned_in_risk, clean_pixels
from dicomlake.dicom.pixels import display_frame
from dicomlake.errors import DeidSkipped, PixelsNotClean

needs_tesseract = pytest.mark.skipif(
    not deid_pixels.tesseract_available(),
    reason="tesseract is not installed (Debian's tesseract-ocr and pytesseract)",
)

PLANTED = ("DOE", "JOHN", "12345")
US_SOP = "1.2.840.10008.5.1.4.1.1.6.1"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
SC_SOP = "1.2.840.10008.5.1.4.1.1.7"


# --- images ------------------------------------------------------------------------


def _text_mask(rows: int, columns: int, at: tuple[int, int], text: str, size: int) -> np.ndarray:
    """Where ``text`` is drawn (anti-aliased coverage 0..255)."""
    mask = Image.new("L", (columns, rows), 0)
    ImageDraw.Draw(mask).text(at, text, fill=255, font=ImageFont.load_default(size=size))
    return np.asarray(mask)


def _dataset(arr: np.ndarray, *, photometric: str, modality: str, sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "12345"
    ds.Manufacturer = "ACME Medical"
    ds.ManufacturerModelName = "Sono 5"
    ds.set_pixel_data(arr, photometric, arr.dtype.itemsize * 8, generate_instance_uid=False)
    return ds


def us_rgb(*, text: str = "DOE^JOHN 12345", frames: int = 1) -> tuple[Dataset, np.ndarray]:
    """A 480 x 640 ultrasound-like RGB screen: a gray fan of speckle, text in white."""
    rows, columns = 480, 640
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:rows, 0:columns]
    fan = ((x - 320) ** 2 + (y + 40) ** 2 < 420**2) & (y > 80) & (abs(x - 320) < (y + 40) * 0.7)
    gray = np.where(fan, 60 + 40 * np.sin(x / 25.0) + rng.normal(0, 12, (rows, columns)), 0)
    base = np.repeat(gray.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    text_mask = _text_mask(rows, columns, (24, 20), text, 22) if text else np.zeros((rows, columns))
    image = base.copy()
    image[text_mask > 0] = np.maximum(
        image[text_mask > 0],
        (text_mask[text_mask > 0, None] * np.array([1.0, 1.0, 1.0])).astype(np.uint8),
    )
    arr = np.stack([image] * frames) if frames > 1 else image
    ds = _dataset(arr, photometric="RGB", modality="US", sop_class=US_SOP)
    return ds, text_mask


def ct_16bit(*, text: str = "DOE^JOHN 12345") -> tuple[Dataset, np.ndarray]:
    """A 512 x 512 CT-like MONOCHROME2 image: signed 12 bits in 16, text in bone HU."""
    rows = columns = 512
    y, x = np.mgrid[0:rows, 0:columns]
    body = ((x - 256) ** 2 / 200**2 + (y - 280) ** 2 / 160**2) < 1
    values = np.where(body, 40 + (x // 8), -1000).astype(np.int16)
    text_mask = _text_mask(rows, columns, (20, 16), text, 20) if text else np.zeros((rows, columns))
    values[text_mask > 96] = 2000
    ds = _dataset(values, photometric="MONOCHROME2", modality="CT", sop_class=CT_SOP)
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    return ds, text_mask


def _frames(ds: Dataset) -> list[np.ndarray]:
    arr = ds.pixel_array
    return list(arr) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else [arr]


def ocr_words(ds: Dataset) -> str:
    """What tesseract reads in every frame, as displayed and thresholded (upper case)."""
    import pytesseract

    found = []
    for index, frame in enumerate(_frames(ds)):
        shown = display_frame(frame, ds, index).pixels
        gray = shown.max(axis=2) if shown.ndim == 3 else shown
        big = Image.fromarray(gray).resize((gray.shape[1] * 2, gray.shape[0] * 2))
        binary = big.point(lambda v: 0 if v > 160 else 255)
        for image in (big, binary):
            found.append(pytesseract.image_to_string(image, config="--psm 11", timeout=60))
    return " ".join(found).upper()


def roundtrip(ds: Dataset) -> Dataset:
    """Write ``ds`` as a file and read it back: the output must be valid DICOM."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _outside(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels farther than ``margin`` from any pixel of ``mask``."""
    rows, columns = np.nonzero(mask)
    near = np.zeros(mask.shape, dtype=bool)
    near[
        max(rows.min() - margin, 0) : rows.max() + margin + 1,
        max(columns.min() - margin, 0) : columns.max() + margin + 1,
    ] = True
    return ~near


# --- burned_in_risk ----------------------------------------------------------------


def _header(**attrs: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"Modality": "CT", "BurnedInAnnotation": "YES"}, "BurnedInAnnotation is YES"),
        ({"Modality": "US"}, "ultrasound images often carry burned-in text"),
        ({"Modality": "OT"}, "screen captures"),
        ({"Modality": "XC"}, "photographs"),
        ({"Modality": "ES"}, "endoscopy"),
        ({"Modality": "DOC"}, "documents"),
        ({"Modality": "CT", "SOPClassUID": SC_SOP}, "secondary capture"),
        ({"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"}, "secondary capture"),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "screen"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "encapsulated documents"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.1.1"}, "video"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.4.1"}, "video"),
        ({"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "screen"),
        ({"Modality": "MR", "ImageType": ["DERIVED", "SECONDARY"]}, "screen captures"),
        ({"Modality": "MR", "ImageType": ["DERIVED", "SECONDARY", "OTHER"]}, "screen captures"),
        ({"Modality": "CT", "ConversionType": "WSD"}, "Conversion Type"),
        ({"Modality": "SM", "ImageType": ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]}, "label"),
    ],
)
def test_burned_in_risk_gives_a_reason(attrs: dict[str, object], expected: str) -> None:
    reason = burned_in_risk(_header(**attrs))
    assert reason is not None
    assert expected.lower() in reason.lower()
    assert "DOE" not in reason


@pytest.mark.parametrize(
    "attrs",
    [
        # a CT acquisition keeps its annotations out of the pixels
        {"Modality": "CT", "SOPClassUID": CT_SOP, "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]},
        {"Modality": "MR", "ImageType": ["DERIVED", "SECONDARY", "MPR"]},
        # the device's NO is trusted, even for a kind that often carries text
        {"Modality": "US", "SOPClassUID": US_SOP, "BurnedInAnnotation": "NO"},
        {"Modality": "OT", "SOPClassUID": SC_SOP, "BurnedInAnnotation": "NO"},
        {},
    ],
)
def test_burned_in_risk_none(attrs: dict[str, object]) -> None:
    assert burned_in_risk(_header(**attrs)) is None


def test_burned_in_risk_reason_never_holds_values() -> None:
    ds = _header(Modality="US", PatientName="DOE^JOHN", BurnedInAnnotation="YES")
    reason = burned_in_risk(ds)
    assert reason == "BurnedInAnnotation is YES"


# --- region rules ------------------------------------------------------------------


def test_default_rules_load_and_are_empty() -> None:
    assert RegionRules.default().rules == ()


def test_rules_file_matches_device_and_size(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            [
                {
                    "manufacturer": "acme*",
                    "model": "re:Sono ?[0-9]+",
                    "rows": 480,
                    "columns": 640,
                    "rectangles": [[0, 0, 640, 60], [10, 400, 50, 20]],
                },
                {
                    "manufacturer": "Other",
                    "rows": 480,
                    "columns": 640,
                    "rectangles": [[1, 1, 2, 2]],
                },
                {
                    "manufacturer": "ACME*",
                    "rows": 512,
                    "columns": 512,
                    "rectangles": [[3, 3, 3, 3]],
                },
            ]
        )
    )
    rules = RegionRules.from_file(path)
    ds = _header(Manufacturer="ACME Medical", ManufacturerModelName="Sono 5", Rows=480, Columns=640)
    assert rules.boxes_for(ds) == [Box(0, 0, 640, 60), Box(10, 400, 50, 20)]
    ds.ManufacturerModelName = "Cardio 1"
    assert rules.boxes_for(ds) == []


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"rules": 3}',
        '[{"manufacturer": "A", "rows": 1, "columns": 1, "rectangles": [[0, 0, 0, 1]]}]',
        '[{"manufacturer": "A", "rows": 1, "columns": 1, "rectangles": []}]',
        '[{"manufacturer": "A", "rows": 0, "columns": 1, "rectangles": [[0, 0, 1, 1]]}]',
        '[{"manufacturer": "re:(", "rows": 1, "columns": 1, "rectangles": [[0, 0, 1, 1]]}]',
        '[{"manufacturer": "A", "rows": 1, "columns": 1, "rectangles": [[0, 0, 1, 1]], "x": 1}]',
    ],
)
def test_bad_rules_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"rules\.json"):
        RegionRules.from_file(path)


# --- clean_pixels --------------------------------------------------------------------


@needs_tesseract
def test_us_rgb_text_is_blanked_and_nothing_else_changes() -> None:
    ds, mask = us_rgb()
    before = ds.pixel_array.copy()
    assert all(word in ocr_words(ds) for word in PLANTED)  # the test is meaningful
    start = time.perf_counter()
    clean_pixels(ds)
    print(f"US RGB 640x480: clean_pixels {time.perf_counter() - start:.2f} s")
    out = roundtrip(ds)
    after = out.pixel_array
    assert out.BurnedInAnnotation == "NO"
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not any(word in ocr_words(out) for word in PLANTED)
    changed = np.any(after != before, axis=-1)
    assert changed[mask > 0].mean() > 0.95  # the text is gone
    assert np.all(after[changed] == 0)  # blanked to black, not smeared
    # the speckle may be read as a word or two; the text's surroundings must stay
    assert changed[_outside(mask, 40)].mean() < 0.02


@needs_tesseract
def test_ct_16bit_text_is_blanked_to_the_minimum() -> None:
    ds, mask = ct_16bit()
    before = ds.pixel_array.copy()
    assert all(word in ocr_words(ds) for word in PLANTED)
    start = time.perf_counter()
    clean_pixels(ds)
    print(f"CT 16-bit 512x512: clean_pixels {time.perf_counter() - start:.2f} s")
    out = roundtrip(ds)
    after = out.pixel_array
    assert after.dtype == before.dtype
    assert (out.BitsAllocated, out.BitsStored, out.PixelRepresentation) == (16, 12, 1)
    assert not any(word in ocr_words(out) for word in PLANTED)
    changed = after != before
    assert changed[mask > 96].all()
    assert np.all(after[changed] == before.min())
    assert not changed[_outside(mask, 12)].any()
    assert out.BurnedInAnnotation == "NO"


@needs_tesseract
def test_nothing_found_leaves_pixel_data_byte_for_byte() -> None:
    ds, _ = ct_16bit(text="")
    raw = bytes(ds.PixelData)
    clean_pixels(ds)
    assert bytes(ds.PixelData) == raw
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.BurnedInAnnotation == "NO"


@needs_tesseract
def test_rle_compressed_is_written_native_and_lossless() -> None:
    ds, mask = us_rgb()
    before = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    clean_pixels(ds)
    out = roundtrip(ds)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == "RGB"
    after = out.pixel_array
    changed = np.any(after != before, axis=-1)
    assert changed[mask > 0].mean() > 0.95
    assert np.all(after[changed] == 0)
    assert not any(word in ocr_words(out) for word in PLANTED)


@needs_tesseract
def test_jpeg_baseline_ybr_is_decoded_and_written_rgb() -> None:
    ds, _ = us_rgb()
    image = Image.fromarray(ds.pixel_array)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, subsampling=0)
    ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    decoded = ds.pixel_array.copy()  # as pydicom shows it: RGB
    assert all(word in ocr_words(ds) for word in PLANTED)
    clean_pixels(ds)
    out = roundtrip(ds)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == "RGB"
    assert out.LossyImageCompression == "01"
    changed = np.any(out.pixel_array != decoded, axis=-1)
    assert np.all(out.pixel_array[changed] == 0)
    assert not any(word in ocr_words(out) for word in PLANTED)


@needs_tesseract
def test_multiframe_boxes_are_blanked_in_every_frame() -> None:
    ds, mask = us_rgb(frames=3)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    clean_pixels(ds)
    frames = roundtrip(ds).pixel_array
    assert frames.shape[0] == 3
    for frame in frames:
        assert (frame[mask > 0] == 0).mean() > 0.95


@needs_tesseract
def test_planar_configuration_is_kept() -> None:
    ds, mask = us_rgb()
    before = ds.pixel_array.copy()
    ds.PixelData = np.ascontiguousarray(before.transpose(2, 0, 1)).tobytes()
    ds.PlanarConfiguration = 1
    clean_pixels(ds)
    out = roundtrip(ds)
    assert out.PlanarConfiguration == 1
    changed = np.any(out.pixel_array != before, axis=-1)
    assert changed[mask > 0].mean() > 0.95
    assert np.all(out.pixel_array[changed] == 0)


@needs_tesseract
def test_rules_blank_their_rectangle_without_ocr_text() -> None:
    ds, _ = ct_16bit(text="")
    before = ds.pixel_array.copy()
    rules = RegionRules.from_json(
        [
            {
                "manufacturer": "ACME*",
                "rows": 512,
                "columns": 512,
                "rectangles": [[100, 200, 50, 30], [500, 500, 40, 40]],
            }
        ]
    )
    clean_pixels(ds, rules=rules, ocr=False)
    after = roundtrip(ds).pixel_array
    inside = np.zeros(after.shape, dtype=bool)
    inside[200:230, 100:150] = True
    inside[500:, 500:] = True  # clipped to the frame
    assert np.all(after[inside] == before.min())
    assert np.array_equal(after[~inside], before[~inside])
    assert ds.BurnedInAnnotation == "NO"


@needs_tesseract
def test_rules_cover_the_text_without_ocr() -> None:
    ds, _ = us_rgb()
    rules = RegionRules.from_json(
        [
            {
                "manufacturer": "ACME*",
                "model": "Sono*",
                "rows": 480,
                "columns": 640,
                "rectangles": [[0, 0, 640, 60]],
            }
        ]
    )
    clean_pixels(ds, rules=rules, ocr=False)
    assert not any(word in ocr_words(ds) for word in PLANTED)
    assert ds.BurnedInAnnotation == "NO"


@needs_tesseract
def test_text_left_by_rules_only_fails_the_check() -> None:
    ds, _ = us_rgb()
    with pytest.raises(PixelsNotClean, match="text is still found") as caught:
        clean_pixels(ds, rules=RegionRules(), ocr=False)
    assert isinstance(caught.value, DeidSkipped)
    assert "BurnedInAnnotation" not in ds


@needs_tesseract
def test_ocr_timeout_leaves_the_file_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytesseract

    def timeout(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Tesseract process timeout")

    monkeypatch.setattr(pytesseract, "image_to_data", timeout)
    ds, _ = us_rgb()
    with pytest.raises(PixelsNotClean, match="OCR did not finish"):
        clean_pixels(ds)


def test_no_pixel_data_is_left_out() -> None:
    ds = _header(Modality="DOC", SOPClassUID="1.2.840.10008.5.1.4.1.1.104.1")
    with pytest.raises(PixelsNotClean):
        clean_pixels(ds)


def test_without_tesseract_the_file_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    ds, _ = ct_16bit(text="")
    with pytest.raises(PixelsNotClean, match="tesseract"):
        clean_pixels(ds)


def test_frames_ocrd_are_bounded() -> None:
    assert deid_pixels._ocr_frames(3) == [0, 1, 2]
    picked = deid_pixels._ocr_frames(1000)
    assert len(picked) == deid_pixels.MAX_OCR_FRAMES
    assert picked[0] == 0 and picked[-1] == 999


@needs_tesseract
@pytest.mark.parametrize(
    ("name", "words", "photometric"),
    [
        ("US1_UNCR.dcm", ("BAPTIST", "LYMPH", "NODE", "MSCSKEL"), "RGB"),
        ("OBXXXX1A.dcm", ("PHILIPS", "HEALTHCARE", "5/25/2011", "142825"), "PALETTE COLOR"),
        # JPEG 2000 lossless, YBR_RCT: decoded and written native RGB
        ("US1_J2KR.dcm", ("BAPTIST", "LYMPH", "NODE", "MSCSKEL"), "RGB"),
    ],
)
def test_real_ultrasound_screens_are_cleaned(
    name: str, words: tuple[str, ...], photometric: str
) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    before = ds.pixel_array.copy()
    assert all(word in ocr_words(ds) for word in words)
    start = time.perf_counter()
    clean_pixels(ds)
    print(f"{name}: clean_pixels {time.perf_counter() - start:.2f} s")
    out = roundtrip(ds)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == photometric
    left = ocr_words(out)
    assert not any(word in left for word in words)
    changed = out.pixel_array != before
    if changed.ndim == 3:
        changed = changed.any(axis=-1)
    assert 0.005 < changed.mean() < 0.25  # the text, a few words of texture at most


@needs_tesseract
@pytest.mark.parametrize(
    ("name", "fill"),
    [
        ("SC_ybr_full_uncompressed.dcm", (0, 128, 128)),  # YBR black, interleaved
        ("SC_ybr_full_422_uncompressed.dcm", (0, 128, 128)),  # Y1 Y2 Cb Cr pairs
        ("liver_1frame.dcm", 0),  # 1 bit allocated, packed
        ("MR_small_bigendian.dcm", None),  # big endian: the frame's minimum
        ("emri_small.dcm", None),  # 10 frames
    ],
)
def test_native_layouts_are_edited_in_place(name: str, fill: object) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    syntax = ds.file_meta.TransferSyntaxUID
    layout = (ds.BitsAllocated, ds.PhotometricInterpretation, ds.get("PlanarConfiguration"))
    before = pydicom.pixels.pixel_array(ds, raw=True).copy()
    rules = RegionRules.from_json(
        [
            {
                "manufacturer": "*",
                "rows": int(ds.Rows),
                "columns": int(ds.Columns),
                "rectangles": [[9, 12, 21, 9]],
            }
        ]
    )
    clean_pixels(ds, rules=rules, ocr=False)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert (ds.BitsAllocated, ds.PhotometricInterpretation, ds.get("PlanarConfiguration")) == layout
    after = pydicom.pixels.pixel_array(ds, raw=True)
    first, last = (8, 30) if name.endswith("422_uncompressed.dcm") else (9, 30)
    inside = np.zeros(
        after.shape[-3:-1] if after.ndim == 4 or ds.SamplesPerPixel == 3 else after.shape[-2:],
        dtype=bool,
    )
    inside[12:21, first:last] = True
    frames = after if int(ds.get("NumberOfFrames", 1) or 1) > 1 else after[np.newaxis]
    originals = before if frames is after else before[np.newaxis]
    for frame, original in zip(frames, originals, strict=True):
        expected = original.min() if fill is None else fill
        assert np.all(frame[inside] == expected)
        assert np.array_equal(frame[~inside], original[~inside])
    assert roundtrip(ds).BurnedInAnnotation == "NO"


@needs_tesseract
def test_compressed_multiframe_keeps_its_frames() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    before = ds.pixel_array.copy()
    rules = RegionRules.from_json(
        [{"manufacturer": "*", "rows": 100, "columns": 100, "rectangles": [[5, 5, 10, 10]]}]
    )
    clean_pixels(ds, rules=rules, ocr=False)
    out = roundtrip(ds)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.NumberOfFrames == 2
    after = out.pixel_array
    assert np.all(after[:, 5:15, 5:15] == 0)
    after[:, 5:15, 5:15] = before[:, 5:15, 5:15]
    assert np.array_equal(after, before)


@needs_tesseract
@pytest.mark.parametrize(("user", "expected"), [(None, "1"), ("2", "2")])
def test_tesseract_runs_single_threaded_unless_told(
    monkeypatch: pytest.MonkeyPatch, user: str | None, expected: str
) -> None:
    from pytesseract import pytesseract as module

    monkeypatch.setattr(module, "environ", module.environ)  # restored afterwards
    if user is None:
        monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    else:
        monkeypatch.setenv("OMP_THREAD_LIMIT", user)
    ds, _ = ct_16bit(text="")
    clean_pixels(ds)
    assert module.environ["OMP_THREAD_LIMIT"] == expected
    assert os.environ.get("OMP_THREAD_LIMIT") == user  # this process is left alone
