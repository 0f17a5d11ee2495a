"""Benchmark: the Spark engine against the local engine, same files, same cores, one run.

Builds a corpus of real DICOM files (``build_corpus`` of ``bench/ingest.py``: copies of
pydicom's test files, cycled), then times on the same files:

  (a) the local engine: ``dicomlake.ingest(corpus, lake, workers=2)``;
  (b) Spark ``local[2]``: ``Catalog.catalog`` -> ``DicomMetaExtractor`` ->
      ``Catalog.save`` (listing, parsing, Parquet writes, the Delta commit). The
      SparkSession is started before the clock starts; its start-up is reported apart.

Prints files/s of both, the ratio, and the time per file Spark adds.

    python bench/spark.py [--files 2000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dicomlake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import build_corpus, readable_sources  # bench/ingest.py, beside this file

CORES = 2


def local_engine(corpus: Path, lake: Path) -> tuple[float, int]:
    """Seconds for ``dicomlake.ingest`` with two workers into a fresh lake; rows ok."""
    start = time.perf_counter()
    summary = dicomlake.ingest([str(corpus)], str(lake), workers=CORES)
    return time.perf_counter() - start, summary.ok


def start_spark(work: Path) -> SparkSession:
    """A ``local[2]`` session, as the tests start it."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master(f"local[{CORES}]")
        .appName("dicomlake-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.shuffle.partitions", str(CORES))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(work / "spark-warehouse"))
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_engine(spark: SparkSession, corpus: Path, lake: Path) -> tuple[float, int]:
    """Seconds for catalog -> DicomMetaExtractor -> save; rows ok (read back after)."""
    from deltalake import DeltaTable

    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    start = time.perf_counter()
    catalog = Catalog(spark, table="instances", lake=str(lake))
    catalog_df = catalog.catalog(str(corpus))
    meta_df = DicomMetaExtractor(catalog).transform(catalog_df)
    catalog.save(meta_df)
    seconds = time.perf_counter() - start
    status = DeltaTable(catalog.table_uri).to_pyarrow_table(columns=["status"]).column(0)
    return seconds, status.to_pylist().count("ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the corpus and lakes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dicomlake-bench-spark-"))
    try:
        corpus = work / "corpus"
        files = build_corpus(corpus, readable_sources(), args.files)
        size = sum(f.stat().st_size for f in files) / 2**20
        for path in files:  # both engines read from memory
            path.read_bytes()
        n = len(files)
        print(f"corpus: {n} files, {size:.0f} MiB (page cache warmed), {CORES} cores each")

        t_local, ok_local = local_engine(corpus, work / "lake-local")

        begin = time.perf_counter()
        spark = start_spark(work)
        t_start = time.perf_counter() - begin
        try:
            t_spark, ok_spark = spark_engine(spark, corpus, work / "lake-spark")
        finally:
            spark.stop()
        assert ok_local == ok_spark, (ok_local, ok_spark)
        print(f"rows ok: {ok_local} of {n} (both engines)")

        print(f"{'engine':<44}{'seconds':>9}{'files/s':>9}")
        print(f"{'local, ingest(workers=2)':<44}{t_local:>9.2f}{n / t_local:>9.0f}")
        label = "spark local[2], catalog -> meta -> save"
        print(f"{label:<44}{t_spark:>9.2f}{n / t_spark:>9.0f}")
        print(f"spark session start-up (not in the above): {t_start:.2f} s")
        print(f"local / spark files/s: {t_spark / t_local:.2f}x")
        print(f"per-file overhead Spark adds: {(t_spark - t_local) / n * 1000:.2f} ms")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
