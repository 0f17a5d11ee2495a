"""dicomlake optimize: small files compacted, the log checkpointed, old files vacuumed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.lake.maintenance import file_count, optimize
from dicomlake.sample import sample_file
from dicomlake.schema import INSTANCES_SCHEMA
from helpers.lakes import small_runs


def table(lake: Path) -> list[dict]:
    con = dicomlake.connect(str(lake))
    try:
        rows = con.sql("SELECT * FROM instances ORDER BY path").to_arrow_table().to_pylist()
    finally:
        con.close()
    return rows


def test_optimize_compacts_without_changing_a_row(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake)
    before = table(lake)
    assert file_count(str(lake), "instances") == 6
    summary = optimize(str(lake))
    done, acquisition = summary.tables  # the table ingest makes beside instances
    assert done.table == "instances" and acquisition.table == "acquisition"
    assert (done.files_before, done.files_after, done.files_removed) == (6, 1, 6)
    assert table(lake) == before
    log = lake / "instances" / "_delta_log"
    assert list(log.glob("*.checkpoint.parquet"))  # readers start from a checkpoint
    # the replaced files stay for readers of old versions until a vacuum
    assert len(list((lake / "instances").glob("*.parquet"))) == 7
    assert DeltaTable(str(lake / "instances"), version=1).to_pyarrow_table().num_rows == 2


def test_vacuum_removes_replaced_files_and_orphan_shards(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake, rounds=3)
    orphan = lake / "instances" / "part-w1-deadbeef0000-00000000.zstd.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=INSTANCES_SCHEMA), orphan)
    before = table(lake)
    kept = optimize(str(lake), vacuum=True, retention_hours=168)
    assert kept.tables[0].vacuumed == [] and orphan.exists()  # all younger than a week
    done = optimize(str(lake), vacuum=True, retention_hours=0)
    assert orphan.name in {Path(p).name for p in done.tables[0].vacuumed}
    assert not orphan.exists()
    assert len(list((lake / "instances").glob("*.parquet"))) == 1
    assert table(lake) == before


def test_a_large_ingest_compacts_at_the_end(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    ct = sample_file("CT_small.dcm").read_bytes()
    for i in range(70):
        (folder / f"f{i:03d}.dcm").write_bytes(ct)
    lake = tmp_path / "lake"
    # one worker, 1 file per task: 70 shards, more than AUTO_COMPACT_FILES
    summary = dicomlake.ingest([str(folder)], str(lake), workers=1, task_size=1)
    assert summary.compacted == 70
    assert file_count(str(lake), "instances") == 1
    assert len(table(lake)) == 70
    small = dicomlake.ingest([str(folder / "f000.dcm")], str(tmp_path / "small"), workers=0)
    assert small.compacted == 0  # a small run leaves its file alone


def test_cli_optimize(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake, rounds=2)
    runner = CliRunner()
    result = runner.invoke(app, ["optimize", "--lake", str(lake), "--vacuum"])
    assert result.exit_code == 0, result.output
    assert "instances: 2 -> 1 files" in result.output
    result = runner.invoke(app, ["optimize", "--lake", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = runner.invoke(app, ["optimize", "--lake", str(lake), "--retention-hours", "-1"])
    assert result.exit_code == 2


def test_negative_retention_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_hours"):
        optimize(str(tmp_path), retention_hours=-1)


def _size(item: dict) -> dict:
    return {"n": int(item["image"].size)}


def _size_and_note(item: dict) -> dict:
    return {"n": int(item["image"].size), "note": "mr"}


def test_optimize_compacts_user_tables(tmp_path: Path) -> None:
    """An apply table's small commits become one file; the column added later reads null."""
    from dicomlake.jobs.apply import apply

    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake)  # 6 CT and 6 MR files
    # tasks of 4 files, a commit after each: two data files per run
    apply(str(lake), "Modality = 'CT'", _size, table="sizes", workers=0, commit_rows=1)
    apply(str(lake), "Modality = 'MR'", _size_and_note, table="sizes", workers=0, commit_rows=1)
    con = dicomlake.connect(str(lake))
    query = "SELECT path, frame, status, n, note, version FROM sizes ORDER BY path, frame"
    try:
        before = con.sql(query).fetchall()
    finally:
        con.close()
    assert len(before) == 12 and sum(note == "mr" for *_, note, _ in before) == 6
    assert file_count(str(lake), "sizes") == 4
    summary = optimize(str(lake))
    done = {t.table: t for t in summary.tables}["sizes"]
    assert (done.files_before, done.files_after) == (4, 1)
    assert list((lake / "sizes" / "_delta_log").glob("*.checkpoint.parquet"))
    con = dicomlake.connect(str(lake))
    try:
        assert con.sql(query).fetchall() == before
    finally:
        con.close()
