"""Thumbnails through ingest and ``dicomlake thumbnails``: one row per drawn frame."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pydicom
from PIL import Image
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.jobs.thumbnails import build_thumbnails
from dicomlake.sample import no_pixel_file, sample_file


def thumbs(lake: Path) -> list[dict]:
    con = dicomlake.connect(str(lake))
    return con.sql("SELECT * FROM thumbnails ORDER BY path, frame").to_arrow_table().to_pylist()


def test_ingest_with_thumbnails_draws_each_instance_once(
    small_folder: Path, tmp_path: Path
) -> None:
    no_pixel_file(small_folder / "report.dcm")
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(small_folder)], str(lake), workers=0, thumbnails=True)
    got = thumbs(lake)
    # four images (CT, MR, NM J2K, RTSTRUCT has no pixels) -> three thumbnails; the SR has none
    names = sorted(r["path"].rsplit("/", 1)[1] for r in got)
    assert names == ["CT_small.dcm", "JPEG2000.dcm", "MR_small.dcm"]
    assert summary.thumbnails == 3
    for row in got:
        assert row["status"] == "ok" and row["format"] == "png"
        image = Image.open(io.BytesIO(row["data"]))
        assert image.size == (row["width"], row["height"]) and max(image.size) <= 256
        assert image.mode == row["mode"] == "L"
    con = dicomlake.connect(str(lake))
    joined = con.sql(
        "SELECT count(*) FROM thumbnails t JOIN instances i USING (row_id) "
        "WHERE t.SOPInstanceUID = i.SOPInstanceUID"
    ).fetchall()
    assert joined == [(3,)]
    again = dicomlake.ingest([str(small_folder)], str(lake), workers=0, thumbnails=True)
    assert again.thumbnails == 0 and len(thumbs(lake)) == 3


def test_multi_frame_middle_first_and_all(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(sample_file("emri_small.dcm"), folder / "emri.dcm")  # 10 frames
    for choice, expected in (("middle", [5]), ("first", [0]), ("all", list(range(10)))):
        lake = tmp_path / f"lake-{choice}"
        dicomlake.ingest(
            [str(folder)], str(lake), workers=0, thumbnails=dicomlake.ThumbnailOptions(frame=choice)
        )
        assert [r["frame"] for r in thumbs(lake)] == expected


def test_changed_file_gets_a_new_thumbnail(small_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest([str(small_folder)], str(lake), workers=0, thumbnails=True)
    target = small_folder / "CT_small.dcm"
    before = next(r for r in thumbs(lake) if r["path"].endswith("CT_small.dcm"))
    _window_changed(target)
    dicomlake.ingest([str(small_folder)], str(lake), workers=0, thumbnails=True)
    after = [r for r in thumbs(lake) if r["path"].endswith("CT_small.dcm")]
    assert len(after) == 1 and after[0]["data"] != before["data"]


def _window_changed(target: Path) -> None:
    """Give ``target`` a lung window (another picture) and a later modification time."""
    ds = pydicom.dcmread(target)
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.save_as(target)
    os.utime(target, (time.time() + 5, time.time() + 5))


def test_a_file_changed_while_ingested_without_thumbnails_is_drawn_again(
    small_folder: Path, tmp_path: Path
) -> None:
    """A thumbnail drawn from a file's old content is redrawn, not kept beside the new row."""
    lake = tmp_path / "lake"
    dicomlake.ingest([str(small_folder)], str(lake), workers=0, thumbnails=True)
    target = small_folder / "CT_small.dcm"
    before = {r["path"]: r for r in thumbs(lake)}
    _window_changed(target)
    dicomlake.ingest([str(small_folder)], str(lake), workers=0)  # no thumbnails this time
    summary = build_thumbnails(str(lake), workers=0)
    assert summary.instances == 1 and summary.ok == 1  # only the changed file
    after = {r["path"]: r for r in thumbs(lake)}
    assert after.keys() == before.keys()  # one row per instance still
    (changed,) = [path for path in after if path.endswith("CT_small.dcm")]
    assert after[changed]["data"] != before[changed]["data"]
    assert abs(after[changed]["modification_time"].timestamp() - target.stat().st_mtime) < 1e-5
    for path in after.keys() - {changed}:
        assert after[path]["data"] == before[path]["data"]
    assert build_thumbnails(str(lake), workers=0).instances == 0


def test_thumbnails_command_fills_a_lake_ingested_without(
    small_folder: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest([str(small_folder)], str(lake), workers=0)
    result = CliRunner().invoke(app, ["thumbnails", "--lake", str(lake), "-w", "0", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "3 drawn" in result.stdout
    got = thumbs(lake)
    assert len(got) == 3 and all(max(r["width"], r["height"]) <= 64 for r in got)
    result = CliRunner().invoke(app, ["thumbnails", "--lake", str(lake), "-w", "0"])
    assert "0 instances" in result.stdout  # nothing missing any more
    quiet = CliRunner().invoke(app, ["thumbnails", "--lake", str(lake), "-w", "0", "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == ""


def test_undrawable_file_is_an_error_row_and_its_instance_is_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(sample_file("JPEG-lossy.dcm"), folder / "bad-jpeg.dcm")
    lake = tmp_path / "lake"
    dicomlake.ingest([str(folder)], str(lake), workers=0, thumbnails=True)
    (row,) = thumbs(lake)
    assert row["status"] == "error" and row["data"] is None and "decode" in row["error"]
    con = dicomlake.connect(str(lake))
    assert con.sql("SELECT status FROM instances").fetchall() == [("ok",)]


def test_bad_thumbnail_option_is_exit_2(small_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["ingest", str(small_folder), "--lake", str(tmp_path / "l"), "--frame", "last"]
    )
    assert result.exit_code == 2
    result = runner.invoke(
        app,
        ["ingest", str(small_folder), "--lake", str(tmp_path / "l"), "--thumbnail-size", "3"],
    )
    assert result.exit_code == 2
