"""Streamed compaction: every row kept, statistics right, memory bounded by row groups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

import dicomlake
from dicomlake.lake import compaction
from dicomlake.lake.compaction import compact_table
from dicomlake.lake.location import open_table
from dicomlake.lake.shards import filesystem
from dicomlake.schema import INSTANCES_SCHEMA
from helpers.lakes import small_runs


def rows(lake: Path) -> list[dict]:
    with dicomlake.connect(str(lake)) as con:
        return con.sql("SELECT * FROM instances ORDER BY path").to_arrow_table().to_pylist()


def last_commit(lake: Path) -> list[dict]:
    log = sorted((lake / "instances" / "_delta_log").glob("*.json"))[-1]
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_compaction_keeps_every_row_and_writes_true_statistics(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake, rounds=5)
    before = rows(lake)
    done = compact_table(str(lake), "instances")
    assert (done.files_before, done.files_removed, done.files_added, done.rows) == (5, 5, 1, 10)
    assert rows(lake) == before
    actions = last_commit(lake)
    removes = [a["remove"] for a in actions if "remove" in a]
    (add,) = [a["add"] for a in actions if "add" in a]
    assert len(removes) == 5 and not any(r["dataChange"] for r in removes)
    assert add["dataChange"] is False  # no row changed: streaming readers skip it
    stats = json.loads(add["stats"])
    numbers = [r["SeriesNumber"] for r in before if r["SeriesNumber"] is not None]
    assert stats["numRecords"] == 10
    assert (stats["minValues"]["SeriesNumber"], stats["maxValues"]["SeriesNumber"]) == (
        min(numbers),
        max(numbers),
    )
    assert stats["nullCount"]["error"] == 10
    # a reader that prunes on the statistics finds what a full scan finds
    dt = DeltaTable(str(lake / "instances"))
    pruned = dt.to_pyarrow_dataset().to_table(filter=pa.compute.field("SeriesNumber") >= 0)
    assert pruned.num_rows == len(numbers)


def test_row_groups_stay_small_whatever_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake, rounds=4)
    monkeypatch.setattr(compaction, "ROW_GROUP_ROWS", 3)
    compact_table(str(lake), "instances")
    (uri,) = open_table(str(lake)).file_uris()
    meta = pq.ParquetFile(uri.removeprefix("file://")).metadata
    assert meta.num_rows == 8
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4]


def test_large_files_are_left_alone(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake, rounds=3)
    sizes = [os.path.getsize(u.removeprefix("file://")) for u in open_table(str(lake)).file_uris()]
    # every file is at least half this target: none is small enough to merge
    done = compact_table(str(lake), "instances", target_size=2 * min(sizes))
    assert done.files_removed == 0 and len(open_table(str(lake)).file_uris()) == 3


def test_a_merge_that_removed_an_input_first_wins(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    small_runs(tmp_path / "src", lake, rounds=3)
    dt = open_table(str(lake))
    files = compaction._data_files(dt)
    fs, root = filesystem(dt.table_uri)
    name = "part-compact-test.zstd.parquet"
    merged, stats = compaction._merge(fs, root, files, name, INSTANCES_SCHEMA)
    assert merged == 6
    # meanwhile a file changes, and its re-ingest replaces its row by a MERGE, which
    # rewrites the data file that held it
    os.utime(tmp_path / "src" / "r0" / "ct.dcm", (1, 1))
    dicomlake.ingest([str(tmp_path / "src")], str(lake), workers=0, optimize=False)
    with pytest.raises(CommitFailedError):
        compaction._commit(dt, files, fs, root, name, stats, INSTANCES_SCHEMA)
    assert len(rows(lake)) == 6  # the stale copy of the row never came back
    assert compact_table(str(lake), "instances").files_added == 1
    assert len(rows(lake)) == 6
