"""One local Spark session for every Spark test (starting one takes seconds)."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dicomlake.sample import sample_file

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """``local[2,3]``: two cores, and a task may fail twice before the job fails."""
    pytest.importorskip("pyspark")
    pytest.importorskip("pandas")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java")
    from pyspark.sql import SparkSession

    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = (
        SparkSession.builder.master("local[2,3]")
        .appName("dicomlake-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={warehouse}")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def spark_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few clean files, a non-DICOM file and a zip with two members; read-only."""
    folder = tmp_path_factory.mktemp("spark-src") / "src"
    (folder / "series").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm"):
        shutil.copyfile(sample_file(name), folder / "series" / name)
    (folder / "notes.txt").write_text("not a DICOM file\n")
    with zipfile.ZipFile(folder / "archive.zip", "w") as archive:
        archive.write(sample_file("CT_small.dcm"), "zipped/CT.dcm")
        archive.write(sample_file("SC_rgb.dcm"), "zipped/RGB.dcm")
    return folder
