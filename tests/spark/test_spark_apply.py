"""DicomApply: the rows Spark saves are the rows ``dicomlake.apply`` writes, error rows too."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import dicomlake
from dicomlake.sample import sample_file
from helpers import apply_functions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

#: pydicom's five-slice CT series (16 x 16 pixels): the one regular volume here.
CT5N = Path(sample_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"


@pytest.fixture(scope="module")
def apply_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A lake of a five-slice CT series, two single files and a text file: (folder, lake)."""
    folder = tmp_path_factory.mktemp("apply-src") / "src"
    shutil.copytree(CT5N, folder / "ct5n")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(sample_file(name), folder / name)
    (folder / "notes.txt").write_text("not a DICOM file\n")
    lake = str(tmp_path_factory.mktemp("apply-lake") / "lake")
    dicomlake.ingest([str(folder)], lake, workers=0)
    return str(folder), lake


@pytest.fixture(autouse=True)
def functions_by_value() -> Iterator[None]:
    """Spark's Python workers do not have ``tests`` on their path: ship the module."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(apply_functions)
    yield
    cloudpickle.unregister_pickle_by_value(apply_functions)


def rows_of(lake: str, table: str, order: str) -> pa.Table:
    """Every column but ``created_at`` of a lake table, in a stable order."""
    con = dicomlake.connect(lake)
    try:
        return con.sql(
            f"SELECT * EXCLUDE (created_at) FROM {table} ORDER BY {order}"
        ).to_arrow_table()
    finally:
        con.close()


def assert_same_rows(spark_rows: pa.Table, local_rows: pa.Table) -> None:
    """Column by column: names, then values (floats exactly: the same code ran)."""
    assert spark_rows.column_names == local_rows.column_names
    assert spark_rows.num_rows == local_rows.num_rows > 0
    for name in local_rows.column_names:
        assert spark_rows.column(name).to_pylist() == local_rows.column(name).to_pylist(), name


def test_frames_from_a_meta_dataframe_are_the_local_rows_with_the_same_error_rows(
    spark: SparkSession, apply_lake: tuple[str, str]
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomApply, DicomMetaExtractor

    folder, lake = apply_lake
    fn = apply_functions.fails_on_mr
    dicomlake.apply(lake, "SELECT path FROM instances", fn, table="local_frames", workers=0)
    catalog = Catalog(spark, table="spark_frames", lake=lake)
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(folder))
    saved = catalog.save(DicomApply(fn, unit="frame").transform(meta_df))
    assert saved == 7  # five CT slices, CT_small, MR_small; not the text file
    order = "path, frame"
    local, spark_rows = rows_of(lake, "local_frames", order), rows_of(lake, "spark_frames", order)
    assert_same_rows(spark_rows, local)
    errors = [e for e in local.column("error").to_pylist() if e is not None]
    assert len(errors) == 1 and errors[0].startswith("ValueError: no MR here xxx")


def test_series_are_the_local_rows_and_a_catalog_dataframe_gives_frames_too(
    spark: SparkSession, apply_lake: tuple[str, str]
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomApply, DicomMetaExtractor, MissingColumn

    folder, lake = apply_lake
    fn = apply_functions.series_stats
    sql = "SELECT SeriesInstanceUID FROM series"
    dicomlake.apply(lake, sql, fn, table="local_series", unit="series", version="2", workers=0)
    catalog = Catalog(spark, table="spark_series", lake=lake)
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(folder))
    catalog.save(DicomApply(fn, unit="series", version="2").transform(meta_df))
    local = rows_of(lake, "local_series", "SeriesInstanceUID")
    assert_same_rows(rows_of(lake, "spark_series", "SeriesInstanceUID"), local)
    statuses = sorted(local.column("status").to_pylist())
    assert statuses == ["error", "error", "ok"]  # CT_small, MR_small: one slice each
    # series need the meta columns: a catalog DataFrame is refused, naming the extractor
    with pytest.raises(MissingColumn, match="DicomMetaExtractor"):
        DicomApply(fn, unit="series").transform(catalog.catalog(folder))
    # a catalog DataFrame: headers are read in the tasks; declared columns skip inference
    frames = DicomApply(apply_functions.whole, columns={"n": "int64"}).transform(
        catalog.catalog(folder)
    )
    by_path = {r["path"].rsplit("/", 1)[-1]: r for r in (x.asDict() for x in frames.collect())}
    assert by_path["MR_small.dcm"]["n"] == 64 * 64 and by_path["MR_small.dcm"]["status"] == "ok"
    assert by_path["notes.txt"]["status"] == "error" and by_path["notes.txt"]["n"] is None


def test_values_that_do_not_fit_the_declared_columns_are_error_rows() -> None:
    from dicomlake.engine.spark_apply import fit, output_schema
    from dicomlake.kernels.apply import key_schema

    keys = key_schema("frame")
    n = 3
    base = {f.name: pa.nulls(n, f.type) for f in keys}
    base["row_id"] = pa.array([1, 2, 3], pa.int64())
    base["status"] = pa.array(["ok", "ok", "error"])
    base["error"] = pa.array([None, None, "ValueError: bad frame"])
    made = pa.RecordBatch.from_pydict(
        {
            **base,
            "mean": pa.array([1, None, None], pa.int64()),  # widens into double
            "label": pa.array([None, "CT", None]),  # 'label' is declared double
            "extra": pa.array([None, None, None], pa.null()),  # never returned: fine
        }
    )
    out = output_schema("frame", pa.schema([("mean", pa.float64()), ("label", pa.float64())]))
    rows = fit(made, out).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert rows[0]["mean"] == 1.0 and rows[1]["label"] is None
    assert rows[1]["error"].startswith("TypeError: 'label' is string here but double")
    assert rows[2]["error"] == "ValueError: bad frame"  # the kernel's own error stays


def test_a_unit_past_its_time_is_an_error_row_on_an_executor(
    spark: SparkSession, apply_lake: tuple[str, str]
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomApply

    folder, lake = apply_lake
    catalog = Catalog(spark, table="unused", lake=lake)
    slow = DicomApply(apply_functions.sleeps_on_mr, columns={"mean": "double"}, unit_timeout=3)
    got = {
        r["path"].rsplit("/", 1)[-1]: r
        for r in (x.asDict() for x in slow.transform(catalog.catalog(folder)).collect())
    }
    assert got["MR_small.dcm"]["status"] == "error"
    assert got["MR_small.dcm"]["error"] == "Timeout: no result after 3 s"
    assert got["CT_small.dcm"]["status"] == "ok" and got["CT_small.dcm"]["mean"] is not None
    with pytest.raises(ValueError, match="unit_timeout"):
        DicomApply(apply_functions.whole, unit_timeout=0)


def test_the_timer_leaves_the_units_before_and_after_alone(apply_lake: tuple[str, str]) -> None:
    """Without Spark: the time limit cuts one file's frames, the next file runs in full."""
    import datetime as dt

    from dicomlake.catalog import FileRef
    from dicomlake.engine.spark_apply import _run_units
    from dicomlake.kernels.apply import ApplyOptions

    folder, _ = apply_lake
    refs = [
        FileRef(Path(folder, name).as_uri(), name, None, None)
        for name in ("CT_small.dcm", "MR_small.dcm", "CT_small.dcm")
    ]
    options = ApplyOptions(apply_functions.sleeps_on_mr, "frame", "1", None, None)
    made = _run_units(
        options, refs, {}, storage_options=None, created_at=dt.datetime.now(dt.UTC), unit_timeout=1
    ).to_pylist()
    assert [(r["status"], r["error"]) for r in made] == [
        ("ok", None),
        ("error", "Timeout: no result after 1 s"),
        ("ok", None),
    ]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left running
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # the handler put back


def test_a_rerun_saved_with_replace_leaves_one_generation_of_rows_per_unit(
    spark: SparkSession, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomApply

    folder, lake = tmp_path / "src", str(tmp_path / "lake")
    folder.mkdir()
    for name, sample in (("a", "CT_small"), ("b", "MR_small"), ("c", "emri_small")):
        shutil.copyfile(sample_file(f"{sample}.dcm"), folder / f"{name}.dcm")
    fn, columns = apply_functions.whole, {"n": "int64"}
    catalog = Catalog(spark, table="spark_runs", lake=lake)
    first = DicomApply(fn, unit="frame", columns=columns).transform(catalog.catalog(str(folder)))
    assert catalog.save(first, mode="replace") == 12  # no table yet: an append; c: 10 frames
    # c.dcm changes (one frame now), b.dcm is not in the second run
    shutil.copyfile(sample_file("CT_small.dcm"), folder / "c.dcm")
    listed = catalog.catalog(str(folder)).where(~F.col("path").endswith("/b.dcm"))
    second = DicomApply(fn, unit="frame", version="2", columns=columns).transform(listed)
    assert catalog.save(second, mode="replace") == 2
    assert DeltaTable(f"{lake}/spark_runs").version() == 1  # one commit for each save

    dicomlake.ingest([str(folder)], lake, workers=0)
    sql = "SELECT path FROM instances WHERE NOT ends_with(path, '/b.dcm')"
    dicomlake.apply(lake, sql, fn, table="local_runs", version="2", workers=0)
    saved = rows_of(lake, "spark_runs", "path, frame")
    names = [p.rsplit("/", 1)[-1] for p in saved.column("path").to_pylist()]
    assert list(zip(names, saved.column("version").to_pylist(), strict=True)) == [
        ("a.dcm", "2"),
        ("b.dcm", "1"),  # untouched
        ("c.dcm", "2"),  # its ten frames of version 1 are gone
    ]
    # the second run's rows are what dicomlake.apply writes for the same files
    local = rows_of(lake, "local_runs", "path, frame")
    assert_same_rows(rows_of(lake, "spark_runs WHERE version = '2'", "path, frame"), local)
