"""``dicomlake deid`` and ``deid keygen`` as a user types them: exit codes and output."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.sample import sample_file

runner = CliRunner()

FILES = ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "rtstruct.dcm")


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    for name in FILES:
        shutil.copyfile(sample_file(name), source / name)
    target = tmp_path / "lake"
    result = runner.invoke(app, ["ingest", str(source), "--lake", str(target), "-w", "0"])
    assert result.exit_code == 0, result.output
    return target


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "deid.key"
    result = runner.invoke(app, ["deid", "keygen", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_keygen_writes_a_private_key_and_never_overwrites_it(key: Path) -> None:
    assert key.stat().st_size == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    again = runner.invoke(app, ["deid", "keygen", str(key)])
    assert again.exit_code == 2
    assert "never overwritten" in again.output
    assert key.read_bytes() == before


def test_deid_writes_the_copy_and_one_summary_line(lake: Path, key: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    args = ["deid", "--lake", str(lake), "--out", str(dest), "--key-file", str(key), "-w", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"deid: {len(FILES)} instances, ")
    assert "ultrasound" in result.stdout  # the reason US1 was skipped
    written = sorted(dest.rglob("*.dcm"))
    assert written and not {p.name for p in written} & set(FILES)
    for name in FILES:
        ds = pydicom.dcmread(sample_file(name), force=True)
        for value in (str(ds.PatientName), str(ds.PatientID), str(ds.SOPInstanceUID)):
            assert value not in result.output
    copy = tmp_path / "copy"
    ingest = runner.invoke(app, ["ingest", str(dest), "--lake", str(copy), "-w", "0"])
    assert ingest.exit_code == 0, ingest.output
    con = dicomlake.connect(str(copy))
    try:
        assert con.sql("SELECT count(*) FROM instances WHERE status = 'ok'").fetchall() == [
            (len(written),)
        ]
    finally:
        con.close()
    again = runner.invoke(app, [*args, "--quiet"])
    assert again.exit_code == 0 and again.stdout == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--option", "no-such-option"], "unknown de-identification option"),
        (
            [
                "--option",
                "retain-longitudinal-full-dates",
                "--option",
                "retain-longitudinal-modified-dates",
            ],
            "exclude each other",
        ),
        (["--where", "no_such_column = 1"], "failed"),
        (["--regions", "missing.json"], "region rules"),
    ],
)
def test_bad_options_are_exit_2_with_one_line(
    lake: Path, key: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["deid", "--lake", str(lake), "--out", str(tmp_path / "out"), "--key-file", str(key)]
    result = runner.invoke(app, [*args, "-w", "0", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_missing_key_or_flag_is_exit_2(lake: Path, key: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    missing_key = runner.invoke(
        app, ["deid", "--lake", str(lake), "--out", out, "--key-file", str(tmp_path / "none")]
    )
    assert missing_key.exit_code == 2
    assert "no key file" in missing_key.output
    no_out = runner.invoke(app, ["deid", "--lake", str(lake), "--key-file", "k"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    wrong = runner.invoke(app, ["deid", "--lake", str(lake), "--no-such-flag"])
    assert wrong.exit_code == 2
    no_lake = runner.invoke(
        app, ["deid", "--lake", str(tmp_path / "nowhere"), "--out", out, "--key-file", str(key)]
    )
    assert no_lake.exit_code == 2 and "ingest" in no_lake.output
