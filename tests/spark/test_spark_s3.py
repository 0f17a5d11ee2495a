"""The pixels program on object storage: sources and table in a real S3 server (moto).

The server runs in a child process on 127.0.0.1 (as in ``tests/storage/test_s3.py``: delta-rs
calls block holding the GIL, so a server thread in this process could not answer).
The Spark session was started before any credentials existed, and none are put in the
environment here: the executors' Python workers can reach the bucket only through the
:class:`~dicomlake.storage.StorageConfig` pickled to them with the transformers.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dicomlake.sample import sample_file
from dicomlake.storage import StorageConfig
from helpers.moto_server import moto_endpoint

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.spark, pytest.mark.s3]

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server for this module."""
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def config(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StorageConfig:
    """Credentials only in the config: the driver's AWS environment is emptied too."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return StorageConfig(key="testing", secret="testing", region="us-east-1", endpoint_url=endpoint)


@pytest.fixture
def bucket(config: StorageConfig) -> str:
    """A bucket with ``data/``: CT, MR, a text file, and a zip of a CT and a text file."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.key,
        aws_secret_access_key=config.secret,
        region_name=config.region,
    )
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    for file in ("CT_small.dcm", "MR_small.dcm"):
        s3.upload_file(str(sample_file(file)), name, f"data/series/{file}")
    s3.put_object(Bucket=name, Key="data/notes.txt", Body=b"not a DICOM file\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.write(sample_file("CT_small.dcm"), "zipped/CT.dcm")
        archive.writestr("zipped/readme.txt", "not DICOM")
    s3.put_object(Bucket=name, Key="data/archive.zip", Body=buf.getvalue())
    return name


def test_pixels_program_on_s3(spark: SparkSession, config: StorageConfig, bucket: str) -> None:
    import fsspec
    from deltalake import DeltaTable

    from dicomlake.spark import Catalog
    from dicomlake.spark.dicom import DicomMetaExtractor, DicomThumbnailExtractor

    # the pixels program, with the lake in the bucket and the storage config passed on
    catalog = Catalog(spark, lake=f"s3://{bucket}/lake", storage_options=config)
    catalog_df = catalog.catalog(f"s3://{bucket}/data")
    meta_df = DicomMetaExtractor(catalog).transform(catalog_df)
    thumbnail_df = DicomThumbnailExtractor().transform(meta_df)  # no options: as pixels
    assert catalog.save(thumbnail_df) == 5

    expected = {
        "series/CT_small.dcm": "ok",
        "series/MR_small.dcm": "ok",
        "notes.txt": "not_dicom",
        "archive.zip/zipped/CT.dcm": "ok",
        "archive.zip/zipped/readme.txt": "not_dicom",
    }
    rows = {r["relative_path"]: r for r in catalog.load().collect()}
    assert {k: r["status"] for k, r in rows.items()} == expected
    ct = rows["series/CT_small.dcm"]
    assert ct["path"] == f"s3://{bucket}/data/series/CT_small.dcm"
    assert (ct["Modality"], ct["Rows"], ct["is_anon"], ct["local_path"]) == ("CT", 128, False, None)
    assert rows["series/MR_small.dcm"]["Modality"] == "MR"
    member = rows["archive.zip/zipped/CT.dcm"]
    assert member["path"] == f"zip://zipped/CT.dcm::s3://{bucket}/data/archive.zip"
    assert member["SOPInstanceUID"] == ct["SOPInstanceUID"]
    thumb = ct["thumbnail"]  # drawn by the executors from the bucket, too
    assert (thumb["height"], thumb["width"], len(thumb["data"])) == (128, 128, 128 * 128)

    # the table as any Delta reader sees it: delta-rs with the same config
    uri = f"s3://{bucket}/lake/object_catalog"
    table = DeltaTable(uri, storage_options=config.delta())
    read = table.to_pyarrow_table(columns=["relative_path", "status", "is_anon"]).to_pylist()
    assert {r["relative_path"]: r["status"] for r in read} == expected
    assert not any(r["is_anon"] for r in read)
    # no Parquet file in the bucket that the log does not list
    fs = fsspec.filesystem("s3", **config.fsspec())
    written = {p.rsplit("/", 1)[1] for p in fs.glob(f"{bucket}/lake/object_catalog/*.parquet")}
    assert written == {u.rsplit("/", 1)[1] for u in table.file_uris()}

    # what load() gives saves back: append doubles the rows, overwrite replaces them
    assert catalog.save(catalog.load()) == 5
    assert DeltaTable(uri, storage_options=config.delta()).to_pyarrow_table().num_rows == 10
    assert catalog.save(catalog.load().limit(2), mode="overwrite") == 2
    assert catalog.load().count() == 2


def test_anonymous_listing_marks_is_anon(
    spark: SparkSession, config: StorageConfig, bucket: str
) -> None:
    from dicomlake.spark import Catalog

    anon = StorageConfig(endpoint_url=config.endpoint_url, region=config.region, anon=True)
    catalog = Catalog(spark, lake=f"s3://{bucket}/lake", storage_options=anon)
    listed: list[Any] = catalog.catalog(f"s3://{bucket}/data/series").collect()
    assert {r["relative_path"] for r in listed} == {"CT_small.dcm", "MR_small.dcm"}
    assert all(r["is_anon"] is True for r in listed)
