"""File names are data, never code: quotes, newlines, ; $() and SQL round-trip exactly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.sample import sample_file

NAMES = [
    "it's.dcm",
    'say "hi".dcm',
    "semi;colon.dcm",
    "$(touch PWNED).dcm",
    "`touch PWNED2`.dcm",
    "'); DROP TABLE instances; --.dcm",
    "new\nline.dcm",
    "back\\slash.dcm",
    "percent%20encoded.dcm",
    "tab\there.dcm",
]


def test_hostile_file_names_round_trip_through_the_lake_and_sql(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a command run by accident would write here
    folder = tmp_path / "src"
    folder.mkdir()
    for name in NAMES:
        shutil.copyfile(sample_file("CT_small.dcm"), folder / name)
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(folder)], str(lake), workers=2)
    assert (summary.ok, summary.error_count) == (len(NAMES), 0)
    con = dicomlake.connect(str(lake))
    try:
        paths = [r[0] for r in con.sql("SELECT path FROM instances").fetchall()]
        assert sorted(Path(p.removeprefix("file://")).name for p in paths) == sorted(NAMES)
        for name in NAMES:
            uri = "file://" + str(folder / name)
            rows = con.execute(
                "SELECT relative_path, status FROM instances WHERE path = ?", [uri]
            ).fetchall()
            assert rows == [(name, "ok")], name
        assert con.sql("SELECT count(*) FROM instances").fetchall() == [(len(NAMES),)]
    finally:
        con.close()
    # through the CLI: printed as text, and nothing was executed
    result = CliRunner().invoke(
        app, ["sql", "--lake", str(lake), "--format", "json", "SELECT relative_path FROM instances"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert sorted(row["relative_path"] for row in printed) == sorted(NAMES)
    assert not any(p.startswith("PWNED") for p in os.listdir(tmp_path))
    assert not (folder / "PWNED").exists()
    again = dicomlake.ingest([str(folder)], str(lake), workers=0)
    assert (again.skipped_unchanged, again.done) == (len(NAMES), 0)
