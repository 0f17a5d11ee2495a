"""An ECG (no pixel data, a waveform) gets a thumbnail through ingest and the thumbnails job."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

import dicomlake
from dicomlake.jobs.thumbnails import build_thumbnails, missing_thumbnails
from dicomlake.sample import sample_file


def thumbs(lake: Path) -> dict[str, dict]:
    con = dicomlake.connect(str(lake))
    try:
        rows = con.sql("SELECT * FROM thumbnails").to_arrow_table().to_pylist()
    finally:
        con.close()
    return {r["path"].rsplit("/", 1)[1]: r for r in rows}


def folder_with_ecg(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(sample_file("waveform_ecg.dcm"), folder / "ecg.dcm")
    shutil.copyfile(sample_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copyfile(sample_file("rtstruct.dcm"), folder / "rtstruct.dcm")  # neither
    return folder


def assert_drawn_plot(row: dict, size: int) -> None:
    """An ``ok`` row whose PNG decodes to a plot: dark traces on a light background."""
    assert row["status"] == "ok" and row["error"] is None
    assert row["frame"] == 0 and row["format"] == "png" and row["mode"] == "RGB"
    image = Image.open(io.BytesIO(row["data"]))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (row["width"], row["height"]) and max(image.size) == size
    pixels = np.asarray(image)
    traces = (pixels.max(axis=2) < 60).mean()
    assert 0.01 < traces < 0.5, f"{traces:.1%} of the thumbnail is trace"
    assert (pixels.min(axis=2) > 200).mean() > 0.3  # mostly background and grid


def test_ingest_with_thumbnails_draws_the_ecg(tmp_path: Path) -> None:
    folder = folder_with_ecg(tmp_path)
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(folder)], str(lake), workers=0, thumbnails=True)
    got = thumbs(lake)
    assert sorted(got) == ["ct.dcm", "ecg.dcm"]  # the RT structure set has nothing to draw
    assert summary.thumbnails == 2 and not summary.thumbnail_errors
    assert_drawn_plot(got["ecg.dcm"], 256)
    con = dicomlake.connect(str(lake))
    try:
        joined = con.sql(
            "SELECT i.has_pixel_data, t.SOPInstanceUID = i.SOPInstanceUID "
            "FROM thumbnails t JOIN instances i USING (row_id) WHERE i.path LIKE '%ecg.dcm'"
        ).fetchall()
    finally:
        con.close()
    assert joined == [(False, True)]
    again = dicomlake.ingest([str(folder)], str(lake), workers=0, thumbnails=True)
    assert again.thumbnails == 0 and len(thumbs(lake)) == 2


def test_thumbnails_job_draws_the_ecg_at_the_size_asked(tmp_path: Path) -> None:
    folder = folder_with_ecg(tmp_path)
    lake = tmp_path / "lake"
    dicomlake.ingest([str(folder)], str(lake), workers=0)
    missing = missing_thumbnails(str(lake)).to_pylist()
    waveform = {r["path"].rsplit("/", 1)[1]: r["waveform"] for r in missing}
    assert waveform == {"ct.dcm": False, "ecg.dcm": True}
    done = build_thumbnails(str(lake), size=128, frame="all", workers=0)
    assert done.ok == 2 and not done.errors
    assert_drawn_plot(thumbs(lake)["ecg.dcm"], 128)


def test_a_truncated_waveform_is_an_error_row_and_the_run_goes_on(tmp_path: Path) -> None:
    folder = folder_with_ecg(tmp_path)
    ds = pydicom.dcmread(folder / "ecg.dcm")
    ds.WaveformSequence[0].NumberOfWaveformSamples = 20_000  # twice the samples held
    ds.save_as(folder / "ecg-truncated.dcm")
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(folder)], str(lake), workers=0, thumbnails=True)
    got = thumbs(lake)
    assert summary.thumbnails == 2 and summary.thumbnail_errors == {"WaveformError": 1}
    row = got["ecg-truncated.dcm"]
    assert row["status"] == "error" and row["frame"] == 0 and row["data"] is None
    assert row["error"].startswith("WaveformError: (5400,1010) Waveform Data holds")
    assert "truncated" in row["error"]
    assert_drawn_plot(got["ecg.dcm"], 256)
