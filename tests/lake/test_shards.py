"""Workers write their own Parquet shards; the coordinator commits only add-actions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

import dicomlake
from dicomlake.schema import INSTANCES_SCHEMA

DROP = ["ingested_at"]


def table_rows(lake: Path) -> dict[str, dict]:
    con = dicomlake.connect(str(lake))
    try:
        table = con.sql("SELECT * FROM instances").to_arrow_table()
    finally:
        con.close()
    return {row["path"]: row for row in table.drop_columns(DROP).to_pylist()}


def data_files(lake: Path) -> list[str]:
    return [Path(uri).name for uri in DeltaTable(str(lake / "instances")).file_uris()]


def test_sharded_rows_equal_rows_sent_through_the_coordinator(
    sample_corpus: Path, tmp_path: Path
) -> None:
    sharded, piped = tmp_path / "sharded", tmp_path / "piped"
    a = dicomlake.ingest([str(sample_corpus)], str(sharded), workers=2, task_size=16)
    b = dicomlake.ingest([str(sample_corpus)], str(piped), workers=2, shards=False)
    assert (a.done, a.ok, a.not_dicom, a.errors) == (b.done, b.ok, b.not_dicom, b.errors)
    assert sum(a.parsers.values()) == a.done
    # the workers' files are the table's data files, one per task of new files
    names = data_files(sharded)
    assert len(names) >= a.done // 16 and all(n.startswith("part-w") for n in names)
    assert not any(n.startswith("part-w") for n in data_files(piped))
    assert table_rows(sharded) == table_rows(piped)


def test_a_shard_nobody_committed_is_never_read(small_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest([str(small_folder)], str(lake), workers=2)
    before = table_rows(lake)
    # what a worker leaves behind when the coordinator dies before committing
    stray = pa.Table.from_pylist(
        [{"row_id": 1, "path": "file:///ghost.dcm", "status": "ok"}], schema=INSTANCES_SCHEMA
    )
    pq.write_table(stray, lake / "instances" / "part-w1-deadbeef0000-00000000.zstd.parquet")
    assert table_rows(lake) == before
    again = dicomlake.ingest([str(small_folder)], str(lake), workers=2)
    assert (again.skipped_unchanged, again.done) == (len(before), 0)


def test_changed_files_still_replace_their_rows(small_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    dicomlake.ingest([str(small_folder)], str(lake), workers=2)
    target = small_folder / "CT_small.dcm"
    shutil.copyfile(small_folder / "MR_small.dcm", target)
    again = dicomlake.ingest([str(small_folder)], str(lake), workers=2)
    assert (again.changed, again.new) == (1, 0)
    rows = table_rows(lake)
    assert len(rows) == 4
    assert rows[target.as_uri()]["Modality"] == "MR"


def test_a_lake_from_before_the_parser_column_gains_it(small_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    old_schema = pa.schema([f for f in INSTANCES_SCHEMA if f.name != "parser"])
    old_row = {"row_id": 7, "path": "file:///old.dcm", "status": "ok"}
    write_deltalake(str(lake / "instances"), pa.Table.from_pylist([old_row], schema=old_schema))
    dicomlake.ingest([str(small_folder)], str(lake), workers=2)
    rows = table_rows(lake)
    assert rows["file:///old.dcm"]["parser"] is None
    assert {r["parser"] for p, r in rows.items() if p != "file:///old.dcm"} <= {
        "native",
        "pydicom",
    }
    assert len(rows) == 5


def test_unknown_parser_is_refused(small_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parser"):
        dicomlake.ingest([str(small_folder)], str(tmp_path / "lake"), parser="fast")


# --------------------------------------------------------------------------- replace commits

APPLY = pa.schema([("row_id", pa.int64()), ("frame", pa.int64()), ("v", pa.string())])


def _shards(uri: str, *parts: list[tuple[int, int, str]]) -> list[dict]:
    from dicomlake.lake.shards import new_job_id, shard_name, write_shard

    job = new_job_id()
    return [
        write_shard(
            uri,
            pa.Table.from_pylist(
                [dict(zip(APPLY.names, row, strict=True)) for row in part], schema=APPLY
            ),
            shard_name(job, "t"),
        )
        for part in parts
    ]


def _files(uri: str) -> set[str]:
    return {Path(u).name for u in DeltaTable(uri).file_uris()}


def _rows(uri: str) -> list[tuple]:
    table = DeltaTable(uri).to_pyarrow_table()
    return sorted(zip(*(table.column(n).to_pylist() for n in APPLY.names), strict=True))


def test_a_replace_commit_swaps_the_rows_of_the_new_row_ids_in_one_version(
    tmp_path: Path,
) -> None:
    from dicomlake.lake.shards import commit_shards

    uri = str(tmp_path / "t")
    (tmp_path / "t").mkdir()
    first = [(1, 0, "a"), (1, 1, "a"), (2, 0, "a"), (3, 0, "a")]  # id 1: two frames
    # no table yet: a replace is an append that creates it
    shards = _shards(uri, first, [(10, 0, "a"), (11, 0, "a")], [(20, 0, "a")])
    assert commit_shards(uri, APPLY, shards, mode="replace") == 7
    before = _files(uri)
    new = _shards(uri, [(1, 0, "b"), (10, 0, "b"), (4, 0, "b")])
    assert commit_shards(uri, APPLY, new, mode="replace") == 3
    table = DeltaTable(uri)
    assert table.version() == 1  # one commit
    assert _rows(uri) == [
        (1, 0, "b"),
        (2, 0, "a"),
        (3, 0, "a"),
        (4, 0, "b"),
        (10, 0, "b"),
        (11, 0, "a"),
        (20, 0, "a"),
    ]
    after = _files(uri)
    assert shards[2]["path"] in after  # id 20's file holds no replaced id: untouched
    rewritten = after - before - {new[0]["path"]}
    assert len(rewritten) == 2 and all(p.startswith("part-replace-") for p in rewritten)
    # the ids to replace may be given: id 20's rows go though no new row has it
    assert commit_shards(uri, APPLY, [], mode="replace", replacing=np.array([20])) == 0
    assert [r for r in _rows(uri) if r[0] == 20] == []
    assert shards[2]["path"] not in _files(uri)  # removed, nothing rewritten


def test_a_replace_commit_needs_a_row_id_column(tmp_path: Path) -> None:
    from dicomlake.lake.shards import commit_shards

    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"path": ["a"]}))
    with pytest.raises(ValueError, match="has no such column"):
        commit_shards(uri, pa.schema([("path", pa.string())]), [], mode="replace")
    # shards with a row_id do not make a table without one replaceable
    with pytest.raises(ValueError, match="has no such column"):
        commit_shards(uri, APPLY, [], mode="replace", replacing=np.array([1]))
