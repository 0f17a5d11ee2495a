"""Many writers, readers during commits: every file keeps exactly one row.

Two ``dicomlake ingest`` runs over overlapping folders, a reader polling while a run
commits, and writers forced into the worst interleaving (another writer commits
between the check and the commit).
"""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import dicomlake
from dicomlake.lake.location import instances_uri
from dicomlake.lake.writer import TableWriter
from helpers.lake_rows import make_batch
from helpers.runs import ingest_command, lake_paths, write_files
from helpers.writers import BeatenWriter


def batch(ids: range, study: str = "1.2.3") -> pa.RecordBatch:
    return make_batch([{"row_id": i, "StudyInstanceUID": study} for i in ids])


def table_rows(lake: Path) -> dict[int, str]:
    """row_id -> StudyInstanceUID, failing on a row id that appears twice."""
    table = DeltaTable(instances_uri(str(lake))).to_pyarrow_table(
        columns=["row_id", "StudyInstanceUID"]
    )
    ids = table.column("row_id").to_pylist()
    assert len(ids) == len(set(ids)), "a row id was committed twice"
    return dict(zip(ids, table.column("StudyInstanceUID").to_pylist(), strict=True))


# ------------------------------------------------------------------ writers in-process


def test_writers_made_before_either_commits_keep_one_row_per_id(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    first = TableWriter(str(lake), max_rows=10_000)
    second = TableWriter(str(lake), max_rows=10_000)
    first.write(batch(range(0, 100), study="first"))
    second.write(batch(range(50, 150), study="second"))
    assert first.flush() == 100
    assert second.flush() == 50
    assert second.rows_taken == 50 and first.rows_taken == 0
    rows = table_rows(lake)
    assert sorted(rows) == list(range(150))
    assert {rows[i] for i in range(50, 100)} == {"first"}  # the first to commit keeps them
    # the second writer's dropped rows left no data file behind
    parquet = {p.name for p in (lake / "instances").glob("*.parquet")}
    actions = DeltaTable(instances_uri(str(lake))).get_add_actions(flatten=True)
    assert parquet == set(actions.column("path").to_pylist())


def test_a_commit_beaten_by_another_writer_is_checked_again(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    rival = TableWriter(lake, max_rows=10_000)
    writer = BeatenWriter(
        lake,
        rival,
        [(batch(range(50, 150), "rival"), False), (batch(range(150, 160), "rival"), False)],
    )
    writer.write(batch(range(0, 100), "writer"))
    assert writer.flush() == 50
    assert writer.conflicts == 2 and writer.rows_taken == 50
    rows = table_rows(Path(lake))
    assert sorted(rows) == list(range(160))
    assert {rows[i] for i in range(50)} == {"writer"}
    assert {rows[i] for i in range(50, 160)} == {"rival"}


def test_a_merge_beaten_by_another_writer_replaces_its_rows(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    with TableWriter(lake) as setup:
        setup.write(batch(range(0, 20), "old"))
    rival = TableWriter(lake, max_rows=10_000)
    writer = BeatenWriter(lake, rival, [(batch(range(10, 30), "rival"), True)])
    writer.write(batch(range(0, 30), "changed"), replace=True)
    assert writer.flush() == 30
    assert writer.conflicts == 1
    rows = table_rows(Path(lake))
    assert sorted(rows) == list(range(30))
    assert set(rows.values()) == {"changed"}  # the merge ran again on the rival's rows


def test_tables_created_by_two_writers_at_once(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    rival = TableWriter(lake, max_rows=10_000)
    writer = TableWriter(lake, max_rows=10_000)
    rival.write(batch(range(0, 10)))
    writer.write(batch(range(5, 15)))
    writer._ensure_table()  # both saw no table; one creates it, the other must cope
    rival.flush()
    writer.flush()
    assert sorted(table_rows(Path(lake))) == list(range(15))


# ------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_two_ingests_over_overlapping_folders_give_one_row_per_file(tmp_path: Path) -> None:
    root = tmp_path / "src"
    expected = write_files(root, 900)  # d000 .. d008
    lake = tmp_path / "lake"
    options = ("--workers", "1", "--commit-rows", "25")
    # one run takes the whole tree, the other the part of it in d003 .. d008 (listed
    # as separate folders), so they race for 600 files
    parts = [root / f"d{i:03d}" for i in range(3, 9)]
    runs = [
        subprocess.Popen(ingest_command([root], lake, *options), stdout=subprocess.PIPE, text=True),
        subprocess.Popen(ingest_command(parts, lake, *options), stdout=subprocess.PIPE, text=True),
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    paths = lake_paths(lake)
    assert len(paths) == len(set(paths)) == 900
    assert set(paths) == expected
    again = subprocess.run(ingest_command([root], lake, *options), capture_output=True, text=True)
    assert again.returncode == 0 and "900 skipped unchanged" in again.stdout
    # both runs' acquisition rows of a raced file are kept; the view shows the one of
    # the instance row that won
    con = dicomlake.connect(str(lake))
    try:
        [counts] = con.sql("SELECT count(*), count(DISTINCT row_id) FROM acquisition").fetchall()
    finally:
        con.close()
    assert counts == (900, 900)


#: An ingest that, after each batch that brought a new commit, prints the number of
#: commits so far and waits for a line on stdin: the reader reads after each commit
#: while the writer goes on to the next, however fast or slow the machine.
PACED_INGEST = """
import sys

import dicomlake


def paced(summary):
    if summary.commits > paced.commits:
        paced.commits = summary.commits
        print(summary.commits, flush=True)
        sys.stdin.readline()


paced.commits = 0
if __name__ == "__main__":
    dicomlake.ingest(
        [sys.argv[1]],
        sys.argv[2],
        workers=1,
        task_size=20,
        # commits by rows only: one per task, however slow the machine
        commits=dicomlake.CommitPolicy(rows=20, seconds=3600),
        progress=paced,
    )
"""


@pytest.mark.slow
def test_readers_never_see_a_half_written_state(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_files(root, 800)
    lake = tmp_path / "lake"
    with (tmp_path / "stderr").open("w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-c", PACED_INGEST, str(root), str(lake)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert run.stdin is not None and run.stdout is not None
    notices: list[int] = []  # the writer's commit count at each pause
    seen: list[tuple[int, int]] = []
    cli_seen: list[str] = []
    try:
        while True:
            # one line at a time: the writer prints the next only after our go-ahead
            ready, _, _ = select.select([run.stdout], [], [], 300)  # a guard against a hang
            assert ready, "the ingest neither committed nor ended"
            line = run.stdout.readline()
            if not line:
                break
            notices.append(int(line))
            run.stdin.write("go\n")  # the writer works on its next commit while we read
            run.stdin.flush()
            con = dicomlake.connect(str(lake))
            query = "SELECT count(*), count(DISTINCT row_id) FROM instances"
            seen.append(con.sql(query).fetchall()[0])
            con.close()
            if len(seen) % 10 == 5:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "dicomlake",
                        "sql",
                        "--lake",
                        str(lake),
                        "--format",
                        "csv",
                        "SELECT count(*) - count(DISTINCT row_id) FROM instances",
                    ],
                    capture_output=True,
                    text=True,
                )
                assert out.returncode == 0, out.stderr
                cli_seen.append(out.stdout.strip().splitlines()[-1])
    finally:  # whatever happened, no pipe is left open
        run.stdin.close()
        run.stdout.close()
    assert run.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()
    uri = instances_uri(str(lake))
    latest = DeltaTable(uri).version()
    committed = set()
    for version in range(latest + 1):
        actions = DeltaTable(uri, version=version).get_add_actions(flatten=True)
        committed.add(sum(actions.column("num_records").to_pylist()))
    # 800 files in tasks of 20, a commit every 20 rows: one pause per commit
    assert len(seen) == len(notices) == 40 and notices == sorted(set(notices))
    assert all(count == distinct for count, distinct in seen)
    counts = [count for count, _ in seen]
    assert set(counts) <= committed  # each read saw a whole version
    assert counts == sorted(counts)  # never an older one than the read before
    # each read lies between its commit and the writer's next pause, so no three reads
    # in a row see the same version
    assert len(set(counts)) >= (len(counts) + 1) // 2
    assert cli_seen == ["0"] * (len(seen) // 10 + (len(seen) % 10 >= 5))
