"""The Spark DicomDeidentifier: the same files, byte for byte, as the local deid job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import dicomlake
from dicomlake.jobs.deid import deid

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

KEY = bytes(range(32))


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_transform_writes_the_local_jobs_files(
    spark: SparkSession, spark_folder: Path, tmp_path: Path
) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomDeidentifier, DicomMetaExtractor

    lake = str(tmp_path / "lake")
    dicomlake.ingest([str(spark_folder)], lake, workers=0)
    local = deid(lake, tmp_path / "local", key=KEY, workers=0)
    assert local.ok >= 2  # CT (its copy in the zip has the same UID) and RTSTRUCT at least
    catalog = Catalog(spark, lake=str(tmp_path / "spark-lake"))
    meta = DicomMetaExtractor(catalog).transform(catalog.catalog(str(spark_folder)))
    deidentifier = DicomDeidentifier(str(tmp_path / "spark"), key=KEY)
    rows = [r.asDict() for r in deidentifier.transform(meta).collect()]
    assert len(rows) == 5  # every ok instance (notes.txt is not DICOM: left out)
    assert {r["key_fingerprint"] for r in rows} == {local_fingerprint(lake)}
    assert files_under(tmp_path / "spark") == files_under(tmp_path / "local")
    assert len(files_under(tmp_path / "local")) == local.ok
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["rtstruct.dcm"]["status"] == "ok"
    assert by_name["rtstruct.dcm"]["output"].startswith(f"file://{tmp_path / 'spark'}/")
    assert "KEY" not in repr(deidentifier) and str(KEY) not in repr(deidentifier)


def local_fingerprint(lake: str) -> str:
    con = dicomlake.connect(lake)
    try:
        ((fingerprint,),) = con.sql("SELECT DISTINCT key_fingerprint FROM deid").fetchall()
    finally:
        con.close()
    return str(fingerprint)


def test_a_key_file_and_bad_arguments(spark: SparkSession, tmp_path: Path) -> None:
    from dicomlake.deidentify.keys import keygen
    from dicomlake.errors import DeidKeyError
    from dicomlake.spark.dicom import DicomDeidentifier, MissingColumn

    keygen(tmp_path / "key")
    deidentifier = DicomDeidentifier(str(tmp_path / "out"), key=str(tmp_path / "key"))
    df = spark.createDataFrame([(str(tmp_path / "gone.dcm"),)], "local string")
    with pytest.raises(MissingColumn, match="'path'"):
        deidentifier.transform(df)
    rows = (
        DicomDeidentifier(str(tmp_path / "out"), key=os.urandom(32), inputCol="local")
        .transform(df)
        .collect()
    )
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("error", "FileNotFoundError: cannot read the file as DICOM (ENOENT)")
    ]
    with pytest.raises(DeidKeyError):
        DicomDeidentifier(str(tmp_path / "out"), key=b"short")
    with pytest.raises(ValueError, match="unknown"):
        DicomDeidentifier(str(tmp_path / "out"), key=KEY, options=["nope"])
