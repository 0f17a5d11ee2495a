"""Which Delta writer a session gets: Spark's own only where the session has it."""

from __future__ import annotations

import pytest

from dicomlake.spark import Catalog
from dicomlake.spark.catalog import delta_writer

pytestmark = pytest.mark.spark


def test_plain_pyspark_uses_delta_rs(spark, tmp_path) -> None:
    assert delta_writer(spark) == "delta-rs"
    assert Catalog(spark, lake=str(tmp_path)).writer == "delta-rs"


def test_databricks_runtime_uses_spark_delta_writer(spark, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    assert Catalog(spark, lake=str(tmp_path)).writer == "delta-spark"


def test_unknown_writer_is_refused(spark, tmp_path) -> None:
    with pytest.raises(ValueError, match="writer must be"):
        Catalog(spark, lake=str(tmp_path), writer="hive")  # type: ignore[arg-type]
