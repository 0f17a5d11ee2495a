"""Patient data stays in the lake's columns: never in logs, progress, errors or warnings.

Files name a patient with values no code path would invent; the tests run ingest
(quiet and verbose, pydicom and native paths, good, odd and broken files) with
logging at DEBUG, then look for those values everywhere a person or a log collector
would see text: stdout, stderr, log records, and the ``error``/``warnings`` columns.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.sample import sample_file

SECRETS = ("ZZSECRET", "PHI-ID-98765", "19990231", "Q8Y")


def write_patient_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.PatientName = "ZZSECRET^PATIENT"
    ds.PatientID = "PHI-ID-98765"
    ds.PatientBirthDate = "19990231"  # no such day: the date column cannot take it
    ds.PatientAge = "Q8Y"  # not an age string
    ds.save_as(folder / "good.dcm")
    data = (folder / "good.dcm").read_bytes()
    name_at = data.index(b"ZZSECRET")
    (folder / "cut-in-name.dcm").write_bytes(data[: name_at + 4])  # ends inside the name
    (folder / "cut-later.dcm").write_bytes(data[: len(data) // 2])
    # PatientID in a sequence item, then a broken length right after it
    broken = bytearray(data)
    at = data.index(b"PHI-ID-98765")
    broken[at + 12 : at + 16] = b"\xff\xff\xff\x7f"
    (folder / "broken-after-id.dcm").write_bytes(bytes(broken))
    shutil.copyfile(folder / "good.dcm", folder / "copy.dcm")


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} appears in {where}"


@pytest.mark.parametrize("parser", ["auto", "pydicom"])
def test_no_patient_value_in_output_logs_or_error_texts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, parser: str
) -> None:
    folder = tmp_path / "src"
    write_patient_files(folder)  # pydicom itself complains about the age it writes
    caplog.clear()
    lake = tmp_path / "lake"
    runner = CliRunner()
    caplog.set_level(logging.DEBUG)
    outputs = []
    for args in (["--quiet"], [], ["--thumbnails"]):
        result = runner.invoke(
            app,
            [
                "ingest",
                str(folder),
                "--lake",
                str(lake),
                "--parser",
                parser,
                "--workers",
                "0",
                *args,
            ],
        )
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        shutil.rmtree(lake)
    result = runner.invoke(app, ["ingest", str(folder), "--lake", str(lake), "--parser", parser])
    outputs.append(result.output)
    outputs.append(runner.invoke(app, ["info", "--lake", str(lake)]).output)
    for output in outputs:
        assert_clean(output, "CLI output")
    assert_clean("\n".join(r.getMessage() for r in caplog.records), "log records")

    con = dicomlake.connect(str(lake))
    rows = (
        con.sql("SELECT path, status, error, warnings, PatientName, PatientID FROM instances")
        .to_arrow_table()
        .to_pylist()
    )
    con.close()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["good.dcm"]["PatientID"] == "PHI-ID-98765"  # the data is in the lake
    assert by_name["good.dcm"]["warnings"]  # the odd date and age are reported...
    for row in rows:
        assert_clean(str(row["error"]), f"the error of {row['path']}")
        assert_clean(str(row["warnings"]), f"the warnings of {row['path']}")  # ...not shown
    assert by_name["cut-in-name.dcm"]["status"] == "error"
    # cut inside the pixel data: the header is whole, the row says the pixels are not
    assert "pixel data truncated: the file ends inside it" in by_name["cut-later.dcm"]["warnings"]


def test_promoted_value_warnings_never_quote_the_value() -> None:
    from dicomlake.dicom.tags import promoted_values

    warnings: list[str] = []
    meta = {
        "00100030": {"vr": "DA", "Value": ["ZZSECRET"]},  # PatientBirthDate
        "00200011": {"vr": "IS", "Value": ["PHI-ID-98765"]},  # SeriesNumber, not a number
    }
    row = promoted_values(meta, warnings)
    assert row["PatientBirthDate"] is None and row["SeriesNumber"] is None
    assert len(warnings) == 2 and all(w.split(":")[0] in row for w in warnings)
    assert_clean("\n".join(warnings), "warnings")
