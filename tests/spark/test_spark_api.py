"""The pixels program on dicomlake.spark: real Spark (local), real files, real Delta."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from deltalake import DeltaTable

from dicomlake.rows import row_id
from dicomlake.schema import PROMOTED_TAGS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark


def _parquet_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".parquet"}


def _log_files(uri: Path) -> set[str]:
    return {os.path.basename(u) for u in DeltaTable(str(uri)).file_uris()}


def test_catalog_lists_pixels_columns(
    spark: SparkSession, spark_folder: Path, tmp_path: Path
) -> None:
    from dicomlake.spark import Catalog

    catalog = Catalog(spark, lake=str(tmp_path / "lake"))
    df = catalog.catalog(str(spark_folder))
    types = dict(df.dtypes)
    assert types["rowId"] == "bigint"
    assert types["modificationTime"] == "timestamp"
    assert types["length"] == "bigint"
    assert types["path_tags"] == "array<string>"
    assert types["is_anon"] == "boolean"
    for name in ("path", "relative_path", "local_path", "extension"):
        assert types[name] == "string"
    rows = {r["relative_path"]: r for r in df.collect()}
    assert set(rows) == {
        "series/CT_small.dcm",
        "series/MR_small.dcm",
        "series/rtstruct.dcm",
        "notes.txt",
        "archive.zip/zipped/CT.dcm",
        "archive.zip/zipped/RGB.dcm",
    }
    ct = rows["series/CT_small.dcm"]
    assert ct["rowId"] == ct["row_id"] == row_id(ct["path"])
    assert ct["local_path"] == str(spark_folder / "series" / "CT_small.dcm")
    assert ct["length"] == (spark_folder / "series" / "CT_small.dcm").stat().st_size
    assert ct["path_tags"] == ["series", "CT", "small", "dcm"]
    assert ct["is_anon"] is False
    member = rows["archive.zip/zipped/RGB.dcm"]
    assert member["path"].startswith("zip://zipped/RGB.dcm::file://")
    assert member["local_path"] is None
    only_dcm = catalog.catalog(str(spark_folder), extension="dcm")
    assert only_dcm.count() == 5


def test_pixels_program_end_to_end(spark: SparkSession, spark_folder: Path, tmp_path: Path) -> None:
    # the seven lines of a dbx.pixels notebook, with only the imports changed
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import (  # the star import of pixels, spelled out for ruff
        DicomMetaExtractor,
        DicomThumbnailExtractor,
    )

    catalog = Catalog(spark, lake=str(tmp_path / "lake"))
    catalog_df = catalog.catalog(str(spark_folder))
    meta_df = DicomMetaExtractor(catalog).transform(catalog_df)
    thumbnail_df = DicomThumbnailExtractor().transform(meta_df)
    assert catalog.save(thumbnail_df) == 6

    table = tmp_path / "lake" / "object_catalog"
    assert _parquet_files(table) == _log_files(table)
    rows = {r["relative_path"]: r for r in catalog.load().collect()}
    assert len(rows) == 6
    assert rows["notes.txt"]["status"] == "not_dicom"
    assert rows["notes.txt"]["thumbnail"] is None
    ct = rows["series/CT_small.dcm"]
    assert ct["status"] == "ok" and ct["Modality"] == "CT" and ct["Rows"] == 128
    assert ct["meta"].startswith("{")
    thumb = ct["thumbnail"]
    assert (thumb["origin"], thumb["mode"], thumb["nChannels"]) == (ct["path"], 0, 1)
    assert (thumb["height"], thumb["width"]) == (128, 128)
    assert len(thumb["data"]) == 128 * 128
    rgb = rows["archive.zip/zipped/RGB.dcm"]["thumbnail"]
    assert (rgb["mode"], rgb["nChannels"]) == (16, 3)
    pixels = np.frombuffer(rgb["data"], np.uint8).reshape(rgb["height"], rgb["width"], 3)
    assert pixels.std() > 0
    assert rows["series/rtstruct.dcm"]["thumbnail"] is None  # no pixel data

    # a DuckDB-readable Delta table too, with the catalog's and the lake's columns
    dt_rows = DeltaTable(str(table)).to_pyarrow_table(columns=["rowId", "modificationTime"])
    assert dt_rows.num_rows == 6
    assert dt_rows.schema.field("modificationTime").type.tz in ("UTC", "Etc/UTC", "+00:00")


def test_engines_agree(spark: SparkSession, tmp_path: Path) -> None:
    import dicomlake
    from dicomlake.lake.location import open_table
    from dicomlake.lake.tables import arrow_dataset
    from dicomlake.sample import write_sample_corpus
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    corpus = write_sample_corpus(tmp_path / "corpus", include_pydicom_data=False)
    lake = str(tmp_path / "local-lake")
    dicomlake.ingest([str(corpus)], lake, workers=0)
    columns = ["path", "status", "error", "warnings", "has_pixel_data", "meta", *PROMOTED_TAGS]
    local = {
        r["path"]: r for r in arrow_dataset(open_table(lake)).to_table(columns=columns).to_pylist()
    }

    catalog = Catalog(spark, lake=str(tmp_path / "spark-lake"))
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(str(corpus)))
    remote = {r["path"]: r.asDict() for r in meta_df.select(*columns).collect()}

    assert set(remote) == set(local)
    assert len(local) > 50
    for path, want in local.items():
        got = remote[path]
        for name in columns:
            value = got[name]
            if isinstance(value, dt.datetime):
                value = value.replace(tzinfo=dt.UTC)
            assert value == want[name], (path, name)


def test_retried_upstream_task_gives_one_row_per_file(
    spark: SparkSession, spark_folder: Path, tmp_path: Path
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    def fail_first_attempt(batches):  # type: ignore[no-untyped-def]
        # a transform before the save that fails the first attempt of partition 0 midway
        from pyspark import TaskContext

        context = TaskContext.get()
        for index, batch in enumerate(batches):
            if index == 1 and context.partitionId() == 0 and context.attemptNumber() == 0:
                raise RuntimeError("injected failure in the first attempt")
            yield batch

    catalog = Catalog(spark, lake=str(tmp_path / "lake"))
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(str(spark_folder)))
    flaky = meta_df.coalesce(1).mapInArrow(fail_first_attempt, meta_df.schema)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "2")
    try:
        assert catalog.save(flaky) == 6
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    table = tmp_path / "lake" / "object_catalog"
    assert _parquet_files(table) == _log_files(table)
    loaded = catalog.load()
    assert loaded.count() == 6
    assert loaded.select("path").distinct().count() == 6


def test_killed_writer_attempt_is_never_committed(
    spark: SparkSession, spark_folder: Path, tmp_path: Path
) -> None:
    from dicomlake.engine.spark import save_dataframe
    from dicomlake.spark import Catalog

    def die_in_first_attempt(batches):  # type: ignore[no-untyped-def]
        # runs in the writer's process: the first attempt of partition 0 dies (os._exit)
        # after its first batch went into its Parquet file
        import os

        from pyspark import TaskContext

        context = TaskContext.get()
        for index, batch in enumerate(batches):
            if index == 1 and context.partitionId() == 0 and context.attemptNumber() == 0:
                os._exit(3)
            yield batch

    catalog = Catalog(spark, lake=str(tmp_path / "lake"))
    df = catalog.catalog(str(spark_folder)).coalesce(1)
    table = tmp_path / "lake" / "object_catalog"
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "2")
    try:
        # without cleanup the dead attempt's file stays, to prove the log never lists it
        rows = save_dataframe(df, str(table), cleanup=False, task_hook=die_in_first_attempt)
        assert rows == 6
        on_disk, in_log = _parquet_files(table), _log_files(table)
        assert len(in_log) == 1 and in_log < on_disk
        assert all("-a0-" in name for name in on_disk - in_log)
        assert catalog.load().count() == 6

        # with cleanup (what Catalog.save does), the dead attempt's file is deleted
        rows = save_dataframe(df, str(table), mode="overwrite", task_hook=die_in_first_attempt)
        assert rows == 6
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    new_files = _parquet_files(table) - on_disk
    assert new_files == _log_files(table)
    assert len(new_files) == 1
    loaded = catalog.load()
    assert loaded.count() == 6
    assert loaded.select("path").distinct().count() == 6


def test_save_append_and_overwrite(spark: SparkSession, spark_folder: Path, tmp_path: Path) -> None:
    from dicomlake.spark import Catalog

    catalog = Catalog(spark, table="listing", lake=str(tmp_path / "lake"))
    df = catalog.catalog(str(spark_folder))
    assert catalog.save(df) == 6
    assert catalog.save(df, mode="append") == 6
    assert catalog.load().count() == 12
    assert catalog.save(df.limit(2), mode="overwrite") == 2
    assert catalog.load().count() == 2
    assert DeltaTable(str(tmp_path / "lake" / "listing")).version() == 2
    with pytest.raises(ValueError, match="append"):
        catalog.save(df, mode="ignore")  # type: ignore[arg-type]


def test_default_table_location_is_cwd(
    spark: SparkSession, spark_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomlake.errors import TableNotFound
    from dicomlake.spark import Catalog

    monkeypatch.chdir(tmp_path)
    catalog = Catalog(spark)
    assert catalog.table_uri == str(tmp_path / "object_catalog")
    with pytest.raises(TableNotFound, match=r"Catalog\.save"):
        catalog.load()
