"""The ``acquisition`` table and the per-modality series views, over real lakes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from deltalake import DeltaTable
from pydicom.uid import generate_uid
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.jobs.acquisition import update_acquisition
from helpers.acquisition_files import classic_ct_series, enhanced_mr, pt_series, sm_instance


def one(lake: Path, sql: str) -> dict[str, Any]:
    con = dicomlake.connect(str(lake))
    try:
        rows = con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    src = tmp_path_factory.mktemp("acq") / "src"
    series = {
        "ct": classic_ct_series(
            src / "ct",
            [200, 250, 180, 300],
            ContrastBolusAgent="Iohexol",
            ContrastBolusIngredient="IODINE",
            ContrastBolusRoute="IV",
        ),
        "pt": pt_series(src / "pt", [120000, 180000, 120000]),
    }
    (src / "mr").mkdir()
    series["mr"] = generate_uid()
    enhanced_mr(src / "mr" / "a.dcm", [80.0, 80.0, 95.5], [0.0, 1000.0, 1000.0], series["mr"])
    enhanced_mr(src / "mr" / "b.dcm", [120.0], [500.0], series=series["mr"])
    (src / "sm").mkdir()
    series["sm"] = generate_uid()
    for name, image_type, matrix, spacing in (
        ("base", ["DERIVED", "PRIMARY", "VOLUME", "NONE"], (4096, 2048), 0.00025),
        ("half", ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"], (2048, 1024), 0.0005),
        ("label", ["ORIGINAL", "PRIMARY", "LABEL", "NONE"], (9000, 300), 0.01),
    ):
        sm_instance(src / "sm" / f"{name}.dcm", series["sm"], image_type, matrix, spacing)
    lake = src.parent / "lake"
    dicomlake.ingest([str(src)], str(lake), workers=0)
    return lake, series


def table_rows(lake: Path) -> list[dict[str, Any]]:
    """The acquisition table's rows as stored (not the view), by row id, less stamps."""
    table = DeltaTable(str(lake / "acquisition")).to_pyarrow_table()
    return sorted(table.drop_columns(["ingested_at"]).to_pylist(), key=lambda r: r["row_id"])


def test_workers_and_meta_make_the_same_rows(
    lake: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Rows made by ingest's workers, in-process, and from meta are the same."""
    path, _ = lake
    src = path.parent / "src"
    expected = table_rows(path)
    assert len(expected) == 12 and {r["Modality"] for r in expected} == {"CT", "PT", "MR", "SM"}
    by_workers = tmp_path / "workers"
    dicomlake.ingest([str(src)], str(by_workers), workers=2, optimize=False)
    assert table_rows(by_workers) == expected
    instance_files = DeltaTable(str(by_workers / "instances")).file_uris()
    assert any("/part-w" in uri for uri in instance_files)  # the workers' own shards
    shutil.copytree(path, tmp_path / "old")
    shutil.rmtree(tmp_path / "old" / "acquisition")  # a lake made before the table
    assert update_acquisition(str(tmp_path / "old")).extracted == 12
    assert table_rows(tmp_path / "old") == expected


def test_ct_series_has_dose_modulation_as_min_and_max(lake: tuple[Path, dict[str, str]]) -> None:
    path, series = lake
    row = one(path, "SELECT * FROM ct_series")
    assert row["SeriesInstanceUID"] == series["ct"]
    assert row["n_instances"] == 4
    assert (row["XRayTubeCurrent_min"], row["XRayTubeCurrent_max"]) == (180.0, 300.0)
    assert (row["Exposure_min"], row["Exposure_max"]) == (90.0, 150.0)  # current // 2
    assert (row["ExposureTime_min"], row["ExposureTime_max"]) == (401.0, 404.0)
    # constant attributes, as pydicom reads them from CT_small.dcm
    assert row["KVP"] == 120.0
    assert row["ConvolutionKernel"] == ["STANDARD"]
    assert row["FilterType"] == "LARGE BOWTIE FIL"
    assert (row["PixelSpacing_row_mm"], row["PixelSpacing_col_mm"]) == (0.661468, 0.661468)
    assert (row["Rows"], row["Columns"], row["SliceThickness"]) == (128, 128, 5.0)
    assert row["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    joined = one(
        path,
        "SELECT s.n_instances, c.KVP FROM series s JOIN ct_series c USING (SeriesInstanceUID) "
        "WHERE c.KVP = 120",
    )
    assert joined == {"n_instances": 4, "KVP": 120.0}


def test_mr_series_lists_distinct_echo_times_and_b_values(
    lake: tuple[Path, dict[str, str]],
) -> None:
    path, series = lake
    row = one(path, "SELECT * FROM mr_series")
    assert row["SeriesInstanceUID"] == series["mr"]
    assert row["EchoTime"] == [80.0, 95.5, 120.0]
    assert row["DiffusionBValue"] == [0.0, 500.0, 1000.0]
    assert (row["RepetitionTime"], row["FlipAngle"], row["EchoTrainLength"]) == (4200.0, 90.0, 64)
    assert (row["MagneticFieldStrength"], row["ImagedNucleus"]) == (3.0, "1H")
    assert (row["PixelBandwidth"], row["ImagingFrequency"]) == (1500.0, 127.7)
    assert (row["PixelSpacing_row_mm"], row["PixelSpacing_col_mm"]) == (0.5, 0.75)
    assert row["ReceiveCoilName"] == "HEAD32"


def test_pt_series_and_contrast(lake: tuple[Path, dict[str, str]]) -> None:
    path, series = lake
    row = one(path, "SELECT * FROM pt_series")
    assert row["SeriesInstanceUID"] == series["pt"]
    assert row["ActualFrameDuration"] == [120000.0, 180000.0]
    assert row["Radiopharmaceutical"] == "Fluorodeoxyglucose"
    assert row["RadionuclideTotalDose"] == 370000000.0
    assert row["RadiopharmaceuticalStartTime"] == "101500"
    assert row["RadionuclideCodeMeaning"] == "^18^Fluorine"
    assert (row["NumberOfSlices"], row["NumberOfTimeSlices"]) == (3, 1)
    assert row["SeriesType"] == ["STATIC", "IMAGE"]
    assert row["CorrectedImage"] == ["ATTN", "DECY", "SCAT"]
    assert (row["Units"], row["DecayCorrection"]) == ("BQML", "START")
    contrast = one(path, "SELECT * FROM contrast")
    assert contrast["SeriesInstanceUID"] == series["ct"]
    assert (contrast["ContrastBolusAgent"], contrast["ContrastBolusIngredient"]) == (
        "Iohexol",
        "IODINE",
    )
    assert contrast["ContrastBolusRoute"] == "IV"


def test_sm_series_describes_the_pyramid(lake: tuple[Path, dict[str, str]]) -> None:
    path, series = lake
    row = one(path, "SELECT * FROM sm_series")
    assert row["SeriesInstanceUID"] == series["sm"]
    assert row["n_instances"] == 3
    # the base level, not the (wider) label image
    assert (row["TotalPixelMatrixColumns"], row["TotalPixelMatrixRows"]) == (4096, 2048)
    assert row["levels"] == 2
    assert (row["min_PixelSpacing_row_mm"], row["min_PixelSpacing_col_mm"]) == (0.00025, 0.00025)
    assert row["OpticalPathIdentifier"] == ["1"]
    assert row["ObjectiveLensPower"] == 20.0
    assert (row["ContainerIdentifier"], row["TotalPixelMatrixFocalPlanes"]) == ("SLIDE-7", 1)


def test_a_kvp_that_is_not_a_number_is_null_with_a_warning(tmp_path: Path) -> None:
    classic_ct_series(tmp_path / "src", [100], KVP="9876")
    # pydicom will not write a DS that is not a number: change the bytes it wrote
    path = tmp_path / "src" / "ct1.dcm"
    element = b"\x18\x00\x60\x00DS\x04\x00"  # (0018,0060) KVP, explicit VR LE
    data = path.read_bytes()
    assert data.count(element + b"9876") == 1
    path.write_bytes(data.replace(element + b"9876", element + b"abc "))
    dicomlake.ingest([str(tmp_path / "src")], str(tmp_path / "lake"), workers=0)
    row = one(
        tmp_path / "lake",
        "SELECT a.KVP, a.warnings, i.warnings AS instance_warnings "
        "FROM acquisition a JOIN instances i USING (row_id)",
    )
    # the header's reader already left the value out of meta, and said so
    assert row["KVP"] is None
    assert row["instance_warnings"] == ["(0018,0060) not converted: ValueError"]
    assert row["warnings"] is None


def test_ingest_keeps_the_table_current(tmp_path: Path) -> None:
    src, lake = tmp_path / "src", tmp_path / "lake"
    classic_ct_series(src / "a", [100, 120])
    classic_ct_series(src / "b", [90])
    dicomlake.ingest([str(src)], str(lake), workers=0)
    assert update_acquisition(str(lake)).extracted == 0  # ingest made every row
    version = DeltaTable(str(lake / "acquisition")).version()
    dicomlake.ingest([str(src)], str(lake), workers=0)
    assert DeltaTable(str(lake / "acquisition")).version() == version
    # a changed file is extracted again, a new one added, a gone one dropped
    ds = pydicom.dcmread(src / "a" / "ct1.dcm")
    ds.XRayTubeCurrent = 42
    ds.save_as(src / "a" / "ct1.dcm")
    classic_ct_series(src / "c", [77])
    shutil.rmtree(src / "b")
    dicomlake.ingest([str(src)], str(lake), workers=0, sync=True)
    rows = one(lake, "SELECT list(XRayTubeCurrent ORDER BY row_id) AS c FROM acquisition")
    assert sorted(rows["c"]) == [[42.0], [77.0], [120.0]]
    assert len(table_rows(lake)) == 3  # the gone file's row is deleted, not hidden
    done = update_acquisition(str(lake))
    assert (done.extracted, done.removed) == (0, 0)
    # a file that is no longer DICOM loses its row
    (src / "c" / "ct1.dcm").write_bytes(b"not dicom at all")
    dicomlake.ingest([str(src)], str(lake), workers=0)
    assert len(table_rows(lake)) == 2


def test_an_old_lake_gains_the_table_at_its_next_ingest(tmp_path: Path) -> None:
    src, lake = tmp_path / "src", tmp_path / "lake"
    classic_ct_series(src, [150, 210])
    dicomlake.ingest([str(src)], str(lake), workers=0)
    shutil.rmtree(lake / "acquisition")  # as a lake made before the table was
    summary = dicomlake.ingest([str(src)], str(lake), workers=0)
    assert summary.skipped_unchanged == 2  # no file read again: the rows come from meta
    row = one(lake, "SELECT XRayTubeCurrent_min, XRayTubeCurrent_max, KVP FROM ct_series")
    assert row == {"XRayTubeCurrent_min": 150.0, "XRayTubeCurrent_max": 210.0, "KVP": 120.0}


def test_optimize_gives_an_old_lake_the_table_without_its_files(tmp_path: Path) -> None:
    src, lake = tmp_path / "src", tmp_path / "lake"
    classic_ct_series(src, [150, 210])
    dicomlake.ingest([str(src)], str(lake), workers=0)
    shutil.rmtree(lake / "acquisition")  # as a lake made before the table was
    shutil.rmtree(src)  # so the values can only come from meta
    con = dicomlake.connect(str(lake))
    views = {name for (name,) in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}
    con.close()
    assert "ct_series" not in views
    result = CliRunner().invoke(app, ["optimize", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    row = one(lake, "SELECT XRayTubeCurrent_min, XRayTubeCurrent_max, KVP FROM ct_series")
    assert row == {"XRayTubeCurrent_min": 150.0, "XRayTubeCurrent_max": 210.0, "KVP": 120.0}
