"""What Catalog.save writes when the extractors' rows go straight to it (one Python pass).

The extractors' output DataFrame is saved by running the extractors in the writing
tasks; these tests check that the Delta table holds the rows a user would get from the
local engine and from the DataFrame itself, and that a failed attempt is never committed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from deltalake import DeltaTable

from dicomlake.sample import sample_file
from dicomlake.schema import PROMOTED_TAGS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

COLUMNS = ["path", "status", "error", "warnings", "has_pixel_data", "meta", *PROMOTED_TAGS]


def _utc(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _table_rows(uri: Path, columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
    rows = DeltaTable(str(uri)).to_pyarrow_table(columns=columns).to_pylist()
    return {r["path"]: {k: _utc(v) for k, v in r.items()} for r in rows}


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus, plus a truncated DICOM file and one that only starts like one."""
    from dicomlake.sample import write_sample_corpus

    corpus = write_sample_corpus(
        tmp_path_factory.mktemp("save") / "corpus", include_pydicom_data=False
    )
    bad = corpus / "spark-save-cases"
    bad.mkdir()
    (bad / "truncated.dcm").write_bytes(Path(sample_file("CT_small.dcm")).read_bytes()[:1000])
    (bad / "junk.dcm").write_bytes(b"DICM" * 100)
    shutil.copyfile(sample_file("MR_small.dcm"), bad / "fine.dcm")
    return corpus


def test_saved_table_equals_the_local_engine(
    spark: SparkSession, mixed_corpus: Path, tmp_path: Path
) -> None:
    import dicomlake
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    local_lake = tmp_path / "local-lake"
    dicomlake.ingest([str(mixed_corpus)], str(local_lake), workers=0)
    local = _table_rows(local_lake / "instances", COLUMNS)

    catalog = Catalog(spark, table="instances", lake=str(tmp_path / "spark-lake"))
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(str(mixed_corpus)))
    assert catalog.save(meta_df) == len(local)
    saved = _table_rows(tmp_path / "spark-lake" / "instances", COLUMNS)

    assert set(saved) == set(local)
    for path, want in local.items():
        assert saved[path] == want, path
    by_name = {os.path.basename(p): r for p, r in saved.items()}
    assert by_name["truncated.dcm"]["status"] == "error"
    assert by_name["truncated.dcm"]["error"].startswith("TruncatedFile")
    assert by_name["junk.dcm"]["status"] == "error"
    assert by_name["fine.dcm"]["status"] == "ok"
    assert {r["status"] for r in saved.values()} == {"ok", "not_dicom", "error"}
    # the acquisition table follows, with the local engine's rows
    acquired = [
        DeltaTable(str(lake / "acquisition")).to_pyarrow_table().drop_columns(["ingested_at"])
        for lake in (local_lake, tmp_path / "spark-lake")
    ]
    assert acquired[0].num_rows == sum(r["status"] == "ok" for r in local.values())
    assert acquired[1].sort_by("row_id").equals(acquired[0].sort_by("row_id"))
    files = DeltaTable(str(tmp_path / "spark-lake" / "acquisition")).file_uris()
    assert all(re.search(r"/part-\d{5}-", uri) for uri in files)  # written by the tasks


def test_saved_rows_are_the_dataframe_rows(
    spark: SparkSession, mixed_corpus: Path, tmp_path: Path
) -> None:
    # the save runs the extractors itself: what it writes must be what the DataFrame holds
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor, PathExtractor

    catalog = Catalog(spark, lake=str(tmp_path / "lake"), files_per_partition=16)
    listed = catalog.catalog(str(mixed_corpus))
    df = DicomMetaExtractor(catalog).transform(PathExtractor().transform(listed))
    from_df = {r["path"]: r.asDict() for r in df.collect()}
    assert catalog.save(df) == len(from_df)

    table = tmp_path / "lake" / "object_catalog"
    saved = _table_rows(table)
    assert set(saved) == set(from_df)
    assert list(saved[next(iter(saved))]) == df.columns
    for path, row in from_df.items():
        assert saved[path] == {k: _utc(v) for k, v in row.items()}, path
    on_disk = {p.name for p in table.iterdir() if p.suffix == ".parquet"}
    assert on_disk == {os.path.basename(u) for u in DeltaTable(str(table)).file_uris()}


def test_other_dataframes_are_saved_through_their_rows(
    spark: SparkSession, mixed_corpus: Path, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    from dicomlake.engine.spark import chain_of
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    catalog = Catalog(spark, lake=str(tmp_path / "lake"))
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(str(mixed_corpus)))
    only_ok = meta_df.where(F.col("status") == "ok").select("path", "Modality")
    assert chain_of(meta_df) is not None
    assert chain_of(only_ok) is None
    expected = {r["path"]: r["Modality"] for r in only_ok.collect()}
    everything = meta_df.count()
    assert 0 < len(expected) < everything
    # a replace swaps rows by row_id: a table without one is refused before any task runs
    with pytest.raises(ValueError, match="no such column"):
        catalog.save(only_ok, mode="replace")
    with pytest.raises(ValueError, match="needs the default writer"):
        Catalog(spark, lake=str(tmp_path / "lake"), writer="delta-spark").save(
            meta_df, mode="replace"
        )
    assert catalog.save(only_ok) == len(expected)
    saved = catalog.load()
    assert saved.columns == ["path", "Modality"]
    assert {r["path"]: r["Modality"] for r in saved.collect()} == expected


def test_killed_attempt_of_a_chained_save_is_never_committed(
    spark: SparkSession, spark_folder: Path, tmp_path: Path
) -> None:
    from dicomlake.engine.spark import save_dataframe
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor, DicomThumbnailExtractor

    def die_after_first_batch(batches):  # type: ignore[no-untyped-def]
        # the first attempt of partition 0 dies (os._exit) once a batch is in its file
        import os

        from pyspark import TaskContext

        context = TaskContext.get()
        for batch in batches:
            yield batch
            if context.partitionId() == 0 and context.attemptNumber() == 0:
                os._exit(3)

    catalog = Catalog(spark, lake=str(tmp_path / "lake"), files_per_partition=3)
    meta_df = DicomMetaExtractor(catalog).transform(catalog.catalog(str(spark_folder)))
    df = DicomThumbnailExtractor(size=32).transform(meta_df)
    table = tmp_path / "lake" / "object_catalog"
    rows = save_dataframe(df, str(table), cleanup=False, task_hook=die_after_first_batch)
    assert rows == 6
    on_disk = {p.name for p in table.iterdir() if p.suffix == ".parquet"}
    in_log = {os.path.basename(u) for u in DeltaTable(str(table)).file_uris()}
    assert in_log < on_disk
    assert all("-a0-" in name for name in on_disk - in_log)
    loaded = catalog.load()
    assert loaded.count() == 6
    assert loaded.select("path").distinct().count() == 6
    assert loaded.where("thumbnail is not null").count() == 4  # the images; not rtstruct


def test_a_save_into_an_old_lake_gives_its_earlier_instances_their_acquisition_rows(
    spark: SparkSession, tmp_path: Path
) -> None:
    import dicomlake
    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor

    earlier, later = tmp_path / "earlier", tmp_path / "later"
    for folder, names in ((earlier, ["CT_small.dcm", "MR_small.dcm"]), (later, ["rtdose.dcm"])):
        folder.mkdir()
        for name in names:
            shutil.copyfile(sample_file(name), folder / name)
    lake = tmp_path / "lake"
    dicomlake.ingest([str(earlier)], str(lake), workers=0)
    shutil.rmtree(lake / "acquisition")  # as a lake made before the table was
    catalog = Catalog(spark, table="instances", lake=str(lake))
    assert catalog.save(DicomMetaExtractor(catalog).transform(catalog.catalog(str(later)))) == 1
    # all three again, with replace: still one instances and one acquisition row each
    again = DicomMetaExtractor(catalog).transform(catalog.catalog([str(earlier), str(later)]))
    assert catalog.save(again, mode="replace") == 3
    con = dicomlake.connect(str(lake))
    try:
        modalities = con.sql("SELECT list(Modality ORDER BY Modality) FROM acquisition").fetchall()
        assert con.sql("SELECT count(*), count(DISTINCT row_id) FROM instances").fetchall() == [
            (3, 3)
        ]
    finally:
        con.close()
    assert modalities == [(["CT", "MR", "RTDOSE"],)]
