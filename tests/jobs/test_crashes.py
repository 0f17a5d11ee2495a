"""Crashes at every stage of a run, interrupted commits, a full disk: nothing is lost.

A run killed with SIGKILL (at a kill point, see :mod:`dicomlake.killpoints`, or at a
random moment) leaves a lake that opens, holds each file at most once, and that the
next run completes to exactly the files on disk.

``DICOMLAKE_CRASH_TRIALS=N`` runs N random-moment kills instead of the default few
(the README's reliability table comes from such a run).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

import dicomlake
from dicomlake.lake import instances_uri
from dicomlake.lake.maintenance import table_state
from helpers.disks import small_tmpfs
from helpers.runs import (
    RUN_MARKER,
    ingest_command,
    lake_paths,
    wait_until_gone,
    write_files,
)

pytestmark = pytest.mark.slow

FILES = 600
OPTIONS = ("--workers", "1", "--commit-rows", "40")


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def assert_sound(lake: Path, expected: set[str]) -> int:
    """The lake opens, reports its state, and holds each file at most once."""
    if not (lake / "instances" / "_delta_log").is_dir():
        return 0  # killed before the first commit: nothing to open yet
    info = run([sys.executable, "-m", "dicomlake", "info", "--lake", str(lake)])
    assert info.returncode == 0, info.stderr
    assert "last commit" in info.stdout and "Traceback" not in info.stderr
    paths = lake_paths(lake)
    assert len(paths) == len(set(paths)), "a file has two rows"
    assert set(paths) <= expected
    return len(paths)


def assert_complete(lake: Path, expected: set[str], command: list[str]) -> None:
    """A plain re-run ends with exactly the files on disk, and vacuum leaves no orphan.

    The ``acquisition`` view has one row per instance after the re-run, whatever the
    crash left in its table; after ``optimize`` the table itself has no other row.
    """
    result = run(command)
    assert result.returncode == 0, result.stderr
    paths = lake_paths(lake)
    assert len(paths) == len(set(paths)) and set(paths) == expected
    assert acquisition_counts(lake) == (len(expected),) * 2
    vacuum = [sys.executable, "-m", "dicomlake", "optimize", "--lake", str(lake)]
    assert run([*vacuum, "--vacuum", "--retention-hours", "0", "--quiet"]).returncode == 0
    assert table_state(str(lake)).unreferenced_files == 0
    stored = DeltaTable(str(lake / "acquisition")).to_pyarrow_table(columns=["row_id"])
    assert stored.num_rows == len(expected)


def acquisition_counts(lake: Path) -> tuple[int, int]:
    """Rows and distinct instances of the ``acquisition`` view."""
    con = dicomlake.connect(str(lake))
    try:
        [(rows, instances)] = con.sql(
            "SELECT count(*), count(DISTINCT row_id) FROM acquisition"
        ).fetchall()
    finally:
        con.close()
    return rows, instances


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("crash") / "src"
    return root, write_files(root, FILES)


#: Where a run is killed: the N-th pass of each stage (a run of FILES files in tasks of
#: 64 and commits of 40 rows passes each stage at least ten times).
KILL_POINTS = {
    "list": [450],  # listing, with commits of earlier tasks already landed
    "parse": [250],  # in a worker, mid-task
    "shard": [5],  # a worker's Parquet file written, not yet handed back
    "commit": [3],  # data files written, the log entry not
    "committed": [3],  # the log entry written, the writer's bookkeeping not
}
if "DICOMLAKE_CRASH_TRIALS" in os.environ:  # the long run: many passes of each stage
    KILL_POINTS = {
        "list": [1, 65, 130, 300, 450, 599],
        "parse": [1, 30, 64, 65, 200, 400, 550],
        "shard": [1, 2, 3, 5, 7, 9],
        "commit": [1, 2, 3, 5, 8, 10],
        "committed": [1, 2, 3, 5, 8, 10],
    }


@pytest.mark.parametrize(
    ("stage", "count"), [(stage, n) for stage, counts in KILL_POINTS.items() for n in counts]
)
def test_killed_at_a_stage_then_rerun_gives_the_exact_set(
    source: tuple[Path, set[str]], tmp_path: Path, stage: str, count: int
) -> None:
    root, expected = source
    lake = tmp_path / "lake"
    command = ingest_command([root], lake, *OPTIONS)
    killed = run(command, DICOMLAKE_KILL_AT=f"{stage}:{count}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert assert_sound(lake, expected) < FILES or stage == "committed"
    assert_complete(lake, expected, command)


def test_killed_during_a_merge_of_changed_files(
    source: tuple[Path, set[str]], tmp_path: Path
) -> None:
    root = tmp_path / "src"
    shutil.copytree(source[0], root)
    expected = {p.replace(str(source[0]), str(root), 1) for p in source[1]}
    lake = tmp_path / "lake"
    command = ingest_command([root], lake, *OPTIONS)
    assert run(command).returncode == 0
    changed = sorted(root.rglob("*.dcm"))[:100]
    for path in changed:
        os.utime(path, (1_000_000_000, 1_000_000_000))
    killed = run(command, DICOMLAKE_KILL_AT="merge:2")
    assert killed.returncode == -signal.SIGKILL
    assert assert_sound(lake, expected) == FILES  # a merge never drops or doubles a row
    assert_complete(lake, expected, command)
    con = dicomlake.connect(str(lake))
    old = con.sql(
        "SELECT count(*) FROM instances WHERE modification_time < TIMESTAMP '2002-01-01'"
    ).fetchall()
    assert old == [(100,)]  # every changed file's row was replaced


def test_killed_at_random_moments(source: tuple[Path, set[str]], tmp_path: Path) -> None:
    """Each trial is killed at a random moment: by a timer (0.2-4 s), or by a kill point
    at a random pass of the listing (which every run passes FILES times, re-runs too),
    whichever comes first. So every trial is killed, however fast or slow the machine:
    a fast one is mostly stopped by the kill point, a slow one by the timer."""
    root, expected = source
    lake = tmp_path / "lake"
    command = ingest_command([root], lake, *OPTIONS, "--parser", "pydicom")
    trials = int(os.environ.get("DICOMLAKE_CRASH_TRIALS", "6"))
    rng = random.Random(7)
    for trial in range(trials):
        if trial % 3 == 0 and lake.exists():
            shutil.rmtree(lake)  # start afresh now and then, to kill early stages too
        delay, listed = rng.uniform(0.2, 4.0), rng.randint(1, FILES)
        marker = f"random-{os.getpid()}-{trial}"
        env = {**os.environ, "DICOMLAKE_KILL_AT": f"list:{listed}", RUN_MARKER: marker}
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            _, stderr = process.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate()
        assert process.returncode == -signal.SIGKILL, (trial, stderr)
        wait_until_gone(marker, "workers outlived their coordinator")
        assert_sound(lake, expected)
    assert_complete(lake, expected, command)


def test_an_interrupted_commit_is_ignored_and_reported(
    source: tuple[Path, set[str]], tmp_path: Path
) -> None:
    root, expected = source
    lake = tmp_path / "lake"
    command = ingest_command([root / "d000", root / "d001"], lake, *OPTIONS)
    assert run(command).returncode == 0
    table = lake / "instances"
    version = DeltaTable(instances_uri(str(lake))).version()
    # what a commit killed mid-way leaves: its data file, and the log entry staged
    # under a temporary name (object_store writes `<version>.json#<n>`, then links it)
    data = next(table.glob("*.parquet"))
    shutil.copyfile(data, table / "part-killed-0000.zstd.parquet")
    staged = table / "_delta_log" / f"{version + 1:020d}.json#1"
    staged.write_text('{"commitInfo":{"timestamp":17')
    info = run([sys.executable, "-m", "dicomlake", "info", "--lake", str(lake)])
    assert info.returncode == 0, info.stderr
    assert "interrupted commits (ignored)" in info.stdout
    assert "files not in this version" in info.stdout
    state = table_state(str(lake))
    assert state.version == version and state.interrupted_commits == [staged.name]
    assert len(lake_paths(lake)) == 200  # the copied file is in no version
    assert_complete(lake, expected, ingest_command([root], lake, *OPTIONS))


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 256 KiB file system (tmpfs), where a lake of a few hundred rows fills it."""
    with small_tmpfs(tmp_path / "disk") as disk:
        yield disk


def test_disk_full_gives_a_clear_error_and_the_lake_opens(
    source: tuple[Path, set[str]], small_disk: Path
) -> None:
    root, expected = source
    lake = small_disk / "lake"
    many = root.parent / "many"
    if not many.exists():
        for i in range(5):  # 3,000 files: more rows than 256 KiB holds
            shutil.copytree(root, many / f"copy{i}")
    everything = {f"file://{p}" for p in many.rglob("*.dcm")}
    command = ingest_command([many], lake, "--workers", "1", "--commit-rows", "100")
    full = run(command)
    assert full.returncode == 2
    assert "the disk is full" in full.stderr and "Traceback" not in full.stderr
    committed = assert_sound(lake, everything)
    assert 0 < committed < len(everything)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert len(everything) == 5 * FILES
    assert_complete(lake, everything, command)
    # the source the copies came from is untouched: still exactly its FILES files
    assert {f"file://{p}" for p in root.rglob("*.dcm")} == expected and len(expected) == FILES
