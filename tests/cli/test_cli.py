"""The command line as a user types it: exit codes, one-line errors, output formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dicomlake.cli import app
from helpers.terminal import run_on_a_terminal

runner = CliRunner()


@pytest.fixture
def lake(small_folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "lake"
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", str(target), "-w", "0"])
    assert result.exit_code == 0, result.output
    return target


def test_ingest_prints_one_summary_line_when_not_a_terminal(
    small_folder: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["ingest", str(small_folder), "--lake", str(tmp_path / "l"), "-w", "0"]
    )
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ingested: 4 files, 4 ok, 0 not_dicom, 0 errors")


def test_missing_source_is_exit_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--lake", str(tmp_path / "l")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "source not found" in result.stderr
    assert "Traceback" not in result.output


def test_unwritable_lake_is_exit_2(small_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "lake-is-a-file"
    blocker.write_text("x")
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", str(blocker)])
    assert result.exit_code == 2
    assert "lake" in result.stderr and "Traceback" not in result.output


def test_wrong_flag_is_exit_2(small_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", str(tmp_path), "--bogus"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["ingest", str(small_folder), "--lake", str(tmp_path), "-w", "-1"])
    assert result.exit_code == 2


def test_sql_json_is_an_array_of_objects(lake: Path) -> None:
    result = runner.invoke(
        app,
        [
            "sql",
            "--lake",
            str(lake),
            "--format",
            "json",
            "SELECT Modality, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"Modality": "CT", "n": 1},
        {"Modality": "MR", "n": 1},
        {"Modality": "NM", "n": 1},
        {"Modality": "RTSTRUCT", "n": 1},
    ]


def test_sql_csv_and_parquet(lake: Path, tmp_path: Path) -> None:
    query = "SELECT path, Rows FROM instances ORDER BY path"
    result = runner.invoke(app, ["sql", "--lake", str(lake), "-f", "csv", query])
    assert result.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(parsed) == 4 and set(parsed[0]) == {"path", "Rows"}
    out = tmp_path / "out.parquet"
    result = runner.invoke(
        app, ["sql", "--lake", str(lake), "-f", "parquet", "-o", str(out), query]
    )
    assert result.exit_code == 0
    assert pq.read_table(out).num_rows == 4
    result = runner.invoke(app, ["sql", "--lake", str(lake), "-f", "parquet", query])
    assert result.exit_code == 2


def table_cells(text: str) -> list[list[str]]:
    """The cells of each row of a table rich drew (its box lines left out)."""
    return [
        [cell.strip() for cell in line.strip()[1:-1].split("│")]
        for line in text.splitlines()
        if line.strip().startswith("│")
    ]


def test_sql_table_and_bad_query(lake: Path) -> None:
    query = "SELECT count(*) AS n, sum(n_series) AS s, sum(n_instances) AS i FROM studies"
    result = runner.invoke(app, ["sql", "--lake", str(lake), query])
    assert result.exit_code == 0, result.output
    # four files, each its own study and series (see small_folder)
    assert table_cells(result.stdout) == [["4", "4", "4"]]
    result = runner.invoke(app, ["sql", "--lake", str(lake), "SELEC nonsense"])
    assert result.exit_code == 2
    assert "query failed" in result.stderr and "Traceback" not in result.output


def test_sql_on_a_lake_that_does_not_exist(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sql", "--lake", str(tmp_path / "none"), "SELECT 1"])
    assert result.exit_code == 2
    assert "ingest" in result.stderr


def test_info_counts(lake: Path, small_folder: Path) -> None:
    result = runner.invoke(app, ["info", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1] for cells in table_cells(result.stdout) if len(cells) == 2}
    # small_folder: four clean files, each its own patient, study, series and modality
    expected = {"files": "4", "ok": "4", "not_dicom": "0", "error": "0", "patients": "4",
                "studies": "4", "series": "4", "CT": "1", "MR": "1", "NM": "1", "RTSTRUCT": "1",
                "total_bytes": str(sum(p.stat().st_size for p in small_folder.iterdir())),
                "data files": "1", "duplicate_instances": "0"}  # fmt: skip
    assert {key: rows.get(key) for key in expected} == expected


def test_info_counts_duplicate_instances(tmp_path: Path, small_folder: Path) -> None:
    """The same instance in two folders is counted once as a duplicate."""
    folder = tmp_path / "twice"
    for copy in ("a", "b"):
        shutil.copytree(small_folder, folder / copy)
    lake = tmp_path / "lake"
    assert runner.invoke(app, ["ingest", str(folder), "--lake", str(lake), "-q"]).exit_code == 0
    result = runner.invoke(app, ["info", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1] for cells in table_cells(result.stdout) if len(cells) == 2}
    assert rows["ok"] == "8" and rows["duplicate_instances"] == "4"


def test_help_runs_as_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomlake", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("ingest", "sql", "info", "thumbnails", "serve", "demo"):
        assert command in result.stdout


def test_demo_ingests_the_sample_data_and_answers(tmp_path: Path) -> None:
    lake, data = tmp_path / "demo-lake", tmp_path / "demo-data"
    result = runner.invoke(app, ["demo", "--lake", str(lake), "--data", str(data), "-q"])
    assert result.exit_code == 0, result.output
    assert "ingested:" in result.stdout and "not_dicom" in result.stdout
    assert "Modality" in result.stdout and "TruncatedFile" in result.stdout
    assert " thumbnails (" in result.stdout  # the demo draws them too


@pytest.mark.slow
def test_progress_and_summary_table_on_a_terminal(small_folder: Path, tmp_path: Path) -> None:
    run = run_on_a_terminal(
        ["ingest", str(small_folder), "--lake", str(tmp_path / "lake"), "-w", "1"]
    )
    assert run.returncode == 0
    assert "files/s" in run.screen  # the live line and the table both say it
    assert "skipped unchanged" in run.screen and "not_dicom" in run.screen
    assert run.stdout == b""  # nothing on stdout


def test_the_ingest_script_skips_pandas_and_an_in_process_call_leaves_it(
    small_folder: Path, tmp_path: Path
) -> None:
    """pyarrow imports pandas on its first list: 0.15-0.3 s the script's process skips.

    DuckDB, 35 ms, is not imported either: an ingest runs no SQL.

    A caller that runs ``app`` in its own process keeps pyarrow's pandas support: a
    pandas Series' None still becomes a null.
    """
    script = (
        "import sys\n"
        "from dicomlake.cli import main\n"
        f"sys.argv = ['dicomlake', 'ingest', {str(small_folder)!r}, '--lake',"
        f" {str(tmp_path / 'a')!r}, '-w', '0', '-q']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(sorted({'pandas', 'duckdb'} & set(sys.modules)))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"  # nor DuckDB: ingest asks no SQL
    in_process = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dicomlake.cli import app\n"
        f"args = ['ingest', {str(small_folder)!r}, '--lake', {str(tmp_path / 'b')!r}, '-w', '0']\n"
        "assert CliRunner().invoke(app, args).exit_code == 0\n"
        "import pandas, pyarrow\n"
        "print(pyarrow.array(pandas.Series([1.0, None])).null_count)\n"
    )
    run = subprocess.run([sys.executable, "-c", in_process], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1"
