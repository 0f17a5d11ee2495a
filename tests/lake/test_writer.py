"""Tests of dicomlake.lake.delta on real Delta tables in tmp_path."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from dicomlake.errors import LakeError, TableNotFound
from dicomlake.lake import (
    CHANGED,
    NEW,
    UNCHANGED,
    UNKNOWN,
    Fingerprints,
    TableWriter,
    check_lake_writable,
    conform_batch,
    delete_rows,
    instances_uri,
    open_table,
    stale_row_ids,
    table_version,
)
from dicomlake.schema import INSTANCES_SCHEMA
from helpers.lake_rows import make_batch

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1_000_000)


def ids(*row_ids: int, **common: Any) -> pa.RecordBatch:
    return make_batch([{"row_id": r, **common} for r in row_ids])


def read(lake: str) -> dict[int, dict[str, Any]]:
    table = DeltaTable(instances_uri(lake)).to_pyarrow_table(
        columns=["row_id", "path", "size", "status"]
    )
    out = {}
    for row in table.to_pylist():
        assert row["row_id"] not in out, f"row_id {row['row_id']} appears twice"
        out[row["row_id"]] = row
    return out


@pytest.fixture
def lake(tmp_path: Any) -> str:
    return str(tmp_path / "lake")


# ---------------------------------------------------------------------------- locations


def test_instances_uri_forms(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert instances_uri("rel-lake") == f"{tmp_path}/rel-lake/instances"
    assert instances_uri("/abs/lake/") == "/abs/lake/instances"
    assert instances_uri("s3://bucket/lake/") == "s3://bucket/lake/instances"
    assert instances_uri("file:///x/lake") == "file:///x/lake/instances"


def test_open_table_missing_raises_table_not_found(lake: str) -> None:
    with pytest.raises(TableNotFound, match="dicomlake ingest"):
        open_table(lake)
    assert table_version(lake) is None


# ------------------------------------------------------------------------------ writer


def test_writer_commits_when_max_rows_reached(lake: str) -> None:
    writer = TableWriter(lake, max_rows=4, max_seconds=3600)
    writer.write(ids(1, 2))
    assert writer.commits == 0
    assert writer.buffered_rows == 2
    assert not os.path.exists(instances_uri(lake))
    writer.write(ids(3, 4))
    assert writer.commits == 1
    assert writer.rows_committed == 4
    assert writer.buffered_rows == 0
    assert sorted(read(lake)) == [1, 2, 3, 4]
    writer.write(ids(5))
    writer.close()
    assert writer.commits == 2
    assert sorted(read(lake)) == [1, 2, 3, 4, 5]
    history = DeltaTable(instances_uri(lake)).history()
    assert [h["operation"] for h in history][:2] == ["WRITE", "WRITE"]


class _Clock:
    """The ``time`` module, but with a monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_writer_commits_when_max_seconds_pass(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()  # the writer's clock, so that a slow machine is not an overdue row
    monkeypatch.setattr(sys.modules[TableWriter.__module__], "time", clock)
    writer = TableWriter(lake, max_rows=1_000_000, max_seconds=0.5)
    writer.write(ids(1))
    assert writer.commits == 0
    clock.now += 1.0
    writer.write(ids(2))  # the oldest buffered row is now overdue
    assert writer.commits == 1
    assert writer.rows_committed == 2
    writer.write(ids(3))
    assert writer.commit_if_due() == 0
    clock.now += 0.25
    assert writer.commit_if_due() == 0
    clock.now += 0.25  # now half a second old
    assert writer.commit_if_due() == 1  # an idle engine can poll
    assert sorted(read(lake)) == [1, 2, 3]


def test_writer_context_manager_flushes_even_on_error(lake: str) -> None:
    with pytest.raises(KeyError), TableWriter(lake) as writer:
        writer.write(ids(1, 2))
        raise KeyError("boom")
    assert sorted(read(lake)) == [1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(ids(3))


def test_replace_keeps_exactly_one_row_per_row_id(lake: str) -> None:
    with TableWriter(lake) as writer:
        writer.write(ids(1, 2, 3, size=10))
    with TableWriter(lake) as writer:
        writer.write(ids(2, 3, size=20), replace=True)
        writer.write(ids(3, 4, size=30), replace=True)  # 3 changed twice; 4 is new
        writer.write(ids(5, size=50))
    assert writer.commits == 2  # one append, one merge
    rows = read(lake)  # asserts no duplicate row ids
    assert {r: rows[r]["size"] for r in rows} == {1: 10, 2: 20, 3: 30, 4: 30, 5: 50}
    operations = [h["operation"] for h in DeltaTable(instances_uri(lake)).history()]
    assert operations[0] == "MERGE"


def test_replace_on_a_new_lake_creates_the_table(lake: str) -> None:
    with TableWriter(lake) as writer:
        writer.write(ids(7, size=1), replace=True)
    assert read(lake)[7]["size"] == 1
    assert DeltaTable(instances_uri(lake)).schema().to_arrow() is not None
    assert open_table(lake).to_pyarrow_dataset().schema.equals(INSTANCES_SCHEMA)


def test_writer_rejects_bad_options(lake: str) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        TableWriter(lake, max_rows=0)
    with pytest.raises(ValueError, match="max_seconds"):
        TableWriter(lake, max_seconds=0)


# ----------------------------------------------------------------------- conform_batch


def test_conform_batch_reorders_and_casts() -> None:
    batch = ids(1, 2, size=5)
    shuffled = batch.select(list(reversed(batch.schema.names)))
    size_index = shuffled.schema.get_field_index("size")
    shuffled = shuffled.set_column(size_index, "size", shuffled.column(size_index).cast(pa.int32()))
    out = conform_batch(shuffled)
    assert out.schema.equals(INSTANCES_SCHEMA)
    assert out.column("size").to_pylist() == [5, 5]
    assert conform_batch(pa.Table.from_batches([batch])).equals(batch)


def test_conform_batch_names_missing_and_extra_columns() -> None:
    batch = ids(1)
    with pytest.raises(LakeError, match=r"missing columns \['meta'\].*unexpected columns \[\]"):
        conform_batch(batch.drop_columns(["meta"]))
    with pytest.raises(LakeError, match=r"unexpected columns \['bogus'\]"):
        conform_batch(batch.append_column("bogus", pa.array([1])))


def test_conform_batch_rejects_uncastable_and_null_keys() -> None:
    batch = ids(1)
    i = batch.schema.get_field_index("size")
    with pytest.raises(LakeError, match="'size' has type string"):
        conform_batch(batch.set_column(i, "size", pa.array(["big"])))
    loose = pa.schema([f.with_nullable(True) for f in INSTANCES_SCHEMA])
    data = {n: [None] for n in INSTANCES_SCHEMA.names} | {"path": ["x"], "status": ["ok"]}
    with pytest.raises(LakeError, match="'row_id' has 1 nulls"):
        conform_batch(pa.RecordBatch.from_pydict(data, schema=loose))


# ------------------------------------------------------------------------ fingerprints


def test_fingerprints_classify(lake: str) -> None:
    with TableWriter(lake) as writer:
        writer.write(
            make_batch(
                [
                    {"row_id": 30, "size": 300, "modification_time": T0},
                    {"row_id": 10, "size": 100, "modification_time": T0},
                    {"row_id": 20, "size": 200, "modification_time": T0},
                    {"row_id": 40, "size": None, "modification_time": None},
                    {"row_id": -5, "size": 5, "modification_time": T0},
                ]
            )
        )
    fp = Fingerprints.load(lake)
    assert len(fp) == 5
    assert fp.nbytes == 5 * 24
    assert fp.version == table_version(lake)
    query = {
        10: (100, T0_US, UNCHANGED),
        20: (201, T0_US, CHANGED),  # size differs
        30: (300, T0_US + 1, CHANGED),  # mtime differs
        -5: (UNKNOWN, T0_US, UNCHANGED),  # size unknown, mtime agrees
        40: (123, T0_US, CHANGED),  # lake knows neither: re-extract
        99: (1, T0_US, NEW),
        -99: (1, T0_US, NEW),  # below the smallest id
        2**62: (1, T0_US, NEW),  # above the largest id
    }
    row_ids = np.array(list(query), dtype=np.int64)
    sizes = np.array([v[0] for v in query.values()], dtype=np.int64)
    mtimes = np.array([v[1] for v in query.values()], dtype=np.int64)
    got = fp.classify(row_ids, sizes, mtimes)
    assert got.dtype == np.int8
    assert dict(zip(query, got.tolist(), strict=True)) == {k: v[2] for k, v in query.items()}
    unknown = np.full(1, UNKNOWN, dtype=np.int64)
    assert fp.classify(np.array([10]), unknown, unknown).tolist() == [CHANGED]


def test_fingerprints_of_missing_lake_are_empty(lake: str) -> None:
    fp = Fingerprints.load(lake)
    assert len(fp) == 0
    assert fp.classify(np.array([1, 2]), np.array([1, 1]), np.array([1, 1])).tolist() == [
        NEW,
        NEW,
    ]
    with pytest.raises(ValueError, match="same length"):
        fp.classify(np.array([1]), np.array([1, 2]), np.array([1]))


def _classify_counted(n: int) -> tuple[np.ndarray, int, int, int]:
    """Classify n/2 rows of a lake of ``n`` plus 1000 new ones; return the answer, the
    rows asked about, the Python and C function calls made and the peak traced memory
    (numpy's arrays included)."""
    rng = np.random.default_rng(0)
    lake_ids = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    fp = Fingerprints(lake_ids, np.arange(n), np.arange(n))
    assert fp.nbytes == 24 * n
    query = np.concatenate([lake_ids[::2], rng.integers(0, 2**62, 1000)])
    sizes = np.concatenate([np.arange(n)[::2], np.zeros(1000, dtype=np.int64)])
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    tracemalloc.start()
    sys.setprofile(count)
    try:
        got = fp.classify(query, sizes, sizes)
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return got, calls, peak, len(query)


def test_fingerprints_scale_without_python_objects() -> None:
    n = 1_000_000
    got, calls, peak, asked = _classify_counted(n)
    assert (got[: n // 2] == UNCHANGED).all()
    assert (got[n // 2 :] == NEW).sum() >= 999
    # the work done in Python does not grow with the rows: numpy does it all
    half_got, half_calls, _, _ = _classify_counted(n // 2)
    assert (half_got[: n // 4] == UNCHANGED).all()
    assert calls == half_calls < 200
    # a few int64 arrays as long as the question; a Python int per row alone is 32 bytes
    assert peak < 64 * asked, f"{peak / asked:.0f} bytes per row"


# -------------------------------------------------------------------------------- sync


def test_stale_row_ids_respects_sources_and_zip_members(lake: str) -> None:
    paths = {
        1: "file:///data/a/x.dcm",
        2: "file:///data/a/sub/y.dcm",
        3: "file:///data/ab/z.dcm",  # a sibling folder sharing the prefix text
        4: "zip://m1.dcm::file:///data/a/pack.zip",
        5: "zip://dir/m2.dcm::file:///data/a/pack.zip",
        6: "zip://m3.dcm::file:///other/pack.zip",
        7: "s3://bucket/data/a/x.dcm",
        8: "file:///data/a",  # the source itself was a single file
        9: "zip://inner.dcm::zip://nested.zip::file:///data/a/outer.zip",
    }
    with TableWriter(lake) as writer:
        writer.write(make_batch([{"row_id": r, "path": p} for r, p in paths.items()]))
    seen = np.array([1, 4, 1000], dtype=np.int64)
    stale = stale_row_ids(lake, ["file:///data/a/"], seen)
    assert stale.dtype == np.int64
    assert stale.tolist() == [2, 5, 8, 9]
    # a plain local path means the same as its file:// URI
    assert stale_row_ids(lake, ["/data/a"], seen).tolist() == [2, 5, 8, 9]
    # the zip file itself as the source
    assert stale_row_ids(lake, ["file:///data/a/pack.zip"], seen).tolist() == [5]
    assert stale_row_ids(lake, ["file:///other", "s3://bucket/data"], seen).tolist() == [6, 7]
    assert stale_row_ids(lake, [], seen).tolist() == []
    assert stale_row_ids(str(os.path.dirname(lake)) + "/nolake", ["/data"], seen).size == 0
    with pytest.raises(ValueError, match="empty"):
        stale_row_ids(lake, [""], seen)


def test_delete_rows(lake: str) -> None:
    with TableWriter(lake) as writer:
        writer.write(ids(*range(10)))
    version = table_version(lake)
    assert delete_rows(lake, np.array([], dtype=np.int64)) == 0
    assert delete_rows(lake, np.array([1, 3, 3, 5, 1000]), chunk_size=2) == 3
    assert sorted(read(lake)) == [0, 2, 4, 6, 7, 8, 9]
    assert table_version(lake) == version + 2  # chunks {1,3} and {5,1000}; none empty
    assert delete_rows(lake, np.array([12345])) == 0
    assert delete_rows(os.path.dirname(lake) + "/nolake", np.array([1])) == 0


# -------------------------------------------------------------------------- writability


def test_check_lake_writable_creates_missing_folder(tmp_path: Any) -> None:
    lake = tmp_path / "a" / "b" / "lake"
    check_lake_writable(str(lake))
    assert lake.is_dir()
    assert list(lake.iterdir()) == []  # the probe is gone


def test_check_lake_writable_on_regular_file(tmp_path: Any) -> None:
    lake = tmp_path / "lake"
    lake.write_text("not a folder")
    with pytest.raises(LakeError, match=r"cannot write lake at .*is a file") as info:
        check_lake_writable(str(lake))
    assert info.value.lake == str(lake)
    writer = TableWriter(str(lake))
    writer.write(ids(1))
    with pytest.raises(LakeError, match="cannot write lake at"):
        writer.flush()
    assert writer.buffered_rows == 1  # kept, so a retry could still commit them
    with pytest.raises(LakeError, match="cannot write lake at"):
        check_lake_writable(str(lake / "sub"))


RUNS_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(
    RUNS_AS_ROOT,
    reason="not applicable: root writes read-only folders (the root variant below covers it)",
)
def test_check_lake_writable_on_read_only_folder(tmp_path: Any) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    lake.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(LakeError, match="cannot write lake at"):
            check_lake_writable(str(lake))
        writer = TableWriter(str(lake))
        writer.write(ids(1))
        with pytest.raises(LakeError, match="cannot write lake at"):
            writer.flush()
    finally:
        lake.chmod(stat.S_IRWXU)


def test_check_lake_writable_on_object_store_uri() -> None:
    check_lake_writable("memory:///dicomlake-test-lake")


_READ_ONLY_SCRIPT = """
import os, stat, sys
from dicomlake.errors import LakeError
from dicomlake.lake import check_lake_writable
lake = sys.argv[1]
os.chmod(lake, stat.S_IRUSR | stat.S_IXUSR)
try:
    check_lake_writable(lake)
except LakeError as exc:
    print(exc)
"""


@pytest.mark.skipif(
    not RUNS_AS_ROOT, reason="not applicable: a test for root (the plain test covers others)"
)
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv not found (util-linux)")
def test_check_lake_writable_on_read_only_folder_as_root(tmp_path: Any) -> None:
    # root ignores folder permissions unless it drops CAP_DAC_OVERRIDE, which setpriv does
    lake = tmp_path / "lake"
    lake.mkdir()
    try:
        done = subprocess.run(
            [
                "setpriv",
                "--bounding-set",
                "-dac_override,-dac_read_search",
                "--",
                sys.executable,
                "-c",
                _READ_ONLY_SCRIPT,
                str(lake),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        lake.chmod(stat.S_IRWXU)
    if "Operation not permitted" in done.stderr:
        pytest.skip("setpriv cannot drop capabilities here")
    assert done.returncode == 0, done.stderr
    assert f"cannot write lake at {lake}: cannot create files in" in done.stdout


def test_paths_delta_rs_cannot_open_are_refused(tmp_path: Any) -> None:
    for name in ("lake[1]", "lake%20x"):
        lake = str(tmp_path / name)
        with pytest.raises(LakeError, match=r"cannot use lake at .*'\[' or '%'"):
            check_lake_writable(lake)
        with pytest.raises(LakeError, match="cannot use lake"):
            TableWriter(lake)
        assert not os.path.exists(lake)


def test_fingerprints_and_stale_rows_after_rewrites(lake: str) -> None:
    with TableWriter(lake) as writer:
        writer.write(ids(1, 2, 3, size=10, modification_time=T0))
    with TableWriter(lake) as writer:
        writer.write(ids(2, size=20, modification_time=T0), replace=True)
    assert delete_rows(lake, np.array([3])) == 1
    fp = Fingerprints.load(lake)
    got = fp.classify(np.array([1, 2, 3]), np.array([10, 20, 10]), np.full(3, T0_US))
    assert got.tolist() == [UNCHANGED, UNCHANGED, NEW]
    assert stale_row_ids(lake, ["file:///data"], np.array([2])).tolist() == [1]


def test_lake_path_with_space(tmp_path: Any) -> None:
    lake = str(tmp_path / "my lake")
    with TableWriter(lake) as writer:
        writer.write(ids(1, 2, size=1, modification_time=T0))
    assert len(Fingerprints.load(lake)) == 2
    assert stale_row_ids(lake, ["file:///data"], np.array([1])).tolist() == [2]
    assert delete_rows(lake, np.array([2])) == 1


def test_lake_package_exports() -> None:
    import dicomlake.lake as lake_pkg

    assert len(set(lake_pkg.__all__)) == len(lake_pkg.__all__)  # order: ruff's RUF022
    for name in lake_pkg.__all__:
        assert hasattr(lake_pkg, name), name
