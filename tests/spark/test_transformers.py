"""PathExtractor, TagExtractor, input checks and the parts that need no Spark job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark


def test_star_import_gives_the_pixels_names() -> None:
    namespace: dict[str, object] = {}
    exec("from dicomlake.spark.dicom import *", namespace)
    names = {n for n in namespace if not n.startswith("__")}
    assert names == {
        "DicomApply",  # your own function over frames, instances or series
        "DicomDeidentifier",  # pixels' DicomAnonymizerExtractor counterpart
        "DicomMetaExtractor",
        "DicomPatcher",
        "DicomPillowThumbnailExtractor",
        "DicomThumbnailExtractor",
        "PathExtractor",
        "TagExtractor",
    }


def test_importing_the_spark_api_does_not_start_pyspark() -> None:
    code = (
        "import dicomlake, dicomlake.spark, dicomlake.spark.dicom, sys; "
        "print('pyspark' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_missing_pyspark_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomlake.spark import Catalog

    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(ImportError, match=r"pip install 'dicomlake\[spark\]'"):
        Catalog(object())  # type: ignore[arg-type]


def test_tag_keys() -> None:
    from dicomlake.spark.dicom import TagExtractor, tag_key

    assert tag_key("PatientName") == "00100010"
    assert tag_key("0008103e") == "0008103E"
    with pytest.raises(ValueError, match="neither a DICOM keyword"):
        TagExtractor(["NoSuchKeyword"])


def test_missing_columns_name_their_producer(spark: SparkSession) -> None:
    from dicomlake.spark.dicom import (
        DicomMetaExtractor,
        DicomThumbnailExtractor,
        PathExtractor,
        TagExtractor,
    )

    no_path = spark.createDataFrame([("x",)], "name string")
    with pytest.raises(DicomLakeError, match=r"'path' column, which Catalog\.catalog\(\)"):
        DicomMetaExtractor().transform(no_path)
    with pytest.raises(ValueError, match="'path'"):
        PathExtractor().transform(no_path)
    paths = spark.createDataFrame([("file:///x.dcm",)], "path string")
    with pytest.raises(ValueError, match="'has_pixel_data' column, which DicomMetaExtractor"):
        DicomThumbnailExtractor().transform(paths)
    with pytest.raises(ValueError, match="'meta' column, which DicomMetaExtractor"):
        TagExtractor(["Modality"]).transform(paths)


def test_path_and_tag_extractors(spark: SparkSession, spark_folder: Path) -> None:
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor, PathExtractor, TagExtractor

    catalog = Catalog(spark)
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(str(spark_folder)))
    tags = ["00080060", "00100010", "00280010", "StudyDescription"]
    out = TagExtractor(tags).transform(PathExtractor().transform(meta_df))
    rows = {r["relative_path"]: r for r in out.collect()}

    member = rows["archive.zip/zipped/CT.dcm"]
    assert member["basename"] == "CT.dcm"
    assert member["dirname"].startswith("zip://zipped::file://")
    assert member["extension"] == "dcm"
    assert member["path_tags"] == ["archive", "zip", "zipped", "CT", "dcm"]
    plain = rows["series/MR_small.dcm"]
    assert plain["dirname"] == f"file://{spark_folder}/series"
    # the lifted tags equal the typed columns the kernel promoted from the same header
    for row in rows.values():
        assert row["00080060"] == row["Modality"]
        assert row["00100010"] == row["PatientName"]
        assert row["00280010"] == (None if row["Rows"] is None else str(row["Rows"]))
    assert rows["series/CT_small.dcm"]["00100010"] == "CompressedSamples^CT1"
    assert rows["series/CT_small.dcm"]["00080060"] == "CT"
