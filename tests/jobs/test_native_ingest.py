"""The native parser inside ingest: the same rows as the pydicom path, and a say in which."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.dicom import native

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(not native.available(), reason="dicomlake.dicom._native is not built"),
]


def rows(lake: Path) -> dict[str, dict]:
    con = dicomlake.connect(str(lake))
    try:
        table = con.sql("SELECT * EXCLUDE (ingested_at) FROM instances").to_arrow_table()
    finally:
        con.close()
    return {row["path"]: row for row in table.to_pylist()}


def test_native_and_pydicom_paths_give_the_same_rows(sample_corpus: Path, tmp_path: Path) -> None:
    fast = dicomlake.ingest([str(sample_corpus)], str(tmp_path / "fast"), workers=0)
    slow = dicomlake.ingest(
        [str(sample_corpus)], str(tmp_path / "slow"), workers=0, parser="pydicom"
    )
    assert slow.parsers == {"pydicom": slow.done}
    assert fast.parsers["native"] > fast.done // 2  # most of the sample corpus
    a, b = rows(tmp_path / "fast"), rows(tmp_path / "slow")
    assert a.keys() == b.keys()
    native_rows = 0
    for path, row in a.items():
        other = b[path]
        assert other["parser"] == "pydicom"
        if row["parser"] == "native":
            native_rows += 1
            # the JSON text may differ in float notation, never in values
            assert orjson.loads(row["meta"]) == orjson.loads(other["meta"]), path
            row, other = dict(row, meta=None), dict(other, meta=None)
        assert {k: v for k, v in row.items() if k != "parser"} == {
            k: v for k, v in other.items() if k != "parser"
        }, path
    assert native_rows == fast.parsers["native"]


def test_cli_parser_option_and_summary(small_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    lake = str(tmp_path / "lake")
    result = runner.invoke(
        app, ["ingest", str(small_folder), "--lake", lake, "--parser", "pydicom", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "headers by pydicom 4" in result.output
    assert {r["parser"] for r in rows(Path(lake)).values()} == {"pydicom"}
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", lake, "--parser", "fast"])
    assert result.exit_code == 2


def test_cli_refuses_native_when_it_is_not_built(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_ext", None)  # as installed without a C compiler
    runner = CliRunner()
    lake = str(tmp_path / "lake")
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", lake, "--parser", "native"])
    assert result.exit_code == 2
    assert "not built" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", lake, "--workers", "0"])
    assert result.exit_code == 0
    assert "warning: the native header parser is not built" in result.output
    assert {r["parser"] for r in rows(Path(lake)).values()} == {"pydicom"}
