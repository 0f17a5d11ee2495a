"""Tests of dicomlake.lake.sql: real Delta tables in tmp_path, real DuckDB."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from dicomlake.errors import TableNotFound
from dicomlake.lake import TableWriter, connect, delete_rows, lake_summary
from dicomlake.schema import INSTANCES_SCHEMA
from helpers.lake_rows import make_batch


def meta(**elements: tuple[str, list[Any]]) -> str:
    """DICOM JSON from tag=(vr, values), e.g. meta(_00100010=("PN", [...]))."""
    return json.dumps(
        {tag.lstrip("_"): {"vr": vr, "Value": values} for tag, (vr, values) in elements.items()}
    )


def instance(row_id: int, study: str, series: str, modality: str, **extra: Any) -> dict:
    return {
        "row_id": row_id,
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "Modality": modality,
        "PatientID": f"P-{study}",
        "PatientName": f"Doe^{study}",
        "size": 1000,
        "has_pixel_data": True,
        **extra,
    }


ROWS = [
    # study 1.1: a CT series of 3 instances (one of 2 frames) and an MR series of 1
    instance(1, "1.1", "1.1.1", "CT", NumberOfFrames=2, StudyDate=date(2020, 1, 2),
             Rows=512, Columns=512, SliceThickness=1.0,
             meta=meta(_00100010=("PN", [{"Alphabetic": "Doe^John"}]),
                       _00280030=("DS", [0.5, 0.5]),
                       _00101010=("AS", ["045Y"]),
                       _00200013=("IS", [7]),
                       _00081030=("LO", [""]),
                       _00100020=("LO", []))),
    instance(2, "1.1", "1.1.1", "CT", StudyDate=date(2020, 1, 2), Rows=512, Columns=512,
             SliceThickness=2.5),
    instance(3, "1.1", "1.1.1", "CT", StudyDate=date(2020, 1, 3), Rows=256, Columns=512),
    instance(4, "1.1", "1.1.2", "MR", StudyDate=date(2020, 1, 2), size=10),
    # study 2.2: one MR series of 2 instances, one without pixel data
    instance(5, "2.2", "2.2.1", "MR", StudyDate=date(2021, 6, 1)),
    instance(6, "2.2", "2.2.1", "MR", has_pixel_data=False, size=5),
    # rows that are not in any series
    {"row_id": 7, "status": "not_dicom", "size": 3},
    {"row_id": 8, "status": "error", "error": "InvalidDicomError: truncated preamble"},
    {"row_id": 9, "status": "error", "error": "InvalidDicomError: bad tag"},
    {"row_id": 10, "status": "error", "error": "no colon here"},
    {"row_id": 11, "status": "error", "StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1"},
]  # fmt: skip


@pytest.fixture
def lake(tmp_path: Any) -> str:
    path = str(tmp_path / "lake")
    with TableWriter(path) as writer:
        writer.write(make_batch(ROWS))
    return path


@pytest.fixture
def con(lake: str) -> Any:
    connection = connect(lake)
    yield connection
    connection.close()


def one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    rows = con.sql(sql).fetchall()
    assert len(rows) == 1
    return rows[0][0] if len(rows[0]) == 1 else rows[0]


# ------------------------------------------------------------------------------- views


def test_instances_view_has_every_column(con: duckdb.DuckDBPyConnection) -> None:
    assert one(con, "SELECT count(*) FROM instances") == len(ROWS)
    names = [d[0] for d in con.sql("SELECT * FROM instances LIMIT 0").description]
    assert names == INSTANCES_SCHEMA.names


def test_series_view(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.sql(
        """SELECT "SeriesInstanceUID", "StudyInstanceUID", n_instances, n_frames, modalities,
                  first_date, last_date, total_size, "Rows", "Columns",
                  min_slice_thickness, max_slice_thickness, "PatientID"
           FROM series ORDER BY 1"""
    ).fetchall()
    assert rows == [
        ("1.1.1", "1.1", 3, 4, ["CT"], date(2020, 1, 2), date(2020, 1, 3), 3000, None, 512,
         1.0, 2.5, "P-1.1"),
        ("1.1.2", "1.1", 1, 1, ["MR"], date(2020, 1, 2), date(2020, 1, 2), 10, None, None,
         None, None, "P-1.1"),
        ("2.2.1", "2.2", 2, 1, ["MR"], date(2021, 6, 1), date(2021, 6, 1), 1005, None, None,
         None, None, "P-2.2"),
    ]  # fmt: skip


def test_studies_view(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.sql(
        """SELECT "StudyInstanceUID", n_series, n_instances, modalities, "StudyDate",
                  first_date, last_date, total_size, "PatientName"
           FROM studies ORDER BY 1"""
    ).fetchall()
    assert rows == [
        ("1.1", 2, 4, ["CT", "MR"], date(2020, 1, 2), date(2020, 1, 2), date(2020, 1, 3),
         3010, "Doe^1.1"),
        ("2.2", 1, 2, ["MR"], date(2021, 6, 1), date(2021, 6, 1), date(2021, 6, 1), 1005,
         "Doe^2.2"),
    ]  # fmt: skip


def test_aggregate_types_are_plain_integers(con: duckdb.DuckDBPyConnection) -> None:
    types = dict(
        con.sql(
            "SELECT column_name, column_type FROM (DESCRIBE series) "
            "WHERE column_name IN ('n_instances', 'n_frames', 'total_size')"
        ).fetchall()
    )
    assert types == {"n_instances": "BIGINT", "n_frames": "BIGINT", "total_size": "BIGINT"}


def test_filters_and_projections_reach_the_parquet_scan(con: duckdb.DuckDBPyConnection) -> None:
    sql = "EXPLAIN SELECT path FROM instances WHERE row_id = 3 AND status = 'ok'"
    plan = "".join(str(r[1]) for r in con.sql(sql).fetchall())
    assert "READ_PARQUET" in plan
    assert "row_id = 3" in plan
    assert "status = 'ok'" in plan
    assert "Projections: path" in plan
    assert one(con, "SELECT path FROM instances WHERE row_id = 3") == "file:///data/3.dcm"


def test_string_filters_work_after_replace_and_delete(lake: str) -> None:
    # delta-rs rewrites files of MERGE/DELETE with string_view columns, which pyarrow
    # cannot filter; the views must keep working on such files
    with TableWriter(lake) as writer:
        writer.write(make_batch([ROWS[0] | {"size": 7}]), replace=True)
    assert delete_rows(lake, np.array([6])) == 1
    with connect(lake) as con:
        assert one(con, "SELECT count(*) FROM instances WHERE status = 'ok'") == 5
        assert one(con, "SELECT size FROM instances WHERE \"Modality\" = 'CT' AND row_id = 1") == 7
        assert one(con, "SELECT n_instances FROM series WHERE \"SeriesInstanceUID\" = '2.2.1'") == 1
        assert lake_summary(con)["ok"] == 5


def test_table_without_files(lake: str) -> None:
    assert delete_rows(lake, np.arange(1, len(ROWS) + 1)) == len(ROWS)
    with connect(lake) as con:
        assert one(con, "SELECT count(*) FROM instances") == 0
        assert one(con, "SELECT count(*) FROM series") == 0
        names = [d[0] for d in con.sql("SELECT * FROM instances").description]
        assert names == INSTANCES_SCHEMA.names
        assert lake_summary(con)["files"] == 0


def test_lake_path_with_space_and_quote(tmp_path: Any) -> None:
    lake = str(tmp_path / "my lake's")
    with TableWriter(lake) as writer:
        writer.write(make_batch(ROWS[:2]))
    with connect(lake) as con:
        assert one(con, "SELECT count(*) FROM series") == 1


def test_private_helpers_stay_out_of_show_tables(con: duckdb.DuckDBPyConnection) -> None:
    shown = {r[0] for r in con.sql("SHOW TABLES").fetchall()}
    assert shown == {"instances", "series", "studies", "dicom_keywords"}


def test_lake_summary(con: duckdb.DuckDBPyConnection, lake: str) -> None:
    summary = lake_summary(con)
    assert summary == {
        "lake": lake,
        "version": 1,  # 0 created the table, 1 appended the rows
        "files": 11,
        "ok": 6,
        "not_dicom": 1,
        "error": 4,
        "errors_by_class": {"InvalidDicomError": 2, "(no message)": 1, "no colon here": 1},
        "patients": 2,
        "studies": 2,
        "series": 3,
        "modalities": {"CT": 3, "MR": 3},
        "total_bytes": 3 + 3010 + 1005,
        "duplicate_instances": 0,
    }
    # the connection is left usable (no half-fetched result)
    assert one(con, "SELECT 1") == 1


def test_missing_table_raises_table_not_found(tmp_path: Any) -> None:
    with pytest.raises(TableNotFound, match=r"no instances table in lake .*dicomlake ingest"):
        connect(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TableNotFound):
        connect(str(tmp_path / "empty"))


def test_thumbnails_view_only_when_the_table_exists(lake: str) -> None:
    with connect(lake) as con:
        assert "thumbnails" not in {r[0] for r in con.sql("SHOW TABLES").fetchall()}
    write_deltalake(f"{lake}/thumbnails", pa.table({"row_id": pa.array([1], pa.int64())}))
    with connect(lake) as con:
        assert one(con, "SELECT row_id FROM thumbnails") == 1


# -------------------------------------------------------------------------------- tag()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("PatientName", "Doe^John"),  # PN: the Alphabetic component
        ("00100010", "Doe^John"),
        ("0010001a", None),
        ("00280030", "0.5"),  # the first of several numbers
        ("00280030".lower(), "0.5"),
        ("PixelSpacing", "0.5"),
        ("PatientAge", "045Y"),
        ("00101010", "045Y"),
        ("InstanceNumber", "7"),
        ("StudyDescription", None),  # empty string
        ("PatientID", None),  # empty Value
        ("Modality", None),  # absent
        ("7fe00010", None),
    ],
)
def test_tag(con: duckdb.DuckDBPyConnection, key: str, expected: str | None) -> None:
    assert one(con, f"SELECT tag(meta, '{key}') FROM instances WHERE row_id = 1") == expected


def test_tag_hex_either_case(con: duckdb.DuckDBPyConnection) -> None:
    got = one(
        con,
        "SELECT tag(meta, '0028000A'), tag(meta, '0028000a') FROM instances WHERE row_id = 1",
    )
    assert got == (None, None)
    got = one(
        con,
        "SELECT tag(meta, '00280030'), tag(meta, 'PixelSpacing') FROM instances WHERE row_id = 1",
    )
    assert got == ("0.5", "0.5")


def test_tag_null_meta_and_null_key(con: duckdb.DuckDBPyConnection) -> None:
    assert one(con, "SELECT tag(meta, 'PatientName') FROM instances WHERE row_id = 2") is None
    assert one(con, "SELECT tag(meta, NULL) FROM instances WHERE row_id = 1") is None


def test_tag_key_from_a_column(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.sql(
        "SELECT k, tag(meta, k) FROM instances, (VALUES ('PatientAge'), ('00280030')) v(k) "
        "WHERE row_id = 1 ORDER BY k"
    ).fetchall()
    assert rows == [("00280030", "0.5"), ("PatientAge", "045Y")]


def test_tag_unknown_keyword_raises(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.Error, match="neither a DICOM keyword"):
        con.sql("SELECT tag(meta, 'patientname') FROM instances").fetchall()


def test_dicom_keywords_table(con: duckdb.DuckDBPyConnection) -> None:
    assert one(con, "SELECT tag FROM dicom_keywords WHERE keyword = 'PatientAge'") == "00101010"
    assert one(con, "SELECT count(*) FROM dicom_keywords") > 4000


def test_tag_reads_each_header_once_on_10000_rows(tmp_path: Any) -> None:
    lake = str(tmp_path / "big")
    n = 10_000
    # headers of ~7 kB, like a CT slice's, built as text because json.dumps is slow here
    filler = json.dumps({f"0009{j:04X}": {"vr": "LO", "Value": ["x" * 40]} for j in range(150)})
    metas = [
        f'{{"00100010": {{"vr": "PN", "Value": [{{"Alphabetic": "Doe^{i}"}}]}}, '
        f'"00101010": {{"vr": "AS", "Value": ["{i % 90:03d}Y"]}}, '
        f'"00280030": {{"vr": "DS", "Value": [0.5, 0.5]}}, {filler[1:]}'
        for i in range(n)
    ]
    columns = {f.name: pa.nulls(n, f.type) for f in INSTANCES_SCHEMA}
    columns |= {
        "row_id": pa.array(np.arange(n, dtype=np.int64)),
        "path": pa.array([f"file:///big/{i}.dcm" for i in range(n)]),
        "status": pa.array(["ok"] * n),
        "meta": pa.array(metas),
    }
    with TableWriter(lake, max_rows=n) as writer:
        writer.write(pa.RecordBatch.from_pydict(columns, schema=INSTANCES_SCHEMA))
    queries = {
        "SELECT count(*) FROM instances WHERE tag(meta, 'PatientAge') = '045Y'": sum(
            1 for i in range(n) if i % 90 == 45
        ),
        "SELECT count(tag(meta, 'PatientName')) FROM instances": n,
        "SELECT count(tag(meta, '00280030')) FROM instances": n,
    }
    with connect(lake) as con:
        for sql, expected in queries.items():
            profile = _profiled(con, sql, tmp_path / "profile.json")
            assert one(con, sql) == expected
            # one pass over the table: each row read once (and the keyword table once,
            # where the key is looked up, not once per row)...
            keywords = one(con, "SELECT count(*) FROM dicom_keywords")
            assert profile["query"]["total_rows_scanned"] == n + keywords, sql
            # ...and its ~7 kB header parsed once, by a single json_extract that pulls
            # out the tag's small element; everything else works on that element (the
            # instances view is a UNION, so each branch's operator has its own)
            calls = [re.findall(r"(\w+)\(meta\b", text) for text in _plan_texts(profile)]
            assert ["json_extract"] in calls, sql
            assert all(c in ([], ["json_extract"]) for c in calls), (sql, calls)


def _profiled(con: duckdb.DuckDBPyConnection, sql: str, output: Any) -> dict[str, Any]:
    """DuckDB's JSON profile of ``sql``: the plan it ran, rows scanned, per operator."""
    con.execute("SET enable_profiling = 'json'")
    con.execute("SET profiling_output = ?", [str(output)])
    try:
        con.sql(sql).fetchall()
    finally:
        con.execute("PRAGMA disable_profiling")
    return json.loads(output.read_text())


def _plan_texts(profile: dict[str, Any]) -> list[str]:
    """The expression text of each operator of a profiled plan (projections, filters,
    aggregates), one text per operator."""
    texts, todo = [], list(profile["operator"])
    while todo:
        operator = todo.pop()
        texts.append(" ".join(str(v) for v in operator.get("extra_info", {}).values()))
        todo += operator.get("children", [])
    return texts


# -------------------------------------------------------------------------- consistency


def test_reader_sees_its_version_while_others_commit(lake: str) -> None:
    con = connect(lake)
    version = one(con, "SELECT getvariable('dicomlake_version')")
    before = con.sql("SELECT row_id, size FROM instances ORDER BY row_id").fetchall()
    with TableWriter(lake) as writer:
        writer.write(make_batch([{"row_id": 100}, {"row_id": 101}]))  # append
        writer.write(make_batch([{"row_id": 1, "size": 1}]), replace=True)  # rewrites a file
    assert delete_rows(lake, np.array([2, 3])) == 2  # rewrites again
    assert con.sql("SELECT row_id, size FROM instances ORDER BY row_id").fetchall() == before
    assert one(con, "SELECT count(*) FROM series") == 3
    con.close()
    with connect(lake) as fresh:
        assert one(fresh, "SELECT getvariable('dicomlake_version')") == version + 3
        assert one(fresh, "SELECT count(*) FROM instances") == len(ROWS) + 2 - 2
        assert one(fresh, "SELECT size FROM instances WHERE row_id = 1") == 1
    with connect(lake, version=version) as old:
        assert old.sql("SELECT row_id, size FROM instances ORDER BY row_id").fetchall() == before


def test_connection_reads_timestamps_in_utc(tmp_path: Any) -> None:
    lake = str(tmp_path / "ts")
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    with TableWriter(lake) as writer:
        writer.write(make_batch([{"row_id": 1, "modification_time": when}]))
    with connect(lake) as con:
        got = one(con, "SELECT epoch_us(modification_time) FROM instances")
    assert got == int(when.timestamp() * 1_000_000)


def test_keyword_file_is_pydicoms_dictionary() -> None:
    """dicom_keywords.txt is generated from the pinned pydicom; regenerate when it moves."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "gen_dicom_keywords.py"
    run = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _python(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (whose imports are its own)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_connect_reads_no_pydicom_pandas_or_pyarrow(lake: str) -> None:
    """A connection's start-up needs none of them (they were most of `dicomlake sql`'s time)."""
    code = (
        "import sys\n"
        "from dicomlake.lake.sql import connect\n"
        f"con = connect({lake!r})\n"
        "assert con.sql(\"SELECT tag(meta, 'Modality') FROM instances LIMIT 1\").fetchall()\n"
        "assert con.sql(\"SELECT tag FROM dicom_keywords WHERE keyword = 'PatientAge'\")"
        ".fetchall() == [('00101010',)]\n"
        "print(sorted({'pydicom', 'pandas', 'pyarrow'} & set(sys.modules)))\n"
    )
    assert _python(code).strip() == "[]"


def test_info_command_reads_the_table_state_without_pandas(lake: str) -> None:
    """`dicomlake info` lists the table's files through Arrow's C stream, not pa.table()."""
    code = (
        "import sys\n"
        "from dicomlake.cli import app\n"
        f"app(['info', '--lake', {lake!r}], standalone_mode=False)\n"
        "print('pandas' in sys.modules)\n"
    )
    printed, pandas = _python(code).rstrip().rsplit("\n", 1)
    assert pandas == "False"
    assert "data files" in printed


@pytest.mark.parametrize("output_format", ["table", "json"])
def test_sql_command_prints_without_pyarrow(lake: str, output_format: str) -> None:
    """`dicomlake sql` printing to the terminal fetches Python values, not Arrow."""
    code = (
        "import sys\n"
        "from dicomlake.cli import app\n"
        f"args = ['sql', '--lake', {lake!r}, '--format', {output_format!r},"
        " 'SELECT Modality, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1']\n"
        "app(args, standalone_mode=False)\n"
        "print(sorted({'pandas', 'pyarrow'} & set(sys.modules)))\n"
    )
    printed, modules = _python(code).rstrip().rsplit("\n", 1)
    assert modules == "[]"
    assert "Modality" in printed
