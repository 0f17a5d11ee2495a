"""The Spark DicomPatcher: the same patch rows as the local patcher, from a catalog or meta df."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import dicomlake
from dicomlake.ml.patches import DicomPatcher as LocalPatcher

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

KEY = ("path", "frame", "x", "y", "width", "height", "tissue_fraction", "pixels")


def keys(rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {tuple(r[k] for k in KEY) for r in rows}


@pytest.fixture(scope="module")
def local_rows(
    spark_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """The local patcher's ok rows over the same folder (ingested into a lake)."""
    lake = str(tmp_path_factory.mktemp("patch-lake") / "lake")
    dicomlake.ingest([str(spark_folder)], lake, workers=0)
    LocalPatcher(size=32, stride=32, store_pixels=True).write(lake, workers=0)
    con = dicomlake.connect(lake)
    try:
        return con.sql("SELECT * FROM patches WHERE status = 'ok'").to_arrow_table().to_pylist()
    finally:
        con.close()


def test_transform_gives_the_local_patchers_rows(
    spark: SparkSession, spark_folder: Path, tmp_path: Path, local_rows: list[dict[str, Any]]
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor, DicomPatcher

    catalog = Catalog(spark, lake=str(tmp_path / "lake"))
    catalog_df = catalog.catalog(str(spark_folder))
    patcher = DicomPatcher(size=32, stride=32, store_pixels=True)
    from_catalog = [r.asDict() for r in patcher.transform(catalog_df).collect()]
    # CT (x2, one in the zip), MR and RGB tile; the text file and the RTSTRUCT give none
    names = {r["path"].split("::")[0].rsplit("/", 1)[-1] for r in from_catalog}
    assert names == {"CT_small.dcm", "MR_small.dcm", "CT.dcm", "RGB.dcm"}
    assert all(r["status"] == "ok" for r in from_catalog)
    assert len(from_catalog) == 16 + 4 + 16 + 16
    assert keys(from_catalog) == keys(local_rows)
    meta_df = DicomMetaExtractor(catalog).transform(catalog_df)
    from_meta = [r.asDict() for r in patcher.transform(meta_df).collect()]
    assert keys(from_meta) == keys(local_rows)
    uids = {r["path"]: r["SOPInstanceUID"] for r in local_rows}
    assert all(r["SOPInstanceUID"] == uids[r["path"]] for r in from_meta + from_catalog)
    assert all(r["row_id"] is not None and r["created_at"] is not None for r in from_catalog)


def test_saved_rows_are_the_lakes_patches_view(
    spark: SparkSession, spark_folder: Path, tmp_path: Path
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomPatcher

    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(spark_folder)], lake, workers=0)
    catalog_df = Catalog(spark, lake=lake).catalog(str(spark_folder))
    patches_df = DicomPatcher(size=64, min_tissue=0.5).transform(catalog_df)
    saved = Catalog(spark, table="patches", lake=lake).save(patches_df)
    con = dicomlake.connect(lake)
    try:
        count, small = con.sql(
            "SELECT count(*), count(*) FILTER (WHERE tissue_fraction < 0.5) FROM patches"
        ).fetchall()[0]
    finally:
        con.close()
    assert count == saved > 0 and small == 0


def test_pixels_style_constructor_and_input_checks(spark: SparkSession, spark_folder: Path) -> None:
    from dicomlake.spark.dicom import DicomPatcher, MissingColumn

    patcher = DicomPatcher(inputCol="local_path", outputCol="patch", size=64)
    assert patcher.options.size == 64 and patcher.options.step == 64
    df = spark.createDataFrame(
        [(str(spark_folder / "series" / "MR_small.dcm"),)], "local_path string"
    )
    rows = patcher.transform(df).collect()
    assert [(r["x"], r["y"], r["width"], r["height"]) for r in rows] == [(0, 0, 64, 64)]
    with pytest.raises(MissingColumn, match="'path'"):
        DicomPatcher().transform(df)
    with pytest.raises(ValueError, match=r"stride must be 1\.\.size"):
        DicomPatcher(size=32, stride=64)


def test_a_file_that_cannot_be_read_is_an_error_row(spark: SparkSession, tmp_path: Path) -> None:
    from dicomlake.spark.dicom import DicomPatcher

    df = spark.createDataFrame([(str(tmp_path / "gone.dcm"),)], "path string")
    rows = DicomPatcher(size=32).transform(df).collect()
    assert [(r["status"], r["frame"]) for r in rows] == [("error", None)]
    assert rows[0]["error"].startswith("FileNotFoundError")
