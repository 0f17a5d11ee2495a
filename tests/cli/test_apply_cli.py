"""``dicomlake apply`` as a user runs it: summary, quiet, live progress, clear refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.sample import sample_file
from helpers.terminal import run_on_a_terminal

runner = CliRunner()
F = "helpers.apply_functions"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("apply_cli")
    src = root / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
        shutil.copyfile(sample_file(name), src / name)
    path = str(root / "lake")
    dicomlake.ingest([str(src)], path, workers=0)
    return path


def test_apply_prints_a_summary_and_the_table_is_a_view(lake: str) -> None:
    args = ["apply", "-l", lake, "-f", f"{F}:hu_stats", "-t", "cli_stats", "-w", "0"]
    result = runner.invoke(app, [*args, "--where", "Modality = 'MR'"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("apply: 11 frames selected, 0 unchanged, 11 run, 11 ok")
    again = runner.invoke(
        app, [*args, "--where", "SELECT path FROM instances WHERE Modality = 'MR'"]
    )
    assert "11 unchanged, 0 run" in again.output  # a whole query picks the same frames
    shown = runner.invoke(
        app,
        ["sql", "-l", lake, "-f", "json", "SELECT count(*) AS n, min(status) AS s FROM cli_stats"],
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == [{"n": 11, "s": "ok"}]


def test_quiet_prints_nothing(lake: str) -> None:
    result = runner.invoke(
        app,
        [
            "apply",
            "-l",
            lake,
            "-f",
            f"{F}:whole",
            "-t",
            "quiet",
            "--unit",
            "series",
            "-w",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output == ""
    con = dicomlake.connect(lake)
    try:
        assert con.sql("SELECT count(*) FROM quiet").fetchall() == [(3,)]  # 3 series
    finally:
        con.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "not a function", "-t", "x"], "package.module:name"),
        (["-f", "helpers.nothing_here:fn", "-t", "x"], "cannot import 'helpers.nothing_here'"),
        (["-f", f"{F}:missing", "-t", "x"], "has no 'missing'"),
        (["-f", f"{F}:whole", "-t", "series"], "built-in table or view"),
        (["-f", f"{F}:whole", "-t", "1x"], "a table name is letters"),
        (["-f", f"{F}:whole", "-t", "x", "--where", "no_such = 1"], "the query failed"),
        (["-f", f"{F}:whole", "-t", "x", "--unit", "study"], "Invalid value for '--unit'"),
    ],
    ids=["spec", "module", "name", "built-in", "identifier", "sql", "unit"],
)
def test_wrong_input_exits_2_with_a_message(lake: str, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["apply", "-l", lake, "-w", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_progress_on_a_terminal(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    run = run_on_a_terminal(
        ["apply", "-l", lake, "-f", f"{F}:hu_stats", "-t", "live", "--unit", "instance", "-w", "1"]
    )
    assert run.returncode == 0, run.screen
    assert " instances · " in run.screen and "/s · " in run.screen  # the live line
    assert run.stdout.decode().startswith("apply: 3 instances selected, 0 unchanged, 3 run, 3 ok")
