"""Thumbnails of every pixel-bearing test file, their shape, and large compressed frames."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    JPEGBaseline8Bit,
)

import dicomlake
from dicomlake.dicom.drawing import encode_png
from dicomlake.dicom.header import read_header
from dicomlake.dicom.pixels import render
from dicomlake.kernels.thumbnails import DEFAULT_SIZE, ThumbnailOptions, thumbnail_rows
from dicomlake.sample import image_dataset, pydicom_test_files, sample_file, synthetic_mammogram

#: Pixel-bearing files that give an error row instead of a thumbnail, and why; each
#: with a piece of the error text the row must carry.
EXPECTED_FAILURES = {
    "JPEG-lossy.dcm": (
        "non-conformant 12-bit JPEG Extended (invalid SOS parameters): GDCM and Pillow "
        "do not decode 12-bit JPEG, libjpeg rejects the scan header",
        "Unable to decode",
    ),
    "JPEG2000-embedded-sequence-delimiter.dcm": (
        "4 bytes of the JPEG 2000 codestream were overwritten with a Sequence Delimiter: "
        "the codestream header is corrupt",
        "Unable to decode",
    ),
    "MR_truncated.dcm": (
        "pixel data shorter than Rows x Columns x 2 bytes (8130 of 8192)",
        "less than expected",
    ),
    "badVR.dcm": (
        "(0028,0008) Number of Frames holds the invalid IS value '1A'",
        "Number of Frames must be an integer",
    ),
    "meta_missing_tsyntax.dcm": (
        "a Pixel Data element without the Image Pixel module (no Rows, Bits Allocated)",
        "Bits Allocated",
    ),
    "nested_priv_SQ.dcm": (
        "a Pixel Data element without the Image Pixel module (no Rows, Bits Allocated)",
        "Bits Allocated",
    ),
}


def file_name(path: str) -> str:
    """The file name of a lake path; a zip member's own name."""
    return path.split("::", 1)[0].rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def thumbnail_lake(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus (pydicom's and pydicom-data's files) ingested with thumbnails."""
    lake = tmp_path_factory.mktemp("thumbs") / "lake"
    dicomlake.ingest([str(sample_corpus)], str(lake), workers=2, thumbnails=True)
    return lake


def test_every_pixel_bearing_file_has_a_thumbnail_or_an_expected_error(
    thumbnail_lake: Path,
) -> None:
    con = dicomlake.connect(str(thumbnail_lake))
    pixel_paths = {
        row[0]
        for row in con.sql(
            "SELECT path FROM instances WHERE status = 'ok' AND has_pixel_data"
        ).fetchall()
    }
    rows = (
        con.sql(
            "SELECT t.* FROM thumbnails t JOIN instances i USING (row_id) "
            "WHERE i.status = 'ok' AND i.has_pixel_data"
        )
        .to_arrow_table()
        .to_pylist()
    )
    # every pixel-bearing file of pydicom's and pydicom-data's test data is there
    on_disk = {p.name for p in pydicom_test_files()}
    assert len({file_name(p) for p in pixel_paths} & on_disk) >= 150
    assert {r["path"] for r in rows} == pixel_paths  # one row (the middle frame) each
    assert len(rows) == len(pixel_paths)

    failed = {file_name(r["path"]): r["error"] for r in rows if r["status"] != "ok"}
    unexpected = set(failed) - set(EXPECTED_FAILURES)
    assert not unexpected, {name: failed[name] for name in unexpected}
    now_drawn = set(EXPECTED_FAILURES) - set(failed)
    assert not now_drawn, f"expected to fail but drawn: {sorted(now_drawn)}"
    for name, error in failed.items():
        assert EXPECTED_FAILURES[name][1] in error, (name, error)
        assert error.split(":", 1)[0].isidentifier()  # "ErrorClass: message"

    for row in rows:
        if row["status"] != "ok":
            continue
        image = Image.open(io.BytesIO(row["data"]))
        assert image.format == "PNG" and image.mode == row["mode"] in ("L", "RGB")
        assert image.size == (row["width"], row["height"])
        assert max(image.size) <= DEFAULT_SIZE


def test_draw_gives_the_same_error_rows_without_a_lake() -> None:
    for name, (_reason, fragment) in EXPECTED_FAILURES.items():
        path = sample_file(name)
        with path.open("rb") as fp:
            assert read_header(fp, uri=str(path)).has_pixel_data
            rows = thumbnail_rows(
                fp,
                path=str(path),
                instance_id=1,
                sop_instance_uid=None,
                frames=1,
                options=ThumbnailOptions(),
            )
        assert [r["status"] for r in rows] == ["error"]
        assert fragment in rows[0]["error"]


# --- shape: physical aspect ratio, never enlarged -------------------------------------


def thumbnail_size(path: Path, size: int = DEFAULT_SIZE) -> tuple[int, int]:
    with path.open("rb") as fp:
        _data, width, height = encode_png(render(fp, max_side=size), size)
    return width, height


def test_non_square_pixels_keep_the_physical_aspect_ratio(tmp_path: Path) -> None:
    source = sample_file("CT_small.dcm")  # 128 x 128, square pixels
    width, height = thumbnail_size(source)
    assert (width, height) == (128, 128)  # never enlarged
    ds = pydicom.dcmread(source)
    ds.PixelSpacing = [2, 1]  # rows 2 mm apart, columns 1 mm: pixels twice as tall
    ds.save_as(tmp_path / "tall.dcm")
    tall_w, tall_h = thumbnail_size(tmp_path / "tall.dcm")
    assert tall_h / tall_w == pytest.approx(2 * height / width, rel=0.02)
    ds = pydicom.dcmread(source)
    del ds.PixelSpacing
    ds.PixelAspectRatio = [1, 2]  # vertical : horizontal, pixels twice as wide
    ds.save_as(tmp_path / "wide.dcm")
    wide_w, wide_h = thumbnail_size(tmp_path / "wide.dcm")
    assert wide_w / wide_h == pytest.approx(2 * width / height, rel=0.02)
    assert max(wide_w, wide_h) <= DEFAULT_SIZE


def test_thumbnails_fit_the_size_asked_for() -> None:
    for name, size, expected in (
        ("MR2_UNCI.dcm", 256, (256, 256)),  # 1024 x 1024
        ("US1_UNCR.dcm", 100, (100, 75)),  # 640 x 480
        ("JPEG2000.dcm", 64, (16, 64)),  # 256 wide, 1024 tall
        ("MR_small.dcm", 256, (64, 64)),  # never enlarged
    ):
        assert thumbnail_size(sample_file(name), size) == expected, name


# --- large compressed frames decode at a reduced resolution ---------------------------

LARGE = (3072, 4096)  # rows, columns: a mammogram-sized frame


def mammogram_like(bits: int, seed: int = 0) -> np.ndarray:
    return synthetic_mammogram(bits, seed, LARGE)


def write_large_jpeg(path: Path, color: bool = False) -> Path:
    """JPEG baseline, 8-bit: Pillow encodes, pydicom encapsulates."""
    gray = mammogram_like(8)
    if color:  # a color gradient: red rises left to right, blue top to bottom
        rows, cols = LARGE
        red = np.linspace(0, 255, cols, dtype=np.float32)[None, :].repeat(rows, 0)
        blue = np.linspace(255, 0, rows, dtype=np.float32)[:, None].repeat(cols, 1)
        rgb = np.stack([red, gray, blue], axis=-1).astype(np.uint8)
        image, photometric = Image.fromarray(rgb), "YBR_FULL_422"
    else:
        image, photometric = Image.fromarray(gray), "MONOCHROME2"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, subsampling=1 if color else -1)
    ds = image_dataset(np.asarray(image), 8, photometric)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_large_j2k(path: Path) -> Path:
    """JPEG 2000 (lossy), 12 bits stored: pydicom's encoder (pylibjpeg-openjpeg)."""
    pixels = mammogram_like(12)
    ds = image_dataset(pixels, 12, "MONOCHROME2")
    ds.WindowCenter, ds.WindowWidth = 1400, 2600
    ds.compress(JPEG2000, pixels, j2k_cr=[20])
    ds.save_as(path, enforce_file_format=True)
    return path


def write_large_native(path: Path) -> Path:
    """Uncompressed, MONOCHROME1, 12 bits stored: no codec can decode it small."""
    pixels = mammogram_like(12)
    ds = image_dataset(pixels, 12, "MONOCHROME1")
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def large_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("large")
    return {
        "jpeg": write_large_jpeg(folder / "mg-jpeg.dcm"),
        "jpeg-color": write_large_jpeg(folder / "mg-jpeg-color.dcm", color=True),
        "j2k": write_large_j2k(folder / "mg-j2k.dcm"),
        "native": write_large_native(folder / "mg-native.dcm"),
    }


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)


@pytest.mark.parametrize("kind", ["jpeg", "jpeg-color", "j2k"])
def test_large_frames_decode_at_reduced_resolution(large_files: dict[str, Path], kind: str) -> None:
    with large_files[kind].open("rb") as fp:
        reduced = render(fp, max_side=DEFAULT_SIZE)
        full = render(fp)  # no size given: a full decode
    assert full.decoded_scale == 1 and full.pixels.shape[:2] == LARGE
    assert reduced.decoded_scale >= 4
    assert max(reduced.pixels.shape[:2]) <= max(LARGE) // 4
    assert reduced.mode == full.mode
    small, width, height = encode_png(reduced, DEFAULT_SIZE)
    reference, ref_width, ref_height = encode_png(full, DEFAULT_SIZE)
    assert (width, height) == (ref_width, ref_height) == (256, 192)
    r = np.corrcoef(png_pixels(small).ravel(), png_pixels(reference).ravel())[0, 1]
    assert r > 0.98, f"{kind}: r={r:.4f}"
    assert np.abs(png_pixels(small) - png_pixels(reference)).mean() < 6


def test_large_native_frames_are_averaged_down_before_the_luts(
    large_files: dict[str, Path],
) -> None:
    with large_files["native"].open("rb") as fp:
        small = render(fp, max_side=DEFAULT_SIZE)
        full = render(fp)
    assert small.decoded_scale == full.decoded_scale == 1  # read in full: no codec
    assert max(small.pixels.shape) <= 2 * DEFAULT_SIZE  # but drawn from block averages
    assert max(full.pixels.shape) == max(LARGE)
    thumbnail = png_pixels(encode_png(small, DEFAULT_SIZE)[0])
    reference = png_pixels(encode_png(full, DEFAULT_SIZE)[0])
    assert thumbnail.shape == reference.shape == (192, 256)
    assert np.corrcoef(thumbnail.ravel(), reference.ravel())[0, 1] > 0.99
    stored = mammogram_like(12)[::16, ::16].astype(np.float64)
    drawn = small.pixels[::2, ::2].astype(np.float64)  # MONOCHROME1: drawn inverted
    assert np.corrcoef(stored.ravel(), drawn.ravel())[0, 1] < -0.9


def test_odd_sized_j2k_frames_decode_at_the_level_their_size_allows() -> None:
    """1841 columns at level 2 are 461 for openjpeg; Pillow's own rounding said 460."""
    with sample_file("RG1_J2KR.dcm").open("rb") as fp:
        reduced = render(fp, max_side=DEFAULT_SIZE)
        full = render(fp)
    assert reduced.decoded_scale == 4 and reduced.pixels.shape == (489, 461)
    thumbnail = png_pixels(encode_png(reduced, DEFAULT_SIZE)[0])
    reference = png_pixels(encode_png(full, DEFAULT_SIZE)[0])
    assert thumbnail.shape == reference.shape
    assert np.corrcoef(thumbnail.ravel(), reference.ravel())[0, 1] > 0.99
    assert np.abs(thumbnail - reference).mean() < 2


def test_big_endian_palette_frames_use_the_palette_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A big-endian frame is looked up in a table of every value like a little-endian one."""
    from dicomlake.dicom import pixels

    looked_up: list[int] = []
    apply_color_lut = pixels.apply_color_lut

    def counting(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
        looked_up.append(arr.size)
        return apply_color_lut(arr, ds)

    monkeypatch.setattr(pixels, "apply_color_lut", counting)
    monkeypatch.setattr(pixels, "_PALETTE_TABLES", {})
    drawn = {}
    for name in ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"):
        with sample_file(name).open("rb") as fp:
            drawn[name] = [render(fp, max_side=DEFAULT_SIZE).pixels for _ in range(2)]
    assert looked_up == [2**16, 2**16]  # one table per byte order, each used twice
    little, big = drawn.values()
    assert all(np.array_equal(little[0], pixels) for pixels in (*little, *big))
