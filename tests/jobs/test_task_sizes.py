"""Tasks grow with the rate workers reach, so a big run writes few, full shards."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

import dicomlake
from dicomlake.jobs.ingest import FIRST_TASK_FILES, MAX_TASK_FILES
from dicomlake.sample import sample_file

FILES = 1500


def _copies(folder: Path, count: int) -> set[str]:
    """``count`` hard links of one small CT file, 100 to a folder."""
    source = sample_file("CT_small.dcm")
    paths = set()
    for i in range(count):
        target = folder / f"d{i // 100:02d}" / f"{i:05d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
        paths.add(target.as_uri())
    return paths


def test_a_big_run_writes_few_full_shards(tmp_path: Path) -> None:
    expected = _copies(tmp_path / "src", FILES)
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(tmp_path / "src")], str(lake), workers=1)
    assert summary.ok == FILES
    shards = sorted((lake / "instances").glob("*.parquet"))
    rows = [pq.read_metadata(shard).num_rows for shard in shards]
    assert sum(rows) == FILES
    # fixed tasks of FIRST_TASK_FILES would have made one shard each (24 here)
    assert len(shards) < FILES // FIRST_TASK_FILES
    assert max(rows) > FIRST_TASK_FILES and max(rows) <= MAX_TASK_FILES
    con = dicomlake.connect(str(lake))
    try:
        paths = {row[0] for row in con.sql("SELECT path FROM instances").fetchall()}
    finally:
        con.close()
    assert paths == expected


def test_a_fixed_task_size_is_kept(tmp_path: Path) -> None:
    _copies(tmp_path / "src", 300)
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(tmp_path / "src")], str(lake), workers=1, task_size=100)
    assert summary.ok == 300
    rows = [pq.read_metadata(s).num_rows for s in (lake / "instances").glob("*.parquet")]
    assert sorted(rows) == [100, 100, 100]
