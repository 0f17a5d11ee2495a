"""Ingest draws thumbnails from the header it parsed: one parse per file, the same images.

The pixels are decoded from where the header's DICOM JSON says they are, so pydicom
never parses a file the native parser read, and parses a file the pydicom path read
once. The images are the ones drawn from each file on its own (``render``), which the
tests against dcmtk check.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.filereader
import pytest
from PIL import Image

import dicomlake
from dicomlake.dicom.drawing import encode_png
from dicomlake.dicom.pixels import render
from dicomlake.sample import sample_file

SIZE = 64

#: Little-endian files that cover what decoding from the JSON has to get right.
FILES = (
    "CT_small.dcm",  # native, pixel data a BulkDataURI, rescale
    "MR_small.dcm",
    "rtdose_1frame.dcm",  # implicit VR, pixel data inline in the JSON
    "SC_rgb_small_odd.dcm",  # RGB, odd length, inline
    "JPEG2000.dcm",  # encapsulated and inline: the element is rebuilt in memory
    "JPEGLSNearLossless_08.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR
    "MR_small_RLE.dcm",
    "US1_J2KR.dcm",
    "emri_small.dcm",  # multi-frame
    "eCT_Supplemental.dcm",  # enhanced CT: rescale, window, spacing in functional groups
    "OBXXXX1A.dcm",  # palette color, LUT data as BulkDataURIs
    "gdcm-US-ALOKA-16.dcm",  # segmented palette, implicit VR
)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Each file name pydicom starts reading as a DICOM file, with how many times.

    Every pydicom parse of a file (``dcmread``, ``pixel_array`` of a file) starts by
    reading its preamble; the real function still runs.
    """
    counts: Counter[str] = Counter()
    read_preamble = pydicom.filereader.read_preamble

    def counting(fp: Any, force: bool) -> bytes | None:
        counts[Path(str(getattr(fp, "name", "<bytes>"))).name] += 1
        return read_preamble(fp, force)

    monkeypatch.setattr(pydicom.filereader, "read_preamble", counting)
    return counts


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    for name in FILES:
        shutil.copyfile(sample_file(name), source / name)
    return source


def thumbnails(lake: Path) -> Iterator[dict[str, Any]]:
    con = dicomlake.connect(str(lake))
    yield from con.sql("SELECT * FROM thumbnails ORDER BY path, frame").to_arrow_table().to_pylist()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def drawn_alone(path: Path, frame: int) -> np.ndarray:
    """The thumbnail of one frame drawn from the file alone, pydicom parsing it."""
    with path.open("rb") as fp:
        return pixels(encode_png(render(fp, frame=frame, max_side=SIZE), SIZE)[0])


@pytest.mark.parametrize("parser", ["auto", "pydicom"])
def test_ingest_parses_each_file_once_and_draws_the_same_thumbnails(
    folder: Path, tmp_path: Path, parses: Counter[str], parser: str
) -> None:
    lake = tmp_path / "lake"
    options = dicomlake.ThumbnailOptions(size=SIZE, frame="all")
    summary = dicomlake.ingest(
        [str(folder)], str(lake), workers=0, thumbnails=options, parser=parser
    )
    assert summary.ok == len(FILES)
    if parser == "auto":  # the native parser reads them all: pydicom parses none
        assert summary.parsers == {"native": len(FILES)}
        assert parses == Counter()
    else:  # the header's parse only, never a second one for the pixels
        assert parses == Counter(dict.fromkeys(FILES, 1))

    parses.clear()
    rows = list(thumbnails(lake))
    frames = Counter(Path(row["path"]).name for row in rows)
    assert frames["emri_small.dcm"] == 10 and frames["eCT_Supplemental.dcm"] == 2
    assert set(frames) == set(FILES)
    for row in rows:
        name = Path(row["path"]).name
        assert row["status"] == "ok", (name, row["error"])
        expected = drawn_alone(folder / name, row["frame"])
        assert np.array_equal(pixels(row["data"]), expected), (name, row["frame"])
    assert parses  # drawn alone, pydicom reads each file itself


def write_bad_pixels(folder: Path) -> dict[str, str]:
    """Files whose headers are fine but whose pixels are not, and the error each gives."""
    ds = pydicom.dcmread(sample_file("SC_rgb_jpeg_dcmtk.dcm"))
    fragment = bytearray(pydicom.encaps.generate_fragmented_frames(ds.PixelData).__next__()[0])
    fragment[2:] = b"\x00" * (len(fragment) - 2)  # the codestream after SOI wiped out
    ds.PixelData = pydicom.encaps.encapsulate([bytes(fragment)])
    ds.save_as(folder / "wiped-jpeg.dcm")
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.BitsAllocated = 12  # not a multiple of 8
    ds.save_as(folder / "bits-allocated-12.dcm")
    shutil.copyfile(sample_file("MR_truncated.dcm"), folder / "MR_truncated.dcm")
    return {
        "wiped-jpeg.dcm": "Unable to decode",
        "bits-allocated-12.dcm": "Bits Allocated",
        "MR_truncated.dcm": "less than expected",
    }


def test_bad_pixel_data_is_an_error_row_and_the_run_goes_on(folder: Path, tmp_path: Path) -> None:
    failures = write_bad_pixels(folder)
    lake = tmp_path / "lake"
    summary = dicomlake.ingest(
        [str(folder)],
        str(lake),
        workers=0,
        thumbnails=dicomlake.ThumbnailOptions(size=SIZE),
    )
    assert summary.ok == len(FILES) + len(failures)  # the instances rows are fine
    rows = {Path(row["path"]).name: row for row in thumbnails(lake)}
    assert set(rows) == set(FILES) | set(failures)
    for name, row in rows.items():
        if name in failures:
            assert row["status"] == "error" and failures[name] in row["error"], row
            assert row["data"] is None
        else:
            assert row["status"] == "ok", (name, row["error"])
