"""Benchmark: the Spark engine against the local engine, same files, same cores, one run.

Builds a corpus of real DICOM files (``build_corpus`` of ``bench/ingest.py``: copies of
pydicom's test files, cycled), then times on the same files:

  (a) the local engine: ``dicomlake.ingest(corpus, lake, workers=2)``;
  (b) Spark ``local[2]``: ``Catalog.catalog`` -> ``DicomMetaExtractor`` ->
      ``Catalog.save`` (listing, parsing, Parquet writes, the Delta commit). The
      SparkSession is started before the clock starts; its start-up is reported apart.
      The program runs twice, into two tables: the first job of a session also pays
      for the JVM's warm-up and the Python workers' start, the second shows what each
      further job costs.

Prints files/s of each, the ratios, the time per file Spark adds, and the CPU seconds
of each run's whole process tree (Linux: the driver, the JVM and its Python workers, or
the local engine's worker processes): on a machine shared with other work, CPU time per
file is steadier than wall time.

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


def _cpu_ticks(stat: str) -> tuple[int, int]:
    """Parent pid and CPU ticks (own and reaped children's) of a ``/proc/PID/stat`` line."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_cpu() -> float | None:
    """CPU seconds of this process and every live descendant (None without ``/proc``).

    Children that exited count through their parent's reaped-children time, so the
    local engine's worker processes count once its pool is shut down.
    """
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return None
    stats: dict[int, tuple[int, int]] = {}
    for name in names:
        try:
            with open(f"/proc/{name}/stat") as f:
                stats[int(name)] = _cpu_ticks(f.read())
        except (OSError, ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    ticks, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        ticks += stats.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")


class Run:
    """Wall and CPU seconds of one timed block."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu: float | None = None

    def __enter__(self) -> Run:
        self._cpu, self._start = tree_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        end = tree_cpu()
        self.cpu = None if end is None or self._cpu is None else end - self._cpu


def local_engine(corpus: Path, lake: Path) -> tuple[Run, int]:
    """Times of ``dicomlake.ingest`` with two workers into a fresh lake; rows ok."""
    with Run() as run:
        summary = dicomlake.ingest([str(corpus)], str(lake), workers=CORES)
    return run, summary.ok


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


def spark_engine(spark: SparkSession, corpus: Path, lake: Path) -> tuple[Run, int]:
    """Times of catalog -> DicomMetaExtractor -> save; rows ok (read back after)."""
    from deltalake import DeltaTable

    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    with Run() as run:
        catalog = Catalog(spark, table="instances", lake=str(lake))
        catalog_df = catalog.catalog(str(corpus))
        meta_df = DicomMetaExtractor(catalog).transform(catalog_df)
        catalog.save(meta_df)
    status = DeltaTable(catalog.table_uri).to_pyarrow_table(columns=["status"]).column(0)
    return run, status.to_pylist().count("ok")


def _cpu_text(run: Run, n: int) -> str:
    if run.cpu is None:
        return f"{'-':>9}{'-':>12}"
    return f"{run.cpu:>9.2f}{run.cpu / n * 1000:>12.3f}"


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

        local, ok_local = local_engine(corpus, work / "lake-local")

        begin = time.perf_counter()
        spark = start_spark(work)
        t_start = time.perf_counter() - begin
        try:
            first, ok_first = spark_engine(spark, corpus, work / "lake-spark-1")
            second, ok_second = spark_engine(spark, corpus, work / "lake-spark-2")
        finally:
            spark.stop()
        assert ok_local == ok_first == ok_second, (ok_local, ok_first, ok_second)
        print(f"rows ok: {ok_local} of {n} (both engines)")

        runs = [
            ("local, ingest(workers=2)", local),
            ("spark local[2], first job of the session", first),
            ("spark local[2], second job", second),
        ]
        print(f"{'engine':<44}{'seconds':>9}{'files/s':>9}{'CPU s':>9}{'CPU ms/file':>12}")
        for label, run in runs:
            print(f"{label:<44}{run.seconds:>9.2f}{n / run.seconds:>9.0f}{_cpu_text(run, n)}")
        print(f"spark session start-up (not in the above): {t_start:.2f} s")
        for label, run in runs[1:]:
            ratio = f"spark / local time per file, {label.split(', ', 1)[1]}:"
            line = f"{ratio:<60}{run.seconds / local.seconds:>6.2f}x"
            if run.cpu is not None and local.cpu:
                line += f"   CPU {run.cpu / local.cpu:.2f}x"
            print(line)
        added = (first.seconds - local.seconds) / n * 1000
        print(f"per-file overhead Spark adds (first job): {added:.2f} ms")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
